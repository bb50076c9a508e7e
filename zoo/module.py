"""`GenerativeModule`: the base class every model family extends.

A family is a LightningModule with:
- class attributes `modality` ("image" | "video" | "audio" | "text") and `default_data`, the
  registry name of the datamodule `python -m zoo.fit --model NAME` uses when no `--data` is given;
- `generate(n, *, condition=None, generator=None, **sampling)`, returning images/video as floats in
  [0, 1], audio in [-1, 1] and text as `list[str]`, decorated with `@inference` (no gradients, eval
  mode, the previous modes restored), so callers need not remember either;
- `self.save_hyperparameters()` in `__init__`, so `load_from_checkpoint(path)` rebuilds it;
- `train/loss` (and its parts under `train/`), `val/loss` and other `val/*` values logged.

The base class also makes checkpoints self-describing and resumable: it stores the family's
registry name and the random-number-generator states (Lightning does not), refuses to take a step
on a non-finite loss, and offers `previews()` to the sample-logging callback.
"""

from __future__ import annotations

import contextvars
import functools
import random
import warnings
from collections.abc import Callable
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar

import lightning as L
import numpy as np
import torch
from torch import nn

from zoo import registry

T = TypeVar("T")
M = TypeVar("M", bound=nn.Module)
P = ParamSpec("P")
R = TypeVar("R")


class NonFiniteLossError(FloatingPointError):
    """Raised before backward when a training loss is NaN or infinite."""


class UndecoratedGenerateWarning(UserWarning):
    """A family's `generate` without `@inference`: zoo wraps it anyway, and asks for the decorator."""


def inference(method: Callable[Concatenate[M, P], R]) -> Callable[Concatenate[M, P], R]:
    """Decorate a module method that draws samples (`generate`, previews, scoring) to run under
    `torch.no_grad()` and in eval mode (no dropout, batch-norm running statistics), restoring afterwards,
    also when it raises, the mode each submodule had: a training module keeps training, and a frozen
    submodule held in eval mode inside it stays there."""

    @functools.wraps(method)
    def run_for_inference(self: M, *args: P.args, **kwargs: P.kwargs) -> R:
        modes = [(module, module.training) for module in self.modules()]
        self.eval()
        try:
            with torch.no_grad():
                return method(self, *args, **kwargs)
        finally:
            for module, training in modes:
                module.training = training

    run_for_inference.__zoo_inference__ = True  # type: ignore[attr-defined]
    return run_for_inference


def _rng_states() -> dict[str, Any]:
    np_state = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # numpy's state as plain Python values, so weights_only loading accepts it
        "numpy": (np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def check_choice(name: str, value: str, choices: tuple[str, ...] | list[str]) -> None:
    """A family's check of a string hyper-parameter: a ValueError naming the choices (zoo.fit prints it as
    one usage line)."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def build_module(cls: type[T], /, **kwargs: Any) -> T:
    """`cls(**kwargs)` for a LightningModule built inside another one's `__init__` (ldm's frozen vae),
    so that it records its own hyper-parameters. Two Lightning mechanisms would otherwise hand it the
    outer module's: `save_hyperparameters()` collects the arguments of every `__init__` up the call
    stack (meant for subclasses calling `super().__init__`; this function's frame ends that chain),
    and LightningCLI passes the values it parsed through a context variable that stays set for the
    whole `__init__` of the module it instantiates. Lightning has no public way to clear that variable,
    so `cls` is built in a fresh `contextvars.Context`, where no context variable is set."""
    return contextvars.Context().run(cls, **kwargs)


def attached_trainer(module: L.LightningModule) -> L.Trainer | None:
    """The Trainer `module` is attached to, or None (a module built or loaded by hand). Lightning's
    public `module.trainer` raises when there is none and nothing public asks, so this reads the
    attribute that property guards."""
    return module._trainer


def adamw_with_warmup(
    parameters: Any, lr: float, weight_decay: float = 0.0, warmup_steps: int = 0
) -> dict[str, Any]:
    """AdamW with a linear learning-rate warm-up over `warmup_steps`, stepped every batch, in the form
    `configure_optimizers` returns (the families' common recipe)."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    warmup = max(1, warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class GenerativeModule(L.LightningModule):
    """Base class of every zoo model family (see the module docstring for the contract)."""

    modality: ClassVar[str] = "image"
    default_data: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A safety net for plugins written before `@inference` was public (generate was wrapped for
        # them): wrap an undecorated generate, so it cannot build graphs or sample with dropout on,
        # and say once, where the class is defined, that the decorator belongs on it.
        super().__init_subclass__(**kwargs)
        generate = cls.__dict__.get("generate")
        if generate is not None and not getattr(generate, "__zoo_inference__", False):
            warnings.warn(
                f"{cls.__module__}.{cls.__qualname__}.generate is not decorated with @zoo.module.inference; "
                "zoo runs it under torch.no_grad() in eval mode anyway. Put @inference on the line above it.",
                UndecoratedGenerateWarning,
                stacklevel=2,
            )
            cls.generate = inference(generate)  # type: ignore[method-assign]

    def generate(
        self,
        n: int,
        *,
        condition: Any = None,
        generator: torch.Generator | None = None,
        **sampling: Any,
    ) -> torch.Tensor | list[str]:
        """Draw `n` samples. Images and video in [0, 1], audio in [-1, 1], text as strings."""
        raise NotImplementedError(f"{type(self).__name__} does not implement generate()")

    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Named image batches in [0, 1] for the sample-logging callback.

        The default shows samples; families add what helps to judge them (a VAE adds
        reconstructions of `batch`, a conditional model the conditions it was given).
        """
        if self.modality != "image":
            return {}
        return {"samples": self.generate(n, generator=generator)}

    # --- safety and exact resumption -------------------------------------------------------

    def on_before_backward(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"{type(self).__name__}: the training loss is {loss.item()} at step {self.global_step} "
                f"(epoch {self.current_epoch}); no step was taken, so the weights are still finite and, past "
                "the first step, the checkpoint saved on this exception can be resumed. Lower the learning rate "
                "(--model.lr), clip gradients (--trainer.gradient_clip_val 1.0) or check the data for NaNs."
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from zoo import __version__

        cls = type(self)
        checkpoint["zoo"] = {
            "model": registry.name_of(cls),
            "class_path": f"{cls.__module__}:{cls.__qualname__}",
            "modality": self.modality,
            "zoo_version": __version__,
        }
        # the datamodule's registry name, so zoo.evaluate can rebuild the real data from
        # checkpoint["datamodule_hyper_parameters"]
        datamodule = getattr(attached_trainer(self), "datamodule", None)
        if datamodule is not None:
            checkpoint["zoo"]["data"] = registry.name_of(type(datamodule), registry.DATAMODULE_GROUP)
            checkpoint["zoo"]["data_class_path"] = (
                f"{type(datamodule).__module__}:{type(datamodule).__qualname__}"
            )
        checkpoint["rng_states"] = _rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Restoring the generators makes a resumed run draw the same noise as an uninterrupted one.
        if "rng_states" in checkpoint and attached_trainer(self) is not None:
            _set_rng_states(checkpoint["rng_states"])

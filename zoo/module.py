"""`GenerativeModule`: the base class every model family extends.

A family is a LightningModule with:
- class attributes `modality` ("image" | "video" | "audio" | "text") and `default_data`, the
  registry name of the datamodule `python -m zoo.fit --model NAME` uses when no `--data` is given;
- `generate(n, *, condition=None, generator=None, **sampling)`, returning images/video as floats in
  [0, 1], audio in [-1, 1] and text as `list[str]`. It runs under `torch.no_grad()` and in eval mode
  (the base class wraps every override), so callers need not remember either;
- `self.save_hyperparameters()` in `__init__`, so `load_from_checkpoint(path)` rebuilds it;
- `train/loss` (and its parts under `train/`), `val/loss` and other `val/*` values logged.

The base class also makes checkpoints self-describing and resumable: it stores the family's
registry name and the random-number-generator states (Lightning does not), refuses to take a step
on a non-finite loss, and offers `previews()` to the sample-logging callback.
"""

from __future__ import annotations

import functools
import random
from typing import Any, ClassVar, TypeVar

import lightning as L
import numpy as np
import torch

from zoo import registry

T = TypeVar("T")


class NonFiniteLossError(FloatingPointError):
    """Raised before backward when a training loss is NaN or infinite."""


def _no_grad_eval(generate):  # noqa: ANN001, ANN202 - decorator over any generate signature
    @functools.wraps(generate)
    def wrapper(self: GenerativeModule, *args: Any, **kwargs: Any) -> Any:
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return generate(self, *args, **kwargs)
        finally:
            self.train(was_training)

    wrapper.__zoo_wrapped__ = True  # type: ignore[attr-defined]
    return wrapper


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


def build_module(cls: type[T], /, **kwargs: Any) -> T:
    """`cls(**kwargs)` for a LightningModule built inside another one's `__init__` (ldm's frozen vae),
    so that it records its own hyper-parameters. Two Lightning mechanisms would otherwise hand it the
    outer module's: `save_hyperparameters()` collects the arguments of every `__init__` up the call
    stack (meant for subclasses calling `super().__init__`; this function's frame ends that chain),
    and LightningCLI passes the values it parsed through a context variable that stays set for the
    whole `__init__` of the module it instantiates (reset here)."""
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # a Lightning without the mechanism needs no workaround
        return cls(**kwargs)
    token = _given_hyperparameters.set(None)
    try:
        return cls(**kwargs)
    finally:
        _given_hyperparameters.reset(token)


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
        super().__init_subclass__(**kwargs)
        generate = cls.__dict__.get("generate")
        if generate is not None and not getattr(generate, "__zoo_wrapped__", False):
            cls.generate = _no_grad_eval(generate)  # type: ignore[method-assign]

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
                f"(epoch {self.current_epoch}); no step was taken, so the weights are still finite and the "
                "checkpoint saved on this exception can be resumed. Lower the learning rate "
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
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None:
            checkpoint["zoo"]["data"] = registry.name_of(type(datamodule), registry.DATAMODULE_GROUP)
            checkpoint["zoo"]["data_class_path"] = (
                f"{type(datamodule).__module__}:{type(datamodule).__qualname__}"
            )
        checkpoint["rng_states"] = _rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Restoring the generators makes a resumed run draw the same noise as an uninterrupted one.
        if "rng_states" in checkpoint and self._trainer is not None:
            _set_rng_states(checkpoint["rng_states"])

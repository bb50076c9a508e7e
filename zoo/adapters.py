"""What the families that steer a frozen `ldm` share (`controlnet`, `ip_adapter`): the base read once from its
checkpoint and kept frozen inside the module (so the adapter's checkpoint is self-contained), the training
and validation steps over the family's `_loss`, and the base's sampler run over the family's network.

    class ControlNetLDM(FrozenBaseAdapter):
        def __init__(self, base=None, ..., base_sha256=None, base_hparams=None):
            super().__init__()
            self.save_hyperparameters()
            self.base = self.load_frozen("base", "ldm", "--model.base")

What such a family adds is also written, at the end of training, as a small file beside its checkpoint
(`<run>/<family>.safetensors`: the trained tensors, and the frozen parents other than the base, with the
family's arguments), and applied to the base checkpoint it was trained on when sampling:

    model = load_adapter("runs/controlnet/<run>/controlnet.safetensors", base="runs/ldm/<run>/checkpoints/last.ckpt")
    python -m zoo.sample --ckpt runs/controlnet/<run>/controlnet.safetensors --base LDM_CKPT --control edges.png
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from zoo import registry
from zoo.checkpoint import CheckpointError, require_family
from zoo.diffusion import objective_sample
from zoo.diffusion.guidance import guided_denoiser
from zoo.module import GenerativeModule, build_module


class FrozenBaseAdapter(GenerativeModule):
    """A GenerativeModule built on frozen checkpoints of other families; see the module docstring. The
    subclass defines `_loss(batch, generator)` and keeps each parent of `default_parents` under its name
    (`self.base`, ...), from `load_frozen`."""

    modality = "image"
    default_data = "shapes"
    built_on = "base"
    default_parents: dict[str, str] = {"base": "ldm"}  # hyper-parameter (and attribute) -> family
    condition_key = "caption"  # zoo.evaluate generates for the real split's captions (no control, no image)
    base: Any

    def load_frozen(self, name: str, family: str, flag: str) -> Any:
        """The `family` model of hyper-parameter `name` (a checkpoint path), frozen and in eval mode. On first
        build it is read from the file, and its arguments (`<name>_hparams`) and, for the base, its sha256
        are recorded in this module's hyper-parameters; rebuilt from those, its weights come with this
        module's checkpoint."""
        hp, key = self.hparams, f"{name}_hparams"
        checkpoint = None
        if hp.get(key) is None:
            if hp.get(name) is None:
                raise ValueError(f"{type(self).__name__} needs a trained {family}: pass {flag} CKPT")
            try:
                checkpoint = require_family(hp[name], family, flag)
            except CheckpointError as err:  # a missing or damaged file: say which option named it
                raise CheckpointError(f"{flag}: {err}") from err
            hp[key] = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
            if name == "base":
                from zoo.evaluate import sha256_of

                hp.base_sha256 = sha256_of(hp[name])
        model = build_module(registry.get_model_class(family), **hp[key])
        if checkpoint is not None:
            model.on_load_checkpoint(checkpoint)
            model.load_state_dict(checkpoint["state_dict"])
        return model.requires_grad_(False).eval()

    # --- training -------------------------------------------------------------------------------------

    @torch.no_grad()
    def latents_and_text(
        self, images: Tensor, captions: Sequence[str], generator: torch.Generator | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The frozen base's latents of training images (a posterior draw while training, the mean in
        validation, as the ldm trains) and its encoding of the captions."""
        z0 = self.base.training_latents(images, sample=self.training and generator is None)
        return z0, self.base.encode_text(captions)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # draws from a generator seeded per batch: comparable across validations, none from the global one
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss = self._loss(batch, generator)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["image"]))

    def on_fit_start(self) -> None:
        from zoo.first_stage import PosteriorCache

        self.base._posterior_cache = PosteriorCache()  # the frozen first stage's latents, kept by pixels

    def train(self, mode: bool = True) -> FrozenBaseAdapter:
        super().train(mode)
        for name in self.default_parents:  # the frozen parents stay in eval mode, whatever Lightning asks
            getattr(self, name).eval()
        return self

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            name = registry.name_of(type(self))
            path = save_adapter(self, Path(self.trainer.default_root_dir) / f"{name}.safetensors")
            print(f"{name}: the trained part alone, applied to its base at sampling time: {path}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.base.on_save_checkpoint(checkpoint)  # the tokenizer and preview prompts
        super().on_save_checkpoint(checkpoint)  # then zoo's record of the family: this one's

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.base.on_load_checkpoint(checkpoint)

    # --- sampling -------------------------------------------------------------------------------------

    def texts(
        self, condition: Any, negative_prompt: str | Sequence[str] | None, n: int
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The base's encodings of the n prompts and of the n negative prompts ("" unless given)."""
        base = self.base
        text = base.encode_text(base._prompts(condition, n))
        negative = base.encode_text(base._prompts("" if negative_prompt is None else negative_prompt, n))
        return text, negative

    def sample_base(
        self,
        network: Callable[[Tensor, Tensor, Any], Tensor],
        cond: dict[str, Any],
        uncond: dict[str, Any],
        n: int,
        *,
        guidance: float | None,
        sampler: str | None,
        steps: int | None,
        generator: torch.Generator | None,
        progress: bool,
    ) -> Tensor:
        """n images in [0, 1]: the base's sampler (this module's `sampler` / `sampling_steps` / `guidance`
        defaults, else the base's) over `network(x, t, condition)`, guided between `cond` and `uncond`."""
        hp, base = self.hparams, self.base
        guidance = (hp.guidance or base.hparams.guidance) if guidance is None else guidance
        size = base.hparams.image_size // base.first_stage.hparams.downsample_factor
        sampling = dict(base.hparams) | {
            "sampler": hp.sampler or base.hparams.sampler,
            "sampling_steps": hp.sampling_steps or base.hparams.sampling_steps,
        }
        latents = objective_sample(
            guided_denoiser(network, cond, uncond, guidance), (n, base.latent_channels, size, size), sampling,
            base.schedule, sampler=sampler, steps=steps, generator=generator, device=self.device, progress=progress,
        )  # fmt: skip
        return ((base.first_stage.decode_latents(latents) + 1) / 2).clamp(0, 1)


# --- the small file ---------------------------------------------------------------------------------------


def adapter_state(model: FrozenBaseAdapter) -> dict[str, Tensor]:
    """What the base checkpoint does not hold: the parameters that train, and the parents other than the base."""
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    parents = tuple(f"{name}." for name in model.default_parents if name != "base")
    return {k: v for k, v in model.state_dict().items() if k in trained or k.startswith(parents)}


def save_adapter(model: FrozenBaseAdapter, path: str | Path) -> Path:
    """`adapter_state(model)` as safetensors, its family and arguments (without the base's) as metadata."""
    from safetensors.torch import save_file

    hparams = {
        k: v for k, v in model.hparams.items() if k not in ("base", "base_hparams") and not k.startswith("_")
    }
    metadata = {"zoo_model": registry.name_of(type(model)), "hyper_parameters": json.dumps(hparams)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in adapter_state(model).items()}, str(path), metadata
    )
    return path


def read_safetensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and metadata of a .safetensors file; a missing or damaged one is a CheckpointError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {k: file.get_tensor(k) for k in file.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"'{path}' is not a readable safetensors file ({err})") from err
    return tensors, metadata


def load_adapter(
    path: str | Path, base: str | Path, map_location: str | torch.device = "cpu"
) -> FrozenBaseAdapter:
    """The family written by `save_adapter` at `path`, on the `base` checkpoint it was trained on (checked by
    sha256), in eval mode."""
    from zoo.evaluate import sha256_of

    tensors, metadata = read_safetensors(path)
    if "zoo_model" not in metadata:
        raise CheckpointError(
            f"'{path}' was not written by zoo's save_adapter (no zoo_model in its metadata)"
        )
    hparams = json.loads(metadata["hyper_parameters"])
    if sha256_of(base) != hparams.get("base_sha256"):
        raise CheckpointError(
            f"'{path}' was trained on another base ldm than '{base}' (sha256 differs): give the base it was trained on"
        )
    model = build_module(registry.get_model_class(metadata["zoo_model"]), **hparams, base=str(base))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or set(adapter_state(model)) - set(tensors):
        raise CheckpointError(f"'{path}' does not match {type(model).__name__}: unexpected {unexpected[:5]}")
    return model.to(map_location).eval()

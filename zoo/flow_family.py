"""`FlowFamily`: the Lightning side of the normalizing-flow families `nice`, `realnvp` and `glow`.

One class holds what the three share (training on the exact log-likelihood in bits per dimension,
sampling with a temperature, encoding, latent attribute editing, interpolation); each family is this class
with other defaults (`flow_family`), registered in one line:

    Glow = flow_family("Glow", __name__, "Glow (Kingma & Dhariwal 2018): ...", layout="glow", ...)

Data: batches of `image` in [-1, 1] are read as 8-bit pixels u = round((x + 1) / 2 * 255) and uniformly
dequantised (`zoo.nn.flows.dequantize`); the loss is the negative log-likelihood in bits per dimension,
counting the dequantisation and the [0, 256) -> [-1, 1) scaling (derivation: `zoo.nn.flows.bits_per_dim`).

Editing (Glow, section 5): the mean code of each label is measured on the validation images at every
validation (`label_code_sums` / `label_code_counts`, buffers saved in the checkpoint, so
`zoo.sample --init-image x.png --edit-from 3 --edit-to 8` needs nothing but the checkpoint), or from any
images with `measure_label_means`. `edit` adds strength * (mean[to] - mean[from]) to an image's code and
decodes; `interpolate` decodes the straight line between two images' codes.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from zoo.conditioning import class_labels
from zoo.module import GenerativeModule, adamw_with_warmup, inference
from zoo.nn.flows import (
    FlowModel,
    bin_centres,
    bits_per_dim,
    dequantize,
    edit_codes,
    interpolate_codes,
    label_means,
    to_images,
    to_pixels,
)


class FlowFamily(GenerativeModule):
    """A multi-scale normalizing flow on images (zoo.nn.flows.FlowModel); see the module docstring.

    Args:
        in_channels: image channels (1 grey, 3 RGB); zoo.fit links it to data.channels.
        image_size: image side in pixels, divisible by 2 per squeeze; zoo.fit links it to data.image_size.
        num_classes: label classes, 0 for unlabelled data; zoo.fit sets it from the datamodule (editing measures a mean code per class).
        class_conditional: a class-conditional top prior (Glow's ycond) when num_classes > 0; bits/dim are then of the marginal over uniform classes.
        layout: realnvp (checkerboard couplings, squeeze, channel couplings, split) or glow (squeeze, steps, split).
        levels: multi-scale levels; every level but the last factors out half of its channels under a learned prior.
        steps_per_level: flow steps per level (realnvp: checkerboard and channel couplings each; one more checkerboard at the last level).
        hidden_channels: width of each coupling network (conv 3x3, conv 1x1, zero-initialised conv 3x3).
        coupling: additive (NICE, volume-preserving) or affine (RealNVP/Glow, scale sigmoid(s + 2)).
        permutation: before each channel coupling: none (alternate the halves), reverse, or conv1x1 (Glow's LU-decomposed 1x1 convolution).
        actnorm: an ActNorm layer (data-dependent initialisation) at the start of every step.
        lr: Adam(W) learning rate, reached at the end of the warm-up.
        weight_decay: AdamW weight decay.
        warmup_steps: optimizer steps of linear learning-rate warm-up.
        temperature: sampling temperature of `generate` unless given: the latent is drawn from N(0, T^2 I).
    """

    modality = "image"
    default_data = "digits"

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 16,
        num_classes: int = 0,
        class_conditional: bool = False,
        layout: str = "glow",
        levels: int = 3,
        steps_per_level: int = 8,
        hidden_channels: int = 64,
        coupling: str = "affine",
        permutation: str = "conv1x1",
        actnorm: bool = True,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 200,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.conditional = class_conditional and num_classes > 0
        self.flow = FlowModel(
            in_channels, image_size, layout=layout, levels=levels, steps=steps_per_level,
            hidden=hidden_channels, coupling=coupling, permutation=permutation, actnorm=actnorm,
            num_classes=num_classes if self.conditional else 0,
        )  # fmt: skip
        dims = self.flow.num_dims
        # each label's code sum and count over the last validation (see the module docstring)
        self.register_buffer("label_code_sums", torch.zeros(num_classes, dims, dtype=torch.float64))
        self.register_buffer("label_code_counts", torch.zeros(num_classes, dtype=torch.float64))

    # --- likelihood -------------------------------------------------------------------------------

    def _labels(self, batch: dict[str, Any]) -> Tensor | None:
        return batch["label"] if self.conditional else None

    def nll_bits(
        self, images: Tensor, label: Tensor | None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Negative log-likelihood in bits per dimension (B,) of images in [-1, 1], read as 8-bit pixels and
        dequantised with one uniform draw (from `generator`, else torch's global generator)."""
        x = dequantize(to_pixels((images + 1) / 2), generator)
        return bits_per_dim(self.flow.log_prob(x, label), self.flow.num_dims)

    @inference
    def bits_per_dim(self, images: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """bits/dim (B,) of images in [0, 1] (`zoo.evaluate --metrics bits_per_dim`): of the marginal over
        uniform classes for a class-conditional model."""
        return self.nll_bits(images.to(self.device, torch.float32) * 2 - 1, None, generator)

    # --- Lightning --------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self.nll_bits(batch["image"], self._labels(batch)).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._code_sums = torch.zeros_like(self.label_code_sums)
        self._code_counts = torch.zeros_like(self.label_code_counts)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # the dequantisation noise from a generator seeded per batch: comparable across validations, and no
        # draw from the global generator (which exact resumption relies on)
        images, n = batch["image"], len(batch["image"])
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss = self.nll_bits(images, self._labels(batch), generator).mean()
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=n)
        if self.conditional:  # the marginal, comparable with unconditional models
            generator.manual_seed(batch_idx)
            marginal = self.nll_bits(images, None, generator).mean()
            self.log("val/bits_per_dim", marginal, sync_dist=True, batch_size=n)
        else:
            self.log("val/bits_per_dim", loss, sync_dist=True, batch_size=n)
        if self.hparams.num_classes > 0 and "label" in batch:
            sums, counts = label_means(
                self._codes(images, batch["label"]).double(), batch["label"], self.hparams.num_classes
            )
            self._code_sums += sums
            self._code_counts += counts

    def on_validation_epoch_end(self) -> None:
        if self.hparams.num_classes == 0 or self.trainer.sanity_checking:
            return
        sums, counts = self.all_gather(self._code_sums), self.all_gather(self._code_counts)
        if sums.ndim == 3:  # (world size, K, D) under DDP
            sums, counts = sums.sum(0), counts.sum(0)
        self.label_code_sums.copy_(sums)
        self.label_code_counts.copy_(counts)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return adamw_with_warmup(self.parameters(), hp.lr, hp.weight_decay, hp.warmup_steps)

    # --- codes, editing, interpolation ------------------------------------------------------------

    def _codes(self, images: Tensor, label: Tensor | None = None) -> Tensor:
        """Codes (B, D) of images in [-1, 1], each pixel at the centre of its dequantisation cell."""
        x = bin_centres(to_pixels((images + 1) / 2))
        return self.flow.encode(x, label if self.conditional else None)

    @inference
    def encode(self, images: Tensor, label: Tensor | None = None) -> Tensor:
        """Latent codes (B, D) of images in [0, 1] (`label`: their classes, for a class-conditional model)."""
        return self._codes(images.to(self.device, torch.float32) * 2 - 1, label)

    @inference
    def decode(self, codes: Tensor, label: Tensor | None = None) -> Tensor:
        """Images in [0, 1] (8-bit values) of latent codes (B, D); exact inverse of `encode`."""
        return to_images(
            self.flow.decode(codes.to(self.device, torch.float32), label if self.conditional else None)
        )

    @inference
    def measure_label_means(self, images: Tensor, labels: Tensor, batch_size: int = 256) -> None:
        """Set the mean code of each label (used by `edit`) from images in [0, 1] and their labels."""
        sums = torch.zeros_like(self.label_code_sums)
        counts = torch.zeros_like(self.label_code_counts)
        for start in range(0, len(images), batch_size):
            x, y = images[start : start + batch_size], labels[start : start + batch_size].to(self.device)
            batch_sums, batch_counts = label_means(self.encode(x, y).double(), y, self.hparams.num_classes)
            sums += batch_sums
            counts += batch_counts
        self.label_code_sums.copy_(sums)
        self.label_code_counts.copy_(counts)

    def label_mean_codes(self, *needed: int) -> Tensor:
        """(K, D) mean code of each label; a ValueError when a `needed` label has none to average."""
        classes = self.hparams.num_classes
        for label in needed:
            if not 0 <= label < classes:
                raise ValueError(f"labels lie in 0..{classes - 1}, got {label}" if classes else
                                 "this model was trained without labels: it has no label means to edit with")  # fmt: skip
            if self.label_code_counts[label] == 0:
                raise ValueError(
                    f"no mean code of label {label} yet: it is measured on the validation images at each "
                    "validation (or call measure_label_means)"
                )
        return (self.label_code_sums / self.label_code_counts.clamp_min(1)[:, None]).float()

    @inference
    def edit(
        self, images: Tensor, from_label: int, to_label: int, strength: float | Sequence[float] = 1.0
    ) -> Tensor:
        """Latent attribute editing: each image's code plus strength * (mean code of `to_label` - mean code of
        `from_label`), decoded; images in [0, 1]. A list of strengths gives (len(images) * len(strengths))
        images, each image's sweep together. A class-conditional model encodes with `from_label` and decodes
        with `to_label`."""
        means = self.label_mean_codes(from_label, to_label).to(self.device)
        source = torch.full((len(images),), from_label, device=self.device, dtype=torch.long)
        codes = self.encode(images, source)
        edited = torch.cat([edit_codes(c[None], means, from_label, to_label, strength) for c in codes])
        target = torch.full((len(edited),), to_label, device=self.device, dtype=torch.long)
        return self.decode(edited, target)

    @inference
    def interpolate(self, a: Tensor, b: Tensor, steps: int = 8, label: Tensor | None = None) -> Tensor:
        """`steps` images decoded on the straight line between the codes of images a and b (each (C, H, W) or
        (1, C, H, W) in [0, 1]); both ends are (8-bit) a and b themselves."""
        pair = torch.stack([a.reshape(a.shape[-3:]), b.reshape(b.shape[-3:])])
        codes = self.encode(pair, None if label is None else label.expand(2))
        return self.decode(
            interpolate_codes(codes[0], codes[1], steps), None if label is None else label.expand(steps)
        )

    # --- generation -------------------------------------------------------------------------------

    @inference
    def generate(
        self,
        n: int,
        *,
        condition: Any = None,
        generator: torch.Generator | None = None,
        temperature: float | None = None,
        init: Tensor | None = None,
        edit_from: int | None = None,
        edit_to: int | None = None,
        edit_strength: float = 1.0,
    ) -> Tensor:
        """`n` images in [0, 1]: decoded draws of N(0, temperature^2 I), given class labels (`condition`) for a
        class-conditional model. With `init` (1, C, H, W) in [0, 1], `edit_from` and `edit_to` (labels): that
        image edited from one label's mean code towards the other's (`edit`); one image at `edit_strength`,
        or for n > 1 a sweep of strengths from 0 (the image itself) to `edit_strength`."""
        if edit_from is not None or edit_to is not None or init is not None:
            if init is None or edit_from is None or edit_to is None:
                raise ValueError(
                    "editing takes init (the image) with edit_from and edit_to (labels) together"
                )
            if condition is not None:
                raise ValueError("editing takes its labels from edit_from / edit_to, not from condition")
            strengths = [edit_strength] if n == 1 else torch.linspace(0, edit_strength, n).tolist()
            return self.edit(init[:1], int(edit_from), int(edit_to), strengths)
        classes = self.hparams.num_classes if self.conditional else 0
        labels = class_labels(condition, n, classes, family=type(self).__name__.lower(), device=self.device)
        if self.conditional and labels is None:  # no label given: classes drawn uniformly
            labels = torch.randint(0, classes, (n,), generator=generator, device=self.device)
        t = self.hparams.temperature if temperature is None else temperature
        return to_images(self.flow.sample(n, temperature=t, label=labels, generator=generator))

    @inference
    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, Tensor]:
        """Samples at the model's temperature and at 0.7, and interpolations between validation images (rows
        of 8 from one image to the next)."""
        condition = torch.arange(n) % self.hparams.num_classes if self.conditional else None
        out = {
            "samples": self.generate(n, condition=condition, generator=generator),
            "samples_t0.7": self.generate(n, condition=condition, generator=generator, temperature=0.7),
        }
        if batch is not None and "image" in batch and len(batch["image"]) > 1 and not self.conditional:
            images = (batch["image"][: max(2, n // 8 + 1)] + 1) / 2
            rows = [self.interpolate(images[i], images[i + 1]) for i in range(len(images) - 1)]
            out["interpolations"] = torch.cat(rows)
        return out


def flow_family(name: str, module: str, doc: str, /, **defaults: Any) -> type[FlowFamily]:
    """A family that is `FlowFamily` with other `defaults`, defined in `module` (its registry entry point).

    Its `__init__` shows the whole signature with those defaults, so `zoo.fit` links the data to it and lists
    every flag with this family's default, and `save_hyperparameters` records every argument (the wrapper
    calls `FlowFamily.__init__` directly; as `zoo.gan.variant` does)."""
    parameters = list(inspect.signature(FlowFamily.__init__, eval_str=True).parameters.values())
    unknown = set(defaults) - {p.name for p in parameters}
    if unknown:
        raise TypeError(f"{name}: FlowFamily has no parameter {', '.join(sorted(unknown))}")
    signature = inspect.Signature([p.replace(default=defaults.get(p.name, p.default)) for p in parameters])

    def __init__(self: FlowFamily, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        FlowFamily.__init__(*bound.args, **bound.kwargs)

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__qualname__ = f"{name}.__init__"
    return type(name, (FlowFamily,), {"__init__": __init__, "__doc__": doc, "__module__": module})


__all__ = ["FlowFamily", "flow_family"]

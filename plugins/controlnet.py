"""`controlnet`: spatial control of a trained `ldm` (Zhang et al. 2023, "Adding Conditional Control to
Text-to-Image Diffusion Models") by edges, a segmentation map or keypoints.

The base ldm (first stage, text encoder, U-Net) is frozen; a `zoo.nn.controlnet.ControlNet`, a trainable
copy of its U-Net's encoder and middle block joined to it by zero convolutions, learns to steer it from a
control image: the `shapes` batches' `edges`, `segmentation` or `keypoints` (`zoo.control`). The loss is the
base's own diffusion loss with the ControlNet's residuals added to its U-Net; captions are dropped more
often than the base did (the paper drops half), so the net learns to read the scene from the condition.

Sampling is the base's sampler; classifier-free guidance acts on the text only (the control image is in
both branches, as diffusers does). Several ControlNets on one base add their residuals, each times its
own scale (multi-ControlNet):

    python -m zoo.fit --model controlnet --model.base runs/ldm/<run>/checkpoints/last.ckpt --model.condition edges
    python -m zoo.sample --ckpt runs/controlnet/<run>/checkpoints/last.ckpt --prompt "a red circle" --control edges.png
    python -m zoo.sample --ckpt CN_EDGES --control e.png --controlnet CN_SEG --control s.png --control-scale 1 0.5
    python -m zoo.sample --ckpt CN_EDGES --prompt "a blue square" --control-from photo.png   # Canny edges of it
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from zoo.adapters import FrozenBaseAdapter
from zoo.control import check_kind, condition_of_batch, condition_of_image
from zoo.diffusion import objective_loss
from zoo.module import adamw_with_warmup, inference
from zoo.nn.controlnet import ControlNet
from zoo.nn.text import drop_captions
from zoo.nn.unet import ControlResiduals


class ControlNetLDM(FrozenBaseAdapter):
    """A frozen `ldm` with a trainable ControlNet; see the module docstring.

    Args:
        base: the `ldm` checkpoint to control (U-Net backbone); its data, tokenizer, text encoder and first
            stage are this model's.
        condition: the control image: edges, segmentation or keypoints (see zoo.control).
        caption_dropout: probability a training caption is replaced by "" (the paper: 0.5), so that the net
            reads the scene from the condition, and guidance has an unconditional branch.
        lr: AdamW learning rate, reached at the end of the warm-up (the ControlNet alone is trained).
        weight_decay: AdamW weight decay.
        warmup_steps: optimizer steps of linear learning-rate warm-up.
        control_scale: the residuals' scale of `generate` unless given (1: as trained).
        sampler: sampler of `generate` unless given; None: the base's.
        sampling_steps: sampling steps of `generate` unless given; None: the base's.
        guidance: classifier-free guidance scale (on the text) of `generate` unless given; None: the base's.
        base_sha256: set by zoo from the base file; leave unset.
        base_hparams: set by zoo from the base file (the ldm's arguments); leave unset.
    """

    def __init__(
        self,
        base: str | None = None,
        condition: str = "edges",
        caption_dropout: float = 0.5,
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        control_scale: float = 1.0,
        sampler: str | None = None,
        sampling_steps: int | None = None,
        guidance: float | None = None,
        base_sha256: str | None = None,
        base_hparams: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_kind(condition)
        if not 0.0 <= caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout is a probability, got {caption_dropout}")
        if base is None and base_hparams is None:
            raise ValueError(
                "controlnet controls a trained ldm: pass --model.base runs/ldm/<run>/checkpoints/last.ckpt "
                "(python -m zoo.fit --model ldm trains one)"
            )
        self.save_hyperparameters()
        self.base = self.load_frozen("base", "ldm", "--model.base")
        if self.base.unet is None:
            raise ValueError(
                "controlnet copies a U-Net's encoder; this ldm's backbone is "
                f"{self.base.hparams.backbone} (train the base with the default --model.backbone unet)"
            )
        self.controlnet = ControlNet(
            self.base.unet,
            condition_channels=3,
            downsample_factor=self.base.first_stage.hparams.downsample_factor,
        )

    # --- the controlled network ---------------------------------------------------------------------

    def controlled_unet(
        self,
        x: Tensor,
        t: Tensor,
        text: dict[str, Tensor],
        controls: Sequence[tuple[ControlNet, Tensor, float]],
    ) -> Tensor:
        """The base U-Net's output with the residuals of each (ControlNet, control image, scale) added."""
        kwargs = {"context": text["states"], "context_mask": text["mask"], "pooled": text["pooled"]}
        residuals: ControlResiduals | None = None
        for net, image, scale in controls:
            r = net(x, t, image, scale=scale, **kwargs)
            residuals = r if residuals is None else residuals + r
        return self.base.unet(x, t, control=residuals, **kwargs)

    # --- training -------------------------------------------------------------------------------------

    def _loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> Tensor:
        images, control = batch["image"], condition_of_batch(self.hparams.condition, batch)
        captions = list(batch["caption"])
        if self.training and self.hparams.caption_dropout > 0:
            captions = drop_captions(captions, self.hparams.caption_dropout, generator)
        z0, text = self.latents_and_text(images, captions, generator)
        controls = [(self.controlnet, control, 1.0)]
        return objective_loss(
            lambda x_t, t: self.controlled_unet(x_t, t, text, controls),
            z0, self.base.hparams, self.base.schedule, generator,
        )  # fmt: skip

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return adamw_with_warmup(self.controlnet.parameters(), hp.lr, hp.weight_decay, hp.warmup_steps)

    # --- sampling -------------------------------------------------------------------------------------

    def control_from_image(self, images: Tensor) -> Tensor:
        """This net's kind of control image (B, 3, H, W) made from ordinary images in [0, 1] (zoo.control)."""
        return condition_of_image(self.hparams.condition, images.to(self.device))

    def _controls(
        self, n: int, control: Any, control_scale: Any, controlnets: Sequence[ControlNetLDM]
    ) -> list[tuple[ControlNet, Tensor, float]]:
        models = [self, *controlnets]
        images = [control] if isinstance(control, Tensor) else list(control)
        scales = [control_scale] if isinstance(control_scale, (int, float)) else list(control_scale)
        if len(images) != len(models):
            raise ValueError(f"{len(models)} ControlNet(s) need as many control images, got {len(images)}")
        if len(scales) == 1:
            scales = scales * len(models)
        if len(scales) != len(models):
            raise ValueError(f"{len(models)} ControlNet(s) take one control scale each, got {len(scales)}")
        size = self.base.hparams.image_size
        out = []
        for model, image, scale in zip(models, images, scales, strict=True):
            if model.hparams.base_sha256 != self.hparams.base_sha256:
                raise ValueError(
                    "ControlNets used together must be built on the same base ldm (sha256 differs)"
                )
            if image.ndim == 3:
                image = image[None]
            if (
                image.shape[-2:] != (size, size)
                or image.shape[0] not in (1, n)
                or image.shape[1] not in (1, 3)
            ):
                raise ValueError(
                    f"a control image is (1 or {n}, 3, {size}, {size}) in [0, 1]; got {tuple(image.shape)}"
                )
            out.append(
                (model.controlnet, image.to(self.device, torch.float32).expand(n, 3, -1, -1), float(scale))
            )
        return out

    @inference
    def generate(
        self,
        n: int,
        *,
        condition: Any = None,
        generator: torch.Generator | None = None,
        control: Tensor | Sequence[Tensor] | None = None,
        control_scale: float | Sequence[float] | None = None,
        controlnets: Sequence[ControlNetLDM] = (),
        negative_prompt: str | Sequence[str] | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        progress: bool = False,
    ) -> Tensor:
        """`n` images in [0, 1] for `condition` (one prompt or n) under `control`: this net's control image
        (1 or n, 3, H, W) in [0, 1], or a list with one more for each of `controlnets` (other ControlNets on
        the same base), each times its `control_scale`. No control: the base model alone."""
        scale = self.hparams.control_scale if control_scale is None else control_scale
        controls = [] if control is None else self._controls(n, control, scale, controlnets)
        text, negative = self.texts(condition, negative_prompt, n)
        images = [image for _, image, _ in controls]
        # the control images ride in both branches of guidance: it acts on the text alone
        cond, uncond = text | {"controls": images}, negative | {"controls": images}

        def network(x: Tensor, t: Tensor, c: dict[str, Any]) -> Tensor:
            nets = [(net, image, s) for (net, _, s), image in zip(controls, c["controls"], strict=True)]
            return self.controlled_unet(x, t, c, nets)

        return self.sample_base(
            network, cond, uncond, n, guidance=guidance, sampler=sampler, steps=steps, generator=generator,
            progress=progress,
        )  # fmt: skip

    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, Tensor]:
        """Control image | sample pairs, side by side, for the batch's captions and conditions."""
        if batch is None or self.hparams.condition not in batch:
            return {}
        n = min(n // 2, len(batch["image"]))
        control = condition_of_batch(self.hparams.condition, batch)[:n]
        samples = self.generate(n, condition=list(batch["caption"][:n]), control=control, generator=generator)
        return {"control_and_samples": torch.stack([control, samples], 1).flatten(0, 1)}

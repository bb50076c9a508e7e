"""`ddpm`: pixel-space diffusion (Ho et al. 2020) with the samplers of `zoo.diffusion`.

A U-Net from `zoo.nn` learns to predict the noise (or v, or x0) added by the forward process;
`generate` runs any sampler of `zoo.diffusion.SAMPLERS` (ddpm, ddim, dpmpp_2m, euler,
euler_ancestral, heun). With labels (`num_classes` comes from the datamodule) the model is
class-conditional and trained with label dropout, so sampling can use classifier-free guidance
(Ho & Salimans 2022). The editing modes of the diffusion core work here too: img2img (`init`,
`strength`) and inpainting (`mask`, 1 = regenerate).

    python -m zoo.fit --model ddpm                               # class-conditional, on digits
    python -m zoo.sample --ckpt runs/ddpm/<run>/checkpoints/last.ckpt --label 7 --sampler ddim --steps 50 --guidance 3
"""

from __future__ import annotations

from typing import Any

import torch

from zoo.diffusion import (
    NoiseSchedule,
    check_options,
    classifier_free_guidance,
    diffusion_loss,
    drop_condition,
    q_sample,
)
from zoo.diffusion import sample as run_sampler
from zoo.module import GenerativeModule, adamw_with_warmup
from zoo.nn.unet import UNet


class DDPM(GenerativeModule):
    """Denoising diffusion on images; see the module docstring."""

    modality = "image"
    default_data = "digits"

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 32,
        num_classes: int = 0,
        class_conditional: bool = True,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_levels: tuple[int, ...] = (2,),
        num_heads: int = 4,
        dropout: float = 0.0,
        schedule: str = "cosine",
        num_train_timesteps: int = 1000,
        zero_terminal_snr: bool = False,
        prediction: str = "epsilon",
        min_snr_gamma: float | None = None,
        label_dropout: float = 0.1,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 200,
        sampler: str = "ddim",
        sampling_steps: int = 50,
        guidance: float = 3.0,
    ) -> None:
        super().__init__()
        check_options(prediction=prediction, sampler=sampler)
        if image_size % 2 ** (len(channel_mults) - 1):
            raise ValueError(
                f"image_size {image_size} must be divisible by 2**{len(channel_mults) - 1} (channel_mults {channel_mults})"
            )
        self.save_hyperparameters()
        self.conditional = class_conditional and num_classes > 0
        self.unet = UNet(
            in_channels=in_channels,
            base_channels=base_channels,
            channel_mults=tuple(channel_mults),
            num_res_blocks=num_res_blocks,
            attention_levels=tuple(attention_levels),
            num_heads=num_heads,
            dropout=dropout,
            num_classes=num_classes if self.conditional else 0,
        )
        self.schedule = NoiseSchedule.make(schedule, num_train_timesteps, zero_terminal_snr=zero_terminal_snr)

    @property
    def null_label(self) -> int:
        return self.hparams.num_classes

    # --- training ---------------------------------------------------------------------------

    def _loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        x0 = batch["image"]
        t = torch.randint(
            0, self.hparams.num_train_timesteps, (len(x0),), device=x0.device, generator=generator
        )
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        label = None
        if self.conditional:
            label = batch["label"]
            if self.training:
                label = drop_condition(label, self.hparams.label_dropout, self.null_label)
        out = self.unet(q_sample(x0, t, noise, self.schedule), t, label)
        return diffusion_loss(
            out,
            x0,
            noise,
            t,
            self.schedule,
            prediction=self.hparams.prediction,
            min_snr_gamma=self.hparams.min_snr_gamma,
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # timesteps and noise from a generator seeded per batch: comparable across validations,
        # and no draw from the global generator (which exact resumption relies on)
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss = self._loss(batch, generator)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["image"]))

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return adamw_with_warmup(self.parameters(), hp.lr, hp.weight_decay, hp.warmup_steps)

    # --- sampling ---------------------------------------------------------------------------

    def _labels(self, condition: Any, n: int) -> torch.Tensor | None:
        if condition is None:
            return None
        if not self.conditional:
            raise ValueError("this ddpm is unconditional (trained without labels): it takes no --label")
        labels = torch.as_tensor(condition, dtype=torch.long, device=self.device).reshape(-1)
        if len(labels) == 1:
            labels = labels.expand(n)
        if len(labels) != n:
            raise ValueError(f"got {len(labels)} labels for {n} samples")
        if labels.min() < 0 or labels.max() >= self.hparams.num_classes:
            raise ValueError(
                f"labels must lie in 0..{self.hparams.num_classes - 1}, got {labels.tolist()[:8]}"
            )
        return labels

    def generate(
        self,
        n: int,
        *,
        condition: Any = None,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        eta: float = 0.0,
        init: torch.Tensor | None = None,
        strength: float = 1.0,
        mask: torch.Tensor | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """`n` images in [0, 1]. `condition`: class labels (one for all, or n); `init` (n or 1, C, H, W)
        in [0, 1] with `strength` for img2img; `mask` (1 = regenerate) with `init` for inpainting."""
        sampler = sampler or self.hparams.sampler
        check_options(sampler=sampler)
        steps = steps or self.hparams.sampling_steps
        guidance = self.hparams.guidance if guidance is None else guidance
        labels = self._labels(condition, n)
        shape = (n, self.hparams.in_channels, self.hparams.image_size, self.hparams.image_size)

        if labels is not None and guidance != 1.0:
            uncond = torch.full_like(labels, self.null_label)
            denoiser = classifier_free_guidance(lambda x, t, c: self.unet(x, t, c), labels, uncond, guidance)
        else:
            denoiser = lambda x, t: self.unet(x, t, labels)  # noqa: E731 - a denoiser is a callable

        if init is not None:
            init = (init.to(self.device, torch.float32) * 2 - 1).expand(shape)
        if mask is not None:
            if init is None:
                raise ValueError("inpainting needs the image to keep: pass init with the mask")
            mask = mask.to(self.device, torch.float32)
        images = run_sampler(
            denoiser,
            shape=shape,
            schedule=self.schedule,
            sampler=sampler,
            steps=steps,
            prediction=self.hparams.prediction,
            generator=generator,
            device=self.device,
            eta=eta,
            init=init if mask is None else (init if strength < 1.0 else None),
            strength=strength,
            mask=mask,
            known=init if mask is not None else None,
            progress=progress,
        )
        return ((images + 1) / 2).clamp(0, 1)

    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        condition = torch.arange(n) % self.hparams.num_classes if self.conditional else None
        return {"samples": self.generate(n, condition=condition, generator=generator)}

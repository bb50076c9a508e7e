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

from zoo.conditioning import class_labels
from zoo.diffusion import (
    NoiseSchedule,
    check_options,
    diffusion_loss,
    drop_condition,
    elbo_bits_per_dim,
    guided_denoiser,
    q_sample,
    sampling_options,
)
from zoo.diffusion import sample as run_sampler
from zoo.module import GenerativeModule, adamw_with_warmup, inference
from zoo.nn.unet import UNet


class DDPM(GenerativeModule):
    """Denoising diffusion on images; see the module docstring.

    Args:
        in_channels: image channels (1 grey, 3 RGB); zoo.fit links it to data.channels.
        image_size: image side in pixels, divisible by 2**(len(channel_mults) - 1); zoo.fit links it to data.image_size.
        num_classes: label classes, 0 for unlabelled data; zoo.fit sets it from the datamodule.
        class_conditional: condition on the labels when num_classes > 0; false: unconditional on any data.
        base_channels: U-Net width at the first resolution level (the timestep embedding is 4x it).
        channel_mults: U-Net width of each resolution level, times base_channels; each level halves the size.
        num_res_blocks: ResBlocks per U-Net level on the way down (one more on the way up).
        attention_levels: U-Net levels (indices into channel_mults) with self-attention; the middle has it too.
        num_heads: U-Net attention heads; must divide the widths of the attention levels and the deepest.
        dropout: dropout probability inside the U-Net's ResBlocks.
        schedule: noise schedule: linear, scaled_linear or cosine.
        num_train_timesteps: diffusion steps T of the noise schedule.
        zero_terminal_snr: rescale the schedule so its last timestep is pure noise (SNR 0, Lin et al. 2024).
        prediction: what the U-Net predicts: epsilon (the noise), v_prediction (v) or sample (x0).
        min_snr_gamma: weight the loss by min(SNR, gamma) (Hang et al. 2023), e.g. 5; null: unweighted.
        label_dropout: probability a training label is replaced by the null label (for classifier-free guidance).
        lr: AdamW learning rate, reached at the end of the warm-up.
        weight_decay: AdamW weight decay, on every parameter.
        warmup_steps: optimizer steps of linear learning-rate warm-up.
        sampler: sampler of `generate` unless given: ddpm, ddim, dpmpp_2m, euler, euler_ancestral or heun.
        sampling_steps: sampling steps of `generate` unless given.
        guidance: classifier-free guidance scale of `generate` unless given (1: the conditional model alone).
    """

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

    @inference
    def bits_per_dim(self, images: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Negative ELBO in bits per dimension (B,) of images in [0, 1] read as 8-bit pixels (Ho et al. 2020,
        `zoo.diffusion.elbo_bits_per_dim`): an upper bound on -log2 p(u) / D, T network calls. A
        class-conditional model is scored with its null label: the unconditional model label dropout trained."""
        x0 = (images.to(self.device, torch.float32) * 255).round() / 255 * 2 - 1
        label = torch.full((len(x0),), self.null_label, device=self.device) if self.conditional else None
        return elbo_bits_per_dim(
            lambda x, t: self.unet(x, t, label),
            x0,
            self.schedule,
            self.hparams.prediction,
            generator=generator,
        )

    # --- sampling ---------------------------------------------------------------------------

    def _labels(self, condition: Any, n: int) -> torch.Tensor | None:
        classes = self.hparams.num_classes if self.conditional else 0
        return class_labels(condition, n, classes, family="ddpm", device=self.device)

    @inference
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
        options = sampling_options(
            self.hparams, self.schedule, self.device, sampler=sampler, steps=steps, generator=generator,
            eta=eta, progress=progress,
        )  # fmt: skip
        guidance = self.hparams.guidance if guidance is None else guidance
        labels = self._labels(condition, n)
        shape = (n, self.hparams.in_channels, self.hparams.image_size, self.hparams.image_size)
        uncond = None if labels is None else torch.full_like(labels, self.null_label)
        denoiser = guided_denoiser(self.unet, labels, uncond, guidance)

        if init is not None:
            init = (init.to(self.device, torch.float32) * 2 - 1).expand(shape)
        if mask is not None:
            if init is None:
                raise ValueError("inpainting needs the image to keep: pass init with the mask")
            mask = mask.to(self.device, torch.float32)
        images = run_sampler(
            denoiser,
            shape=shape,
            init=init if mask is None else (init if strength < 1.0 else None),
            strength=strength,
            mask=mask,
            known=init if mask is not None else None,
            **options,
        )
        return ((images + 1) / 2).clamp(0, 1)

    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        condition = torch.arange(n) % self.hparams.num_classes if self.conditional else None
        return {"samples": self.generate(n, condition=condition, generator=generator)}

"""`flow_matching`: pixel-space flow matching and rectified flow (Lipman et al. 2023; Liu et al. 2022).

A network v(x_t, t) regresses the velocity of a probability path from noise (t = 0) to data (t = 1), torchcfm's
convention (`zoo.diffusion.flow`): the straight path x_t = t x1 + (1 - t) x0 with target x1 - x0
(`path: rectified`), the same with minibatch optimal-transport pairs (`ot`, OT-CFM), or the variance-preserving
path (`vp`). Training times are uniform, logit-normal (SD3) or mode-sampled, optionally shifted. Sampling
integrates dx/dt = v from noise with an ODE sampler of `zoo.diffusion.FLOW_SAMPLERS` (euler, heun, midpoint,
rk4, dopri5). With labels (`num_classes` from the datamodule) the model is class-conditional, trained with
label dropout, and samples with classifier-free guidance on the velocity. The backbone is the diffusion
U-Net (`unet`) or a DiT (`dit`, `zoo.nn.dit`); both see the time as t * 1000, the scale of their timestep
embeddings.

    python -m zoo.fit --model flow_matching                               # class-conditional, on digits
    python -m zoo.sample --ckpt runs/flow_matching/<run>/checkpoints/last.ckpt --label 3 --sampler euler --steps 8
"""

from __future__ import annotations

from typing import Any

import torch

from zoo.conditioning import class_labels
from zoo.diffusion import guided_denoiser
from zoo.diffusion.flow import PATHS, TIME_SAMPLERS, conditional_flow_matching_loss
from zoo.diffusion.flow_samplers import FLOW_SAMPLERS, sample_flow
from zoo.module import GenerativeModule, adamw_with_warmup, inference
from zoo.nn.dit import DiT
from zoo.nn.unet import UNet

BACKBONES = ("unet", "dit")
PATH_NAMES = ("rectified", "ot", "vp")
TIME_SCALE = 1000.0  # flow time in [0, 1] -> the 0..1000 scale of the backbones' timestep embeddings


class FlowMatching(GenerativeModule):
    """Flow matching on images; see the module docstring.

    Args:
        in_channels: image channels (1 grey, 3 RGB); zoo.fit links it to data.channels.
        image_size: image side in pixels; zoo.fit links it to data.image_size.
        num_classes: label classes, 0 for unlabelled data; zoo.fit sets it from the datamodule.
        class_conditional: condition on the labels when num_classes > 0; false: unconditional on any data.
        backbone: the velocity network: unet (zoo.nn.unet) or dit (zoo.nn.dit).
        base_channels: U-Net width at the first resolution level.
        channel_mults: U-Net width of each resolution level, times base_channels; each level halves the size.
        num_res_blocks: U-Net ResBlocks per level on the way down (one more on the way up).
        attention_levels: U-Net levels (indices into channel_mults) with self-attention.
        num_heads: attention heads of the U-Net or the DiT.
        dropout: dropout probability inside the U-Net's ResBlocks.
        patch_size: DiT patch side in pixels; must divide image_size.
        dit_width: DiT hidden size (a multiple of num_heads).
        dit_depth: DiT blocks.
        path: probability path: rectified (straight), ot (straight, minibatch optimal-transport pairs) or vp.
        sigma_min: torchcfm's constant blur sigma around each conditional path (0: none).
        time_sampler: training times: uniform, logit_normal (SD3) or mode.
        time_shift: shift of the training times (SNR / shift^2; 1: none); sampling uses the same shift.
        label_dropout: probability a training label is replaced by the null label (for classifier-free guidance).
        lr: AdamW learning rate, reached at the end of the warm-up.
        weight_decay: AdamW weight decay, on every parameter.
        warmup_steps: optimizer steps of linear learning-rate warm-up.
        sampler: ODE sampler of `generate` unless given: euler, heun, midpoint, rk4 or dopri5.
        sampling_steps: sampler steps of `generate` unless given (dopri5 adapts its own).
        guidance: classifier-free guidance scale on the velocity unless given (1: the conditional model alone).
    """

    modality = "image"
    default_data = "digits"

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 16,
        num_classes: int = 0,
        class_conditional: bool = True,
        backbone: str = "unet",
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_levels: tuple[int, ...] = (2,),
        num_heads: int = 4,
        dropout: float = 0.0,
        patch_size: int = 2,
        dit_width: int = 128,
        dit_depth: int = 6,
        path: str = "rectified",
        sigma_min: float = 0.0,
        time_sampler: str = "uniform",
        time_shift: float = 1.0,
        label_dropout: float = 0.1,
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 200,
        sampler: str = "euler",
        sampling_steps: int = 8,
        guidance: float = 2.0,
    ) -> None:
        super().__init__()
        _check_choice("backbone", backbone, BACKBONES)
        _check_choice("path", path, PATH_NAMES)
        _check_choice("time_sampler", time_sampler, tuple(TIME_SAMPLERS))
        _check_choice("sampler", sampler, tuple(FLOW_SAMPLERS))
        if sampling_steps < 1:
            raise ValueError(f"sampling_steps must be at least 1, got {sampling_steps}")
        self.save_hyperparameters()
        self.conditional = class_conditional and num_classes > 0
        self.path = PATHS["rectified" if path == "ot" else path](sigma_min)
        classes = num_classes if self.conditional else 0
        if backbone == "unet":
            self.net = UNet(
                in_channels=in_channels,
                base_channels=base_channels,
                channel_mults=tuple(channel_mults),
                num_res_blocks=num_res_blocks,
                attention_levels=tuple(attention_levels),
                num_heads=num_heads,
                dropout=dropout,
                num_classes=classes,
            )
        else:
            self.net = DiT(
                image_size=image_size,
                in_channels=in_channels,
                patch_size=patch_size,
                hidden_size=dit_width,
                depth=dit_depth,
                num_heads=num_heads,
                num_classes=classes,
            )

    @property
    def null_label(self) -> int:
        return self.hparams.num_classes

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """The network's velocity at flow time t in [0, 1] (B,) or a scalar."""
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).expand(len(x_t))
        return self.net(x_t, t * TIME_SCALE, label)

    # --- training ---------------------------------------------------------------------------

    def _loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        hp = self.hparams
        label = batch["label"] if self.conditional else None
        return conditional_flow_matching_loss(
            self.velocity,
            batch["image"],
            self.path,
            condition=label,
            condition_dropout=hp.label_dropout if (self.training and label is not None) else 0.0,
            null_condition=self.null_label,
            ot_pairing=hp.path == "ot",
            time_sampler=hp.time_sampler,
            shift=hp.time_shift,
            generator=generator,
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # times and noise from a generator seeded per batch: comparable across validations, and no draw
        # from the global generator (which exact resumption relies on)
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss = self._loss(batch, generator)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["image"]))

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return adamw_with_warmup(self.parameters(), hp.lr, hp.weight_decay, hp.warmup_steps)

    # --- sampling ---------------------------------------------------------------------------

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
        progress: bool = False,
    ) -> torch.Tensor:
        """`n` images in [0, 1]. `condition`: class labels (one for all, or n); `sampler` and `steps` of
        the ODE solver (dopri5 ignores `steps`); `guidance` scales the velocity's conditional part."""
        hp = self.hparams
        sampler = hp.sampler if sampler is None else sampler
        steps = hp.sampling_steps if steps is None else steps
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        guidance = hp.guidance if guidance is None else guidance
        labels = class_labels(
            condition,
            n,
            hp.num_classes if self.conditional else 0,
            family="flow_matching",
            device=self.device,
        )
        uncond = None if labels is None else torch.full_like(labels, self.null_label)
        velocity = guided_denoiser(self.velocity, labels, uncond, guidance)
        shape = (n, hp.in_channels, hp.image_size, hp.image_size)
        # the sampling grid shifted as the training times were: by the path's own SNR shift
        grid = self.path.shift_time(torch.linspace(0, 1, steps + 1, dtype=torch.float64), hp.time_shift)
        images = sample_flow(
            velocity, shape, sampler=sampler, steps=steps, times=grid, generator=generator,
            device=self.device, progress=progress,
        )  # fmt: skip
        return ((images + 1) / 2).clamp(0, 1)

    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        condition = torch.arange(n) % self.hparams.num_classes if self.conditional else None
        return {"samples": self.generate(n, condition=condition, generator=generator)}


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")

"""`sr_diffusion`: super-resolution by diffusion, the later stages of a cascade (SR3, Saharia et al. 2021;
cascaded diffusion, Ho et al. 2022; Imagen, Saharia et al. 2022).

A pixel diffusion model at the high resolution `image_size` whose U-Net (`zoo.nn.unet`) sees, beside the
noisy image x_t, the low-resolution image (`low_resolution` px) upsampled to `image_size` (bicubic or
bilinear) as more input channels: SR3's conditioning by concatenation. The low-resolution image is made
from each training image by area averaging, which for the box-filtered `shapes` renders is what drawing
the scene at the low size gives.

Noise-conditioning augmentation (Ho et al. 2022, "Cascaded diffusion models", sec. 4.1, "Gaussian
conditioning augmentation"; Imagen sec. 2.5): in training the upsampled conditioning image c is replaced by
a forward-diffusion draw at a random level s ~ U(0, max_noise_level),

    c_s = sqrt(abar(s)) c + sqrt(1 - abar(s)) eps,   abar(s) = f(s) / f(0),  f(s) = cos^2((s + 0.008) / 1.008 * pi / 2)

(the continuous cosine schedule of Nichol & Dhariwal, s in [0, 1]: s = 0 is the clean image, s = 1 pure
noise; the noise is drawn at the high resolution after upsampling, as imagen-pytorch does), and the model
is told s: its sinusoidal embedding (of s * 1000, the timesteps' scale) goes through a small MLP and is
added to the timestep embedding (the U-Net's `pooled` input). The model so learns not to trust the
conditioning image's fine detail, which a base model's samples get wrong in ways real low-resolution
images do not. At sampling the level is fixed (`noise_level`, default 0.2; `--noise-level` of zoo.sample),
one noise draw for all steps; every `generate` records it in `last_sampling`.

`generate(n, condition=LOW)` upscales LOW, (n or 1, C, low_resolution, low_resolution) in [0, 1] (the
range `generate` returns, so a base model's output feeds it unchanged; a tensor with values below 0 is
refused, it is likely in [-1, 1]); it returns (n, C, image_size, image_size) in [0, 1]. Without a
condition it upscales low-resolution versions of training images it keeps (`bank_size` of them, taken
from the first training batches and saved in the checkpoint), so `zoo.sample --ckpt SR.ckpt` shows what the
model does; an untrained model without a condition raises an error asking for one.

    python -m zoo.fit --model sr_diffusion                       # 16 -> 32 on shapes
    python -m zoo.fit --model sr_diffusion --recipe 32to64       # 32 -> 64
    python -m zoo.sample --ckpt runs/sr_diffusion/<run>/checkpoints/last.ckpt --init-image low.png --out up.png
    python -m zoo.sample --ckpt BASE.ckpt --cascade SR.ckpt --prompt "a red circle" --num 16 --out cascade/
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.diffusion import NoiseSchedule, check_options, diffusion_loss, q_sample, sampling_options
from zoo.diffusion import sample as run_sampler
from zoo.diffusion.samplers import randn
from zoo.module import GenerativeModule, adamw_with_warmup, check_choice, inference
from zoo.nn.embeddings import sinusoidal_embedding
from zoo.nn.unet import UNet

UPSAMPLE_MODES = ("bicubic", "bilinear")
AUGMENTATION_OFFSET = 0.008  # Nichol & Dhariwal's s, which keeps abar's slope finite at 0
LEVEL_SCALE = 1000.0  # levels are embedded on the timesteps' scale, 0..1000


def augmentation_alpha_bar(level: torch.Tensor) -> torch.Tensor:
    """abar(s) of the conditioning augmentation: the continuous cosine schedule, f(s) / f(0) with
    f(s) = cos^2((s + 0.008) / 1.008 * pi / 2); 1 at s = 0, 0 at s = 1. Computed in float64."""
    offset = AUGMENTATION_OFFSET
    f0 = math.cos(offset / (1 + offset) * math.pi / 2) ** 2
    ab = torch.cos((level.double() + offset) / (1 + offset) * math.pi / 2) ** 2 / f0
    return ab.clamp(0.0, 1.0).to(level.dtype)


def augment_condition(condition: torch.Tensor, level: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """sqrt(abar(s)) c + sqrt(1 - abar(s)) eps per image: the conditioning image at augmentation level s (B,)."""
    ab = augmentation_alpha_bar(level).reshape(-1, *([1] * (condition.ndim - 1)))
    return ab.sqrt() * condition + (1 - ab).sqrt() * noise


def downsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images (B, C, H, W) to size x size by area averaging (an anti-aliasing box filter)."""
    return F.interpolate(images, size=(size, size), mode="area")


class SRDiffusion(GenerativeModule):
    """Super-resolution diffusion conditioned on an upsampled low-resolution image; see the module docstring.

    Args:
        in_channels: image channels (1 grey, 3 RGB); zoo.fit links it to data.channels.
        image_size: the high (output) resolution in pixels; zoo.fit links it to data.image_size.
        low_resolution: the low (input) resolution in pixels, below image_size.
        upsample: how the low-resolution image is brought to image_size for the U-Net: bicubic or bilinear.
        max_noise_level: conditioning augmentation in training: levels s ~ U(0, max_noise_level), s in [0, 1].
        noise_level: the augmentation level of `generate` unless given (Imagen's 0.1-0.3 range).
        bank_size: low-resolution training images kept for `generate` without a condition.
        base_channels: U-Net width at the first resolution level (the timestep embedding is 4x it).
        channel_mults: U-Net width of each resolution level, times base_channels; each level halves the size.
        num_res_blocks: ResBlocks per U-Net level on the way down (one more on the way up).
        attention_levels: U-Net levels (indices into channel_mults) with self-attention; the middle has it too.
        num_heads: U-Net attention heads; must divide the widths of the attention levels and the deepest.
        dropout: dropout probability inside the U-Net's ResBlocks.
        schedule: noise schedule of the high-resolution diffusion: linear, scaled_linear or cosine.
        num_train_timesteps: diffusion steps T of the noise schedule.
        prediction: what the U-Net predicts: epsilon, v_prediction (Imagen's choice for its SR stages) or sample.
        min_snr_gamma: weight the loss by min(SNR, gamma) (Hang et al. 2023), e.g. 5; null: unweighted.
        lr: AdamW learning rate, reached at the end of the warm-up.
        weight_decay: AdamW weight decay, on every parameter.
        warmup_steps: optimizer steps of linear learning-rate warm-up.
        sampler: sampler of `generate` unless given: ddpm, ddim, dpmpp_2m, euler, euler_ancestral or heun.
        sampling_steps: sampling steps of `generate` unless given.
    """

    modality = "image"
    default_data = "shapes"

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        low_resolution: int = 16,
        upsample: str = "bicubic",
        max_noise_level: float = 0.5,
        noise_level: float = 0.2,
        bank_size: int = 64,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_levels: tuple[int, ...] = (),
        num_heads: int = 4,
        dropout: float = 0.0,
        schedule: str = "cosine",
        num_train_timesteps: int = 1000,
        prediction: str = "v_prediction",
        min_snr_gamma: float | None = None,
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 200,
        sampler: str = "dpmpp_2m",
        sampling_steps: int = 20,
    ) -> None:
        super().__init__()
        check_options(prediction=prediction, sampler=sampler)
        check_choice("upsample", upsample, UPSAMPLE_MODES)
        self._check_sizes(image_size, low_resolution, channel_mults)
        for name, level in (("max_noise_level", max_noise_level), ("noise_level", noise_level)):
            if not 0.0 <= level <= 1.0:
                raise ValueError(f"{name} must be in [0, 1] (0 clean, 1 pure noise), got {level}")
        self.save_hyperparameters()
        embed_dim = 4 * base_channels
        self.unet = UNet(
            in_channels=2 * in_channels,  # x_t and the upsampled, augmented low-resolution image
            out_channels=in_channels,
            base_channels=base_channels,
            channel_mults=tuple(channel_mults),
            num_res_blocks=num_res_blocks,
            attention_levels=tuple(attention_levels),
            num_heads=num_heads,
            dropout=dropout,
            pooled_dim=embed_dim,  # the augmentation level's embedding, added to the timestep's
        )
        # the level's sinusoids -> Linear -> SiLU here, then the U-Net's pooled projection: the timestep MLP's shape
        self.level_mlp = nn.Sequential(nn.Linear(base_channels, embed_dim), nn.SiLU())
        self.schedule = NoiseSchedule.make(schedule, num_train_timesteps)
        self.register_buffer("bank", torch.zeros(bank_size, in_channels, low_resolution, low_resolution))
        self.register_buffer("bank_count", torch.zeros((), dtype=torch.long))  # slots filled so far
        self.last_sampling: dict[str, Any] = {}

    @staticmethod
    def _check_sizes(image_size: int, low_resolution: int, channel_mults: tuple[int, ...]) -> None:
        if not 0 < low_resolution < image_size:
            raise ValueError(
                f"low_resolution ({low_resolution}) must be positive and below image_size ({image_size}): "
                "this model upscales"
            )
        if image_size % 2 ** (len(channel_mults) - 1):
            raise ValueError(
                f"image_size {image_size} must be divisible by 2**{len(channel_mults) - 1} (channel_mults {channel_mults})"
            )

    # --- the conditioning --------------------------------------------------------------------------

    def level_embedding(self, level: torch.Tensor) -> torch.Tensor:
        """What the U-Net adds (through its pooled projection) to the timestep embedding for levels s (B,)."""
        return self.level_mlp(sinusoidal_embedding(level * LEVEL_SCALE, self.hparams.base_channels))

    def upsample(self, low: torch.Tensor) -> torch.Tensor:
        """Low-resolution images in [-1, 1] at image_size (bicubic overshoot clamped back to [-1, 1])."""
        size = self.hparams.image_size
        mode = self.hparams.upsample
        return F.interpolate(low, size=(size, size), mode=mode, align_corners=False).clamp(-1, 1)

    def denoise(
        self, x_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor, level: torch.Tensor
    ) -> torch.Tensor:
        """The U-Net's output for x_t at timesteps t, given the (augmented) upsampled condition at levels s."""
        return self.unet(torch.cat([x_t, condition], dim=1), t, pooled=self.level_embedding(level))

    # --- training ---------------------------------------------------------------------------------

    def _loss(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The diffusion loss and the augmentation levels used. Draws, in this order: timesteps, the noise
        of x_t, the levels s ~ U(0, max_noise_level), the augmentation noise (a test replays them)."""
        x0 = batch["image"]
        hp, device = self.hparams, x0.device
        condition = self.upsample(downsample(x0, hp.low_resolution))
        t = torch.randint(0, hp.num_train_timesteps, (len(x0),), device=device, generator=generator)
        noise = torch.randn(x0.shape, device=device, generator=generator)
        level = torch.rand(len(x0), device=device, generator=generator) * hp.max_noise_level
        augmented = augment_condition(
            condition, level, torch.randn(condition.shape, device=device, generator=generator)
        )
        out = self.denoise(q_sample(x0, t, noise, self.schedule), t, augmented, level)
        loss = diffusion_loss(
            out, x0, noise, t, self.schedule, prediction=hp.prediction, min_snr_gamma=hp.min_snr_gamma
        )
        return loss, level

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if int(self.bank_count) < len(self.bank):
            self._fill_bank(batch["image"])
        loss, level = self._loss(batch)
        n = len(batch["image"])
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/noise_level", level.mean(), batch_size=n)  # the augmentation is recorded
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # draws from a generator seeded per batch: comparable across validations, and none from the global one
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss, _ = self._loss(batch, generator)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["image"]))

    def _fill_bank(self, images: torch.Tensor) -> None:
        """Keep low-resolution versions of the first `bank_size` training images (in [0, 1]) for `generate(n)`,
        batch after batch until the bank is full."""
        start = int(self.bank_count)
        take = min(len(self.bank) - start, len(images))
        low = (downsample(images[:take].detach(), self.hparams.low_resolution) + 1) / 2
        self.bank[start : start + take] = low.clamp(0, 1)
        self.bank_count.fill_(start + take)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return adamw_with_warmup(self.parameters(), hp.lr, hp.weight_decay, hp.warmup_steps)

    # --- sampling -----------------------------------------------------------------------------------

    def _low_res(self, condition: Any, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """The n low-resolution images in [-1, 1]: the condition checked, or n drawn from the bank."""
        hp = self.hparams
        shape = (hp.in_channels, hp.low_resolution, hp.low_resolution)
        if condition is None:
            if int(self.bank_count) == 0:
                raise ValueError(
                    "no low-resolution image to upscale: pass condition= (n, C, h, w) in [0, 1] (zoo.sample: "
                    "--init-image LOW.png, or use this model as a --cascade stage); an untrained model keeps none"
                )
            draw_device = generator.device if generator is not None else self.bank.device
            index = torch.randint(0, int(self.bank_count), (n,), generator=generator, device=draw_device)
            condition = self.bank[index.to(self.bank.device)]
        if not torch.is_tensor(condition) or not condition.is_floating_point():
            raise ValueError(
                f"sr_diffusion is conditioned on low-resolution images: a float tensor (n, {shape[0]}, "
                f"{shape[1]}, {shape[2]}) in [0, 1], got {type(condition).__name__}"
            )
        if condition.ndim == 3:
            condition = condition[None]
        if tuple(condition.shape[1:]) != shape or len(condition) not in (1, n):
            raise ValueError(
                f"this model upscales {shape[0]}-channel {shape[1]}x{shape[2]} images to {hp.image_size}x{hp.image_size}; "
                f"got a condition of shape {tuple(condition.shape)} for {n} samples (give 1 or {n} images)"
            )
        if float(condition.min()) < -1e-3 or float(condition.max()) > 1 + 1e-3:
            raise ValueError(
                f"low-resolution images must be in [0, 1] (as generate() returns them), got values in "
                f"[{float(condition.min()):.2f}, {float(condition.max()):.2f}]; map [-1, 1] images with (x + 1) / 2"
            )
        return (condition.to(self.device, torch.float32) * 2 - 1).expand(n, *shape)

    @inference
    def generate(
        self,
        n: int,
        *,
        condition: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float = 0.0,
        noise_level: float | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """`n` images (n, C, image_size, image_size) in [0, 1] upscaled from `condition` (n or 1, C,
        low_resolution, low_resolution) in [0, 1], or from n low-resolution training images of the bank.
        `noise_level` (default the hyper-parameter) augments the condition as in training; the generator
        draws the bank indices (no condition), then the augmentation noise, then the sampler's noise. The
        level, sampler and steps used are recorded in `self.last_sampling`."""
        hp = self.hparams
        level_value = hp.noise_level if noise_level is None else float(noise_level)
        if not 0.0 <= level_value <= 1.0:
            raise ValueError(f"noise_level must be in [0, 1] (0 clean, 1 pure noise), got {level_value}")
        options = sampling_options(
            hp, self.schedule, self.device, sampler=sampler, steps=steps, generator=generator, eta=eta,
            progress=progress,
        )  # fmt: skip
        low = self._low_res(condition, n, generator)
        condition_up = self.upsample(low)
        level = torch.full((n,), level_value, device=self.device)
        noise = randn(tuple(condition_up.shape), generator, torch.float32, self.device)
        augmented = augment_condition(condition_up, level, noise)
        shape = (n, hp.in_channels, hp.image_size, hp.image_size)
        images = run_sampler(
            lambda x, t: self.denoise(x, t, augmented, level), shape=shape, clip_sample=True, **options
        )
        self.last_sampling = {
            "noise_level": level_value,
            "sampler": options["sampler"],
            "steps": options["steps"],
            "low_resolution": hp.low_resolution,
            "image_size": hp.image_size,
        }
        return ((images + 1) / 2).clamp(0, 1)

    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """The low-resolution inputs (nearest-neighbour enlarged), their upscaling and, with a batch, the truth."""
        hp = self.hparams
        if batch is not None:
            truth = (batch["image"][:n].to(self.device) + 1) / 2
            low = downsample(truth, hp.low_resolution)
        elif int(self.bank_count) > 0:
            low, truth = self.bank[: min(n, int(self.bank_count))], None
        else:
            return {}
        shown = {
            "low_res": F.interpolate(low, size=(hp.image_size, hp.image_size), mode="nearest"),
            "samples": self.generate(len(low), condition=low, generator=generator),
        }
        return shown | ({"truth": truth} if truth is not None else {})

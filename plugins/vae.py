"""`vae`: a convolutional variational autoencoder (Kingma & Welling, 2014).

Encoder and decoder are ResNet-style convolution stacks (the shape of Stable Diffusion's
autoencoder, scaled down for a CPU). The encoder outputs a diagonal Gaussian posterior over a
spatial latent of `latent_channels` x (image_size / downsample_factor)^2; training minimises

    loss = reconstruction + beta * KL(q(z|x) || N(0, I)),

both summed over an image's pixels / latent elements and divided by its number of pixels, so
`beta` reads the same at every resolution (beta = 1 with the L2 loss is the usual ELBO up to the
Gaussian likelihood's scale; small beta gives sharp reconstructions for latent diffusion).

`color_augment` recolours each training image at random with that probability (hue turned anywhere on the
wheel, saturation and value scaled down): an autoencoder of a few colours' scenes otherwise learns only those
colours, and a latent model on it cannot draw any other (the `ldm` first stage of zoo's recipe reconstructed
pink, cyan and brown as purple, blue/green and orange: benchmarks/RESULTS.md, issue 18). Validation is not
recoloured.

Later families use it as a first stage: `encode_latents(x)` gives latents scaled by
`latent_scale` (1 / the standard deviation of posterior means, measured on validation data at
every validation), `decode_latents(z)` inverts that. `generate(n)` decodes draws from the prior.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from zoo.diffusion.training import discretized_gaussian_log_likelihood
from zoo.module import GenerativeModule, adamw_with_warmup, inference
from zoo.nn.layers import group_norm


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            group_norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1),
            group_norm(out_channels), nn.SiLU(), nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )  # fmt: skip
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.block(x)


def _widths(base_channels: int, levels: int) -> list[int]:
    # channel width per resolution level: base, 2*base, then capped at 4*base
    return [base_channels * min(2**i, 4) for i in range(levels + 1)]


class Encoder(nn.Module):
    """ResBlocks at widths[level] on resolution size / 2**level, a strided conv between levels."""

    def __init__(
        self, in_channels: int, base_channels: int, levels: int, latent_channels: int, blocks: int
    ) -> None:
        super().__init__()
        widths = _widths(base_channels, levels)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        for level in range(levels):
            layers += [ResBlock(widths[level], widths[level]) for _ in range(blocks)]
            layers.append(nn.Conv2d(widths[level], widths[level + 1], 3, stride=2, padding=1))
        layers += [ResBlock(widths[-1], widths[-1]), group_norm(widths[-1]), nn.SiLU(),
                   nn.Conv2d(widths[-1], 2 * latent_channels, 3, padding=1)]  # fmt: skip
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """The encoder mirrored: nearest-neighbour upsampling and a conv between levels."""

    def __init__(
        self, out_channels: int, base_channels: int, levels: int, latent_channels: int, blocks: int
    ) -> None:
        super().__init__()
        widths = _widths(base_channels, levels)
        layers: list[nn.Module] = [
            nn.Conv2d(latent_channels, widths[-1], 3, padding=1),
            ResBlock(widths[-1], widths[-1]),
        ]
        for level in reversed(range(levels)):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(widths[level + 1], widths[level], 3, padding=1),
            ]
            layers += [ResBlock(widths[level], widths[level]) for _ in range(blocks)]
        layers += [group_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per element (closed form)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


def discretized_laplace_log_likelihood(x: torch.Tensor, mean: torch.Tensor, scale: float) -> torch.Tensor:
    """log P(u) of data x in [-1, 1] quantised to 256 levels (bins of width 2/255 around u * 2/255 - 1) under
    Laplace(mean, scale) integrated over each bin, the edge bins extended to -inf / +inf; elementwise, nats.
    Computed in log space on both sides of the mode, so a far bin gives its (very negative) log probability
    instead of log 0."""
    lo, hi = (x - mean - 1 / 255) / scale, (x - mean + 1 / 255) / scale  # the bin's edges, standardised
    log2 = math.log(2.0)

    def log_cdf(
        t: torch.Tensor,
    ) -> torch.Tensor:  # of the standard Laplace: e^t / 2 below 0, 1 - e^-t / 2 above
        return torch.where(t < 0, t - log2, torch.log1p(-0.5 * torch.exp(-t.abs())))

    straddles = (lo < 0) & (hi > 0)
    inside = torch.log1p(-0.5 * torch.exp(-lo.abs()) - 0.5 * torch.exp(-hi.abs()))
    one_side = -torch.minimum(lo.abs(), hi.abs()) - log2 + torch.log(-torch.expm1(-(hi - lo)))
    interior = torch.where(straddles, inside, one_side)
    return torch.where(x < -0.999, log_cdf(hi), torch.where(x > 0.999, log_cdf(-lo), interior))


class VAE(GenerativeModule):
    """Convolutional VAE; see the module docstring. `python -m zoo.fit --model vae`.

    Args:
        in_channels: image channels (1 grey, 3 RGB); zoo.fit links it to data.channels.
        image_size: image side in pixels, divisible by downsample_factor; zoo.fit links it to data.image_size.
        latent_channels: channels of the latent (the posterior is a diagonal Gaussian per element).
        downsample_factor: image side / latent side: 1, 2, 4, 8 or 16 (one resolution level per halving).
        base_channels: width at full resolution; doubled at each level down, at most 4x.
        blocks_per_level: ResBlocks per resolution level in the encoder and in the decoder (one more at the latent size).
        beta: KL weight: loss = reconstruction + beta * KL, both divided by the image's pixels; small: sharp reconstructions.
        reconstruction_loss: l1 or l2 (squared error), summed over an image's pixels and channels.
        color_augment: probability a training image is recoloured at random (`recolor`).
        lr: AdamW learning rate, reached at the end of the warm-up.
        weight_decay: AdamW weight decay, on every parameter.
        warmup_steps: optimizer steps of linear learning-rate warm-up.
    """

    modality = "image"
    default_data = "shapes"

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        latent_channels: int = 4,
        downsample_factor: int = 4,
        base_channels: int = 32,
        blocks_per_level: int = 1,
        beta: float = 0.01,
        reconstruction_loss: str = "l1",
        color_augment: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
    ) -> None:
        super().__init__()
        if downsample_factor not in (1, 2, 4, 8, 16):
            raise ValueError(f"downsample_factor must be a power of two up to 16, got {downsample_factor}")
        if image_size % downsample_factor:
            raise ValueError(
                f"image_size {image_size} is not divisible by downsample_factor {downsample_factor}"
            )
        if reconstruction_loss not in ("l1", "l2"):
            raise ValueError(f"reconstruction_loss must be 'l1' or 'l2', got {reconstruction_loss!r}")
        if not 0.0 <= color_augment <= 1.0:
            raise ValueError(f"color_augment is a probability, got {color_augment}")
        self.save_hyperparameters()
        levels = downsample_factor.bit_length() - 1
        self.encoder = Encoder(in_channels, base_channels, levels, latent_channels, blocks_per_level)
        self.decoder = Decoder(in_channels, base_channels, levels, latent_channels, blocks_per_level)
        self.latent_size = image_size // downsample_factor
        self.register_buffer("latent_scale", torch.ones(()))

    # --- the model ------------------------------------------------------------------------

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of images `x` in [-1, 1]."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (unclamped) from unscaled latents."""
        return self.decoder(z)

    def encode_latents(
        self, x: torch.Tensor, *, sample: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Latents for a latent-space model: a posterior draw (or its mean), times `latent_scale`."""
        mean, logvar = self.encode(x)
        if sample:
            mean = mean + (0.5 * logvar).exp() * torch.randn(
                mean.shape, generator=generator, device=mean.device
            )
        return mean * self.latent_scale

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z / self.latent_scale)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, logvar = self.encode(x)
        z = mean + (0.5 * logvar).exp() * torch.randn_like(mean)  # reparameterisation
        return self.decode(z), mean, logvar

    def losses(
        self, x: torch.Tensor, reconstruction: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        pixels = x[0].numel()
        if self.hparams.reconstruction_loss == "l1":
            rec = (reconstruction - x).abs().flatten(1).sum(1)
        else:
            rec = (reconstruction - x).pow(2).flatten(1).sum(1)
        kl = gaussian_kl(mean, logvar).flatten(1).sum(1)
        loss = (rec + self.hparams.beta * kl).mean() / pixels
        return {"loss": loss, "reconstruction": rec.mean() / pixels, "kl": kl.mean() / mean[0].numel()}

    # --- Lightning ------------------------------------------------------------------------

    def recolor(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], each (RGB) recoloured with probability `color_augment`: hue rotated uniformly,
        saturation times U(0.4, 1), value times U(0.5, 1) (kornia); see the module docstring. The
        draws come from torch's global generator, which zoo checkpoints: a resumed run recolours the same."""
        p = self.hparams.get("color_augment", 0.0)
        if p == 0 or x.shape[1] != 3:
            return x
        from kornia.enhance import adjust_hue, adjust_saturation

        n = len(x)
        chosen = (torch.rand(n, device=x.device) < p).to(x)[:, None, None, None]
        hue = (torch.rand(n, device=x.device) * 2 - 1) * torch.pi
        saturation = 0.4 + 0.6 * torch.rand(n, device=x.device)
        value = 0.5 + 0.5 * torch.rand(n, device=x.device)[:, None, None, None]
        pixels = (x + 1) / 2
        recolored = adjust_saturation(adjust_hue(pixels, hue), saturation).clamp(0, 1) * value
        return (chosen * recolored + (1 - chosen) * pixels) * 2 - 1

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x = self.recolor(batch["image"])
        reconstruction, mean, logvar = self(x)
        parts = self.losses(x, reconstruction, mean, logvar)
        self.log_dict({f"train/{k}": v for k, v in parts.items()}, prog_bar=True, batch_size=len(x))
        return parts["loss"]

    def on_validation_epoch_start(self) -> None:
        self._latent_moments = torch.zeros(3, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # Deterministic: the posterior mean is decoded, so validation draws no random numbers.
        x = batch["image"]
        mean, logvar = self.encode(x)
        reconstruction = self.decode(mean)
        parts = self.losses(x, reconstruction, mean, logvar)
        self.log("val/loss", parts["loss"], prog_bar=True, sync_dist=True, batch_size=len(x))
        self.log("val/kl", parts["kl"], sync_dist=True, batch_size=len(x))
        self.log(
            "val/l1",
            (reconstruction.clamp(-1, 1) - x).abs().mean(),
            prog_bar=True,
            sync_dist=True,
            batch_size=len(x),
        )
        self.log(
            "val/mse", (reconstruction.clamp(-1, 1) - x).pow(2).mean(), sync_dist=True, batch_size=len(x)
        )
        m = mean.double()
        self._latent_moments += torch.stack(
            [torch.tensor(m.numel(), device=m.device, dtype=m.dtype), m.sum(), m.pow(2).sum()]
        )

    def on_validation_epoch_end(self) -> None:
        moments = self.all_gather(self._latent_moments)
        moments = moments.reshape(-1, 3).sum(0) if moments.ndim > 1 else moments
        count, total, squares = moments.tolist()
        if count > 1 and not self.trainer.sanity_checking:
            variance = squares / count - (total / count) ** 2
            self.latent_scale.fill_(1.0 / max(variance, 1e-12) ** 0.5)
            self.log("val/latent_scale", self.latent_scale, sync_dist=False, rank_zero_only=True)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return adamw_with_warmup(self.parameters(), hp.lr, hp.weight_decay, hp.warmup_steps)

    @inference
    def bits_per_dim(self, images: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Negative ELBO in bits per dimension (B,) of images in [0, 1] read as 8-bit pixels: an upper bound on
        -log2 p(u) / D (`zoo.evaluate --metrics bits_per_dim`), one posterior draw per image.

        The decoder likelihood is the one the training loss implies: loss = (rec + beta KL) / pixels is, up to
        the factor 1/b and a constant, the negative ELBO with a Laplace decoder of scale b = beta (l1) or a
        Gaussian of variance beta / 2 (l2), here discretised to the 256 pixel levels (edge bins open)."""
        beta = self.hparams.beta
        if beta <= 0:
            raise ValueError(
                "a vae trained with beta 0 has no likelihood: its loss implies a decoder of scale 0"
            )
        x = (images.to(self.device, torch.float32) * 255).round() / 255 * 2 - 1
        mean, logvar = self.encode(x)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        reconstruction = self.decode(mean + (0.5 * logvar).exp() * noise)
        if self.hparams.reconstruction_loss == "l1":
            log_px = discretized_laplace_log_likelihood(x, reconstruction, beta)
        else:
            log_scale = torch.full_like(reconstruction, 0.5 * math.log(beta / 2))
            log_px = discretized_gaussian_log_likelihood(x, reconstruction, log_scale)
        nats = -log_px.flatten(1).sum(1) + gaussian_kl(mean, logvar).flatten(1).sum(1)
        return nats / (x[0].numel() * math.log(2))

    # --- generation -----------------------------------------------------------------------

    @inference
    def generate(
        self,
        n: int,
        *,
        condition: Any = None,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Decode `n` draws from the prior N(0, temperature^2 I); images in [0, 1]."""
        if condition is not None:
            raise ValueError("vae is unconditional: it takes no prompt or label")
        shape = (n, self.hparams.latent_channels, self.latent_size, self.latent_size)
        z = temperature * torch.randn(shape, generator=generator, device=self.device)
        return ((self.decode(z) + 1) / 2).clamp(0, 1)

    @inference
    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        out = {"samples": self.generate(n, generator=generator)}
        if batch is not None and "image" in batch:
            x = batch["image"][: max(1, n // 2)]
            reconstruction = self.decode(self.encode(x)[0])
            pairs = torch.stack([x, reconstruction], dim=1).flatten(0, 1)  # original, reconstruction, ...
            out["reconstructions"] = ((pairs + 1) / 2).clamp(0, 1)
        return out

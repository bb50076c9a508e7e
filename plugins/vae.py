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

`perceptual_weight`, `adversarial_weight` and `discriminator_start` add Stable Diffusion's autoencoder
recipe (Rombach et al. 2022: KL-regularised, with LPIPS and a PatchGAN): a perceptual distance and, after
`discriminator_start` batches, a PatchGAN's loss under taming's adaptive weight (`zoo.autoencoding`, shared
with `vqgan`). Both are off by default: the recipe and `ldm`'s first stage train as before, with automatic
optimisation; with the adversarial term on, optimisation is manual and `trainer.max_steps` counts the
steps of both networks. Validation losses never include them, so they compare across settings.

Later families use it as a first stage: `encode_latents(x)` gives latents scaled by
`latent_scale` (1 / the standard deviation of posterior means, measured on validation data at
every validation), `decode_latents(z)` inverts that. `generate(n)` decodes draws from the prior.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from zoo.autoencoding import AutoencoderLoss, adversarial_training_step, autoencoder_optimizers, data_name
from zoo.diffusion.training import discretized_gaussian_log_likelihood
from zoo.module import GenerativeModule, inference
from zoo.nn.autoencoder import Decoder, Encoder


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
        perceptual_weight: weight of a perceptual distance in the loss (zoo.autoencoding); 0: off.
        perceptual_network: auto (zoo where the data has it, else none), zoo (zoo's classifier of the data) or lpips (VGG16).
        perceptual_weights: with lpips: the VGG16 weights file (else $ZOO_VGG16_WEIGHTS or the cache).
        adversarial_weight: weight of a PatchGAN term, times taming's adaptive weight; 0: off (automatic optimisation).
        discriminator_start: training batches before the discriminator starts.
        discriminator_channels: width of the PatchGAN's first layer.
        discriminator_layers: strided layers of the PatchGAN.
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
        perceptual_weight: float = 0.0,
        perceptual_network: str = "auto",
        perceptual_weights: str | None = None,
        adversarial_weight: float = 0.0,
        discriminator_start: int = 0,
        discriminator_channels: int = 64,
        discriminator_layers: int = 2,
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
        # empty with both options off: the state dict, and the optimisation, are then what they always were
        self.autoencoder_loss = AutoencoderLoss(
            in_channels, perceptual_weight=perceptual_weight, perceptual_network=perceptual_network,
            perceptual_weights=perceptual_weights, adversarial_weight=adversarial_weight,
            discriminator_start=discriminator_start, discriminator_channels=discriminator_channels,
            discriminator_layers=discriminator_layers,
        )  # fmt: skip
        self.automatic_optimization = not self.autoencoder_loss.adversarial

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

    def setup(self, stage: str) -> None:
        if stage == "fit":
            hp = self.hparams
            self.autoencoder_loss.build_perceptual(data_name(self), hp.image_size, hp.in_channels)

    def training_losses(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstructions of x and the loss parts, the perceptual term included when it is on; "nll" is
        what taming's adaptive weight compares the adversarial gradient with (zoo.autoencoding)."""
        reconstruction, mean, logvar = self(x)
        parts = self.losses(x, reconstruction, mean, logvar)
        parts["nll"] = parts["reconstruction"]
        weight = self.hparams.get("perceptual_weight", 0.0)
        if weight > 0:
            perceptual = self.autoencoder_loss.perceptual(x, reconstruction)
            parts.update(perceptual=perceptual, nll=parts["nll"] + weight * perceptual)
            parts["loss"] = parts["loss"] + weight * perceptual
        return reconstruction, parts

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        x = self.recolor(batch["image"])
        if self.automatic_optimization:
            parts = self.training_losses(x)[1]
        else:
            loss = self.autoencoder_loss
            parts = adversarial_training_step(self, x, loss, self.training_losses, self.decoder.last_layer)
        logged = {f"train/{k}": v for k, v in parts.items() if k != "nll"}
        self.log_dict(logged, prog_bar=True, batch_size=len(x))
        return parts["loss"] if self.automatic_optimization else None

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
        return autoencoder_optimizers(self, self.autoencoder_loss, hp.lr, hp.weight_decay, hp.warmup_steps)

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

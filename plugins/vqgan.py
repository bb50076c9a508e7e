"""`vqgan`: an image tokenizer, VQGAN (Esser et al. 2021, "Taming Transformers for High-Resolution Image
Synthesis"): a convolutional autoencoder whose latent is a grid of codes from a learned codebook.

    codes = model.encode_codes(images)        # (B, C, H, W) in [-1, 1] -> long (B, h, w), h = H / downsample_factor
    images = model.decode_codes(codes)        # -> (B, C, H, W) in [-1, 1]

Token generators (`maskgit`, `vq_transformer`) model these codes and decode them with `decode_codes`;
`codebook_size`, `code_grid` and the hyper-parameters `in_channels` and `image_size` tell them what the
tokenizer fits.

- Encoder and decoder: the `vae`'s blocks (`zoo.nn.autoencoder`), the encoder giving one vector per position.
- Quantiser (`zoo.tokens.VectorQuantizer`, on `vector-quantize-pytorch`): EMA codebook, k-means
  initialisation on the first batch, dead-code restart, straight-through gradients, commitment
  beta ||z - sg(e)||^2 on the encoder output; optionally factorised (`codebook_dim`) and l2-normalised
  (`cosine`) codes.
- Loss (`zoo.autoencoding`): reconstruction (L1 by default) + perceptual distance + commitment, and after
  `discriminator_start` batches a PatchGAN's hinge loss scaled by taming's adaptive weight. The
  perceptual network defaults to zoo's trained classifier of the data (LPIPS' VGG cannot be downloaded
  here; `--model.perceptual_network lpips --model.perceptual_weights VGG16.pth` uses the real one).
- Logged: `train/loss` and its parts, `val/loss` (reconstruction + commitment), `val/l1`, `val/mse`, and on
  validation images the fraction of codes used (`val/codebook_usage`) and the perplexity of the codes
  (`val/perplexity`, exp of their entropy: `codebook_size` when all are used equally).

`generate(n)` is what an image tokenizer alone can draw: every code i.i.d. from the codebook's measured
usage (the EMA code counts of training), decoded. It has the right colours and textures and no layout;
the token generators are the real samplers over these codes.
"""

from __future__ import annotations

from typing import Any

import torch

from zoo.autoencoding import AutoencoderLoss, adversarial_training_step, autoencoder_optimizers, data_name
from zoo.module import GenerativeModule, inference
from zoo.nn.autoencoder import Decoder, Encoder
from zoo.tokens import VectorQuantizer, code_usage


class VQGAN(GenerativeModule):
    """VQGAN image tokenizer; see the module docstring. `python -m zoo.fit --model vqgan`.

    Args:
        in_channels: image channels (1 grey, 3 RGB); zoo.fit links it to data.channels.
        image_size: image side in pixels, divisible by downsample_factor; zoo.fit links it to data.image_size.
        downsample_factor: image side / code grid side: 1, 2, 4, 8 or 16 (one resolution level per halving).
        base_channels: width at full resolution; doubled at each level down, at most 4x.
        blocks_per_level: ResBlocks per resolution level in the encoder and in the decoder.
        latent_channels: channels of the encoder's output and the decoder's input (the code vectors' size).
        codebook_size: number of codes.
        codebook_dim: size of the code space the lookup happens in; null: latent_channels; smaller: factorised.
        cosine: l2-normalised codes and features (cosine-similarity lookup).
        commitment_weight: beta of the commitment term beta ||z - sg(e)||^2 (mean over elements).
        decay: EMA decay of the codebook's counts and sums.
        dead_code_threshold: restart a code whose EMA count falls below this fraction of the mean count; 0: never.
        reconstruction_loss: l1 or l2 (mean absolute or squared error per pixel).
        perceptual_weight: weight of the perceptual distance (zoo's lies in [0, 4]: about 0.1; LPIPS: 1); 0: off.
        perceptual_network: auto (zoo where the data has it, else none), zoo (zoo's classifier of the data) or lpips (VGG16).
        perceptual_weights: with lpips: the VGG16 weights file (else $ZOO_VGG16_WEIGHTS or the cache).
        adversarial_weight: weight of the PatchGAN term, times the adaptive weight; 0: off (automatic optimisation).
        discriminator_start: training batches before the discriminator starts.
        discriminator_channels: width of the PatchGAN's first layer.
        discriminator_layers: strided layers of the PatchGAN.
        lr: learning rate of both optimisers (the autoencoder's reached at the end of the warm-up).
        weight_decay: AdamW weight decay of the autoencoder.
        warmup_steps: optimizer steps of linear learning-rate warm-up of the autoencoder.
    """

    modality = "image"
    default_data = "shapes"

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        downsample_factor: int = 4,
        base_channels: int = 32,
        blocks_per_level: int = 1,
        latent_channels: int = 32,
        codebook_size: int = 512,
        codebook_dim: int | None = None,
        cosine: bool = False,
        commitment_weight: float = 0.25,
        decay: float = 0.99,
        dead_code_threshold: float = 0.1,
        reconstruction_loss: str = "l1",
        perceptual_weight: float = 0.1,
        perceptual_network: str = "auto",
        perceptual_weights: str | None = None,
        adversarial_weight: float = 0.5,
        discriminator_start: int = 1000,
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
        self.save_hyperparameters()
        levels = downsample_factor.bit_length() - 1
        blocks = blocks_per_level
        self.encoder = Encoder(
            in_channels, base_channels, levels, latent_channels, blocks, double_latent=False
        )
        self.quantizer = VectorQuantizer(
            latent_channels, codebook_size, codebook_dim=codebook_dim, cosine=cosine, decay=decay,
            commitment_weight=commitment_weight, dead_code_threshold=dead_code_threshold,
        )  # fmt: skip
        self.decoder = Decoder(in_channels, base_channels, levels, latent_channels, blocks)
        self.autoencoder_loss = AutoencoderLoss(
            in_channels, perceptual_weight=perceptual_weight, perceptual_network=perceptual_network,
            perceptual_weights=perceptual_weights, adversarial_weight=adversarial_weight,
            discriminator_start=discriminator_start, discriminator_channels=discriminator_channels,
            discriminator_layers=discriminator_layers,
        )  # fmt: skip
        self.automatic_optimization = not self.autoencoder_loss.adversarial

    # --- the tokenizer interface ------------------------------------------------------------

    @property
    def codebook_size(self) -> int:
        return self.hparams.codebook_size

    @property
    def code_grid(self) -> tuple[int, int]:
        """(h, w) of the code grid of one image."""
        side = self.hparams.image_size // self.hparams.downsample_factor
        return side, side

    def _check_images(self, images: torch.Tensor) -> None:
        hp = self.hparams
        expected = (hp.in_channels, hp.image_size, hp.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"this vqgan tokenizes {hp.in_channels}-channel {hp.image_size}px images (B, {', '.join(map(str, expected))}), "
                f"got {tuple(images.shape)}: resize the images, or train a vqgan for this data "
                "(python -m zoo.fit --model vqgan --data ...)"
            )

    @torch.no_grad()
    def encode_codes(self, images: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) long of images (B, C, H, W) in [-1, 1]. Touches no codebook statistics."""
        self._check_images(images)
        return self.quantizer.codes_of(self.encoder(images.to(self.device)))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] from codes (B, h, w) long (differentiable in the decoder's weights)."""
        if tuple(codes.shape[1:]) != self.code_grid:
            raise ValueError(
                f"expected codes (B, {self.code_grid[0]}, {self.code_grid[1]}), got {tuple(codes.shape)}"
            )
        vectors = self.quantizer.decode_codes(codes.to(self.device))
        return self.decoder(vectors).clamp(-1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Reconstructions (unclamped) and the quantiser's output (codes, commitment) of images x."""
        quantized = self.quantizer(self.encoder(x))
        return self.decoder(quantized.quantized), quantized

    # --- training ---------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if stage == "fit":
            hp = self.hparams
            self.autoencoder_loss.build_perceptual(data_name(self), hp.image_size, hp.in_channels)

    def reconstruction_error(self, x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        difference = reconstruction - x
        return (
            difference.abs().mean() if self.hparams.reconstruction_loss == "l1" else difference.pow(2).mean()
        )

    def training_losses(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstructions of x and the non-adversarial loss parts (see zoo.autoencoding)."""
        reconstruction, quantized = self(x)
        rec = self.reconstruction_error(x, reconstruction)
        perceptual = self.autoencoder_loss.perceptual(x, reconstruction)
        nll = rec + self.hparams.perceptual_weight * perceptual
        counts = torch.bincount(quantized.codes.flatten(), minlength=self.codebook_size)
        perplexity = code_usage(counts)[1]
        parts = {
            "loss": nll + quantized.commitment, "nll": nll, "reconstruction": rec, "perceptual": perceptual,
            "commitment": quantized.commitment, "batch_perplexity": torch.tensor(perplexity, device=x.device),
        }  # fmt: skip
        return reconstruction, parts

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        x = batch["image"]
        if self.automatic_optimization:
            parts = self.training_losses(x)[1]
        else:
            parts = adversarial_training_step(
                self, x, self.autoencoder_loss, self.training_losses, self.decoder.last_layer
            )
        shown = ("loss", "reconstruction")
        others = {f"train/{k}": v for k, v in parts.items() if k not in (*shown, "nll")}
        self.log_dict({f"train/{k}": parts[k] for k in shown}, prog_bar=True, batch_size=len(x))
        self.log_dict(others, batch_size=len(x))
        return parts["loss"] if self.automatic_optimization else None

    def on_validation_epoch_start(self) -> None:
        self._code_counts = torch.zeros(self.codebook_size, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not self.quantizer.initialised:
            return  # Lightning's sanity check before the first batch: the codebook is still empty
        x = batch["image"]
        reconstruction, quantized = self(x)
        rec = self.reconstruction_error(x, reconstruction)
        n = len(x)
        self.log("val/loss", rec + quantized.commitment, prog_bar=True, sync_dist=True, batch_size=n)
        clamped = reconstruction.clamp(-1, 1)
        self.log("val/l1", (clamped - x).abs().mean(), prog_bar=True, sync_dist=True, batch_size=n)
        self.log("val/mse", (clamped - x).pow(2).mean(), sync_dist=True, batch_size=n)
        self.log("val/commitment", quantized.commitment, sync_dist=True, batch_size=n)
        self._code_counts += torch.bincount(quantized.codes.flatten(), minlength=self.codebook_size)

    def on_validation_epoch_end(self) -> None:
        counts = self.all_gather(self._code_counts)
        counts = counts.reshape(-1, self.codebook_size).sum(0)
        if counts.sum() > 0:
            usage, perplexity = code_usage(counts)
            self.log("val/codebook_usage", usage, sync_dist=False, rank_zero_only=True)
            self.log("val/perplexity", perplexity, sync_dist=False, rank_zero_only=True)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return autoencoder_optimizers(self, self.autoencoder_loss, hp.lr, hp.weight_decay, hp.warmup_steps)

    # --- generation -------------------------------------------------------------------------

    @inference
    def generate(
        self, n: int, *, condition: Any = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """`n` images in [0, 1], each code drawn i.i.d. from the codebook's measured usage (the EMA code
        counts of training; uniform before any training): an image tokenizer's only prior."""
        if condition is not None:
            raise ValueError(
                "vqgan is an image tokenizer and draws no conditioned images: train maskgit or vq_transformer "
                "over its codes for prompts"
            )
        counts = self.quantizer.code_counts.double()
        weights = (counts if counts.sum() > 0 else torch.ones_like(counts)).to(
            generator.device if generator is not None else self.device
        )
        h, w = self.code_grid
        codes = torch.multinomial(weights, n * h * w, replacement=True, generator=generator)
        return (self.decode_codes(codes.view(n, h, w).to(self.device)) + 1) / 2

    @inference
    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        out = {"samples": self.generate(n, generator=generator)}
        if batch is not None and "image" in batch:
            x = batch["image"][: max(1, n // 2)].to(self.device)
            reconstruction = self.decode_codes(self.encode_codes(x))
            pairs = torch.stack([x, reconstruction], dim=1).flatten(0, 1)  # original, reconstruction, ...
            out["reconstructions"] = ((pairs + 1) / 2).clamp(0, 1)
        return out

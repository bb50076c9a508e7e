"""`dcgan`, `lsgan`, `wgan_gp`, `sngan`: one DCGAN-architecture GAN, four objectives.

The networks are DCGAN's (Radford et al. 2016): G maps z through a linear layer to a 4x4 map and
doubles the resolution with strided transposed convolutions (BatchNorm, ReLU, tanh out); D halves
it with strided convolutions (LeakyReLU 0.2) down to 4x4 and ends in a linear layer. What differs
between the families is the objective and how D is regularised, so that is a constructor option
(`objective`, from `zoo.nn.adversarial`), and each family is the shared class with other defaults:

| family    | objective       | D normalisation          | n_critic | Adam lr, betas           |
|-----------|-----------------|--------------------------|----------|--------------------------|
| `dcgan`   | non-saturating  | BatchNorm                | 1        | 2e-4, (0.5, 0.999)       |
| `lsgan`   | least squares   | BatchNorm                | 1        | 2e-4, (0.5, 0.999)       |
| `wgan_gp` | Wasserstein     | none (GP needs per-sample gradients), lambda = 10 | 5 | 1e-4, (0.0, 0.9) |
| `sngan`   | hinge           | spectral norm on every D layer | 1  | 2e-4, (0.5, 0.999)       |

Class conditioning (BigGAN-style, Brock et al. 2019): with `num_classes` > 0 (linked from the
datamodule) and `class_conditional`, every BatchNorm of G takes a per-class gain and bias
(conditional BatchNorm) and D adds the projection term <embed(y), h> to its output (Miyato &
Koyama 2018). `zoo.sample --label 3` then draws threes.

Stabilisation tricks, all options: TTUR (`lr_g` != `lr_d`, Heusel et al. 2017), R1 penalty on reals
(`r1_weight` = gamma), a gradient penalty for any objective (`gp_weight`), one-sided label
smoothing (`label_smoothing`, real target 1 - s), DiffAugment (`diff_augment`, e.g.
"color,translation,cutout", applied to every image D sees in training), and an EMA of the weights
through Lightning's `EMAWeightAveraging` callback in the recipes (it works with manual optimisation:
it updates once per batch, after both optimisers stepped; it averages D too, which costs a copy of
D and changes nothing for sampling). The training loop and these options are `zoo.gan.GANModule`'s,
shared with `stylegan`.

Optimisation is manual (two optimisers): each batch takes one D step and, on every `n_critic`-th
batch, one G step. **`trainer.max_steps` counts optimiser steps of both networks** (Lightning's
`global_step` increments on every `optimizer.step()`), so B batches are B + B // n_critic steps:
`max_steps` 4000 with n_critic 1 is 2,000 batches (2,000 D and 2,000 G updates); with n_critic 5,
`max_steps` 2400 is 2,000 batches (2,000 D and 400 G updates). Checkpoint and sample intervals
(`every_n_train_steps`, `every_n_steps`) also count in global steps; they fire only on values
`global_step` takes (with n_critic 1 it moves by 2 per batch, so use even intervals).

A NaN/inf loss, or one whose magnitude exceeds `max_loss`, stops training before the step with
a message; `zoo.fit` keeps `<run>/checkpoints/on_exception.ckpt`.

    python -m zoo.fit --model dcgan                                   # class-conditional, digits 16x16
    python -m zoo.sample --ckpt runs/dcgan/<run>/checkpoints/last.ckpt --label 3 --truncation 0.7
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from zoo.gan import DivergedLossError, GANModule, doublings_from_4x4, variant
from zoo.module import inference

__all__ = ["DCGAN", "GAN", "LSGAN", "SNGAN", "WGANGP", "DivergedLossError"]

D_NORMS = ("batch", "layer", "none")


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine; a per-class gain (1 + g_y) and bias b_y instead (BigGAN).
    With `num_classes` 0 it is a plain affine BatchNorm."""

    def __init__(self, channels: int, num_classes: int = 0) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=num_classes == 0)
        self.gain = self.bias = None
        if num_classes > 0:
            # zero-initialised, so every class starts from the identity transform
            self.gain = nn.Embedding(num_classes, channels)
            self.bias = nn.Embedding(num_classes, channels)
            nn.init.zeros_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm(x)
        if self.gain is None:
            return x
        if labels is None:
            raise ValueError("a class-conditional generator needs labels")
        return x * (1 + self.gain(labels)[:, :, None, None]) + self.bias(labels)[:, :, None, None]


class Generator(nn.Module):
    """DCGAN's G: z -> linear -> 4x4 x widths[0] -> (transposed conv 4/2, BN, ReLU)* -> tanh image."""

    def __init__(
        self, latent_dim: int, out_channels: int, image_size: int, base_channels: int, num_classes: int = 0
    ) -> None:
        super().__init__()
        levels = doublings_from_4x4(image_size)
        widths = [base_channels * 2 ** (levels - 1 - i) for i in range(levels)]  # e.g. 16px: [2b, b]
        self.fc = nn.Linear(latent_dim, widths[0] * 16)
        self.norms = nn.ModuleList(ConditionalBatchNorm2d(w, num_classes) for w in widths)
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(widths[i], widths[i + 1], 4, 2, 1, bias=False) for i in range(levels - 1)
        )
        self.to_image = nn.ConvTranspose2d(widths[-1], out_channels, 4, 2, 1)
        self.first_width = widths[0]

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.fc(z).view(len(z), self.first_width, 4, 4)
        x = torch.relu(self.norms[0](x, labels))
        for up, norm in zip(self.ups, self.norms[1:], strict=True):
            x = torch.relu(norm(up(x), labels))
        return torch.tanh(self.to_image(x))


class Discriminator(nn.Module):
    """DCGAN's D: (conv 4/2, [norm], LeakyReLU 0.2)* down to 4x4, flattened features h, then
    linear(h) + <embed(y), h> (the projection term, when class-conditional). `spectral_norm` wraps
    every weight (convolutions, the linear head and the class embedding) as SN-GAN does."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        base_channels: int,
        num_classes: int = 0,
        norm: str = "batch",
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        if norm not in D_NORMS:
            raise ValueError(f"unknown d_norm '{norm}'; choose one of {', '.join(D_NORMS)}")
        sn = _spectral_norm if spectral_norm else (lambda m: m)
        levels = doublings_from_4x4(image_size)
        widths = [base_channels * 2**i for i in range(levels)]  # e.g. 16px: [b, 2b]
        layers: list[nn.Module] = [sn(nn.Conv2d(in_channels, widths[0], 4, 2, 1)), nn.LeakyReLU(0.2)]
        for cin, cout in zip(widths[:-1], widths[1:], strict=True):
            layers.append(sn(nn.Conv2d(cin, cout, 4, 2, 1, bias=norm == "none")))
            if norm == "batch":  # DCGAN: no norm on the first layer
                layers.append(nn.BatchNorm2d(cout))
            elif norm == "layer":  # WGAN-GP's suggestion: a per-sample norm over (C, H, W)
                layers.append(nn.GroupNorm(1, cout))
            layers.append(nn.LeakyReLU(0.2))
        self.features = nn.Sequential(*layers)
        features = widths[-1] * 16
        self.head = sn(nn.Linear(features, 1))
        self.embed = None
        if num_classes > 0:
            # the class embedding starts at the head's scale: nn.Embedding's N(0, 1) makes the
            # projection term ~sqrt(features) times larger than linear(h), and D's first losses huge
            embed = nn.Embedding(num_classes, features)
            nn.init.uniform_(embed.weight, -(features**-0.5), features**-0.5)
            self.embed = sn(embed)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x).flatten(1)
        out = self.head(h).squeeze(1)
        if self.embed is not None:
            if labels is None:
                raise ValueError("a class-conditional discriminator needs labels")
            out = out + (self.embed(labels) * h).sum(1)
        return out


class GAN(GANModule):
    """The shared DCGAN-architecture GAN; `objective` picks the game. See the module docstring. The
    classes, latent size and training options (`**training`) and their defaults are `zoo.gan.GANModule`'s;
    these are `dcgan`'s.

    Args:
        in_channels: image channels (1 grey, 3 RGB); zoo.fit links it to data.channels.
        image_size: image side in pixels, a power of two >= 8; zoo.fit links it to data.image_size.
        g_channels: G's width at half the image size, doubled at each level down to 4x4.
        d_channels: D's width after its first convolution (half the image size), doubled at each level down to 4x4.
        d_norm: normalisation after D's convolutions but the first: batch, layer (per sample) or none.
        spectral_norm: spectral normalisation of every D weight (convolutions, head, class embedding).
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 16,
        g_channels: int = 64,
        d_channels: int = 64,
        d_norm: str = "batch",
        spectral_norm: bool = False,
        **training: Any,
    ) -> None:
        super().__init__(**training)
        classes = self.label_classes
        self.generator = Generator(self.hparams.latent_dim, in_channels, image_size, g_channels, classes)
        self.discriminator = Discriminator(
            in_channels, image_size, d_channels, classes, d_norm, spectral_norm
        )

    @inference
    def generate(
        self,
        n: int,
        *,
        condition: Any = None,
        generator: torch.Generator | None = None,
        truncation: float | None = None,
    ) -> torch.Tensor:
        """`n` images in [0, 1]. `condition`: class labels (one for all, or n; random classes when
        None). `truncation` psi scales z towards the prior's mean 0 (z' = psi z): 1 is the model as
        trained, smaller trades variety for typicality, 0 gives G(0) for every draw."""
        psi = self.hparams.truncation if truncation is None else truncation
        z = self._latents(n, generator)
        labels = self._labels(condition, n, generator)
        images = self.generator(psi * z, labels)
        return ((images + 1) / 2).clamp(0, 1)


# The families: the shared class with other defaults (see `zoo.gan.variant` for why each gets a whole
# signature rather than **kwargs).

DCGAN = variant(GAN, "DCGAN", "DCGAN (Radford et al. 2016): non-saturating loss, BatchNorm in D.")
LSGAN = variant(
    GAN,
    "LSGAN",
    "LSGAN (Mao et al. 2017): least-squares loss (a=0, b=c=1), BatchNorm in D.",
    objective="lsgan",
)
WGANGP = variant(
    GAN,
    "WGANGP",
    """WGAN-GP (Gulrajani et al. 2017): Wasserstein critic without BatchNorm, gradient penalty
    lambda = 10, 5 critic steps per G step, Adam (0, 0.9) at 1e-4.""",
    objective="wgan_gp", d_norm="none", n_critic=5, lr_g=1e-4, lr_d=1e-4, betas=(0.0, 0.9), gp_weight=10.0,
)  # fmt: skip
SNGAN = variant(
    GAN,
    "SNGAN",
    """SN-GAN (Miyato et al. 2018): spectral norm on every D weight, hinge loss, no BatchNorm in D
    (the paper's standard-CNN setting C: Adam 2e-4, (0.5, 0.999), one D step per G step).""",
    objective="hinge", d_norm="none", spectral_norm=True,
)  # fmt: skip

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
D and changes nothing for sampling).

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

import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from zoo.module import GenerativeModule, NonFiniteLossError
from zoo.nn.adversarial import (
    check_objective,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    r1_penalty,
)
from zoo.nn.adversarial import diff_augment as augment_images  # `diff_augment` is also an option's name

D_NORMS = ("batch", "layer", "none")


class DivergedLossError(NonFiniteLossError):
    """A finite training loss beyond `max_loss`: the GAN game has blown up."""


def _levels(image_size: int) -> int:
    levels = int(math.log2(image_size)) - 2
    if image_size < 8 or 2 ** (levels + 2) != image_size:
        raise ValueError(f"image_size must be a power of two >= 8 (4x4 doubled), got {image_size}")
    return levels


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
        levels = _levels(image_size)
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
        levels = _levels(image_size)
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


class GAN(GenerativeModule):
    """The shared DCGAN-architecture GAN; `objective` picks the game. See the module docstring."""

    modality = "image"
    default_data = "digits"

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 16,
        num_classes: int = 0,
        class_conditional: bool = True,
        latent_dim: int = 64,
        g_channels: int = 64,
        d_channels: int = 64,
        objective: str = "nonsaturating",
        d_norm: str = "batch",
        spectral_norm: bool = False,
        n_critic: int = 1,
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        gp_weight: float = 0.0,
        r1_weight: float = 0.0,
        r1_every: int = 1,
        label_smoothing: float = 0.0,
        diff_augment: str = "",
        truncation: float = 1.0,
        max_loss: float = 1e4,
    ) -> None:
        super().__init__()
        check_objective(objective)
        if n_critic < 1 or r1_every < 1:
            raise ValueError(f"n_critic and r1_every must be >= 1, got {n_critic} and {r1_every}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
        augment_images(torch.zeros(1, 1, 8, 8), diff_augment)  # an unknown policy fails here, not mid-run
        self.save_hyperparameters()
        self.automatic_optimization = False  # explicit D and G steps
        self.conditional = class_conditional and num_classes > 0
        classes = num_classes if self.conditional else 0
        self.generator = Generator(latent_dim, in_channels, image_size, g_channels, classes)
        self.discriminator = Discriminator(
            in_channels, image_size, d_channels, classes, d_norm, spectral_norm
        )

    # --- training ---------------------------------------------------------------------------

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        return augment_images(x, self.hparams.diff_augment) if self.hparams.diff_augment else x

    def _batch_index(self, batch_idx: int) -> int:
        # Batches since the start of training (not of the epoch), restored on resume, so the
        # D/G schedule of n_critic continues exactly across epochs and restarts.
        trainer = self._trainer
        return trainer.fit_loop.epoch_loop.total_batch_idx if trainer is not None else batch_idx

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        hp = self.hparams
        opt_g, opt_d = self.optimizers()
        real = batch["image"]
        labels = batch["label"] if self.conditional else None
        n = len(real)
        critic = lambda x: self.discriminator(x, labels)  # noqa: E731 - penalties take a callable

        # D step: real vs a detached fake batch
        z = torch.randn(n, hp.latent_dim, device=self.device)
        with torch.no_grad():
            fake = self.generator(z, labels)
        real_in, fake_in = self._augment(real), self._augment(fake)
        # lazy R1 (StyleGAN2): every r1_every-th batch, weighted by r1_every to keep its strength
        if hp.r1_weight > 0 and self._batch_index(batch_idx) % hp.r1_every == 0:
            r1, d_real = r1_penalty(critic, real_in)
        else:
            r1, d_real = None, critic(real_in)
        d_fake = critic(fake_in)
        d_loss = discriminator_loss(hp.objective, d_real, d_fake, real_label=1.0 - hp.label_smoothing)
        total = d_loss
        if hp.gp_weight > 0:
            gp = gradient_penalty(critic, real_in, fake_in)
            total = total + hp.gp_weight * gp
            self.log("train/gp", gp, batch_size=n)
        if r1 is not None:
            total = total + 0.5 * hp.r1_weight * hp.r1_every * r1
            self.log("train/r1", r1, batch_size=n)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(total)
        opt_d.step()
        self.log_dict(
            {
                "train/loss": total,
                "train/d_loss": d_loss,
                "train/d_real": d_real.mean(),
                "train/d_fake": d_fake.mean(),
            },
            prog_bar=False,
            batch_size=n,
        )

        # G step on every n_critic-th batch; D's weights are frozen so no gradient is computed for them
        if (self._batch_index(batch_idx) + 1) % hp.n_critic == 0:
            self.discriminator.requires_grad_(False)
            z = torch.randn(n, hp.latent_dim, device=self.device)
            g_loss = generator_loss(hp.objective, critic(self._augment(self.generator(z, labels))))
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(g_loss)
            opt_g.step()
            self.discriminator.requires_grad_(True)
            self.log("train/g_loss", g_loss, prog_bar=True, batch_size=n)

    def on_before_backward(self, loss: torch.Tensor) -> None:
        super().on_before_backward(loss)  # NaN / inf
        if loss.abs().item() > self.hparams.max_loss:
            raise DivergedLossError(
                f"{type(self).__name__}: the training loss is {loss.item():.4g} at step {self.global_step}, "
                f"beyond max_loss {self.hparams.max_loss:g}: the adversarial game diverged. No step was "
                "taken; the checkpoint saved on this exception holds the last finite weights. Lower the "
                "learning rates (--model.lr_d, --model.lr_g), add a penalty (--model.r1_weight, "
                "--model.gp_weight) or spectral norm (--model.spectral_norm true)."
            )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # val/loss: D's loss (no smoothing, no augmentation) on held-out reals vs fakes from seeded
        # noise. Near train/d_loss, D judges unseen reals as it judges training reals; well above
        # it, D memorises the training set (the overfitting signal ADA watches, Karras et al. 2020).
        # For wgan_gp, -val/loss is the critic's Wasserstein estimate. Seeded per batch: no draw
        # from the global generator, which exact resumption relies on.
        generator = torch.Generator(device="cpu").manual_seed(batch_idx)
        real = batch["image"]
        labels = batch["label"] if self.conditional else None
        z = torch.randn(len(real), self.hparams.latent_dim, generator=generator).to(self.device)
        d_real = self.discriminator(real, labels)
        d_fake = self.discriminator(self.generator(z, labels), labels)
        loss = discriminator_loss(self.hparams.objective, d_real, d_fake)
        n = len(real)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=n)
        self.log_dict(
            {"val/d_real": d_real.mean(), "val/d_fake": d_fake.mean()}, sync_dist=True, batch_size=n
        )

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        betas = tuple(hp.betas)
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=hp.lr_g, betas=betas)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr_d, betas=betas)
        return [opt_g, opt_d]

    # --- sampling ---------------------------------------------------------------------------

    def _labels(self, condition: Any, n: int, generator: torch.Generator | None) -> torch.Tensor | None:
        num_classes = self.hparams.num_classes
        if condition is None:
            if not self.conditional:
                return None
            # no label asked for: classes drawn uniformly, like the data
            return torch.randint(0, num_classes, (n,), generator=generator).to(self.device)
        if not self.conditional:
            raise ValueError(
                f"this {type(self).__name__} is unconditional (trained without labels): it takes no --label"
            )
        labels = torch.as_tensor(condition, dtype=torch.long).reshape(-1).to(self.device)
        if len(labels) == 1:
            labels = labels.expand(n)
        if len(labels) != n:
            raise ValueError(f"got {len(labels)} labels for {n} samples")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {labels.tolist()[:8]}")
        return labels

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
        z = torch.randn(
            n, self.hparams.latent_dim, generator=generator, device=generator.device if generator else None
        )
        labels = self._labels(condition, n, generator)
        images = self.generator(psi * z.to(self.device), labels)
        return ((images + 1) / 2).clamp(0, 1)

    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        # a fixed noise batch (the callback seeds the generator), classes in rows when conditional
        condition = (torch.arange(n) % self.hparams.num_classes).tolist() if self.conditional else None
        return {"samples": self.generate(n, condition=condition, generator=generator)}


def _arguments(local_vars: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in local_vars.items() if k not in ("self", "__class__")}


# The families: the shared class with other defaults. Each spells out its whole signature (not
# **kwargs) because zoo.fit reads it to link data.channels / image_size / num_classes to the model
# and LightningCLI to list every flag.


class DCGAN(GAN):
    """DCGAN (Radford et al. 2016): non-saturating loss, BatchNorm in D."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 16,
        num_classes: int = 0,
        class_conditional: bool = True,
        latent_dim: int = 64,
        g_channels: int = 64,
        d_channels: int = 64,
        objective: str = "nonsaturating",
        d_norm: str = "batch",
        spectral_norm: bool = False,
        n_critic: int = 1,
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        gp_weight: float = 0.0,
        r1_weight: float = 0.0,
        r1_every: int = 1,
        label_smoothing: float = 0.0,
        diff_augment: str = "",
        truncation: float = 1.0,
        max_loss: float = 1e4,
    ) -> None:
        super().__init__(**_arguments(locals()))


class LSGAN(GAN):
    """LSGAN (Mao et al. 2017): least-squares loss (a=0, b=c=1), BatchNorm in D."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 16,
        num_classes: int = 0,
        class_conditional: bool = True,
        latent_dim: int = 64,
        g_channels: int = 64,
        d_channels: int = 64,
        objective: str = "lsgan",
        d_norm: str = "batch",
        spectral_norm: bool = False,
        n_critic: int = 1,
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        gp_weight: float = 0.0,
        r1_weight: float = 0.0,
        r1_every: int = 1,
        label_smoothing: float = 0.0,
        diff_augment: str = "",
        truncation: float = 1.0,
        max_loss: float = 1e4,
    ) -> None:
        super().__init__(**_arguments(locals()))


class WGANGP(GAN):
    """WGAN-GP (Gulrajani et al. 2017): Wasserstein critic without BatchNorm, gradient penalty
    lambda = 10, 5 critic steps per G step, Adam (0, 0.9) at 1e-4."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 16,
        num_classes: int = 0,
        class_conditional: bool = True,
        latent_dim: int = 64,
        g_channels: int = 64,
        d_channels: int = 64,
        objective: str = "wgan_gp",
        d_norm: str = "none",
        spectral_norm: bool = False,
        n_critic: int = 5,
        lr_g: float = 1e-4,
        lr_d: float = 1e-4,
        betas: tuple[float, float] = (0.0, 0.9),
        gp_weight: float = 10.0,
        r1_weight: float = 0.0,
        r1_every: int = 1,
        label_smoothing: float = 0.0,
        diff_augment: str = "",
        truncation: float = 1.0,
        max_loss: float = 1e4,
    ) -> None:
        super().__init__(**_arguments(locals()))


class SNGAN(GAN):
    """SN-GAN (Miyato et al. 2018): spectral norm on every D weight, hinge loss, no BatchNorm in D
    (the paper's standard-CNN setting C: Adam 2e-4, (0.5, 0.999), one D step per G step)."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 16,
        num_classes: int = 0,
        class_conditional: bool = True,
        latent_dim: int = 64,
        g_channels: int = 64,
        d_channels: int = 64,
        objective: str = "hinge",
        d_norm: str = "none",
        spectral_norm: bool = True,
        n_critic: int = 1,
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        gp_weight: float = 0.0,
        r1_weight: float = 0.0,
        r1_every: int = 1,
        label_smoothing: float = 0.0,
        diff_augment: str = "",
        truncation: float = 1.0,
        max_loss: float = 1e4,
    ) -> None:
        super().__init__(**_arguments(locals()))

"""`GANModule`: the adversarial training that the image GAN families share (`dcgan`, `lsgan`,
`wgan_gp`, `sngan`, `stylegan`), and `variant`, which makes a family out of another with other defaults.

A family subclasses `GANModule`. Its `__init__` lists its network's arguments, passes the rest (the
classes, the latent size and the training options below) on to `super().__init__` as `**training`,
then builds `self.generator(z, labels)` (images in [-1, 1]) and `self.discriminator(x, labels)` (one
score per image); the family also writes `generate`. LightningCLI follows `**training` into this
signature, so every option is a flag, and `save_hyperparameters` here records the family's arguments
too (it collects every `__init__` on the `super()` chain).

Training options: the objective (`zoo.nn.adversarial`: nonsaturating, lsgan, wgan_gp, hinge), TTUR
(`lr_g` != `lr_d`), an R1 penalty on reals (`r1_weight` = gamma, lazily every `r1_every` batches), a
gradient penalty for any objective (`gp_weight`), one-sided label smoothing, DiffAugment on everything
D sees in training, the sampling truncation, and `max_loss`, beyond which training stops.

Optimisation is manual (two optimisers): each batch takes one D step and, on every `n_critic`-th
batch, one G step, each under Lightning's `toggled_optimizer` so the other network gets no gradient.
**`trainer.max_steps` counts optimiser steps of both networks** (Lightning's `global_step` increments
on every `optimizer.step()`), so B batches are B + B // n_critic steps. Checkpoint and sample intervals
count in global steps too, and fire only on values `global_step` takes (with n_critic 1 it moves by 2
per batch, so use even intervals).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, TypeVar

import torch

from zoo import registry
from zoo.conditioning import class_labels
from zoo.module import GenerativeModule, NonFiniteLossError
from zoo.nn.adversarial import (
    check_objective,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    r1_penalty,
)
from zoo.nn.adversarial import diff_augment as augment_images  # `diff_augment` is also an option's name

G = TypeVar("G", bound="GANModule")


class DivergedLossError(NonFiniteLossError):
    """A finite training loss beyond `max_loss`: the GAN game has blown up."""


def check_gan_options(
    objective: str, n_critic: int, r1_every: int, label_smoothing: float, diff_augment: str
) -> None:
    """Refuse training options that would fail or mislead only later, mid-run."""
    check_objective(objective)
    if n_critic < 1 or r1_every < 1:
        raise ValueError(f"n_critic and r1_every must be >= 1, got {n_critic} and {r1_every}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
    augment_images(torch.zeros(1, 1, 8, 8), diff_augment)  # an unknown policy fails here


def doublings_from_4x4(image_size: int) -> int:
    """How many 2x upsamplings take a 4x4 map to `image_size` (a power of two >= 8), as both GAN
    generators grow their images (and their discriminators shrink them back)."""
    levels = int(math.log2(image_size)) - 2
    if image_size < 8 or 2 ** (levels + 2) != image_size:
        raise ValueError(f"image_size must be a power of two >= 8 (4x4 doubled), got {image_size}")
    return levels


class GANModule(GenerativeModule):
    """Training, validation, class labels and the divergence stop of an image GAN; see the module
    docstring. The subclass builds `generator` and `discriminator` after calling `__init__`.

    Args:
        num_classes: label classes, 0 for unlabelled data; zoo.fit sets it from the datamodule.
        class_conditional: condition G and D on the labels when num_classes > 0; false: unconditional on any data.
        latent_dim: size of the noise z ~ N(0, I) that G turns into an image.
        objective: the game (zoo.nn.adversarial): nonsaturating, lsgan, wgan_gp (its penalty is gp_weight) or hinge.
        n_critic: D steps per G step: G steps on every n_critic-th batch, D on every batch.
        lr_g: Adam learning rate of G.
        lr_d: Adam learning rate of D.
        betas: Adam's (beta1, beta2) of both optimisers.
        gp_weight: weight lambda of WGAN-GP's gradient penalty on real-fake interpolates, with any objective; 0: off.
        r1_weight: R1 penalty weight gamma (D's squared gradient norm on reals, times gamma / 2); 0: off.
        r1_every: apply R1 every r1_every-th batch, scaled by r1_every (lazy regularisation).
        label_smoothing: one-sided: D's target for reals is 1 - label_smoothing, in [0, 1) (nonsaturating, lsgan).
        diff_augment: DiffAugment policies on every image D sees in training, e.g. "color,translation,cutout"; "": off.
        truncation: truncation psi of `generate` unless given: 1 none; smaller pulls the latent towards its mean.
        max_loss: stop training, before the step, when a loss's magnitude exceeds this (the game diverged).
    """

    modality = "image"
    default_data = "digits"
    generator: torch.nn.Module
    discriminator: torch.nn.Module

    def __init__(
        self,
        num_classes: int = 0,
        class_conditional: bool = True,
        latent_dim: int = 64,
        objective: str = "nonsaturating",
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
        check_gan_options(objective, n_critic, r1_every, label_smoothing, diff_augment)
        self.save_hyperparameters()  # also the subclass's arguments: it calls this through super()
        self.automatic_optimization = False  # explicit D and G steps
        self.conditional = class_conditional and num_classes > 0

    @property
    def label_classes(self) -> int:
        """The classes G and D are conditioned on: 0 for an unconditional model."""
        return self.hparams.num_classes if self.conditional else 0

    # --- training ---------------------------------------------------------------------------

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        return augment_images(x, self.hparams.diff_augment) if self.hparams.diff_augment else x

    def _batches_seen(self) -> int:
        # Batches since the start of training (not of the epoch), restored on resume, so the D/G
        # schedule of n_critic and lazy R1 continue exactly across epochs and restarts.
        return self.trainer.fit_loop.epoch_loop.total_batch_idx

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        real = batch["image"]
        labels = batch["label"] if self.conditional else None
        with self.toggled_optimizer(opt_d):
            self._discriminator_step(opt_d, real, labels)
        if (self._batches_seen() + 1) % self.hparams.n_critic == 0:
            with self.toggled_optimizer(opt_g):
                self._generator_step(opt_g, len(real), labels)

    def _discriminator_step(self, opt_d: Any, real: torch.Tensor, labels: torch.Tensor | None) -> None:
        """D on reals vs a detached fake batch, plus the penalties that are switched on."""
        hp, n = self.hparams, len(real)
        critic = lambda x: self.discriminator(x, labels)  # noqa: E731 - penalties take a callable
        with torch.no_grad():
            fake = self.generator(torch.randn(n, hp.latent_dim, device=self.device), labels)
        real_in, fake_in = self._augment(real), self._augment(fake)
        # lazy R1 (StyleGAN2): every r1_every-th batch, weighted by r1_every to keep its strength
        if hp.r1_weight > 0 and self._batches_seen() % hp.r1_every == 0:
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
        logs = {"loss": total, "d_loss": d_loss, "d_real": d_real.mean(), "d_fake": d_fake.mean()}
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=False, batch_size=n)

    def _generator_step(self, opt_g: Any, n: int, labels: torch.Tensor | None) -> None:
        z = torch.randn(n, self.hparams.latent_dim, device=self.device)
        scores = self.discriminator(self._augment(self.generator(z, labels)), labels)
        g_loss = generator_loss(self.hparams.objective, scores)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        opt_g.step()
        self.log("train/g_loss", g_loss, prog_bar=True, batch_size=n)

    def on_before_backward(self, loss: torch.Tensor) -> None:
        super().on_before_backward(loss)  # NaN / inf
        if loss.abs().item() > self.hparams.max_loss:
            raise DivergedLossError(
                f"{type(self).__name__}: the training loss is {loss.item():.4g} at step {self.global_step}, "
                f"beyond max_loss {self.hparams.max_loss:g}: the adversarial game diverged. No step was "
                "taken; past the first step, the checkpoint saved on this exception holds the last finite weights. Lower the "
                "learning rates (--model.lr_d, --model.lr_g) or add a penalty (--model.r1_weight, "
                f"--model.gp_weight){self._spectral_norm_hint()}."
            )

    def _spectral_norm_hint(self) -> str:
        """Spectral norm is an option of the DCGAN-style networks only (stylegan has no such flag)."""
        return " or spectral norm (--model.spectral_norm true)" if "spectral_norm" in self.hparams else ""

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

    def _latents(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """`n` draws of z ~ N(0, I) from `generator` (on its device), moved to the model's device."""
        device = generator.device if generator is not None else None
        return torch.randn(n, self.hparams.latent_dim, generator=generator, device=device).to(self.device)

    def _labels(self, condition: Any, n: int, generator: torch.Generator | None) -> torch.Tensor | None:
        """`condition` as n labels (see `zoo.conditioning.class_labels`); with no condition, a conditional
        model draws classes uniformly, like the data."""
        if condition is None and self.conditional:
            return torch.randint(0, self.hparams.num_classes, (n,), generator=generator).to(self.device)
        family = registry.name_of(type(self)) or type(self).__name__
        return class_labels(condition, n, self.label_classes, family=family, device=self.device)

    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        # a fixed noise batch (the callback seeds the generator), classes in rows when conditional
        condition = (torch.arange(n) % self.hparams.num_classes).tolist() if self.conditional else None
        return {"samples": self.generate(n, condition=condition, generator=generator)}


def variant(base: type[G], name: str, doc: str, /, **defaults: Any) -> type[G]:
    """A family that is `base` with other `defaults` (`dcgan`, `lsgan`, ... are one network, four games).

    Its `__init__` shows the whole signature: `base`'s own parameters, then the training options it
    forwards to `GANModule` (keyword-only), with `defaults` in place. `zoo.fit` reads that signature to
    link the data to the model (`in_channels`, `image_size`, `num_classes`), LightningCLI lists every flag
    with this family's default, and `save_hyperparameters` records every argument (the wrapper below does
    not call `super()`, so Lightning's collection of `__init__` arguments stops at `base`)."""
    # eval_str: real types, not the strings of `from __future__ import annotations`, so LightningCLI
    # validates the flags
    own = [
        p
        for p in inspect.signature(base.__init__, eval_str=True).parameters.values()
        if p.kind is not p.VAR_KEYWORD
    ]
    forwarded = [
        p.replace(kind=p.KEYWORD_ONLY)
        for p in list(inspect.signature(GANModule.__init__, eval_str=True).parameters.values())[1:]
        if p.name not in {q.name for q in own}
    ]
    parameters = own + forwarded
    unknown = set(defaults) - {p.name for p in parameters}
    if unknown:
        raise TypeError(f"{name}: {base.__name__} has no parameter {', '.join(sorted(unknown))}")
    signature = inspect.Signature([p.replace(default=defaults.get(p.name, p.default)) for p in parameters])

    def __init__(self: G, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        base.__init__(*bound.args, **bound.kwargs)

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__qualname__ = f"{name}.__init__"
    return type(name, (base,), {"__init__": __init__, "__doc__": doc, "__module__": base.__module__})

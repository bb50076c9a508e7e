"""The perceptual and adversarial training that zoo's image autoencoders share (`vae`, `vqgan`): the recipe
of VQGAN (Esser et al. 2021, taming-transformers' `VQLPIPSWithDiscriminator`) and of Stable Diffusion's
KL autoencoder (Rombach et al. 2022, the same loss with a KL term in place of the codebook's).

    generator loss     = L_rec + w_p L_perceptual + [regulariser] + lambda * w_adv * L_G     (after discriminator_start)
    discriminator loss = the objective's D loss on real images against reconstructions        (after discriminator_start)

with lambda taming's adaptive weight at the decoder's last layer (`zoo.nn.patchgan.adaptive_weight`, over
L_rec + w_p L_perceptual as taming does), L_G and the D loss from `zoo.nn.adversarial` (hinge by default,
as taming's VQGAN). The perceptual network (`zoo.nn.perceptual`) is built when training starts, from the
datamodule being trained on; it is frozen and held outside the module's state, so checkpoints never carry
it and a trained model loads without it.

Optimisation: with the adversarial term off, the family keeps Lightning's automatic optimisation (gradient
clipping and every callback work as before). With it on, it is manual, as the GAN families do it
(`zoo.gan`): one autoencoder step, then, once the discriminator has started, one discriminator step, each
under `toggled_optimizer`. As there, **`trainer.max_steps` counts the optimiser steps of both networks**:
a batch is one step before `discriminator_start` (counted in batches) and two after; with an even
`discriminator_start`, `global_step` stays even, so even checkpoint intervals still fire.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import nn

from zoo.nn.adversarial import check_objective, discriminator_loss, generator_loss
from zoo.nn.patchgan import PatchDiscriminator, adaptive_weight
from zoo.nn.perceptual import PERCEPTUAL_NETWORKS, PerceptualDistance, perceptual_choice, perceptual_network

# (reconstruction, loss parts) of a batch: parts hold "loss" (every non-adversarial term) and "nll"
# (reconstruction + perceptual, what the adaptive weight compares the adversarial gradient with)
LossFunction = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class AutoencoderLoss(nn.Module):
    """The perceptual and adversarial terms of an autoencoder and its discriminator (only when
    `adversarial_weight` > 0: a module with both terms off holds no parameters, so the family's state
    dict is what it was without them).

    Args:
        in_channels: image channels.
        perceptual_weight: weight of the perceptual distance; 0: off.
        perceptual_network: "auto" (zoo's where the data has one, else none), "zoo" (zoo's trained classifier of
            the training data) or "lpips" (VGG16 LPIPS).
        perceptual_weights: with "lpips", the local VGG16 weights file (else $ZOO_VGG16_WEIGHTS or the cache).
        adversarial_weight: weight of the adversarial term, times the adaptive weight; 0: off.
        discriminator_start: batches before the discriminator and the adversarial term start.
        objective: the GAN objective (zoo.nn.adversarial): hinge, nonsaturating, lsgan, wgan_gp.
        discriminator_channels: width of the PatchGAN's first layer.
        discriminator_layers: strided layers of the PatchGAN.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        perceptual_weight: float = 0.0,
        perceptual_network: str = "auto",
        perceptual_weights: str | None = None,
        adversarial_weight: float = 0.0,
        discriminator_start: int = 0,
        objective: str = "hinge",
        discriminator_channels: int = 64,
        discriminator_layers: int = 2,
    ) -> None:
        super().__init__()
        if perceptual_weight < 0 or adversarial_weight < 0 or discriminator_start < 0:
            raise ValueError(
                "perceptual_weight, adversarial_weight and discriminator_start must be >= 0, got "
                f"{perceptual_weight}, {adversarial_weight}, {discriminator_start}"
            )
        if perceptual_network not in PERCEPTUAL_NETWORKS:
            raise ValueError(
                f"unknown perceptual_network {perceptual_network!r}; choose one of {', '.join(PERCEPTUAL_NETWORKS)}"
            )
        self.objective = check_objective(objective)
        self.perceptual_weight = perceptual_weight
        self.perceptual_network = perceptual_network
        self.perceptual_weights = perceptual_weights
        self.adversarial_weight = adversarial_weight
        self.discriminator_start = discriminator_start
        self.discriminator = (
            PatchDiscriminator(in_channels, discriminator_channels, discriminator_layers)
            if adversarial_weight > 0
            else None
        )
        self._perceptual: list[PerceptualDistance] = []  # a list: not a submodule, so not in the state dict

    @property
    def adversarial(self) -> bool:
        return self.discriminator is not None

    def discriminator_on(self, batches_seen: int) -> bool:
        return self.adversarial and batches_seen >= self.discriminator_start

    def build_perceptual(self, data: str | None, image_size: int, channels: int) -> None:
        """Build the frozen perceptual network (a no-op with the perceptual term off)."""
        if self.perceptual_weight > 0 and not self._perceptual:
            choice = perceptual_choice(self.perceptual_network, data)
            if choice is None:
                rank_zero_warn(
                    f"no perceptual term: zoo has no trained classifier of the data {data!r} (it has one for the "
                    "embedded data sets), so perceptual_network 'auto' trains without one. For LPIPS pass "
                    "--model.perceptual_network lpips --model.perceptual_weights VGG16.pth --model.perceptual_weight 1"
                )
                self.perceptual_weight = 0.0
                return
            network = perceptual_network(
                choice, data=data, image_size=image_size, channels=channels, weights=self.perceptual_weights
            )
            self._perceptual.append(network)

    def perceptual(self, x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Mean perceptual distance of reconstructions to their images (0 with the term off)."""
        if self.perceptual_weight == 0:
            return reconstruction.new_zeros(())
        if not self._perceptual:
            raise RuntimeError(
                "the perceptual network is built when training starts (build_perceptual); "
                "call it first when training outside Lightning's fit"
            )
        network = self._perceptual[0].to(x.device)
        return network(reconstruction, x).mean()

    def generator_term(
        self, reconstruction: torch.Tensor, nll: torch.Tensor, last_layer: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """lambda * adversarial_weight * L_G of the reconstructions, and its parts for logging."""
        assert self.discriminator is not None
        g_loss = generator_loss(self.objective, self.discriminator(reconstruction))
        weight = adaptive_weight(nll, g_loss, last_layer) * self.adversarial_weight
        return weight * g_loss, {"g_loss": g_loss, "adaptive_weight": weight}

    def discriminator_term(
        self, x: torch.Tensor, reconstruction: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The discriminator's loss on real images against (detached) reconstructions."""
        assert self.discriminator is not None
        real, fake = self.discriminator(x), self.discriminator(reconstruction.detach())
        loss = discriminator_loss(self.objective, real, fake)
        return loss, {"d_loss": loss, "d_real": real.mean(), "d_fake": fake.mean()}


def data_name(module: L.LightningModule) -> str | None:
    """The registry name of the datamodule `module` is being trained on, if it has one."""
    from zoo import registry

    datamodule = getattr(module.trainer, "datamodule", None)
    return None if datamodule is None else registry.name_of(type(datamodule), registry.DATAMODULE_GROUP)


def autoencoder_optimizers(
    module: L.LightningModule, loss: AutoencoderLoss, lr: float, weight_decay: float, warmup_steps: int
) -> Any:
    """`configure_optimizers` of an autoencoder: AdamW with a linear warm-up over everything but the
    discriminator, and, with the adversarial term on, Adam for the discriminator; both with taming's betas
    (0.5, 0.9) then, as a GAN's optimisers."""
    from zoo.module import adamw_with_warmup

    excluded = {id(p) for p in loss.parameters()}
    params = [p for p in module.parameters() if id(p) not in excluded]
    if not loss.adversarial:
        return adamw_with_warmup(params, lr, weight_decay, warmup_steps)
    config = adamw_with_warmup(params, lr, weight_decay, warmup_steps)
    for group in config["optimizer"].param_groups:
        group["betas"] = (0.5, 0.9)
    opt_d = torch.optim.Adam(loss.discriminator.parameters(), lr=lr, betas=(0.5, 0.9))  # type: ignore[union-attr]
    return [config["optimizer"], opt_d], [config["lr_scheduler"]]


def adversarial_training_step(
    module: L.LightningModule,
    x: torch.Tensor,
    loss: AutoencoderLoss,
    losses: LossFunction,
    last_layer: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """One manual step of the autoencoder and, once started, one of the discriminator (see the module
    docstring). `losses(x)` gives the batch's reconstruction and non-adversarial loss parts. Returns the
    logged parts."""
    opt_g, opt_d = module.optimizers()
    scheduler = module.lr_schedulers()
    # batches since the start of training, restored on resume (as zoo.gan counts them)
    on = loss.discriminator_on(module.trainer.fit_loop.epoch_loop.total_batch_idx)
    with module.toggled_optimizer(opt_g):
        reconstruction, parts = losses(x)
        total = parts["loss"]
        if on:
            term, adversarial_parts = loss.generator_term(reconstruction, parts["nll"], last_layer)
            total = total + term
            parts = {**parts, **adversarial_parts, "loss": total}
        opt_g.zero_grad(set_to_none=True)
        module.manual_backward(total)
        opt_g.step()
        scheduler.step()
    if on:
        with module.toggled_optimizer(opt_d):
            d_loss, d_parts = loss.discriminator_term(x, reconstruction)
            opt_d.zero_grad(set_to_none=True)
            module.manual_backward(d_loss)
            opt_d.step()
        parts.update(d_parts)
    return parts

"""The adversarial part of an autoencoder's loss (VQGAN, Esser et al. 2021; Stable Diffusion's autoencoder,
Rombach et al. 2022): a PatchGAN discriminator and taming-transformers' adaptive weight.

- `PatchDiscriminator`: pix2pix's NLayerDiscriminator (Isola et al. 2017): strided 4x4 convolutions with
  batch norm and LeakyReLU(0.2), one logit per overlapping patch, weights drawn from N(0, 0.02) and batch
  norms' from N(1, 0.02) as pix2pix initialises them. Three layers suit 256px images (70x70 patches); at
  zoo's 32px two layers give a 6x6 map of 22x22-pixel patches.
- `adaptive_weight`: lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_GAN|| + 1e-4), clamped to [0, 1e4] and
  detached, with G_L the decoder's last layer (VQGAN eq. 7): the adversarial gradient is scaled to the size
  of the reconstruction gradient where both enter the decoder.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """pix2pix's NLayerDiscriminator: images (B, C, H, W) in [-1, 1] -> patch logits (B, 1, h, w)."""

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"a PatchGAN discriminator needs at least 1 layer, got {layers}")
        blocks: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        width = channels
        for n in range(1, layers + 1):
            previous, width = width, channels * min(2**n, 8)
            stride = 2 if n < layers else 1  # the last layer keeps the resolution, as pix2pix does
            blocks += [
                nn.Conv2d(previous, width, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.LeakyReLU(0.2),
            ]
        blocks.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def adaptive_weight(
    reconstruction_loss: torch.Tensor,
    adversarial_loss: torch.Tensor,
    last_layer: torch.Tensor,
    *,
    eps: float = 1e-4,
    max_weight: float = 1e4,
) -> torch.Tensor:
    """taming's lambda (see the module docstring), detached: a weight, not a path for gradients. The graphs
    of both losses are kept for the backward pass that follows."""
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(adversarial_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (gan_grad.norm() + eps)
    return weight.clamp(0.0, max_weight).detach()

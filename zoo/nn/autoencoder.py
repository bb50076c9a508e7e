"""The convolutional encoder and decoder of zoo's image autoencoders (`vae`, `vqgan`): ResNet-style
stacks in the shape of Stable Diffusion's autoencoder (taming-transformers' VQGAN has the same plan),
scaled down for a CPU.

    encoder = Encoder(3, base_channels=32, levels=2, latent_channels=4, blocks=1)   # 32x32 -> 8x8, 8 channels
    decoder = Decoder(3, base_channels=32, levels=2, latent_channels=4, blocks=1)   # 8x8, 4 channels -> 32x32

The encoder outputs 2 * latent_channels (a Gaussian's mean and log-variance, the vae's posterior) unless
`double_latent=False` (one vector per position, what a vector quantiser takes). Parameter names are those
the vae has always had: vae and ldm checkpoints load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

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
        self,
        in_channels: int,
        base_channels: int,
        levels: int,
        latent_channels: int,
        blocks: int,
        *,
        double_latent: bool = True,
    ) -> None:
        super().__init__()
        widths = _widths(base_channels, levels)
        out_channels = 2 * latent_channels if double_latent else latent_channels
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        for level in range(levels):
            layers += [ResBlock(widths[level], widths[level]) for _ in range(blocks)]
            layers.append(nn.Conv2d(widths[level], widths[level + 1], 3, stride=2, padding=1))
        layers += [ResBlock(widths[-1], widths[-1]), group_norm(widths[-1]), nn.SiLU(),
                   nn.Conv2d(widths[-1], out_channels, 3, padding=1)]  # fmt: skip
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

    @property
    def last_layer(self) -> torch.Tensor:
        """The weight of the output convolution: where taming's adaptive GAN weight compares gradients."""
        return self.net[-1].weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

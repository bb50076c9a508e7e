"""Small layers and reductions several families build on: the GroupNorm of the convolutional networks
(`vae`, the diffusion U-Net) and the masked mean (pooled text states, losses over the real frames of
padded audio).

    norm = group_norm(96)                                   # GroupNorm(24 groups, 96 channels)
    pooled = masked_mean(states, mask[..., None], dim=1)    # mean over the real tokens of each row
"""

from __future__ import annotations

import torch
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm for convolutional features of any width (eps 1e-6, as diffusers' U-Net and VAE)."""
    # at least 4 channels a group, at most 32 groups (Wu & He 2018), and a divisor of the width
    groups = min(32, max(1, channels // 4))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6)


def masked_mean(
    values: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None
) -> torch.Tensor:
    """The mean of `values` over the positions where `mask` is true, along `dim` (all of them when None).

    `mask` (bool or 0/1) broadcasts against `values`: a (B, L, 1) mask pools (B, L, D) token states over
    the real tokens, a (B, 1, T) mask averages a (B, n_mels, T) spectrogram error over the real frames. A
    slice without any true position gives 0 rather than NaN."""
    weights = mask.to(values.dtype).expand_as(values)
    total, count = (values * weights).sum(dim), weights.sum(dim)
    return total / count.clamp_min(1.0)

"""ControlNet (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion Models") over
`zoo.nn.unet.UNet`.

A trainable copy of a trained U-Net's encoder half and middle block reads the noisy latents plus an
embedded control image (edges, a segmentation map, keypoints), and hands each of its skip connections
and its middle block's output, through a 1x1 convolution that starts at zero, to the frozen U-Net
(`UNet.forward(..., control=...)` adds them). At the start the residuals are exactly zero, so the
controlled model is the base model, while the zero convolutions' gradients are not (the paper's sec. 3.1).

The wiring is diffusers' `ControlNetModel`: the condition embedding (`ConditionEncoder`, diffusers'
`ControlNetConditioningEmbedding`) is added to the copy's input convolution's output; one zero
convolution per skip connection, in the U-Net's order, and one on the middle block; residuals are
multiplied by the conditioning scale. tests/test_controlnet.py checks the count and shapes of the
residuals against diffusers' model built for the same widths.

    net = ControlNet(unet, condition_channels=3, downsample_factor=4)    # unet: the frozen base's
    residuals = net(x_t, t, control_image, context=states, context_mask=mask, pooled=pooled)
    out = unet(x_t, t, context=states, context_mask=mask, pooled=pooled, control=residuals)
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo.nn.unet import Context, ControlResiduals, ResBlock, UNet

CONDITION_WIDTHS = (16, 32, 96, 256)  # diffusers' conditioning_embedding_out_channels


def zero_conv(channels: int) -> nn.Conv2d:
    """A 1x1 convolution with weight and bias zero: ControlNet's "zero convolution"."""
    conv = nn.Conv2d(channels, channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ConditionEncoder(nn.Module):
    """The control image (B, C, H, W) in [0, 1] down to the latent grid (B, out_channels, H / f, W / f):
    diffusers' `ControlNetConditioningEmbedding` (a convolution, then per halving a convolution and a
    strided one, SiLU between), with as many halvings as the first stage's factor f needs. Its last
    convolution is zero, so it adds nothing at the start."""

    def __init__(self, in_channels: int, out_channels: int, downsample_factor: int) -> None:
        super().__init__()
        halvings = int(math.log2(downsample_factor))
        if 2**halvings != downsample_factor or halvings + 1 > len(CONDITION_WIDTHS):
            raise ValueError(
                f"the condition encoder halves the control image; a first stage that downsamples by "
                f"{downsample_factor} is not a power of two up to {2 ** (len(CONDITION_WIDTHS) - 1)}"
            )
        widths = CONDITION_WIDTHS[: halvings + 1]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        for a, b in itertools.pairwise(widths):
            layers += [
                nn.SiLU(),
                nn.Conv2d(a, a, 3, padding=1),
                nn.SiLU(),
                nn.Conv2d(a, b, 3, padding=1, stride=2),
            ]
        self.blocks = nn.Sequential(*layers, nn.SiLU())
        self.conv_out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.blocks(condition))


def _skip_widths(unet: UNet) -> list[int]:
    """Channels of each skip connection (`UNet.encode`'s order) and, last, of the middle block's output."""

    def out_channels(blocks: nn.ModuleList) -> int:
        last = next(b for b in reversed(blocks) if isinstance(b, (ResBlock, nn.Conv2d)))
        return last.conv2.out_channels if isinstance(last, ResBlock) else last.out_channels

    return (
        [unet.conv_in.out_channels]
        + [out_channels(blocks) for blocks in unet.down]
        + [out_channels(unet.mid)]
    )


class ControlNet(nn.Module):
    """A ControlNet for `unet` (copied, not changed); see the module docstring."""

    def __init__(self, unet: UNet, condition_channels: int = 3, downsample_factor: int = 4) -> None:
        super().__init__()
        if unet.guidance_projection is not None or unet.label_embedding is not None:
            raise ValueError(
                "ControlNet copies a text-conditioned U-Net (no class labels, no guidance input)"
            )
        # the trainable copy, starting at the base's weights (trainable even when the base is frozen)
        self.encoder = unet.encoder_copy().requires_grad_(True)
        self.condition_encoder = ConditionEncoder(
            condition_channels, unet.conv_in.out_channels, downsample_factor
        )
        *skips, mid = _skip_widths(unet)
        self.zero_convs = nn.ModuleList(zero_conv(width) for width in skips)
        self.mid_zero_conv = zero_conv(mid)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        condition: torch.Tensor,
        *,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
        scale: float = 1.0,
    ) -> ControlResiduals:
        """The residuals for the base U-Net at (x_t, t), from `condition` (B or 1, C, H, W) in [0, 1] at
        the image's resolution, times `scale`."""
        if t.ndim == 0:
            t = t.expand(len(x))
        if condition.shape[0] == 1 and len(x) > 1:
            condition = condition.expand(len(x), -1, -1, -1)
        added = self.condition_encoder(condition.to(x.dtype))
        if added.shape[-2:] != x.shape[-2:]:
            added = F.interpolate(added, size=x.shape[-2:], mode="bilinear", align_corners=False)
        embedding = self.encoder.embed(t, None, pooled)
        h, skips = self.encoder.encode(x, embedding, Context(context, context_mask), added=added)
        down = [conv(skip) for conv, skip in zip(self.zero_convs, skips, strict=True)]
        residuals = ControlResiduals(down, self.mid_zero_conv(h))
        return residuals if scale == 1.0 else residuals.scaled(scale)

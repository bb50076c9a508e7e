"""Image editing helpers. img2img and inpainting are options of `sample`; outpainting is inpainting on an
extended canvas."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["outpaint_canvas"]


def outpaint_canvas(
    image: Tensor, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0, fill: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Extend images (B, C, H, W) by the given number of pixels on each side.

    Returns the canvas (B, C, top+H+bottom, left+W+right), `fill` on the new border and the image inside,
    and a mask (B, 1, same size), 1 on the new border (to generate) and 0 over the image, ready for
    `sample(..., mask=mask, known=canvas)`."""
    if min(left, right, top, bottom) < 0:
        raise ValueError("padding must be non-negative")
    b, c, h, w = image.shape
    size = (top + h + bottom, left + w + right)
    canvas = torch.full((b, c, *size), fill, dtype=image.dtype, device=image.device)
    canvas[:, :, top : top + h, left : left + w] = image
    mask = torch.ones((b, 1, *size), dtype=image.dtype, device=image.device)
    mask[:, :, top : top + h, left : left + w] = 0
    return canvas, mask

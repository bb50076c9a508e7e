"""Two kernel choices the code makes for CPU speed, measured (one thread, forward + backward):

- `stylegan`'s ModulatedConv2d scales activations around one shared convolution (StyleGAN2's
  non-fused path) instead of convolving with per-sample weights in groups (the fused path);
- the video U-Net's TemporalAttention writes softmax attention out instead of calling
  `F.scaled_dot_product_attention`.

Shapes are the default recipes': stylegan at 16x16, batch 32, widths 64/32/16; video_diffusion on 8x8
latents of 32x32 frames (widths 32 and 64, 4 heads), batch 16 clips of 8 frames.

    OMP_NUM_THREADS=1 python benchmarks/kernel_choices.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange

from zoo.nn.embeddings import rotary_embedding
from zoo.nn.video_unet import TemporalAttention
from zoo.plugins.stylegan import ModulatedConv2d


def milliseconds(step: Callable[[], None], repeats: int = 20) -> float:
    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats * 1e3


def fused_temporal_attention(layer: TemporalAttention, x: torch.Tensor, frames: int) -> torch.Tensor:
    """TemporalAttention's forward (no conditioning, no absolute positions) with PyTorch's fused kernel."""
    _, _, height, width = x.shape
    tokens = layer.norm(rearrange(x, "(b t) c y x -> (b y x) t c", t=frames))
    qkv = rearrange(layer.qkv(tokens), "n t (three h d) -> three n h t d", three=3, h=layer.num_heads)
    positions = torch.arange(frames)
    q, k, v = rotary_embedding(qkv[0], positions), rotary_embedding(qkv[1], positions), qkv[2]
    attended = rearrange(F.scaled_dot_product_attention(q, k, v), "n h t d -> n t (h d)")
    return x + rearrange(layer.out(attended), "(b y x) t c -> (b t) c y x", y=height, x=width)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for cin, cout, size in [(64, 64, 4), (64, 32, 8), (32, 16, 16)]:
        conv = ModulatedConv2d(cin, cout, 3, w_dim=64)
        x, w = torch.randn(32, cin, size, size, requires_grad=True), torch.randn(32, 64)
        shared = milliseconds(lambda: conv(x, w).sum().backward())  # noqa: B023 - used at once
        grouped = milliseconds(lambda: conv.grouped_forward(x, w).sum().backward())  # noqa: B023
        print(
            f"ModulatedConv2d {cin}->{cout} at {size}x{size}: shared {shared:.1f} ms, grouped {grouped:.1f} ms"
        )
    for channels, size in [(32, 8), (64, 4)]:
        layer = TemporalAttention(channels, 4)
        torch.nn.init.normal_(layer.out.weight)  # not the identity, so the backward pass is whole
        x = torch.randn(16 * 8, channels, size, size, requires_grad=True)
        explicit = milliseconds(lambda: layer(x, 8).sum().backward())  # noqa: B023
        fused = milliseconds(lambda: fused_temporal_attention(layer, x, 8).sum().backward())  # noqa: B023
        print(
            f"TemporalAttention {channels} ch at {size}x{size}: explicit {explicit:.1f} ms, fused {fused:.1f} ms"
        )


if __name__ == "__main__":
    main()

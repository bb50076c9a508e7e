"""Position and timestep embeddings shared by the families.

- `sinusoidal_embedding`: the fixed sin/cos encoding of Vaswani et al. 2017, of integer positions or
  (possibly fractional) diffusion timesteps. Two channel layouts are in use and both are kept, since
  trained weights depend on the layout: `[cos | sin]` halves (diffusers' `get_timestep_embedding` with
  `flip_sin_to_cos=True`: the U-Nets' timestep and frame-index embeddings) and interleaved
  `sin, cos, sin, cos, ...` (the Transformer paper's table: `tts`'s positions).
- `rotary_embedding`: RoPE (Su et al. 2021) on attention queries and keys, in the GPT-NeoX /
  Hugging Face layout (channel i pairs with channel i + D/2): `gpt` (`rope=True`) over token positions,
  the video U-Net's temporal attention over frame indices.

    emb = sinusoidal_embedding(t, 128)                        # (B, 128) from timesteps t (B,)
    pos = sinusoidal_embedding(torch.arange(L), 64, interleaved=True)     # (L, 64)
    q = rotary_embedding(q, positions[:, None, :])            # q (B, H, T, D), positions (B, T)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sinusoidal_embedding(
    positions: torch.Tensor, dim: int, *, max_period: float = 10000.0, interleaved: bool = False
) -> torch.Tensor:
    """Sinusoids of `positions` (...,) at frequencies max_period^(-2i/dim), i < dim/2: (..., dim) float32.

    Layout `[cos | sin]` by default; `interleaved=True` gives sin at even and cos at odd channels. An odd
    `dim` gets a zero last channel ([cos | sin] only)."""
    half = dim // 2
    if interleaved and dim % 2:
        raise ValueError(f"an interleaved sinusoidal embedding needs an even width, got {dim}")
    frequencies = torch.exp(
        -math.log(max_period) * torch.arange(half, device=positions.device, dtype=torch.float32) / half
    )
    angles = positions.float()[..., None] * frequencies
    if interleaved:
        return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)
    return F.pad(torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1), (0, dim % 2))


def rotary_embedding(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate each channel pair (i, i + D/2) of `x` (..., T, D) by the angle position * base^(-2i/D).

    `positions` broadcasts against `x.shape[:-1]`: (T,) for one set of positions, (B, 1, T) for per-sequence
    positions of (B, H, T, D) heads. The dot product of a rotated query and key depends only on the
    difference of their positions (RoFormer, eq. 34), which makes attention relative and defined for any
    length. The rotation is computed in float32 and the result cast back to `x`'s dtype."""
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"rotary embeddings need an even head width, got {d}")
    half = d // 2
    frequencies = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.float()[..., None] * frequencies  # (..., T, D/2)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)

"""Classifier-free guidance (Ho & Salimans 2022) and the conditioning dropout that trains for it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["classifier_free_guidance", "drop_condition", "guided_denoiser", "rescale_guidance"]


def _batch(c: Any, n: int) -> Any:
    """Expand a condition with batch size 1 to batch n (tensors, or lists/tuples/dicts of tensors)."""
    if isinstance(c, Tensor):
        return c.expand(n, *c.shape[1:]) if c.shape[0] == 1 and n != 1 else c
    if isinstance(c, dict):
        return {k: _batch(v, n) for k, v in c.items()}
    if isinstance(c, (list, tuple)):
        return type(c)(_batch(v, n) for v in c)
    raise TypeError(f"conditions must be tensors or lists/tuples/dicts of tensors, got {type(c).__name__}")


def _cat(a: Any, b: Any) -> Any:
    if isinstance(a, Tensor):
        return torch.cat([a, b], 0)
    if isinstance(a, dict):
        return {k: _cat(a[k], b[k]) for k in a}
    return type(a)(_cat(x, y) for x, y in zip(a, b, strict=True))


def rescale_guidance(guided: Tensor, cond_out: Tensor, rescale: float) -> Tensor:
    """Guidance rescale (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed",
    eq. 15-16): x_rescaled = x_cfg * std(x_pos) / std(x_cfg), result = phi x_rescaled + (1 - phi) x_cfg,
    with std over all but the batch dimension. Applied to the raw network output, as diffusers does."""
    dims = list(range(1, guided.ndim))
    std_pos = cond_out.std(dim=dims, keepdim=True)
    std_cfg = guided.std(dim=dims, keepdim=True)
    return rescale * (guided * (std_pos / std_cfg)) + (1 - rescale) * guided


def classifier_free_guidance(
    model_fn: Callable[[Tensor, Tensor, Any], Tensor],
    cond: Any,
    uncond: Any,
    scale: float,
    rescale: float = 0.0,
) -> Callable[[Tensor, Tensor], Tensor]:
    """A denoiser(x_t, t) that returns uncond_out + scale (cond_out - uncond_out) (Ho & Salimans 2022,
    eq. 6, in the output's own parameterisation), evaluating both branches in one batched call of
    model_fn(x_t, t, condition) with the conditions concatenated along dim 0 (uncond first).

    `cond` / `uncond` are tensors (B, ...) or batch 1 (expanded), or lists/tuples/dicts of such;
    `rescale` > 0 applies guidance rescale (see `rescale_guidance`)."""

    def denoiser(x: Tensor, t: Tensor) -> Tensor:
        n = x.shape[0]
        c = _cat(_batch(uncond, n), _batch(cond, n))
        out = model_fn(torch.cat([x, x], 0), torch.cat([t, t], 0), c)
        uncond_out, cond_out = out.chunk(2, 0)
        guided = uncond_out + scale * (cond_out - uncond_out)
        return rescale_guidance(guided, cond_out, rescale) if rescale > 0 else guided

    return denoiser


def guided_denoiser(
    model_fn: Callable[[Tensor, Tensor, Any], Tensor],
    cond: Any,
    uncond: Any | None,
    scale: float,
    rescale: float = 0.0,
) -> Callable[[Tensor, Tensor], Tensor]:
    """The denoiser(x_t, t) a conditional family samples with, over its network `model_fn(x_t, t, condition)`:
    `classifier_free_guidance` for `scale` != 1, else the conditional model alone, one call per step (at
    scale 1, uncond_out + 1 (cond_out - uncond_out) is cond_out). `uncond` None (an unconditional model, or
    no condition given) also means the one call, with `cond` as it is (None too, then)."""
    if uncond is None or scale == 1.0:
        return lambda x, t: model_fn(x, t, cond)
    return classifier_free_guidance(model_fn, cond, uncond, scale, rescale)


def drop_condition(
    cond: Tensor, p: float, null: int | float | Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Replace each row of `cond` by `null` with probability `p` (conditioning dropout, Ho & Salimans 2022,
    Algorithm 1), so that one network learns the conditional and the unconditional model.

    `cond` is a long label tensor (B,) with an integer `null` index, or a float tensor (B, ...) with `null`
    a scalar or a tensor broadcastable to one row (e.g. a learned null embedding)."""
    n = cond.shape[0]
    rand_device = generator.device if generator is not None else cond.device
    drop = torch.rand(n, generator=generator, device=rand_device).to(cond.device) < p
    drop = drop.reshape(n, *([1] * (cond.ndim - 1)))
    null_t = torch.as_tensor(null, dtype=cond.dtype, device=cond.device)
    return torch.where(drop, null_t, cond)

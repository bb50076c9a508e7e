"""ODE samplers over a velocity field: plain functions, each short enough to read against its textbook.

A velocity field is `velocity(x_t, t) -> v` with t a float tensor (B,) in [0, 1], t = 0 noise and t = 1 data
(see `zoo.diffusion.flow`). Every fixed-step sampler has the signature

    sampler(velocity, x, times, *, after_step, progress) -> x

and integrates dx/dt = velocity(x, t) from `times[0]` to `times[-1]` through every point of `times` (any
monotone grid: ascending generates, descending inverts a sample back to its noise); `after_step(i, x, t)` is
called after step i with the state at times[i + 1] and returns the state to continue from (as in
`zoo.diffusion.samplers`, for inpainting). `flow_dopri5` adapts its own steps between the ends of `times`.

Classifier-free guidance needs nothing here: `zoo.diffusion.guided_denoiser(net, cond, uncond, scale)` mixes
whatever the network returns, uncond + scale (cond - uncond), so over a velocity network it is the guided
velocity (SD3's and Flux's guidance), one batched call per evaluation.

Times are Python floats (float64); the velocity sees them as a tensor in x's dtype (at least float32).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from zoo.diffusion.flow import shift_time
from zoo.diffusion.samplers import randn

__all__ = [
    "FLOW_SAMPLERS",
    "flow_dopri5",
    "flow_euler",
    "flow_heun",
    "flow_midpoint",
    "flow_rk4",
    "flow_time_grid",
    "integrate_flow",
    "sample_flow",
]

Velocity = Callable[[Tensor, Tensor], Tensor]
AfterStep = Callable[[int, Tensor, float], Tensor]


def flow_time_grid(steps: int, shift: float = 1.0) -> Tensor:
    """steps + 1 times from 0 (noise) to 1 (data), evenly spaced, then moved by SD3's `shift_time` (shift > 1
    spends more steps near noise). float64."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a whole number of at least 1, got {steps}")
    return shift_time(torch.linspace(0, 1, int(steps) + 1, dtype=torch.float64), shift)


def _times(times: Tensor | Sequence[float]) -> list[float]:
    ts = [float(t) for t in times]
    if len(ts) < 2:
        raise ValueError(f"a time grid needs at least two points, got {ts}")
    return ts


def _call(velocity: Velocity, x: Tensor, t: float) -> Tensor:
    dtype = torch.promote_types(x.dtype, torch.float32)
    return velocity(x, torch.full((x.shape[0],), t, dtype=dtype, device=x.device))


def _intervals(times: Tensor | Sequence[float], progress: bool) -> Iterable[tuple[int, float, float]]:
    ts = _times(times)
    it: Iterable[int] = range(len(ts) - 1)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(ts) - 1, desc="sampling")
    return ((i, ts[i], ts[i + 1]) for i in it)


def _after(after_step: AfterStep | None, i: int, x: Tensor, t: float) -> Tensor:
    return x if after_step is None else after_step(i, x, t)


def flow_euler(
    velocity: Velocity,
    x: Tensor,
    times: Tensor | Sequence[float],
    *,
    after_step: AfterStep | None = None,
    progress: bool = False,
) -> Tensor:
    """Euler's method, x' = x + h v(x, t): rectified flow's and SD3's sampler (diffusers'
    `FlowMatchEulerDiscreteScheduler`); one evaluation per step, first order."""
    for i, t, t_next in _intervals(times, progress):
        x = x + (t_next - t) * _call(velocity, x, t)
        x = _after(after_step, i, x, t_next)
    return x


def flow_heun(
    velocity: Velocity,
    x: Tensor,
    times: Tensor | Sequence[float],
    *,
    after_step: AfterStep | None = None,
    progress: bool = False,
) -> Tensor:
    """Heun's method (the explicit trapezoidal rule): an Euler step to t', then the mean of the slopes at both
    ends, x' = x + h (v(x, t) + v(x_euler, t')) / 2; two evaluations per step, second order. Unlike the
    diffusion Heun (Karras et al. 2022) the last step is corrected too: the velocity at t = 1 is finite."""
    for i, t, t_next in _intervals(times, progress):
        h = t_next - t
        slope = _call(velocity, x, t)
        x_euler = x + h * slope
        x = x + h / 2 * (slope + _call(velocity, x_euler, t_next))
        x = _after(after_step, i, x, t_next)
    return x


def flow_midpoint(
    velocity: Velocity,
    x: Tensor,
    times: Tensor | Sequence[float],
    *,
    after_step: AfterStep | None = None,
    progress: bool = False,
) -> Tensor:
    """The explicit midpoint method, x' = x + h v(x + h/2 v(x, t), t + h/2); two evaluations per step, second
    order."""
    for i, t, t_next in _intervals(times, progress):
        h = t_next - t
        x_mid = x + h / 2 * _call(velocity, x, t)
        x = x + h * _call(velocity, x_mid, t + h / 2)
        x = _after(after_step, i, x, t_next)
    return x


def flow_rk4(
    velocity: Velocity,
    x: Tensor,
    times: Tensor | Sequence[float],
    *,
    after_step: AfterStep | None = None,
    progress: bool = False,
) -> Tensor:
    """The classical fourth-order Runge-Kutta method (Kutta 1901): slopes k1 at t, k2 and k3 at t + h/2, k4 at
    t', x' = x + h (k1 + 2 k2 + 2 k3 + k4) / 6; four evaluations per step. (torchdiffeq's "rk4" is Kutta's
    3/8 rule instead, another fourth-order method.)"""
    for i, t, t_next in _intervals(times, progress):
        h = t_next - t
        k1 = _call(velocity, x, t)
        k2 = _call(velocity, x + h / 2 * k1, t + h / 2)
        k3 = _call(velocity, x + h / 2 * k2, t + h / 2)
        k4 = _call(velocity, x + h * k3, t_next)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        x = _after(after_step, i, x, t_next)
    return x


def flow_dopri5(
    velocity: Velocity,
    x: Tensor,
    times: Tensor | Sequence[float],
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    return_info: bool = False,
    after_step: AfterStep | None = None,
    progress: bool = False,
) -> Tensor | tuple[Tensor, dict[str, int]]:
    """Dormand-Prince 5(4) with adaptive steps (`torchdiffeq.odeint(method="dopri5")`) from times[0] to
    times[-1], the points between ignored; a step is accepted when its error estimate is below
    atol + rtol |x| per element. With `return_info` it returns (x, {"nfe": evaluations}), as k-diffusion's
    adaptive sampler does. `after_step` is called once, at the end; `progress` counts evaluations."""
    from torchdiffeq import odeint  # imported on use: it loads scipy

    ts = _times(times)
    counter = None
    if progress:
        from tqdm.auto import tqdm

        counter = tqdm(desc="velocity evaluations")
    nfe = 0

    def field(t: Tensor, y: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        if counter is not None:
            counter.update(1)
        return _call(velocity, y, float(t))

    span = torch.tensor([ts[0], ts[-1]], dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
    x = odeint(field, x, span, rtol=rtol, atol=atol, method="dopri5")[-1]
    if counter is not None:
        counter.close()
    x = _after(after_step, 0, x, ts[-1])
    return (x, {"nfe": nfe}) if return_info else x


FLOW_SAMPLERS: dict[str, Callable[..., Any]] = {
    "euler": flow_euler,
    "heun": flow_heun,
    "midpoint": flow_midpoint,
    "rk4": flow_rk4,
    "dopri5": flow_dopri5,
}


def integrate_flow(
    velocity: Velocity,
    x: Tensor,
    *,
    sampler: str = "euler",
    steps: int = 8,
    shift: float = 1.0,
    times: Tensor | Sequence[float] | None = None,
    progress: bool = False,
    **options: Any,
) -> Tensor:
    """Integrate `velocity` from the state x at times[0] with `FLOW_SAMPLERS[sampler]`; `times` defaults to
    `flow_time_grid(steps, shift)`, noise to data. `options` go to the sampler (dopri5's rtol, atol; for its
    evaluation count call `flow_dopri5(..., return_info=True)`)."""
    if sampler not in FLOW_SAMPLERS:
        raise ValueError(f"unknown flow sampler {sampler!r}; choose one of {', '.join(FLOW_SAMPLERS)}")
    grid = flow_time_grid(steps, shift) if times is None else times
    return FLOW_SAMPLERS[sampler](velocity, x, grid, progress=progress, **options)


def sample_flow(
    velocity: Velocity,
    shape: Sequence[int],
    *,
    sampler: str = "euler",
    steps: int = 8,
    shift: float = 1.0,
    times: Tensor | Sequence[float] | None = None,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    init: Tensor | None = None,
    strength: float = 1.0,
    mask: Tensor | None = None,
    known: Tensor | None = None,
    progress: bool = False,
    **options: Any,
) -> Tensor:
    """Samples of `shape`: noise x0 ~ N(0, I) drawn from `generator` on its own device (so a CPU generator
    gives the same samples on any device), carried to t = 1 by `integrate_flow`. No clipping.

    The editing options mirror `zoo.diffusion.sample`'s, in flow time (as diffusers' SD3 pipelines do):
    - img2img (`init`, clean data of `shape`): skip the first int(steps - steps * strength) intervals of the
      grid (the rule of diffusers' SD3 img2img pipeline; its SD pipelines skip steps - int(steps * strength))
      and start at the next time t0 from the straight path's point t0 init + (1 - t0) noise (diffusers'
      `FlowMatchEulerDiscreteScheduler.scale_noise` with sigma = 1 - t0). strength 1 starts at t = 0 (pure
      noise); strength 0 returns init.
    - inpainting (`mask` 1 = regenerate, broadcastable to `shape`; `known` the clean data, `init` when
      unset): after every step the known region is replaced by t known + (1 - t) noise, the path's point
      for the same noise, and pasted exactly at the end."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    noise = randn(tuple(shape), generator, dtype, device)
    grid = _times(flow_time_grid(steps, shift) if times is None else times)
    if init is not None:
        init = init.to(device=device, dtype=dtype)
        intervals = len(grid) - 1
        skip = int(max(intervals - intervals * strength, 0))
        grid = grid[skip:]
        if len(grid) < 2:
            return init.clone()
    if mask is None:
        x = noise if init is None else grid[0] * init + (1 - grid[0]) * noise
        return integrate_flow(velocity, x, sampler=sampler, times=grid, progress=progress, **options)

    known = init if known is None else known.to(device=device, dtype=dtype)
    if known is None:
        raise ValueError("inpainting needs `known` (or `init`) alongside `mask`")
    mask = mask.to(device=device, dtype=dtype)

    def paste(x: Tensor, t: float) -> Tensor:
        return mask * x + (1 - mask) * (t * known + (1 - t) * noise)

    start = noise if init is None else grid[0] * init + (1 - grid[0]) * noise
    x = integrate_flow(
        velocity, paste(start, grid[0]), sampler=sampler, times=grid, progress=progress,
        after_step=lambda i, x, t: paste(x, t), **options,
    )  # fmt: skip
    return torch.where(mask == 0, known, mask * x + (1 - mask) * known)

"""Reflow (Liu et al. 2022, "Flow straight and fast"): the couplings a trained flow makes, and how straight
it is.

Reflow retrains a flow on the (noise, sample) pairs its own ODE produces. The new coupling has lower
transport cost and straighter paths, so fewer steps (at the limit one) reproduce the many-step sample.
`draw_pairs` makes the pairs (a family stores and shards them); `straightness`, `coupling_straightness` and
`one_step_error` measure the effect. Squared norms are summed over a sample's dimensions and averaged over
the batch, as the paper's E||.||^2; divide by the number of dimensions to compare sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from zoo.diffusion.flow_samplers import _call, integrate_flow
from zoo.diffusion.samplers import randn

__all__ = ["coupling_straightness", "draw_pairs", "one_step_error", "straightness"]

Velocity = Callable[[Tensor, Tensor], Tensor]


def _squared_norm(x: Tensor) -> Tensor:
    return x.double().pow(2).flatten(1).sum(1).mean()


@torch.no_grad()
def draw_pairs(
    velocity: Velocity,
    shape: Sequence[int],
    *,
    sampler: str = "rk4",
    steps: int = 16,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    **options: Any,
) -> tuple[Tensor, Tensor]:
    """(noise, sample) pairs of the flow's deterministic coupling: noise x0 ~ N(0, I) from `generator` and the
    sample the ODE carries it to (`integrate_flow` with `sampler`, `steps` and `options`), the training data
    of the next rectified flow (Liu et al. 2022, Algorithm 1: Z^{k+1} = RectFlow((Z_0^k, Z_1^k))). A precise
    solver matters more here than in sampling: its error becomes the student's target."""
    noise = randn(tuple(shape), generator, dtype, device)
    return noise, integrate_flow(velocity, noise, sampler=sampler, steps=steps, **options)


@torch.no_grad()
def straightness(velocity: Velocity, noise: Tensor, *, steps: int = 100) -> Tensor:
    """Liu et al.'s straightness S(Z) = int_0^1 E||(Z_1 - Z_0) - dZ_t/dt||^2 dt of the flow's
    own trajectories from `noise`: 0 exactly when every trajectory is a straight line at constant speed. The
    trajectories are Euler paths on `steps` even steps, whose displacement Z_1 - Z_0 is the mean of the
    velocities along them, so S is their variance along the path (a float64 scalar)."""
    x, h = noise, 1.0 / steps
    velocities = []
    for i in range(steps):
        v = _call(velocity, x, i * h)
        velocities.append(v.double())
        x = x + h * v
    displacement = torch.stack(velocities).mean(0)
    return torch.stack([_squared_norm(displacement - v) for v in velocities]).mean()


@torch.no_grad()
def coupling_straightness(velocity: Velocity, x0: Tensor, x1: Tensor, *, steps: int = 16) -> Tensor:
    """E_t E||(x1 - x0) - v(t x1 + (1 - t) x0, t)||^2 over a coupling (x0, x1): how far the velocity is from
    the straight interpolation of the pairs (the rectified-flow loss, Liu et al. 2022, eq. 1), with t on the
    midpoints of `steps` even intervals. On the flow's own pairs (`draw_pairs`) it is 0 exactly when the flow
    is straight; on independent pairs it includes the irreducible variance of x1 - x0 given x_t."""
    displacement = (x1 - x0).double()
    errors = []
    for i in range(steps):
        t = (i + 0.5) / steps
        errors.append(_squared_norm(displacement - _call(velocity, t * x1 + (1 - t) * x0, t).double()))
    return torch.stack(errors).mean()


@torch.no_grad()
def one_step_error(velocity: Velocity, noise: Tensor, sample: Tensor) -> Tensor:
    """E||(x0 + v(x0, 0)) - x1||^2: how far one Euler step from the noise lands from the many-step sample it
    was paired with (`draw_pairs`); what reflow and one-step distillation drive to 0."""
    return _squared_norm(noise + _call(velocity, noise, 0.0) - sample)

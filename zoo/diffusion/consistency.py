"""Consistency models (Song et al. 2023, "Consistency Models"; Song & Dhariwal 2023, "Improved Techniques for
Training Consistency Models"; Luo et al. 2023, "Latent Consistency Models"): the pieces, as plain functions.

A consistency function f(x, sigma) maps any point of a probability-flow ODE trajectory to the trajectory's
origin, so one evaluation draws a sample. It is written in the variance-exploding variable of Karras et al.
(2022), x_sigma = x0 + sigma * eps, as

    f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(x, sigma),      c_skip(sigma_min) = 1, c_out(sigma_min) = 0,

so the boundary condition f(x, sigma_min) = x holds by construction (CM, Appendix C). Training pulls
f_theta(x_{sigma_{n+1}}, sigma_{n+1}) towards the target network's f(x_hat_{sigma_n}, sigma_n), where
x_hat_{sigma_n} is one ODE step of a teacher (distillation, CD) or the same noise at the lower level
(training from scratch, CT). A teacher is any denoiser D(x_sigma, sigma) -> x0 (`vp_denoiser`,
`flow_denoiser` turn zoo's diffusion and flow networks into one); one Euler step over D is DDIM for a VP
model and Euler for a rectified flow (Karras et al. 2022, sec. 3), so one solver serves every teacher.

The functions here are the parts of the papers that are easy to get wrong; `tests/test_consistency.py`
checks each against its closed form or diffusers (`CMStochasticIterativeScheduler`, `LCMScheduler`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from zoo.diffusion.parameterization import Prediction, predict_x0
from zoo.diffusion.samplers import AfterStep, Denoiser, _steps, randn
from zoo.diffusion.schedule import NoiseSchedule

__all__ = [
    "SIGMA_DATA",
    "boundary_scalings",
    "consistency_loss",
    "consistency_sampler",
    "ct_discretization",
    "edm_input_scalings",
    "follow_online",
    "ict_discretization",
    "karras_sigmas",
    "lcm_grid",
    "lcm_sampler",
    "lcm_scalings",
    "lcm_timesteps",
    "lognormal_indices",
    "ode_step",
    "pseudo_huber",
    "target_decay",
    "vp_sigma_to_t",
]

SIGMA_DATA = 0.5  # the data's standard deviation the scalings assume (images in [-1, 1]; CM, EDM)
Consistency = Callable[[Tensor, Tensor], Tensor]  # f(x_sigma, sigma (B,)) -> x0


def karras_sigmas(
    n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, *, dtype=torch.float64
) -> Tensor:
    """The N noise levels of the consistency discretisation, ascending (CM, sec. 5: Karras et al.'s
    sigma_i = (sigma_min^(1/rho) + (i - 1)/(N - 1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho, i = 1..N)."""
    if n < 2:
        raise ValueError(f"a consistency discretisation needs at least 2 noise levels, got {n}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return ((lo + ramp * (hi - lo)) ** rho).to(dtype)


def boundary_scalings(
    sigma: Tensor, sigma_min: float = 0.002, sigma_data: float = SIGMA_DATA
) -> tuple[Tensor, Tensor]:
    """CM Appendix C: c_skip = sigma_d^2 / ((sigma - sigma_min)^2 + sigma_d^2) and
    c_out = (sigma - sigma_min) sigma_d / sqrt(sigma^2 + sigma_d^2): exactly (1, 0) at sigma_min. Note the
    asymmetry: c_out's denominator has sigma, not sigma - sigma_min (the paper's, and diffusers')."""
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = (sigma - sigma_min) * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def edm_input_scalings(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> tuple[Tensor, Tensor]:
    """The network's input scale c_in = 1 / sqrt(sigma^2 + sigma_d^2) (EDM) and its time input
    c_noise = 1000 * 0.25 * ln(sigma) (the consistency-models code's `rescaled_t`, sized for a timestep
    embedding made for 0..1000)."""
    return (sigma**2 + sigma_data**2) ** -0.5, 250.0 * torch.log(sigma + 1e-44)


def lcm_scalings(
    t: Tensor, timestep_scaling: float = 10.0, sigma_data: float = SIGMA_DATA
) -> tuple[Tensor, Tensor]:
    """LCM's boundary scalings over discrete timesteps, applied to the x0 the network predicts (diffusers'
    `LCMScheduler.get_scalings_for_boundary_condition_discrete`): with s = t * timestep_scaling,
    c_skip = sigma_d^2 / (s^2 + sigma_d^2), c_out = s / sqrt(s^2 + sigma_d^2). (1, 0) at t = 0; at
    scaling 10 c_skip is below 1e-3 from t = 1.6 on, so f is the network's x0 everywhere but the end."""
    s = t * timestep_scaling
    return sigma_data**2 / (s**2 + sigma_data**2), s / (s**2 + sigma_data**2) ** 0.5


def ct_discretization(k: int, total: int, s0: int = 2, s1: int = 150) -> int:
    """The number of noise levels N(k) at training step k of `total` (CM, Appendix C, CT):
    N(k) = ceil(sqrt(k / K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1; it grows from s0 to s1 + 1."""
    k = min(k, total)
    return math.ceil(math.sqrt(k / total * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1


def ict_discretization(k: int, total: int, s0: int = 10, s1: int = 1280) -> int:
    """Improved CT's exponential curriculum (Song & Dhariwal 2023, eq. 8): N(k) = min(s0 2^floor(k / K'), s1)
    + 1 with K' = floor(K / (log2(s1 / s0) + 1)): doubles every K' steps."""
    stage = max(1, total // (int(math.log2(s1 / s0)) + 1))
    return min(s0 * 2 ** (k // stage), s1) + 1


def target_decay(n: int, s0: int = 2, mu0: float = 0.95) -> float:
    """The target network's EMA decay mu(k) = exp(s0 ln(mu0) / N(k)) of consistency training (CM, Appendix
    C), where n = N(k): the target follows the online network faster while the discretisation is coarse.
    (Improved CT sets it to 0: the target is the online network, gradient stopped.)"""
    return math.exp(s0 * math.log(mu0) / n)


@torch.no_grad()
def follow_online(target: torch.nn.Module, online: torch.nn.Module, decay: float) -> None:
    """The target network's step after each optimiser step: target <- decay target + (1 - decay) online for
    the parameters; buffers copied. Families call it at the start of the next training step rather than in
    `on_train_batch_end`, which runs after the checkpoint callbacks: a checkpoint would miss the update and
    a resumed run drift from the uninterrupted one."""
    for mine, theirs in zip(target.parameters(), online.parameters(), strict=True):
        mine.lerp_(theirs, 1 - decay)
    for mine, theirs in zip(target.buffers(), online.buffers(), strict=True):
        mine.copy_(theirs)


def lognormal_indices(
    sigmas: Tensor,
    batch: int,
    p_mean: float = -1.1,
    p_std: float = 2.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Indices n of the pairs (sigma_n, sigma_{n+1}) drawn with improved CT's discretised lognormal
    (Song & Dhariwal 2023, sec. 3.5): p(n) proportional to erf((ln sigma_{n+1} - P_mean) / (sqrt 2 P_std))
    - erf((ln sigma_n - P_mean) / (sqrt 2 P_std)). `sigmas` ascending; indices in [0, len - 2]."""
    cdf = torch.erf((torch.log(sigmas.double()) - p_mean) / (math.sqrt(2) * p_std))
    weights = (cdf[1:] - cdf[:-1]).float()
    draw_device = generator.device if generator is not None else weights.device
    picks = torch.multinomial(weights.to(draw_device), batch, replacement=True, generator=generator)
    return picks.to(sigmas.device)


def pseudo_huber(x: Tensor, y: Tensor, c: float | None = None) -> Tensor:
    """Improved CT's distance sqrt(||x - y||^2 + c^2) - c per sample (B,), with c = 0.00054 sqrt(d) for d
    dimensions (Song & Dhariwal 2023, sec. 3.3) unless given: near L2 for small errors, L1 for large."""
    d = x[0].numel()
    c = 0.00054 * math.sqrt(d) if c is None else c
    return ((x - y).flatten(1).pow(2).sum(1) + c**2).sqrt() - c


def vp_sigma_to_t(sigma: Tensor, schedule: NoiseSchedule) -> Tensor:
    """The continuous timestep of a VP schedule whose VE noise level is `sigma`: log sigma interpolated
    linearly between the schedule's integer timesteps (as k-diffusion's `DiscreteSchedule.sigma_to_t`), so
    a network trained on timesteps 0..T-1 is asked at the level it saw. Clamped to the schedule's range."""
    log_sigmas = schedule.sigmas.double().log().to(sigma.device)
    log_sigma = sigma.double().log().clamp(log_sigmas[0], log_sigmas[-1])
    hi = torch.searchsorted(log_sigmas, log_sigma).clamp(1, len(log_sigmas) - 1)
    lo = hi - 1
    w = (log_sigma - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
    return (lo + w).to(sigma.dtype)


# --- training ---------------------------------------------------------------------------------------


def ode_step(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    sigma: Tensor,
    sigma_next: Tensor,
    heun: bool = False,
) -> Tensor:
    """One step of the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma from sigma to sigma_next
    (both (B,)), Euler or with Heun's correction (Karras et al. 2022, Algorithm 1): CD's solver Phi. Euler
    over a VP model's D is its DDIM step, over a rectified flow's its Euler step."""
    view = (-1,) + (1,) * (x.ndim - 1)
    h = (sigma_next - sigma).view(view)
    slope = (x - denoiser(x, sigma)) / sigma.view(view)
    x_next = x + h * slope
    if heun:
        x_next = x + h * (slope + (x_next - denoiser(x_next, sigma_next)) / sigma_next.view(view)) / 2
    return x_next


def consistency_loss(
    online: Consistency,
    target: Consistency,
    x0: Tensor,
    sigma: Tensor,
    sigma_next: Tensor,
    noise: Tensor,
    *,
    teacher: Callable[[Tensor, Tensor], Tensor] | None = None,
    heun: bool = False,
    distance: str = "l2",
) -> Tensor:
    """The per-sample consistency loss d(f_theta(x_{n+1}, sigma_{n+1}), f_target(x_hat_n, sigma_n)) with
    x_{n+1} = x0 + sigma_{n+1} noise (CM, eq. 7 and 10): x_hat_n is one ODE step of the `teacher` denoiser
    (CD) or x0 + sigma_n noise, the same noise (CT). The target pass is gradient-free and replays the
    online pass's random state, so both see the same dropout masks. `distance`: l2 (mean over dimensions)
    or pseudo_huber. Weighting and averaging are the caller's."""
    view = (-1,) + (1,) * (x0.ndim - 1)
    x_next = x0 + sigma_next.view(view) * noise
    state = torch.get_rng_state()
    prediction = online(x_next, sigma_next)
    with torch.no_grad():
        if teacher is None:
            x_hat = x0 + sigma.view(view) * noise
        else:
            x_hat = ode_step(teacher, x_next, sigma_next, sigma, heun)
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(state)
            goal = target(x_hat, sigma)
    if distance == "l2":
        return (prediction - goal).flatten(1).pow(2).mean(1)
    if distance == "pseudo_huber":
        return pseudo_huber(prediction, goal)
    raise ValueError(f"unknown distance {distance!r}; choose l2 or pseudo_huber")


# --- sampling ---------------------------------------------------------------------------------------


def consistency_sampler(
    model: Consistency,
    noise: Tensor,
    sigmas: Iterable[float],
    *,
    sigma_min: float = 0.002,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    progress: bool = False,
) -> Tensor:
    """Multistep consistency sampling (CM, Algorithm 1): x = sigma_0 z; x0 = f(x, sigma_0); then for each
    further level x = x0 + sqrt(sigma_i^2 - sigma_min^2) z and x0 = f(x, sigma_i). `sigmas` descending, the
    first the largest; one level is one-step generation. `clip_denoised` clamps each x0 to [-1, 1] (pixels;
    diffusers' default). The noise after the first comes from `generator`, in order."""
    levels = [float(s) for s in sigmas]
    x = noise * levels[0]
    x0 = x
    steps: Iterable[tuple[int, float]] = enumerate(levels)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, total=len(levels), desc="sampling")
    for i, sigma in steps:
        if i > 0:
            z = randn(tuple(x.shape), generator, x.dtype, x.device)
            x = x0 + (max(sigma, sigma_min) ** 2 - sigma_min**2) ** 0.5 * z
        x0 = model(x, torch.full((len(x),), sigma, dtype=x.dtype, device=x.device))
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
    return x0


def lcm_grid(num_train_timesteps: int = 1000, original_steps: int = 50, top: int | None = None) -> Tensor:
    """LCM's skip-step grid, descending: t = i c - 1, c = T // original_steps, i = original_steps..1, the
    timesteps at or below `top` (None: all, the grid of diffusers' `LCMScheduler`)."""
    skip = num_train_timesteps // original_steps
    grid = torch.arange(original_steps, 0, -1, dtype=torch.long) * skip - 1
    return grid if top is None else grid[grid <= top]


def lcm_timesteps(
    steps: int, num_train_timesteps: int = 1000, original_steps: int = 50, top: int | None = None
) -> Tensor:
    """LCM's sampling timesteps (diffusers' `LCMScheduler.set_timesteps`): `lcm_grid` read from the top at
    floor(linspace(0, len(grid), steps, endpoint=False)). 4 steps of 50 over T = 1000: 999, 759, 499, 259;
    with `top` 959 (a 48-level grid): 959, 719, 479, 239."""
    grid = lcm_grid(num_train_timesteps, original_steps, top)
    if not 1 <= steps <= len(grid):
        raise ValueError(f"LCM sampling takes 1 to {len(grid)} steps (its distillation grid), got {steps}")
    picks = torch.floor(torch.arange(steps, dtype=torch.float64) * len(grid) / steps).long()
    return grid[picks]


def lcm_sampler(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    schedule: NoiseSchedule,
    *,
    prediction: Prediction = "epsilon",
    generator: torch.Generator | None = None,
    clip_sample: bool = False,
    after_step: AfterStep | None = None,
    progress: bool = False,
    timestep_scaling: float = 10.0,
) -> Tensor:
    """LCM's multistep sampler (Luo et al. 2023, Algorithm 3) with the signature of `zoo.diffusion.samplers`:
    at each timestep x0 = c_skip(t) x + c_out(t) x0_hat (`lcm_scalings`), then re-noise to the next timestep
    with fresh noise, x = sqrt(ab') x0 + sqrt(1 - ab') z; the last x0 is the sample. `timesteps` from
    `lcm_timesteps`. `clip_sample` clamps x0_hat, as diffusers' `clip_sample`."""
    ab = schedule.alphas_cumprod
    n = len(timesteps)
    for i, t in _steps(timesteps, progress):
        t_in = torch.full((len(x),), float(t), dtype=torch.float32, device=x.device)
        x0_hat = predict_x0(denoiser(x, t_in), x, float(ab[t]), prediction)
        if clip_sample:
            x0_hat = x0_hat.clamp(-1, 1)
        c_skip, c_out = lcm_scalings(torch.tensor(float(t), dtype=torch.float64), timestep_scaling)
        x0 = float(c_out) * x0_hat + float(c_skip) * x
        if i == n - 1:
            return x0
        ab_next = float(ab[int(timesteps[i + 1])])
        x = ab_next**0.5 * x0 + (1 - ab_next) ** 0.5 * randn(tuple(x.shape), generator, x.dtype, x.device)
        if after_step is not None:
            x = after_step(i, x, ab_next)
    return x

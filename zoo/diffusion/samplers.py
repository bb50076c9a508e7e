"""Samplers: plain functions over a denoiser callable, each short enough to read against its paper.

A denoiser is `denoiser(x_t, t) -> raw network output` where x_t is the VP sample the network was trained
on (x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps) and t a float tensor (B,) of timesteps in
[0, T-1]. Every sampler has the signature

    sampler(denoiser, x, timesteps, schedule, *, prediction, generator, clip_sample, after_step, progress,
            **options) -> x0

where `x` is the VP sample at `timesteps[0]` and `timesteps` is descending (long); it integrates down to the
clean sample (alpha_bar = 1 after the last step) and returns it. `after_step(i, x_vp, alpha_bar_next)` is
called after step i with the VP sample at the next noise level (alpha_bar_next = 1.0 after the last step)
and returns the sample to continue from (used for inpainting).

Sigma-space samplers (Euler, Euler ancestral, Heun) integrate the equivalent variance-exploding variable
x / sqrt(alpha_bar) = x0 + sigma eps, sigma = sqrt((1 - alpha_bar) / alpha_bar) (Karras et al. 2022), and
hand the network x / sqrt(1 + sigma^2), as diffusers' `scale_model_input` does.

Schedule quantities are read in float64 as Python floats; tensors stay in the dtype of `x`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from zoo.diffusion.parameterization import Prediction, predict_eps, predict_x0
from zoo.diffusion.schedule import NoiseSchedule

__all__ = ["SAMPLERS", "ddim", "ddpm", "dpmpp_2m", "euler", "euler_ancestral", "heun", "randn"]

Denoiser = Callable[[Tensor, Tensor], Tensor]
AfterStep = Callable[[int, Tensor, float], Tensor]

# The smallest alpha_bar used in sigma space, where zero terminal SNR would make sigma infinite; the value
# diffusers' Euler schedulers substitute for alpha_bar_T = 0.
_MIN_ALPHA_BAR_SIGMA = 2.0**-24


def _call(denoiser: Denoiser, x: Tensor, t: int) -> Tensor:
    return denoiser(x, torch.full((x.shape[0],), float(t), dtype=torch.float32, device=x.device))


def randn(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: str | torch.device,
) -> Tensor:
    """Standard normal noise drawn on the generator's device and moved to `device` (as diffusers'
    `randn_tensor`), so a CPU generator gives the same numbers whatever device the samples live on."""
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, dtype=dtype, device=draw_device).to(device)


def _noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return randn(tuple(x.shape), generator, x.dtype, x.device)


def _steps(timesteps: Tensor, progress: bool) -> Iterable[tuple[int, int]]:
    ts = [int(t) for t in timesteps]
    it: Iterable[int] = range(len(ts))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(ts), desc="sampling")
    return ((i, ts[i]) for i in it)


def _alpha_bars(schedule: NoiseSchedule, timesteps: Tensor) -> list[float]:
    """alpha_bar at each timestep, followed by 1.0 for the clean end point."""
    ab = schedule.alphas_cumprod
    return [float(ab[int(t)]) for t in timesteps] + [1.0]


def _x0(out: Tensor, x: Tensor, ab: float, prediction: Prediction, clip_sample: bool) -> Tensor:
    x0 = predict_x0(out, x, ab, prediction)
    return x0.clamp(-1, 1) if clip_sample else x0


def ddpm(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    schedule: NoiseSchedule,
    *,
    prediction: Prediction = "epsilon",
    generator: torch.Generator | None = None,
    variance: str = "fixed_small",
    clip_sample: bool = False,
    after_step: AfterStep | None = None,
    progress: bool = False,
) -> Tensor:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2) on a subsequence of timesteps (Nichol & Dhariwal
    2021, section 4): x_{t'} ~ N(mu~(x_t, x0_hat), sigma^2 I) with the posterior mean of eq. 7 for the step
    t -> t' (beta = 1 - alpha_bar_t / alpha_bar_t') and sigma^2 the posterior variance beta~ ("fixed_small")
    or beta ("fixed_large"). No noise is added on the last step (Algorithm 2: z = 0 at t = 1)."""
    if variance not in ("fixed_small", "fixed_large"):
        raise ValueError(f"unknown variance {variance!r}")
    abs_ = _alpha_bars(schedule, timesteps)
    n = len(timesteps)
    for i, t in _steps(timesteps, progress):
        ab, ab_prev = abs_[i], abs_[i + 1]
        beta = 1 - ab / ab_prev
        x0 = _x0(_call(denoiser, x, t), x, ab, prediction, clip_sample)
        # eq. 7: mu~ = sqrt(ab') beta / (1 - ab) x0 + sqrt(1 - beta) (1 - ab') / (1 - ab) x_t
        x = (ab_prev**0.5 * beta / (1 - ab)) * x0 + ((1 - beta) ** 0.5 * (1 - ab_prev) / (1 - ab)) * x
        if i < n - 1:
            var = (1 - ab_prev) / (1 - ab) * beta if variance == "fixed_small" else beta
            x = x + var**0.5 * _noise(x, generator)
        if after_step is not None:
            x = after_step(i, x, ab_prev)
    return x


def ddim(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    schedule: NoiseSchedule,
    *,
    prediction: Prediction = "epsilon",
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    clip_sample: bool = False,
    after_step: AfterStep | None = None,
    progress: bool = False,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12): x_{t'} = sqrt(ab') x0_hat + sqrt(1 - ab' - sigma^2) eps_hat + sigma z
    with sigma = eta sqrt((1 - ab') / (1 - ab)) sqrt(1 - ab / ab') (eq. 16). eta = 0 is deterministic,
    eta = 1 is ancestral sampling with the posterior variance. When `clip_sample` is set only x0_hat is
    clipped (eps_hat is the network's), as in diffusers' default."""
    abs_ = _alpha_bars(schedule, timesteps)
    for i, t in _steps(timesteps, progress):
        ab, ab_prev = abs_[i], abs_[i + 1]
        out = _call(denoiser, x, t)
        x0 = _x0(out, x, ab, prediction, clip_sample)
        eps = predict_eps(out, x, ab, prediction)
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5
        x_next = ab_prev**0.5 * x0 + (1 - ab_prev - sigma**2) ** 0.5 * eps
        if eta > 0:
            x_next = x_next + sigma * _noise(x, generator)
        x = x_next if after_step is None else after_step(i, x_next, ab_prev)
    return x


def dpmpp_2m(
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
) -> Tensor:
    """DPM-Solver++(2M), the multistep second-order data-prediction solver (Lu et al. 2022, "DPM-Solver++",
    Algorithm 2), with alpha_t = sqrt(ab), sigma_t = sqrt(1 - ab), lambda_t = log(alpha_t / sigma_t),
    h_i = lambda_{t_i} - lambda_{t_{i-1}}, r_i = h_{i-1} / h_i:

        D_i = (1 + 1 / (2 r_i)) x0_hat_{i-1} - 1 / (2 r_i) x0_hat_{i-2}
        x_{t_i} = sigma_{t_i} / sigma_{t_{i-1}} x_{t_{i-1}} - alpha_{t_i} (exp(-h_i) - 1) D_i

    The first step is first order (DDIM), as in the paper. The last step goes to sigma = 0, where
    h = inf and the first-order update is exactly x0_hat; it is taken first order, as diffusers does
    (`final_sigmas_type="zero"`), since r = 0 there.

    At alpha_bar = 0 (zero terminal SNR) lambda = -inf: the first-order step's limit is finite
    (exp(-h) = 0: x = sigma_t x_T + alpha_t x0_hat) and the next step has r = inf, i.e. D = x0_hat,
    so it is taken first order. Both are computed as limits, with no clamping of alpha_bar (diffusers
    instead sets alpha_bar_T = 2^-24). eps-prediction has no x0 at alpha_bar = 0: use v-prediction there.

    Near alpha_bar = 0 (the cosine schedule's last step has alpha_bar 2.4e-9) an eps-network's x0_hat
    carries its error times sqrt((1 - ab) / ab) ~ 2e4; DDIM's first step has the same factor, and the
    second step here reuses that x0_hat with weight 1 / (2 r). Starting lower ("leading" spacing) or
    v-prediction avoids it.
    """
    abs_ = _alpha_bars(schedule, timesteps)
    n = len(timesteps)

    def lam(ab: float) -> float:  # log-SNR / 2; -inf at ab = 0, +inf at ab = 1
        return 0.5 * (math.log(ab) - math.log1p(-ab)) if 0 < ab < 1 else (-math.inf if ab == 0 else math.inf)

    x0_prev, h_prev = None, math.nan
    for i, t in _steps(timesteps, progress):
        ab, ab_next = abs_[i], abs_[i + 1]
        x0 = _x0(_call(denoiser, x, t), x, ab, prediction, clip_sample)
        alpha_s, sigma_s = ab**0.5, (1 - ab) ** 0.5
        alpha_t, sigma_t = ab_next**0.5, (1 - ab_next) ** 0.5
        h = lam(ab_next) - lam(ab)
        last = i == n - 1
        if last:  # to sigma = 0: the limit h -> inf of the first-order update
            x = x0
        else:
            # exp(-h) = (sigma_t alpha_s) / (alpha_t sigma_s), written as a ratio so that ab = 0 gives 0
            exp_neg_h = sigma_t * alpha_s / (alpha_t * sigma_s)
            if x0_prev is None or not math.isfinite(h_prev):
                d = x0
            else:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            x = (sigma_t / sigma_s) * x + (alpha_t * (1 - exp_neg_h)) * d
        x0_prev, h_prev = x0, h
        if after_step is not None:
            x = after_step(i, x, ab_next)
    return x


def _sigma(ab: float) -> float:
    ab = max(ab, _MIN_ALPHA_BAR_SIGMA)
    return ((1 - ab) / ab) ** 0.5


class _SigmaSpace:
    """Shared plumbing of the sigma-space samplers: VE state x = x_vp / sqrt(ab), and the x0 the network
    implies at noise level sigma (network input x / sqrt(1 + sigma^2), timestep t)."""

    def __init__(self, denoiser: Denoiser, prediction: Prediction, clip_sample: bool) -> None:
        self.denoiser, self.prediction, self.clip_sample = denoiser, prediction, clip_sample

    def x0(self, x: Tensor, sigma: float, t: int) -> Tensor:
        ab = 1 / (1 + sigma**2)
        x_vp = x * ab**0.5
        return _x0(_call(self.denoiser, x_vp, t), x_vp, ab, self.prediction, self.clip_sample)

    @staticmethod
    def after(after_step: AfterStep | None, i: int, x: Tensor, sigma: float) -> Tensor:
        if after_step is None:
            return x
        ab = 1 / (1 + sigma**2)
        return after_step(i, x * ab**0.5, ab) / ab**0.5


def _sigmas(schedule: NoiseSchedule, timesteps: Tensor) -> list[float]:
    return [_sigma(float(schedule.alphas_cumprod[int(t)])) for t in timesteps] + [0.0]


def euler(
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
) -> Tensor:
    """Euler's method on the probability-flow ODE dx/dsigma = (x - x0_hat(x, sigma)) / sigma (Karras et al.
    2022, eq. 3 with sigma(t) = t; Algorithm 2 without churn and without the second-order correction)."""
    sigmas = _sigmas(schedule, timesteps)
    net = _SigmaSpace(denoiser, prediction, clip_sample)
    x = x / (1 / (1 + sigmas[0] ** 2)) ** 0.5
    for i, t in _steps(timesteps, progress):
        d = (x - net.x0(x, sigmas[i], t)) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
        x = net.after(after_step, i, x, sigmas[i + 1])
    return x


def euler_ancestral(
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
) -> Tensor:
    """Euler ancestral (k-diffusion's `sample_euler_ancestral`, eta = 1): an Euler step down to sigma_down,
    then fresh noise of std sigma_up, with sigma_up^2 = sigma'^2 (sigma^2 - sigma'^2) / sigma^2 and
    sigma_down^2 = sigma'^2 - sigma_up^2, so that the marginal variance matches the DDPM posterior step
    (Song et al. 2021, ancestral sampling)."""
    sigmas = _sigmas(schedule, timesteps)
    net = _SigmaSpace(denoiser, prediction, clip_sample)
    x = x / (1 / (1 + sigmas[0] ** 2)) ** 0.5
    n = len(timesteps)
    for i, t in _steps(timesteps, progress):
        s, s_next = sigmas[i], sigmas[i + 1]
        sigma_up = (s_next**2 * (s**2 - s_next**2) / s**2) ** 0.5
        sigma_down = (s_next**2 - sigma_up**2) ** 0.5
        d = (x - net.x0(x, s, t)) / s
        x = x + d * (sigma_down - s)
        if i < n - 1:  # sigma_up = 0 on the last step
            x = x + sigma_up * _noise(x, generator)
        x = net.after(after_step, i, x, s_next)
    return x


def heun(
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
) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 1): an Euler step to sigma', then the
    trapezoidal correction with the slope re-evaluated at sigma' (the network at timestep t'); the last step
    to sigma = 0 is a plain Euler step. 2n - 1 network calls for n timesteps."""
    sigmas = _sigmas(schedule, timesteps)
    ts = [int(t) for t in timesteps]
    net = _SigmaSpace(denoiser, prediction, clip_sample)
    x = x / (1 / (1 + sigmas[0] ** 2)) ** 0.5
    for i, t in _steps(timesteps, progress):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = (x - net.x0(x, s, t)) / s
        x_euler = x + d * (s_next - s)
        if s_next == 0:
            x = x_euler
        else:
            d_next = (x_euler - net.x0(x_euler, s_next, ts[i + 1])) / s_next
            x = x + (d + d_next) / 2 * (s_next - s)
        x = net.after(after_step, i, x, s_next)
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "dpmpp_2m": dpmpp_2m,
    "euler": euler,
    "euler_ancestral": euler_ancestral,
    "heun": heun,
}

"""Flow matching: probability paths between noise and data, their velocity targets, minibatch
optimal-transport couplings, training-time distributions, the loss, and a DDPM network read as a flow.

Time convention (torchcfm's, and Lipman et al. 2023's): t = 0 is noise x0 ~ N(0, I), t = 1 is data x1. A
Gaussian probability path is

    x_t = alpha(t) x1 + sigma(t) x0 + sigma_min eps,    target u_t = alpha'(t) x1 + sigma'(t) x0,

and a network v(x_t, t) regressed on u_t learns the marginal velocity E[u_t | x_t], whose ODE dx/dt = v
carries N(0, I) at t = 0 to the data at t = 1 (Lipman et al. 2023, theorems 1-2). Beware the names: the
diffusion code's x0 is *data*; here x0 is *noise*, as in torchcfm. SD3 and diffusers run time the other way
(sigma = 1 - t, noise at sigma = 1, the network predicting noise - data = -u_t); `shift_time` says where
that matters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from zoo.diffusion.guidance import drop_condition
from zoo.diffusion.parameterization import Prediction, predict_v
from zoo.diffusion.samplers import randn
from zoo.diffusion.schedule import NoiseSchedule

__all__ = [
    "PATHS",
    "TIME_SAMPLERS",
    "ProbabilityPath",
    "RectifiedPath",
    "VPPath",
    "conditional_flow_matching_loss",
    "ddpm_as_velocity",
    "ddpm_flow_time",
    "ddpm_flow_times",
    "ddpm_velocity",
    "flow_matching_loss",
    "logit_normal_time",
    "mode_time",
    "ot_coupling",
    "sample_time",
    "shift_time",
    "uniform_time",
]

Velocity = Callable[[Tensor, Tensor], Tensor]


def _like(coefficient: Tensor, x: Tensor) -> Tensor:
    """A per-sample coefficient (B,) shaped (B, 1, ..., 1) to broadcast over x, in x's dtype and device."""
    return coefficient.reshape(-1, *([1] * (x.ndim - 1))).to(x)


# --- probability paths ------------------------------------------------------------------------------------


class ProbabilityPath:
    """A Gaussian path x_t = alpha(t) x1 + sigma(t) x0 + sigma_min eps from noise x0 (t = 0) to data x1
    (t = 1), and its conditional velocity u_t = alpha'(t) x1 + sigma'(t) x0. `sigma_min` is torchcfm's
    constant `sigma` (`ConditionalFlowMatcher(sigma)`): a fixed blur of width sigma_min around every
    conditional path, which adds nothing to u_t since it does not change with t. Subclasses give alpha,
    sigma, their derivatives and the inverse of the SNR; `t` is a float tensor (B,)."""

    def __init__(self, sigma_min: float = 0.0) -> None:
        if not sigma_min >= 0:
            raise ValueError(f"sigma_min must be >= 0, got {sigma_min}")
        self.sigma_min = float(sigma_min)

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def time_at_snr(self, snr: Tensor) -> Tensor:
        """The time t at which alpha(t)^2 / sigma(t)^2 equals `snr` (the paths' SNR rises from 0 to inf)."""
        raise NotImplementedError

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """x_t on the path from noise x0 to data x1; `noise` is the eps of the sigma_min term (needed only
        when sigma_min > 0, so that a caller decides where it comes from)."""
        x_t = _like(self.alpha(t), x1) * x1 + _like(self.sigma(t), x0) * x0
        if self.sigma_min > 0:
            if noise is None:
                raise ValueError("a path with sigma_min > 0 needs the noise of its sigma_min term")
            x_t = x_t + self.sigma_min * noise
        return x_t

    def target(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """The conditional velocity u_t = alpha'(t) x1 + sigma'(t) x0 the network regresses on."""
        return _like(self.d_alpha(t), x1) * x1 + _like(self.d_sigma(t), x0) * x0

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio alpha(t)^2 / sigma(t)^2 (sigma_min aside): 0 at t = 0, inf at t = 1."""
        return self.alpha(t) ** 2 / self.sigma(t) ** 2

    def shift_time(self, t: Tensor, shift: float) -> Tensor:
        """The time whose SNR is SNR(t) / shift^2: `zoo.diffusion.shift_snr` for flows (shift > 1 moves every
        time towards noise; SD3's shift, Esser et al. 2024, section 5.3.2)."""
        if not shift > 0:
            raise ValueError(f"shift must be positive, got {shift}")
        return self.time_at_snr(self.snr(t) / shift**2)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma_min={self.sigma_min})"


class RectifiedPath(ProbabilityPath):
    """The straight path x_t = t x1 + (1 - t) x0 (+ sigma_min eps), u_t = x1 - x0: rectified flow (Liu et al.
    2022), I-CFM and, with an OT coupling, OT-CFM (Tong et al. 2024); torchcfm's `ConditionalFlowMatcher`."""

    def alpha(self, t: Tensor) -> Tensor:
        return t

    def sigma(self, t: Tensor) -> Tensor:
        return 1 - t

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def time_at_snr(self, snr: Tensor) -> Tensor:
        # t / (1 - t) = sqrt(snr); written as 1 / (1 + 1 / sqrt(snr)) so that snr = inf gives t = 1
        return 1 / (1 + snr.rsqrt())


class VPPath(ProbabilityPath):
    """The variance-preserving path x_t = sin(pi t / 2) x1 + cos(pi t / 2) x0 (Albergo & Vanden-Eijnden 2023's
    trigonometric interpolant; torchcfm's `VariancePreservingConditionalFlowMatcher`): for unit-variance data,
    alpha^2 + sigma^2 = 1 at every t, as in DDPM. It is the cosine schedule in continuous time (Nichol &
    Dhariwal with s = 0: alpha_bar = cos^2(pi u / 2) at u = 1 - t), and every discrete `NoiseSchedule` lies on
    it: timestep tau sits at flow time `ddpm_flow_time(alpha_bar_tau)`, where the VP sample x_tau is x_t."""

    def alpha(self, t: Tensor) -> Tensor:
        return torch.sin(t * (math.pi / 2))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.cos(t * (math.pi / 2))

    def d_alpha(self, t: Tensor) -> Tensor:
        return (math.pi / 2) * torch.cos(t * (math.pi / 2))

    def d_sigma(self, t: Tensor) -> Tensor:
        return -(math.pi / 2) * torch.sin(t * (math.pi / 2))

    def time_at_snr(self, snr: Tensor) -> Tensor:
        return torch.atan(snr.sqrt()) * (2 / math.pi)


PATHS: dict[str, type[ProbabilityPath]] = {"rectified": RectifiedPath, "vp": VPPath}


# --- a DDPM network read as a flow -----------------------------------------------------------------------


def ddpm_flow_time(alpha_bar: float | Tensor) -> float | Tensor:
    """The flow time of the VP path (`VPPath`) whose alpha(t)^2 is `alpha_bar`:
    t = (2 / pi) atan2(sqrt(alpha_bar), sqrt(1 - alpha_bar)); 0 at pure noise, 1 at clean data. A float or
    a tensor, as given."""
    if isinstance(alpha_bar, Tensor):
        return torch.atan2(alpha_bar.sqrt(), (1 - alpha_bar).sqrt()) * (2 / math.pi)
    return math.atan2(alpha_bar**0.5, (1 - alpha_bar) ** 0.5) * 2 / math.pi


def ddpm_velocity(output: Tensor, x_t: Tensor, alpha_bar: float | Tensor, prediction: Prediction) -> Tensor:
    """The `VPPath` velocity at flow time `ddpm_flow_time(alpha_bar)` from a DDPM network's output at the VP
    sample x_t = a data + s noise (a = sqrt(alpha_bar) = sin(pi t / 2), s = cos(pi t / 2)).

    The marginal velocity is E[alpha' data + sigma' noise | x_t] = (pi / 2)(s data_hat - a noise_hat), which
    is -(pi / 2) times Salimans & Ho's v = a eps - s x0: v-prediction is the path's velocity in angle, run
    backwards. eps-prediction needs alpha_bar > 0 (no data estimate at zero SNR), as in the DDPM samplers."""
    return -(math.pi / 2) * predict_v(output, x_t, alpha_bar, prediction)


def ddpm_flow_times(schedule: NoiseSchedule, timesteps: Tensor) -> Tensor:
    """The ascending flow-time grid (float64) that visits DDPM `timesteps` (descending, as
    `NoiseSchedule.timesteps` gives them) and ends at clean data, t = 1: a flow sampler on `ddpm_as_velocity`
    over this grid evaluates the network at its own timesteps only (Euler, Heun; midpoint and RK4 stages fall
    between them)."""
    alpha_bars = schedule.alphas_cumprod[timesteps.long().cpu()]
    times = ddpm_flow_time(alpha_bars)
    return torch.cat([times, times.new_ones(1)])


def ddpm_as_velocity(denoiser: Velocity, schedule: NoiseSchedule, prediction: Prediction) -> Velocity:
    """A velocity field velocity(x_t, t) on the `VPPath` over a DDPM network `denoiser(x_vp, timestep)`:
    the VP sample is x_t itself, the network runs at the schedule timestep nearest in flow time (zoo hands a
    network only the integer timesteps it was trained on; exact on a `ddpm_flow_times` grid), and its output
    becomes a velocity with `ddpm_velocity` at that timestep's alpha_bar. Before the last timestep (t below
    its flow time) the network is read at the last timestep, as DDPM samplers start there from pure noise."""
    alpha_bars = schedule.alphas_cumprod  # float64, CPU
    step_times = ddpm_flow_time(alpha_bars)

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        nearest = (t.detach().to("cpu", torch.float64)[:, None] - step_times[None]).abs().argmin(1)
        out = denoiser(x, nearest.to(device=x.device, dtype=torch.float32))
        return ddpm_velocity(out, x, alpha_bars[nearest], prediction)

    return velocity


# --- time: training distributions and the shift -------------------------------------------------------------


def _uniform(n: int, generator: torch.Generator | None, device: str | torch.device | None) -> Tensor:
    draw_device = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=draw_device).to(device or draw_device)


def uniform_time(
    n: int, *, generator: torch.Generator | None = None, device: str | torch.device | None = None
) -> Tensor:
    """n times uniform in [0, 1) (Lipman et al. 2023; Liu et al. 2022)."""
    return _uniform(n, generator, device)


def logit_normal_time(
    n: int,
    loc: float = 0.0,
    scale: float = 1.0,
    *,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> Tensor:
    """n times with logit(t) ~ N(loc, scale^2) (Esser et al. 2024, SD3, section 3.1; its default loc 0,
    scale 1): more training at intermediate times, where the velocity is hardest to predict. SD3 puts noise
    at t = 1, so its location m is -loc here (m > 0 there, loc < 0 here: more weight on the noisy side)."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    draw_device = generator.device if generator is not None else device
    z = torch.randn(n, generator=generator, device=draw_device).to(device or draw_device)
    return torch.sigmoid(loc + scale * z)


def mode_time(
    n: int,
    scale: float = 1.29,
    *,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> Tensor:
    """n times by SD3's mode sampling with heavy tails (Esser et al. 2024, section 3.1):
    f_mode(u) = 1 - u - s (cos^2(pi u / 2) - 1 + u) for u uniform, s in [-1, 2 / (pi - 2)] (so that f is
    monotone); s = 0 is uniform, s > 0 favours the middle, s < 0 the ends. Here t = 1 - f_mode(u); the
    density is symmetric about 1/2, so the flip of SD3's time changes nothing."""
    if not -1 <= scale <= 2 / (math.pi - 2):
        raise ValueError(f"mode scale must be in [-1, 2 / (pi - 2) = 1.752], got {scale}")
    u = _uniform(n, generator, device)
    return u + scale * (torch.cos(u * (math.pi / 2)) ** 2 - 1 + u)


TIME_SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "uniform": uniform_time,
    "logit_normal": logit_normal_time,
    "mode": mode_time,
}


def sample_time(
    n: int,
    kind: str = "uniform",
    *,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
    **options: float,
) -> Tensor:
    """n training times from `TIME_SAMPLERS[kind]`; `options` are its parameters (`loc`, `scale`)."""
    if kind not in TIME_SAMPLERS:
        raise ValueError(f"unknown time sampler {kind!r}; choose one of {', '.join(TIME_SAMPLERS)}")
    return TIME_SAMPLERS[kind](n, generator=generator, device=device, **options)


def shift_time(t: Tensor, shift: float) -> Tensor:
    """SD3's timestep shift (Esser et al. 2024, section 5.3.2) in this module's time, for the rectified path.

    SD3 writes it for sigma = 1 - t (noise at sigma = 1): sigma' = shift sigma / (1 + (shift - 1) sigma); with
    t = 1 - sigma that is t' = t / (shift - (shift - 1) t). On the straight path SNR = (t / (1 - t))^2, and
    t' / (1 - t') = t / (shift (1 - t)): the SNR divided by shift^2, which is what `zoo.diffusion.shift_snr`
    does to a noise schedule. `ProbabilityPath.shift_time` gives the same for any path."""
    if not shift > 0:
        raise ValueError(f"shift must be positive, got {shift}")
    return t / (shift - (shift - 1) * t)


# --- minibatch optimal transport ------------------------------------------------------------------------


def ot_coupling(x0: Tensor, x1: Tensor) -> Tensor:
    """x0 reordered so that (x0[i], x1[i]) is the minibatch optimal-transport pairing under squared Euclidean
    cost (OT-CFM, Tong et al. 2024; Pooladian et al. 2023), solved exactly with POT's `ot.emd` as torchcfm's
    `OTPlanSampler("exact")` does. x1 (and anything paired with it, such as labels) keeps its order.

    With equal batch sizes and uniform weights the exact plan is a permutation (a vertex of the Birkhoff
    polytope), so every x0 is used once. torchcfm instead draws B pairs from the plan with replacement
    (`np.random.choice`), which repeats some pairs and drops others; the pairs it can draw are these."""
    import ot  # POT: imported on use, it takes a second to load

    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    n = x0.shape[0]
    a, b = x0.detach().flatten(1).double(), x1.detach().flatten(1).double()
    # |a|^2 + |b|^2 - 2 a.b in float64: exact enough that ties between pairings are real ones
    cost = (a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None] - 2 * a @ b.T).clamp(min=0)
    weights = torch.full((n,), 1.0 / n, dtype=torch.float64).numpy()
    plan = ot.emd(weights, weights, cost.cpu().numpy(), numItermax=1_000_000)
    partner = torch.from_numpy(plan.argmax(axis=0)).to(x0.device)  # the x0 of each x1
    return x0[partner]


# --- the loss -----------------------------------------------------------------------------------------------


def flow_matching_loss(velocity: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """The flow-matching regression ||v - u_t||^2 (Lipman et al. 2023, eq. 9), the mean over all but the batch
    dimension, then over the batch, weighted per sample by `weights` (B,) when given. In float32 whatever
    the network's precision, so that bf16 outputs do not round the loss."""
    per_sample = (velocity.float() - target.float()).pow(2).flatten(1).mean(1)
    if weights is None:
        return per_sample.mean()
    return (weights.to(per_sample) * per_sample).mean()


def conditional_flow_matching_loss(
    model_fn: Callable[[Tensor, Tensor, Any], Tensor],
    x1: Tensor,
    path: ProbabilityPath,
    *,
    condition: Tensor | None = None,
    condition_dropout: float = 0.0,
    null_condition: int | float | Tensor | None = None,
    x0: Tensor | None = None,
    ot_pairing: bool = False,
    time_sampler: str = "uniform",
    time_options: Mapping[str, float] | None = None,
    shift: float = 1.0,
    weighting: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One training step's loss (conditional flow matching, Lipman et al. 2023, eq. 9): draw t, noise x0 and
    the sigma_min noise (in that order, from `generator` when given), pair them with the data x1 (by OT when
    `ot_pairing`), and regress `model_fn(x_t, t, condition)` on the path's target.

    - `x0`: a given source instead of N(0, I) (another distribution, or a reflow coupling: then no pairing).
    - `condition_dropout`: each condition becomes `null_condition` with that probability
      (`zoo.diffusion.drop_condition`, drawn last), so the network also learns the unconditional velocity
      for classifier-free guidance; `condition` stays paired with x1, which the OT pairing never reorders.
    - `time_sampler`, `time_options`: see `sample_time`; `shift` then moves the times (`path.shift_time`).
    - `weighting(t) -> (B,)`: per-sample loss weights."""
    n = x1.shape[0]
    t = sample_time(n, time_sampler, generator=generator, device=x1.device, **(time_options or {}))
    if shift != 1.0:
        t = path.shift_time(t, shift)
    if x0 is None:
        x0 = randn(tuple(x1.shape), generator, x1.dtype, x1.device)
    if ot_pairing:
        x0 = ot_coupling(x0, x1)
    noise = randn(tuple(x1.shape), generator, x1.dtype, x1.device) if path.sigma_min > 0 else None
    if condition is not None and condition_dropout > 0:
        if null_condition is None:
            raise ValueError(
                "condition_dropout needs null_condition, the condition of the unconditional model"
            )
        condition = drop_condition(condition, condition_dropout, null_condition, generator)
    t = t.to(x1.dtype)
    x_t = path.sample(x0, x1, t, noise)
    weights = weighting(t) if weighting is not None else None
    return flow_matching_loss(model_fn(x_t, t, condition), path.target(x0, x1, t), weights)

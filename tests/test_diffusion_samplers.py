"""zoo.diffusion samplers against diffusers' schedulers (same schedule, same denoiser, same noise), and
against the closed form of Gaussian data, whose optimal denoiser is analytic.

Where diffusers' loop contradicts the paper, the reference loop below routes around it and says how:

1. DDIM: `DDIMScheduler.step` takes the previous timestep as `t - T // num_inference_steps`. That is the
   next sampling timestep only for "leading" spacing (and "trailing" when T % steps == 0); for "linspace"
   (e.g. T=1000, 10 steps: 999 -> 888, but diffusers uses alpha_bar at 899) it steps to a timestep that is
   not in the schedule. Song et al. (2021, eq. 12 over the sub-sequence tau) step to the next tau. The
   reference hands diffusers the right alpha_bar_prev through its `final_alpha_cumprod` slot (taken when
   prev < 0); `test_diffusers_ddim_prev_timestep_differs_on_linspace` shows the stock difference.
2. DDPM: diffusers adds noise whenever the current timestep is > 0, so with "trailing" spacing (last
   t = 99) or steps_offset=1 (last t = 1) it adds noise on the last step: with fixed_large variance
   1 - alpha_bar_t of it. Ho et al.'s Algorithm 2 adds none on the last step (z = 0 at t = 1). The
   reference subtracts the noise diffusers added on that last step (redrawn from the same generator state).
3. Euler / Euler ancestral / Heun: for "linspace" and "trailing" spacing `init_noise_sigma` is sigma_max
   (k-diffusion's convention), not sqrt(sigma_max^2 + 1), the std of x_T / sqrt(alpha_bar_T) when
   x_T ~ N(0, I) of the VP process the network was trained on (relative difference ~2e-5 here). The
   reference starts diffusers from the VE image of the same x_T, x_T * sqrt(sigma_max^2 + 1).
4. DPM-Solver++: diffusers' multistep scheduler places its "linspace" and "leading" timesteps on a grid of
   steps + 1 points and drops the last (t = 0) one, unlike its DDIM/DDPM/Euler schedulers; zoo uses one
   timestep rule for every sampler, so the reference passes zoo's timesteps to `set_timesteps(timesteps=)`
   (for "trailing" both agree; checked below).
5. Precision, not convention: diffusers keeps alpha_bar in float32, where 1 - alpha_bar near t = 0 (~1e-4)
   has a relative error ~1e-3; DPM-Solver's sigma_t / sigma_s amplifies it to ~2e-5 on the last step. The
   reference gives diffusers the float64 alpha_bar of the same schedule (its arithmetic is untouched).
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
)
from torch import nn

from zoo.diffusion import SAMPLERS, NoiseSchedule, sample

# diffusers' schedulers call np.array on torch tensors, which numpy 2 flags
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # conftest.one_thread, for every test here
    yield


T = 1000
STEPS = 10
SHAPE = (2, 3, 4, 4)
SCHEDULE = NoiseSchedule.make("linear", T)
SIGMA_SPACE = ("euler", "euler_ancestral", "heun")


# --- denoisers --------------------------------------------------------------------------------------------


def _ab(schedule: NoiseSchedule, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return schedule.alphas_cumprod[t.long().cpu()].to(like).reshape(-1, *([1] * (like.ndim - 1)))


def gaussian_denoiser(schedule: NoiseSchedule, mean: torch.Tensor, std: torch.Tensor, prediction: str):
    """The exact optimal network for data N(mean, diag(std^2)) (broadcast over (C, H, W)): with
    x_t = a x0 + s eps, E[x0 | x_t] = mean + a std^2 / (a^2 std^2 + s^2) (x_t - a mean)."""

    def denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = _ab(schedule, t, x)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        m, v = mean.to(x), std.to(x) ** 2
        x0 = m + a * v / (ab * v + 1 - ab) * (x - a * m)
        eps = (x - a * x0) / s
        return eps if prediction == "epsilon" else a * eps - s * x0

    return denoiser


def mixture_denoiser(schedule: NoiseSchedule, weights, means, stds, prediction: str):
    """The exact optimal network for a mixture sum_k w_k N(mean_k, std_k^2 I) of data shaped (B, D, 1, 1):
    E[x0 | x_t] = sum_k p(k | x_t) E[x0 | x_t, k], with x_t | k ~ N(a mean_k, (a^2 std_k^2 + s^2) I)."""
    weights, means, stds = (torch.as_tensor(v, dtype=torch.float64) for v in (weights, means, stds))

    def denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        xd = x.to(torch.float64).flatten(1)  # (B, D)
        ab = schedule.alphas_cumprod[t.long().cpu()].to(xd).unsqueeze(1)  # (B, 1)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        var = (ab * stds**2 + 1 - ab).unsqueeze(-1)  # (B, K, 1)
        centred = xd.unsqueeze(1) - a.unsqueeze(1) * means  # (B, K, D)
        logp = weights.log() - 0.5 * (centred**2 / var + var.log()).sum(-1)  # (B, K)
        resp = logp.softmax(-1).unsqueeze(-1)
        x0_k = means + a.unsqueeze(1) * (stds**2).unsqueeze(-1) / var * centred
        x0 = (resp * x0_k).sum(1)
        eps = (xd - a * x0) / s
        out = eps if prediction == "epsilon" else a * eps - s * x0
        return out.reshape(x.shape).to(x.dtype)

    return denoiser


class TinyNet(nn.Module):
    """A fixed random network (seeded), as a stand-in for a trained one: two convolutions and a sinusoidal
    timestep embedding; outputs of order 0.1-1."""

    def __init__(self, channels: int = 3, hidden: int = 8) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.inp = nn.Conv2d(channels, hidden, 3, padding=1)
            self.out = nn.Conv2d(hidden, channels, 3, padding=1)
        self.register_buffer("freqs", torch.arange(1, hidden + 1, dtype=torch.float32))

    @torch.no_grad()
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = torch.sin(t.float()[:, None] / T * self.freqs * 3)[:, :, None, None]
        return self.out(torch.tanh(self.inp(x) + emb))


def make_denoiser(kind: str, prediction: str):
    if kind == "gaussian":
        return gaussian_denoiser(SCHEDULE, torch.tensor(0.5), torch.tensor(0.7), prediction)
    return TinyNet()


# --- the diffusers reference loop -------------------------------------------------------------------------


def diffusers_scheduler(
    name: str,
    schedule: NoiseSchedule,
    prediction: str,
    spacing: str,
    offset: int,
    variance: str = "fixed_small",
):
    cfg = dict(
        num_train_timesteps=len(schedule),
        trained_betas=schedule.betas.numpy(),
        prediction_type=prediction,
        timestep_spacing=spacing,
        steps_offset=offset,
    )
    if name == "ddpm":
        sched = DDPMScheduler(clip_sample=False, variance_type=variance, **cfg)
    elif name == "ddim":
        sched = DDIMScheduler(clip_sample=False, **cfg)
    elif name == "dpmpp_2m":
        sched = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **cfg)
    elif name == "euler":
        sched = EulerDiscreteScheduler(**cfg)
    elif name == "euler_ancestral":
        sched = EulerAncestralDiscreteScheduler(**cfg)
    else:
        sched = HeunDiscreteScheduler(**cfg)
    sched.alphas_cumprod = schedule.alphas_cumprod.clone()  # note 5 of the module docstring
    return sched


def run_diffusers(
    name,
    denoiser,
    schedule,
    steps,
    spacing,
    offset,
    prediction,
    seed,
    variance="fixed_small",
    eta=0.0,
    shape=SHAPE,
):
    """diffusers' denoising loop, with the paper-conformity fixes 1-4 of the module docstring. Returns the
    final sample and the VP sample after every step."""
    sched = diffusers_scheduler(name, schedule, prediction, spacing, offset, variance)
    ours = schedule.timesteps(steps, spacing, offset)
    if name == "dpmpp_2m":
        sched.set_timesteps(timesteps=ours.tolist())  # note 4
    else:
        sched.set_timesteps(steps)
    distinct = torch.unique_consecutive(sched.timesteps)  # Heun repeats each timestep but the first
    assert distinct.tolist() == ours.tolist(), (distinct, ours)

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if name in SIGMA_SPACE:
        x = x * (sched.sigmas[0] ** 2 + 1) ** 0.5  # note 3
    ab = schedule.alphas_cumprod
    states = []
    for i, t in enumerate(sched.timesteps):
        out = denoiser(sched.scale_model_input(x, t), t.float().expand(shape[0]))
        kwargs = {}
        if name in ("ddpm", "ddim", "dpmpp_2m", "euler", "euler_ancestral"):
            kwargs["generator"] = g
        if name == "ddim":
            kwargs["eta"] = eta
            j = int((ours == t).nonzero()[0, 0])  # note 1: alpha_bar_prev of the next tau, via prev < 0
            sched.final_alpha_cumprod = ab[int(ours[j + 1])] if j + 1 < len(ours) else torch.tensor(1.0)
            sched.num_inference_steps = 1
        last = i == len(sched.timesteps) - 1
        state = g.get_state()
        x = sched.step(out, t, x, **kwargs).prev_sample
        if name == "ddpm" and last and t > 0:  # note 2
            z = torch.randn(shape, generator=torch.Generator().set_state(state))
            x = x - sched._get_variance(t) ** 0.5 * z
        if name in SIGMA_SPACE:
            if name == "heun" and not sched.state_in_first_order and not last:
                continue  # the Euler predictor of a Heun step
            x_vp = x / (sched.sigmas[sched.step_index] ** 2 + 1) ** 0.5
        else:
            x_vp = x
        states.append(x_vp.clone())
    return x, states


def run_zoo(
    name,
    denoiser,
    schedule,
    steps,
    spacing,
    offset,
    prediction,
    seed,
    variance="fixed_small",
    eta=0.0,
    shape=SHAPE,
):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    states = []

    def record(i: int, x_vp: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        states.append(x_vp.clone())
        return x_vp

    options = {"eta": eta} if name == "ddim" else {"variance": variance} if name == "ddpm" else {}
    ts = schedule.timesteps(steps, spacing, offset)
    out = SAMPLERS[name](
        denoiser, x, ts, schedule, prediction=prediction, generator=g, after_step=record, **options
    )
    return out, states


def assert_close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    """|a - b| <= tol, relative to b's scale where that exceeds 1.

    A random eps-network's x0 = (x_t - s eps) / a is ~1/a ~ 150 times its output at t = 999, so its samples
    reach ~100, and float32 rounding (diffusers computes in float32) is ~1e-6 relative to that."""
    bound = tol * max(1.0, b.abs().max().item())
    err = (a - b).abs().max().item()
    assert err <= bound, f"max abs difference {err:.3g} > {bound:.3g}"


VARIANTS = [
    ("ddpm", {}),
    ("ddpm", {"variance": "fixed_large"}),
    ("ddim", {}),
    ("ddim", {"eta": 0.5}),
    ("dpmpp_2m", {}),
    ("euler", {}),
    ("euler_ancestral", {}),
    ("heun", {}),
]
SPACINGS = [("leading", 1), ("trailing", 0), ("linspace", 0)]


@pytest.mark.parametrize("denoiser_kind", ["gaussian", "network"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing,offset", SPACINGS, ids=[s for s, _ in SPACINGS])
@pytest.mark.parametrize(
    "name,options",
    VARIANTS,
    ids=[f"{n}{'-' + '-'.join(map(str, o.values())) if o else ''}" for n, o in VARIANTS],
)
def test_trajectory_equals_diffusers(name, options, spacing, offset, prediction, denoiser_kind):
    denoiser = make_denoiser(denoiser_kind, prediction)
    ref, ref_states = run_diffusers(
        name, denoiser, SCHEDULE, STEPS, spacing, offset, prediction, seed=3, **options
    )
    out, states = run_zoo(name, denoiser, SCHEDULE, STEPS, spacing, offset, prediction, seed=3, **options)
    assert len(states) == len(ref_states) == STEPS
    for ours, theirs in zip([*states, out], [*ref_states, ref], strict=True):
        assert_close(ours, theirs)


@pytest.mark.parametrize("name", ["ddim", "euler", "heun"])
def test_non_uniform_strides_equal_diffusers(name):
    """7 steps of T=1000: trailing strides of 142/143 and rounded linspace strides of 166/167. diffusers'
    Euler/Heun keep linspace timesteps fractional (999, 832.5, ...): zoo rounds them (so a network only
    sees the integer timesteps it was trained on), and the reference is given zoo's timesteps."""
    denoiser = make_denoiser("network", "epsilon")
    for spacing in ("trailing", "linspace"):
        ts = SCHEDULE.timesteps(7, spacing)
        if name == "ddim":
            ref, _ = run_diffusers(name, denoiser, SCHEDULE, 7, spacing, 0, "epsilon", seed=1)
        else:
            sched = diffusers_scheduler(name, SCHEDULE, "epsilon", spacing, 0)
            sched.set_timesteps(7)
            if spacing == "linspace":
                assert sched.timesteps[1] == 832.5  # diffusers: fractional
            sched.set_timesteps(timesteps=ts.tolist())
            g = torch.Generator().manual_seed(1)
            x = torch.randn(SHAPE, generator=g) * (sched.sigmas[0] ** 2 + 1) ** 0.5
            for t in sched.timesteps:
                x = sched.step(denoiser(sched.scale_model_input(x, t), t.expand(SHAPE[0])), t, x).prev_sample
            ref = x
        out, _ = run_zoo(name, denoiser, SCHEDULE, 7, spacing, 0, "epsilon", seed=1)
        assert_close(out, ref)


def test_diffusers_ddim_prev_timestep_differs_on_linspace():
    """Note 1: stock DDIMScheduler agrees with zoo on leading spacing and not on linspace."""
    denoiser = make_denoiser("gaussian", "epsilon")
    for spacing, agrees in (("leading", True), ("linspace", False)):
        sched = diffusers_scheduler("ddim", SCHEDULE, "epsilon", spacing, 0)
        sched.set_timesteps(STEPS)
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
        for t in sched.timesteps:
            x = sched.step(denoiser(x, t.float().expand(SHAPE[0])), t, x).prev_sample
        out, _ = run_zoo("ddim", denoiser, SCHEDULE, STEPS, spacing, 0, "epsilon", seed=0)
        assert ((out - x).abs().max().item() < 1e-5) == agrees


def test_diffusers_conventions_documented():
    """Notes 3 and 4: init_noise_sigma is sigma_max for trailing/linspace, and DPM-Solver's own
    linspace/leading timesteps differ from the DDIM ones while trailing agrees."""
    for spacing in ("trailing", "linspace"):
        sched = diffusers_scheduler("euler", SCHEDULE, "epsilon", spacing, 0)
        sched.set_timesteps(STEPS)
        assert math.isclose(float(sched.init_noise_sigma), float(sched.sigmas.max()))
    for spacing, agrees in (("trailing", True), ("linspace", False), ("leading", False)):
        sched = diffusers_scheduler("dpmpp_2m", SCHEDULE, "epsilon", spacing, 0)
        sched.set_timesteps(STEPS)
        assert (sched.timesteps.tolist() == SCHEDULE.timesteps(STEPS, spacing).tolist()) == agrees


# --- closed form: Gaussian data and a two-Gaussian mixture ------------------------------------------------

N = 4000


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.flatten(1).double()
    return x.mean(0), torch.cov(x.T)


# Enough steps for the discretisation error to fall to ~2% of the variance. Ancestral sampling with the
# posterior variance (DDPM fixed_small, Euler ancestral) under-disperses with few steps (variance 0.165
# instead of 0.25 at 25 steps, 0.240 at 250 here).
SAMPLER_STEPS = {"ddpm": 250, "ddim": 250, "dpmpp_2m": 50, "euler": 250, "euler_ancestral": 250, "heun": 50}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_gaussian_data_moments(name):
    """Samples of N(mu, diag(s^2)) in 2-D from the exact denoiser match mu and diag(s^2) within sampling
    error (std of a mean s / sqrt(N), of a variance s^2 sqrt(2 / N)), plus a small discretisation error."""
    mean, std = torch.tensor([1.0, -0.5]).view(2, 1, 1), torch.tensor([0.5, 1.5]).view(2, 1, 1)
    prediction = "v_prediction" if name in ("ddim", "heun") else "epsilon"
    den = gaussian_denoiser(SCHEDULE, mean, std, prediction)
    g = torch.Generator().manual_seed(0)
    x = sample(
        den,
        (N, 2, 1, 1),
        SCHEDULE,
        sampler=name,
        steps=SAMPLER_STEPS[name],
        prediction=prediction,
        generator=g,
        spacing="trailing",
        dtype=torch.float64,
    )
    m, cov = _moments(x)
    s2 = std.flatten() ** 2
    assert torch.all((m - mean.flatten()).abs() < 5 * std.flatten() / N**0.5), m
    assert torch.all((cov.diagonal() - s2).abs() < 5 * s2 * (2 / N) ** 0.5 + 0.02 * s2), cov
    assert abs(cov[0, 1]) < 5 * (s2[0] * s2[1] / N) ** 0.5


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_mixture_data_moments(name):
    """A two-Gaussian mixture in 2-D (a non-linear optimal denoiser): sample mean, covariance and the share
    of samples nearer each component match the mixture's."""
    w, mus, stds = [0.3, 0.7], [[-2.0, 1.0], [1.5, -0.5]], [0.4, 0.6]
    den = mixture_denoiser(SCHEDULE, w, mus, stds, "epsilon")
    x = sample(
        den,
        (N, 2, 1, 1),
        SCHEDULE,
        sampler=name,
        steps=SAMPLER_STEPS[name],
        generator=torch.Generator().manual_seed(1),
        spacing="trailing",
        dtype=torch.float64,
    )
    m, cov = _moments(x)
    wt, mu_t, sd_t = (
        torch.tensor(w, dtype=torch.float64),
        torch.tensor(mus, dtype=torch.float64),
        torch.tensor(stds, dtype=torch.float64),
    )
    true_mean = (wt[:, None] * mu_t).sum(0)
    centred = mu_t - true_mean
    true_cov = (wt[:, None, None] * (centred[:, :, None] * centred[:, None, :])).sum(0) + torch.eye(2) * (
        wt * sd_t**2
    ).sum()
    assert torch.allclose(m, true_mean, atol=0.08), (m, true_mean)
    assert torch.allclose(cov, true_cov, atol=0.12, rtol=0.05), (cov, true_cov)
    share = ((x.flatten(1)[:, None, :] - mu_t).norm(dim=-1).argmin(1) == 0).double().mean()
    assert abs(share - w[0]) < 5 * (w[0] * w[1] / N) ** 0.5


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "euler"])
def test_zero_terminal_snr_v_prediction(name):
    """With zero terminal SNR (alpha_bar_T = 0) and v-prediction, samplers start from pure noise and stay
    finite: DPM-Solver++ takes the alpha_bar = 0 limit of its first step, Euler the 2^-24 floor diffusers
    uses for sigma_max."""
    sched = NoiseSchedule.make("linear", T, zero_terminal_snr=True)
    assert sched.alphas_cumprod[-1] == 0
    mean, std = torch.tensor([1.0, -0.5]).view(2, 1, 1), torch.tensor([0.5, 1.5]).view(2, 1, 1)
    den = gaussian_denoiser(sched, mean, std, "v_prediction")
    x = sample(
        den,
        (N, 2, 1, 1),
        sched,
        sampler=name,
        steps=SAMPLER_STEPS[name],
        prediction="v_prediction",
        generator=torch.Generator().manual_seed(2),
        spacing="trailing",
        dtype=torch.float64,
    )
    m, cov = _moments(x)
    assert torch.isfinite(x).all()
    assert torch.allclose(m, mean.flatten().double(), atol=0.08)
    s2 = std.flatten().double() ** 2
    assert torch.all((cov.diagonal() - s2).abs() < 5 * s2 * (2 / N) ** 0.5 + 0.02 * s2), cov


@pytest.mark.parametrize("name", ["ddim", "euler"])
def test_img2img_equals_diffusers(name):
    """img2img as diffusers' img2img pipelines do it: the last int(steps * strength) timesteps, starting
    from `add_noise(init, noise, first of them)` (for Euler: init + sigma noise, in sigma space)."""
    denoiser = make_denoiser("network", "v_prediction")
    init = torch.rand(SHAPE, generator=torch.Generator().manual_seed(5)) * 2 - 1
    strength, steps = 0.6, STEPS
    out = sample(denoiser, SHAPE, SCHEDULE, sampler=name, steps=steps, prediction="v_prediction", init=init,
                 strength=strength, generator=torch.Generator().manual_seed(6))  # fmt: skip
    sched = diffusers_scheduler(name, SCHEDULE, "v_prediction", "leading", 0)
    sched.set_timesteps(steps)
    timesteps = sched.timesteps[steps - int(steps * strength) :]
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(6))
    if name == "euler":
        sched.set_begin_index(steps - int(steps * strength))
    x = sched.add_noise(init, noise, timesteps[:1])
    for t in timesteps:
        x = sched.step(denoiser(sched.scale_model_input(x, t), t.float().expand(SHAPE[0])), t, x).prev_sample
    assert_close(out, x)


@pytest.mark.parametrize("spacing,offset", SPACINGS, ids=[s for s, _ in SPACINGS])
def test_ddim_eta_one_is_ddpm(spacing, offset):
    """Song et al. 2021, section 4.1: with eta = 1 the DDIM step is the DDPM posterior step (fixed_small)."""
    denoiser = make_denoiser("network", "epsilon")
    a, _ = run_zoo("ddim", denoiser, SCHEDULE, STEPS, spacing, offset, "epsilon", seed=4, eta=1.0)
    b, _ = run_zoo("ddpm", denoiser, SCHEDULE, STEPS, spacing, offset, "epsilon", seed=4)
    assert_close(a, b)

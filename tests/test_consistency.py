"""zoo.diffusion.consistency against diffusers' `CMStochasticIterativeScheduler` and `LCMScheduler` (same
network, same noise) and against closed forms: the papers' formulas, and Gaussian data, whose
probability-flow ODE is solved exactly, for the distillation loss.

Where the reference departs from the papers: diffusers' `CMStochasticIterativeScheduler` draws noise on every
step, the last included (multiplied by sqrt(sigma_min^2 - sigma_min^2) = 0 there); Algorithm 1 of CM draws
none after the last evaluation. The draws before it are the same, so the trajectories agree.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import CMStochasticIterativeScheduler, LCMScheduler
from torch import nn

from zoo.diffusion import NoiseSchedule
from zoo.diffusion.consistency import (
    boundary_scalings,
    consistency_loss,
    consistency_sampler,
    ct_discretization,
    edm_input_scalings,
    ict_discretization,
    karras_sigmas,
    lcm_sampler,
    lcm_scalings,
    lcm_timesteps,
    lognormal_indices,
    ode_step,
    pseudo_huber,
    target_decay,
    vp_sigma_to_t,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def fake_network(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in for a trained network, nonlinear in x and t."""
    t = t.float().view(-1, *([1] * (x.ndim - 1)))
    return 0.4 * torch.tanh(x) * torch.cos(t / 300) + 0.05 * t / 1000


# --- the papers' formulas ---------------------------------------------------------------------------


def test_boundary_scalings_are_exact_at_sigma_min_and_match_diffusers():
    scheduler = CMStochasticIterativeScheduler(sigma_min=0.002, sigma_max=80.0)
    sigma = torch.tensor([0.002, 0.01, 0.5, 3.0, 80.0], dtype=torch.float64)
    c_skip, c_out = boundary_scalings(sigma, 0.002)
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0
    ref_skip, ref_out = scheduler.get_scalings_for_boundary_condition(sigma)
    torch.testing.assert_close(c_skip, ref_skip, rtol=1e-12, atol=0)
    torch.testing.assert_close(c_out, ref_out, rtol=1e-12, atol=0)
    # CM Appendix C in the paper's symbols
    torch.testing.assert_close(
        c_out[3], torch.tensor((3.0 - 0.002) * 0.5 / math.sqrt(9 + 0.25), dtype=torch.float64)
    )


def test_karras_levels_match_diffusers():
    scheduler = CMStochasticIterativeScheduler(num_train_timesteps=40, sigma_min=0.002, sigma_max=80.0)
    ours = karras_sigmas(40, 0.002, 80.0, 7.0)
    torch.testing.assert_close(ours.flip(0), scheduler.sigmas.double(), rtol=1e-6, atol=0)
    assert ours[0].item() == pytest.approx(0.002) and ours[-1].item() == pytest.approx(80.0)


def test_curricula_follow_their_closed_forms():
    # CM, Appendix C: N(0) = s0, N(K) = s1 + 1
    assert ct_discretization(0, 1000, 2, 150) == 2
    assert ct_discretization(1000, 1000, 2, 150) == 151
    k = 250
    assert ct_discretization(k, 1000) == math.ceil(math.sqrt(k / 1000 * (151**2 - 4) + 4) - 1) + 1
    # improved CT: s0 = 10, s1 = 1280, log2(128) + 1 = 8 stages of K / 8 steps, doubling
    stages = [ict_discretization(k, 8000) for k in range(0, 8000, 1000)]
    assert stages == [11, 21, 41, 81, 161, 321, 641, 1281]
    # CM's target decay: mu(N) = exp(s0 ln mu0 / N), 0.95 when N = s0
    assert target_decay(2) == pytest.approx(0.95)
    assert target_decay(151) == pytest.approx(math.exp(2 * math.log(0.95) / 151))


def test_pseudo_huber_and_lcm_scalings_closed_forms():
    x, y = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4) * 0.1
    c = 0.00054 * math.sqrt(48)
    expected = math.sqrt(48 * 0.01 + c**2) - c
    torch.testing.assert_close(pseudo_huber(x, y), torch.full((2,), expected))
    skip, out = lcm_scalings(torch.tensor([0.0, 1.0, 999.0], dtype=torch.float64))
    assert skip[0] == 1.0 and out[0] == 0.0
    torch.testing.assert_close(skip[1], torch.tensor(0.25 / (100 + 0.25), dtype=torch.float64))
    scheduler = LCMScheduler()
    ref_skip, ref_out = scheduler.get_scalings_for_boundary_condition_discrete(
        torch.tensor(999.0, dtype=torch.float64)
    )
    torch.testing.assert_close((skip[2], out[2]), (ref_skip, ref_out))


def test_lognormal_level_sampling_follows_the_erf_weights():
    sigmas = karras_sigmas(11, 0.002, 80.0)
    picks = lognormal_indices(sigmas, 200_000, generator=torch.Generator().manual_seed(0))
    cdf = torch.erf((sigmas.log() + 1.1) / (math.sqrt(2) * 2.0))
    expected = (cdf[1:] - cdf[:-1]) / (cdf[-1] - cdf[0])
    observed = torch.bincount(picks, minlength=10).double() / len(picks)
    torch.testing.assert_close(observed, expected, atol=4e-3, rtol=0)


def test_vp_sigma_to_t_inverts_the_schedule_at_its_timesteps():
    schedule = NoiseSchedule.make("cosine", 1000)
    steps = torch.tensor([0, 1, 17, 500, 998, 999])
    t = vp_sigma_to_t(schedule.sigmas.double()[steps], schedule)
    torch.testing.assert_close(t, steps.double(), atol=1e-9, rtol=0)
    between = vp_sigma_to_t(schedule.sigmas.double()[[500, 501]].log().mean().exp().view(1), schedule)
    assert 500 < between.item() < 501


# --- sampling against diffusers ----------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_multistep_consistency_sampler_matches_diffusers(steps):
    scheduler = CMStochasticIterativeScheduler(num_train_timesteps=40, sigma_min=0.002, sigma_max=80.0)
    scheduler.set_timesteps(steps)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))

    generator = torch.Generator().manual_seed(7)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = fake_network(scheduler.scale_model_input(x, t), t.expand(len(x)))
        x = scheduler.step(out, t, x, generator=generator).prev_sample

    def model(x, sigma):
        view = (-1, 1, 1, 1)
        c_skip, c_out = boundary_scalings(sigma, 0.002)
        c_in, c_noise = edm_input_scalings(sigma)
        return c_skip.view(view) * x + c_out.view(view) * fake_network(x * c_in.view(view), c_noise)

    levels = scheduler.sigmas[:-1].tolist()
    ours = consistency_sampler(
        model, noise, levels, sigma_min=0.002, generator=torch.Generator().manual_seed(7)
    )
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_lcm_sampler_matches_diffusers(steps):
    scheduler = LCMScheduler(num_train_timesteps=1000, original_inference_steps=50, timestep_scaling=10.0)
    scheduler.set_timesteps(steps)
    assert lcm_timesteps(steps).tolist() == scheduler.timesteps.tolist()
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))

    def eps_network(x, t):  # an eps-prediction whose x0 stays O(1) at alpha_bar 0.005 (t = 999)
        return 0.98 * x + 0.05 * fake_network(x, t)

    generator = torch.Generator().manual_seed(5)
    x = noise
    for t in scheduler.timesteps:
        x, denoised = scheduler.step(
            eps_network(x, t.expand(len(x))), t, x, generator=generator, return_dict=False
        )

    schedule = NoiseSchedule.make("scaled_linear", 1000)
    ours = lcm_sampler(
        eps_network, noise.clone(), lcm_timesteps(steps), schedule, generator=torch.Generator().manual_seed(5)
    )
    torch.testing.assert_close(ours, denoised, atol=1e-5, rtol=0)


def test_lcm_timesteps_refuse_more_steps_than_the_grid():
    assert lcm_timesteps(4).tolist() == [999, 759, 499, 259]
    with pytest.raises(ValueError, match="1 to 50"):
        lcm_timesteps(51)


def test_a_lower_grid_top_drops_the_levels_above_it_and_spreads_the_steps_over_the_rest():
    # 48 levels 19, 39, .., 959; 4 steps read every 12th from the top, as LCMScheduler reads 50
    assert lcm_timesteps(4, top=959).tolist() == [959, 719, 479, 239]
    assert lcm_timesteps(48, top=959).tolist() == list(range(959, 0, -20))
    with pytest.raises(ValueError, match="1 to 48"):
        lcm_timesteps(49, top=959)


# --- distillation on Gaussian data, where the ODE is solved exactly ------------------------------------

MU, STD, SIGMA_MIN, SIGMA_MAX = torch.tensor([0.3, -0.2]), 0.5, 0.002, 80.0


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[x0 | x] for x0 ~ N(MU, STD^2 I), x = x0 + sigma eps."""
    return MU + STD**2 / (STD**2 + sigma.view(-1, 1) ** 2) * (x - MU)


def exact_flow_map(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE carried from sigma to sigma_min: x(s) - MU scales as sqrt(STD^2 + s^2)."""
    ratio = math.sqrt(STD**2 + SIGMA_MIN**2) / (STD**2 + sigma.view(-1, 1) ** 2).sqrt()
    return MU + ratio * (x - MU)


def test_euler_step_is_exact_in_the_limit_and_ddim_like():
    x, sigma, sigma_next = torch.tensor([[1.0, 2.0]]), torch.tensor([2.0]), torch.tensor([1.999])
    exact = MU + (x - MU) * math.sqrt(STD**2 + 1.999**2) / math.sqrt(STD**2 + 4.0)
    torch.testing.assert_close(ode_step(gaussian_denoiser, x, sigma, sigma_next), exact, atol=1e-6, rtol=0)
    # a coarse step: Heun's error is second order, Euler's first
    heun = ode_step(gaussian_denoiser, x, torch.tensor([2.0]), torch.tensor([1.6]), heun=True)
    euler = ode_step(gaussian_denoiser, x, torch.tensor([2.0]), torch.tensor([1.6]))
    truth = MU + (x - MU) * math.sqrt(STD**2 + 1.6**2) / math.sqrt(STD**2 + 4.0)
    assert (heun - truth).abs().max() < (euler - truth).abs().max() / 3


class GaussianConsistency(nn.Module):
    """f(x, sigma) = c_skip x + c_out F(c_in x, c_noise), CM's parameterisation, with F affine in x (the
    exact map is: Gaussian data) and its coefficients an MLP of the noise level."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 4))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c_skip, c_out = boundary_scalings(sigma, SIGMA_MIN)
        c_in, c_noise = edm_input_scalings(sigma)
        scale, shift = self.net((c_noise / 1000).view(-1, 1)).chunk(2, 1)
        return c_skip.view(-1, 1) * x + c_out.view(-1, 1) * (scale * c_in.view(-1, 1) * x + shift)


def one_step_errors(model: nn.Module) -> list[float]:
    """Mean |f(x, sigma) - exact ODE solution| from four noise levels, x on the ODE's marginal there."""
    generator = torch.Generator().manual_seed(1)
    errors = []
    for sigma in (SIGMA_MAX, 5.0, 1.0, 0.1):
        s = torch.full((4096,), sigma)
        x = MU + (STD**2 + sigma**2) ** 0.5 * torch.randn(4096, 2, generator=generator)
        errors.append((model(x, s) - exact_flow_map(x, s)).abs().mean().item())
    return errors


def test_consistency_distillation_learns_the_exact_one_step_map():
    torch.manual_seed(0)
    online = GaussianConsistency()
    target = GaussianConsistency().requires_grad_(False)
    target.load_state_dict(online.state_dict())
    tolerance = 0.1 * STD
    assert max(one_step_errors(online)) > 3 * tolerance  # the untrained map is far off
    levels = karras_sigmas(40, SIGMA_MIN, SIGMA_MAX).float()
    optimizer = torch.optim.Adam(online.parameters(), lr=2e-3)
    for _ in range(1500):
        x0 = MU + STD * torch.randn(256, 2)
        n = torch.randint(0, len(levels) - 1, (256,))
        loss = consistency_loss(
            online,
            target,
            x0,
            levels[n],
            levels[n + 1],
            torch.randn(256, 2),
            teacher=gaussian_denoiser,
            heun=True,
        ).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for p_target, p in zip(target.parameters(), online.parameters(), strict=True):
                p_target.lerp_(p, 0.05)  # target EMA 0.95, CM's CD
    # measured 0.012, 0.009, 0.024, 0.024 (sigma 80, 5, 1, 0.1) against STD 0.5
    errors = one_step_errors(online)
    assert max(errors) < tolerance, f"one-step map off by {errors} (sigma 80, 5, 1, 0.1)"
    # the boundary condition holds exactly, trained or not
    x = torch.randn(8, 2)
    assert torch.equal(online(x, torch.full((8,), SIGMA_MIN)), x)

"""zoo.diffusion.flow against independent references: torchcfm's flow matchers (paths, targets and the exact
OT pairing on the same x0, x1, t and eps), scipy (the assignment optimum, the time distributions' CDFs) and
closed forms (the marginal velocity of Gaussian data, the SNR shift of `shift_snr`).

Where torchcfm departs, and how the tests route around it:

1. torchcfm draws its eps with `torch.randn_like` from the global generator; the tests hand it zoo's eps by
   replacing `sample_noise_like` on the instance.
2. `ExactOptimalTransportConditionalFlowMatcher` draws B pairs from the exact plan *with replacement*
   (`np.random.choice`), so some pairs repeat and others are dropped; zoo keeps the plan's permutation,
   every noise used once. The tests check that every pair torchcfm draws is one of zoo's, and that its plan
   is supported on exactly zoo's pairs.
3. torchcfm's cost is `torch.cdist(x0, x1) ** 2` in the inputs' float32; zoo's is float64. The optimum is the
   same unless two pairings tie within float32 rounding, which random data does not.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import optimize, special, stats
from torchcfm.conditional_flow_matching import (
    ConditionalFlowMatcher,
    ExactOptimalTransportConditionalFlowMatcher,
    VariancePreservingConditionalFlowMatcher,
)

from zoo.diffusion import (
    NoiseSchedule,
    RectifiedPath,
    VPPath,
    conditional_flow_matching_loss,
    cosine_betas,
    ddpm_flow_time,
    ddpm_velocity,
    drop_condition,
    flow_matching_loss,
    linear_betas,
    logit_normal_time,
    mode_time,
    ot_coupling,
    sample_time,
    shift_snr,
    shift_time,
    uniform_time,
)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # conftest.one_thread, for every test here
    yield


def _draws(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g)
    x1 = torch.randn(shape, generator=g) * 0.5 + 2.0
    t = torch.rand(shape[0], generator=g)
    eps = torch.randn(shape, generator=g)
    return x0, x1, t, eps


def _with_noise(matcher, eps: torch.Tensor):
    matcher.sample_noise_like = lambda x: eps  # note 1
    return matcher


# --- paths and targets against torchcfm -------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(16, 2), (4, 3, 5, 5)])
@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
@pytest.mark.parametrize(
    "path_cls,matcher_cls",
    [(RectifiedPath, ConditionalFlowMatcher), (VPPath, VariancePreservingConditionalFlowMatcher)],
    ids=["rectified", "vp"],
)
def test_path_and_target_equal_torchcfm(path_cls, matcher_cls, sigma_min, shape):
    x0, x1, t, eps = _draws(shape)
    matcher = _with_noise(matcher_cls(sigma=sigma_min), eps)
    t_ref, xt_ref, ut_ref = matcher.sample_location_and_conditional_flow(x0, x1, t)
    path = path_cls(sigma_min)
    torch.testing.assert_close(path.sample(x0, x1, t, eps), xt_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(path.target(x0, x1, t), ut_ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("path", [RectifiedPath(0.05), VPPath(0.05)], ids=["rectified", "vp"])
def test_target_is_the_time_derivative_of_the_path(path):
    """u_t = d x_t / dt with x0, x1 and eps held fixed (central differences in float64)."""
    x0, x1, t, eps = (v.double() for v in _draws((8, 3)))
    h = 1e-6
    dx_dt = (path.sample(x0, x1, t + h, eps) - path.sample(x0, x1, t - h, eps)) / (2 * h)
    torch.testing.assert_close(path.target(x0, x1, t), dx_dt, rtol=0, atol=1e-8)


def test_sigma_min_path_needs_its_noise():
    x0, x1, t, _ = _draws((4, 2))
    with pytest.raises(ValueError, match="sigma_min"):
        RectifiedPath(0.1).sample(x0, x1, t)
    with pytest.raises(ValueError):
        RectifiedPath(-1.0)


def test_paths_run_from_noise_to_data():
    x0, x1, _, _ = _draws((4, 2))
    for path in (RectifiedPath(), VPPath()):
        torch.testing.assert_close(path.sample(x0, x1, torch.zeros(4)), x0)
        torch.testing.assert_close(path.sample(x0, x1, torch.ones(4)), x1)


# --- minibatch OT against torchcfm and scipy ----------------------------------------------------------------


def _partners(coupled: torch.Tensor, x0: torch.Tensor) -> np.ndarray:
    """The row of x0 that each row of the reordered x0 is (rows of random data are distinct)."""
    same = (coupled.flatten(1)[:, None] == x0.flatten(1)[None]).all(-1)
    assert (same.sum(1) == 1).all()
    return same.float().argmax(1).numpy()


@pytest.mark.parametrize("shape", [(64, 2), (32, 1, 4, 4)])
def test_ot_coupling_is_the_exact_plan_of_torchcfm(shape):
    x0, x1, t, eps = _draws(shape, seed=1)
    partner = _partners(ot_coupling(x0, x1), x0)
    assert sorted(partner.tolist()) == list(range(shape[0]))  # a permutation: every noise once (note 2)

    matcher = _with_noise(ExactOptimalTransportConditionalFlowMatcher(sigma=0.0), eps)
    plan = matcher.ot_sampler.get_map(x0, x1)
    support = {(int(i), int(j)) for i, j in zip(*np.nonzero(plan > 1e-12), strict=True)}
    assert support == {(int(partner[j]), j) for j in range(shape[0])}

    # every pair it draws is one of zoo's (matched by x1 - x0, the same float operation in both), and its
    # x_t on that pair is zoo's path
    np.random.seed(0)
    _, xt_ref, ut_ref = matcher.sample_location_and_conditional_flow(x0, x1, t)
    coupled = ot_coupling(x0, x1)
    ours = {tuple(v.flatten().tolist()): j for j, v in enumerate(x1 - coupled)}
    rows = [ours[tuple(v.flatten().tolist())] for v in ut_ref]
    xt = RectifiedPath().sample(coupled[rows], x1[rows], t)
    torch.testing.assert_close(xt, xt_ref, rtol=0, atol=1e-6)


def test_ot_coupling_reaches_the_assignment_optimum():
    """The total squared distance of zoo's pairs is scipy's `linear_sum_assignment` optimum, and lower than
    the independent pairing's."""
    x0, x1, _, _ = _draws((100, 5), seed=2)
    coupled = ot_coupling(x0, x1)
    cost = torch.cdist(x0.double(), x1.double()).pow(2).numpy()
    rows, cols = optimize.linear_sum_assignment(cost)
    optimum = cost[rows, cols].sum()
    ours = (coupled.double() - x1.double()).pow(2).sum().item()
    assert ours == pytest.approx(optimum, rel=1e-9)
    assert ours < (x0.double() - x1.double()).pow(2).sum().item()
    with pytest.raises(ValueError, match="same shape"):
        ot_coupling(x0[:10], x1)


# --- a DDPM network read as a flow ------------------------------------------------------------------------


def gaussian_outputs(x: torch.Tensor, ab: torch.Tensor, mean: float, std: float) -> dict[str, torch.Tensor]:
    """The exact eps- and v-prediction networks for data N(mean, std^2) at VP level alpha_bar:
    E[data | x] = mean + a std^2 / (a^2 std^2 + s^2) (x - a mean)."""
    a, s = ab.sqrt()[:, None], (1 - ab).sqrt()[:, None]
    data = mean + a * std**2 / (a**2 * std**2 + s**2) * (x - a * mean)
    eps = (x - a * data) / s
    return {"epsilon": eps, "v_prediction": a * eps - s * data}


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddpm_velocity_is_the_marginal_velocity_of_gaussian_data(schedule, prediction):
    """For data x1 ~ N(m, S^2) and noise x0 on the VP path x_t = alpha x1 + sigma x0 (alpha = sin(pi t / 2)),
    the marginal velocity E[alpha' x1 + sigma' x0 | x_t] is a Gaussian regression:
    alpha' m + (alpha' alpha S^2 + sigma' sigma) / (alpha^2 S^2 + sigma^2) (x - alpha m), with
    alpha' = (pi / 2) sigma and sigma' = -(pi / 2) alpha."""
    sched = NoiseSchedule.make(schedule, 1000)
    mean, std = 0.4, 0.6
    steps = torch.tensor([0, 10, 250, 500, 900, 999])
    ab = sched.alphas_cumprod[steps]
    x = torch.randn(len(steps), 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.3
    out = gaussian_outputs(x, ab, mean, std)[prediction]
    t = ddpm_flow_time(ab)
    alpha, sigma = torch.sin(math.pi / 2 * t)[:, None], torch.cos(math.pi / 2 * t)[:, None]
    torch.testing.assert_close(alpha**2, ab[:, None].expand_as(alpha))
    d_alpha, d_sigma = math.pi / 2 * sigma, -math.pi / 2 * alpha
    gain = (d_alpha * alpha * std**2 + d_sigma * sigma) / (alpha**2 * std**2 + sigma**2)
    expected = d_alpha * mean + gain * (x - alpha * mean)
    torch.testing.assert_close(ddpm_velocity(out, x, ab, prediction), expected, rtol=1e-9, atol=1e-9)


def test_ddpm_flow_time_ends():
    assert ddpm_flow_time(0.0) == 0.0 and ddpm_flow_time(1.0) == 1.0
    assert ddpm_flow_time(0.5) == pytest.approx(0.5)


# --- time distributions against their CDFs ---------------------------------------------------------------

N_TIMES = 20000


def _ks_pvalue(draws: torch.Tensor, cdf) -> float:
    return stats.kstest(draws.double().numpy(), cdf).pvalue


def test_uniform_time():
    t = uniform_time(N_TIMES, generator=torch.Generator().manual_seed(0))
    assert _ks_pvalue(t, stats.uniform.cdf) > 1e-3


@pytest.mark.parametrize("loc,scale", [(0.0, 1.0), (-0.5, 0.6), (1.0, 2.0)])
def test_logit_normal_time_against_its_cdf(loc, scale):
    """P(t <= x) = Phi((logit(x) - loc) / scale); and the test can tell it from uniform."""
    t = logit_normal_time(N_TIMES, loc, scale, generator=torch.Generator().manual_seed(1))
    assert _ks_pvalue(t, lambda x: stats.norm.cdf((special.logit(x) - loc) / scale)) > 1e-3
    assert _ks_pvalue(t, stats.uniform.cdf) < 1e-6


def _mode_cdf(scale: float):
    """SD3's f_mode(u) = 1 - u - s (cos^2(pi u / 2) - 1 + u) (Esser et al. 2024, section 3.1) is decreasing
    and t = 1 - f_mode(u), so P(t <= x) = P(f_mode(u) >= 1 - x) = f_mode^-1(1 - x), inverted numerically."""

    def f_mode(u: float) -> float:
        return 1 - u - scale * (math.cos(math.pi / 2 * u) ** 2 - 1 + u)

    def cdf(xs: np.ndarray) -> np.ndarray:
        return np.array(
            [optimize.brentq(lambda u, x: f_mode(u) - (1 - x), 0, 1, args=(x,)) for x in np.atleast_1d(xs)]
        )

    return cdf


@pytest.mark.parametrize("scale", [1.29, -0.5, 0.0])
def test_mode_time_against_its_cdf(scale):
    t = mode_time(N_TIMES, scale, generator=torch.Generator().manual_seed(2))
    assert _ks_pvalue(t, _mode_cdf(scale)) > 1e-3
    assert 0 <= t.min() and t.max() <= 1


def test_time_sampler_registry_and_ranges():
    g = torch.Generator().manual_seed(0)
    assert sample_time(5, "logit_normal", generator=g, scale=0.5).shape == (5,)
    with pytest.raises(ValueError, match="unknown time sampler"):
        sample_time(5, "beta")
    with pytest.raises(ValueError, match="mode scale"):
        mode_time(5, 2.0)
    with pytest.raises(ValueError):
        logit_normal_time(5, 0.0, 0.0)


# --- the shift: SD3's formula is shift_snr's SNR / shift^2 --------------------------------------------------


@pytest.mark.parametrize("shift", [0.5, 3.0])
def test_shift_time_is_sd3_shift_in_sigma(shift):
    """SD3 (Esser et al. 2024, section 5.3.2) shifts sigma = 1 - t:
    sigma' = shift sigma / (1 + (shift - 1) sigma)."""
    sigma = torch.linspace(0, 1, 101, dtype=torch.float64)
    sd3 = shift * sigma / (1 + (shift - 1) * sigma)
    torch.testing.assert_close(1 - shift_time(1 - sigma, shift), sd3, rtol=0, atol=1e-15)
    torch.testing.assert_close(RectifiedPath().shift_time(1 - sigma, shift), 1 - sd3, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shift", [2.0, 3.0])
@pytest.mark.parametrize("betas", [linear_betas(1000), cosine_betas(1000)], ids=["linear", "cosine"])
def test_shift_time_equals_shift_snr(betas, shift):
    """A schedule's timestep with alpha_bar sits on the straight path where t / (1 - t) = sqrt(SNR), i.e.
    t = a / (a + s), and on the VP path at ddpm_flow_time(alpha_bar). Shifting the time there lands at the
    timestep's alpha_bar after `shift_snr` (SNR / shift^2)."""
    ab = torch.cumprod(1 - betas, 0)
    ab_shifted = torch.cumprod(1 - shift_snr(betas, shift), 0)

    def straight_time(ab: torch.Tensor) -> torch.Tensor:
        return ab.sqrt() / (ab.sqrt() + (1 - ab).sqrt())

    torch.testing.assert_close(shift_time(straight_time(ab), shift), straight_time(ab_shifted))
    shifted_vp = VPPath().shift_time(ddpm_flow_time(ab), shift)
    torch.testing.assert_close(shifted_vp, ddpm_flow_time(ab_shifted))


# --- the loss ----------------------------------------------------------------------------------------------


def test_flow_matching_loss_is_weighted_mse():
    v, u = torch.randn(6, 3, 4), torch.randn(6, 3, 4)
    torch.testing.assert_close(flow_matching_loss(v, u), torch.nn.functional.mse_loss(v, u))
    w = torch.rand(6)
    per_sample = ((v - u) ** 2).mean((1, 2))
    torch.testing.assert_close(flow_matching_loss(v, u, w), (w * per_sample).mean())


class Recorder:
    """A network that returns zeros and keeps what it was called with."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor, condition) -> torch.Tensor:
        self.x, self.t, self.condition = x, t, condition
        return torch.zeros_like(x)


def test_conditional_flow_matching_loss_draws_in_order():
    """t, then the noise x0, then eps (sigma_min > 0), then the dropout, from one generator; the loss of a
    zero network is then E||u_t||^2 = mean (x1 - x0)^2 on the straight path."""
    x1 = torch.randn(8, 2, 3, generator=torch.Generator().manual_seed(5))
    labels = torch.arange(8)
    net = Recorder()
    loss = conditional_flow_matching_loss(
        net, x1, RectifiedPath(0.1), condition=labels, condition_dropout=0.5, null_condition=10,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    t = torch.rand(8, generator=g)
    x0 = torch.randn(x1.shape, generator=g)
    eps = torch.randn(x1.shape, generator=g)
    dropped = drop_condition(labels, 0.5, 10, g)
    torch.testing.assert_close(net.t, t)
    torch.testing.assert_close(net.x, t[:, None, None] * x1 + (1 - t[:, None, None]) * x0 + 0.1 * eps)
    assert net.condition.tolist() == dropped.tolist() and 10 in dropped.tolist()
    torch.testing.assert_close(loss, ((x1 - x0) ** 2).mean())


def test_conditional_flow_matching_loss_options():
    x1 = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(16)
    net = Recorder()
    conditional_flow_matching_loss(net, x1, RectifiedPath(), x0=x0, ot_pairing=True, condition=labels)
    coupled = ot_coupling(x0, x1)
    t = net.t[:, None]
    torch.testing.assert_close(net.x, t * x1 + (1 - t) * coupled)
    assert net.condition is labels  # pairs follow x1, so its labels stay in place

    g = torch.Generator().manual_seed(3)
    conditional_flow_matching_loss(
        net, x1, VPPath(), time_sampler="logit_normal", time_options={"scale": 0.5}, shift=3.0, generator=g
    )
    t_ref = VPPath().shift_time(
        logit_normal_time(16, 0.0, 0.5, generator=torch.Generator().manual_seed(3)), 3.0
    )
    torch.testing.assert_close(net.t, t_ref)

    loss = conditional_flow_matching_loss(net, x1, RectifiedPath(), x0=x0, weighting=lambda t: 0 * t)
    assert loss.item() == 0.0
    with pytest.raises(ValueError, match="null_condition"):
        conditional_flow_matching_loss(net, x1, RectifiedPath(), condition=labels, condition_dropout=0.1)

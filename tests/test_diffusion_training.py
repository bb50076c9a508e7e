"""zoo.diffusion parameterisations, forward process, losses and the variational bound, against closed
forms and independent computations (torch.distributions, diffusers)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler
from torch.distributions import Normal, kl_divergence

from zoo.diffusion import (
    NoiseSchedule,
    convert_prediction,
    denoising_loss,
    diffusion_loss,
    elbo_bits_per_dim,
    elbo_terms,
    merged_x0,
    min_snr_weight,
    predict_eps,
    predict_v,
    predict_x0,
    q_posterior,
    q_sample,
    score_from_eps,
)

PREDICTIONS = ["epsilon", "v_prediction", "sample"]


def _draws(seed: int = 0, shape=(6, 3, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    ab = torch.rand(shape[0], generator=g, dtype=torch.float64) * 0.98 + 0.01
    a, s = ab.sqrt().view(-1, 1, 1, 1), (1 - ab).sqrt().view(-1, 1, 1, 1)
    return x0, eps, ab, a * x0 + s * eps, a * eps - s * x0


@pytest.mark.parametrize("source", PREDICTIONS)
def test_parameterisation_round_trips(source):
    x0, eps, ab, x_t, v = _draws()
    out = {"epsilon": eps, "v_prediction": v, "sample": x0}[source]
    torch.testing.assert_close(predict_x0(out, x_t, ab, source), x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(predict_eps(out, x_t, ab, source), eps, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(predict_v(out, x_t, ab, source), v, rtol=1e-12, atol=1e-12)
    for target in PREDICTIONS:
        there = convert_prediction(out, x_t, ab, source, target)
        torch.testing.assert_close(
            convert_prediction(there, x_t, ab, target, source), out, rtol=1e-12, atol=1e-12
        )
    # a float alpha_bar works the same as a (B,) tensor
    torch.testing.assert_close(
        predict_x0(out[:1], x_t[:1], float(ab[0]), source), x0[:1], rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("source", PREDICTIONS)
def test_merged_heads_weight_the_x_head_by_sigma_squared_and_the_heads_x_by_alpha_squared(source):
    """Salimans & Ho's x = s^2 x~ + a^2 x(head): both heads exact gives x0 at every noise level; a wrong
    eps head's x error is its eps error times s / a, the merged x's times a s (bounded as a -> 0)."""
    x0, eps, ab, x_t, v = _draws()
    head = {"epsilon": eps, "v_prediction": v, "sample": x0}[source]
    torch.testing.assert_close(
        merged_x0(torch.cat([head, x0], 1), x_t, ab, source), x0, rtol=1e-12, atol=1e-12
    )
    a = ab.sqrt().view(-1, 1, 1, 1)
    wrong = merged_x0(torch.cat([head + 1, torch.zeros_like(x0)], 1), x_t, ab, source)
    unit_error = predict_x0(head + 1, x_t, ab, source) - predict_x0(head, x_t, ab, source)
    torch.testing.assert_close(wrong, a**2 * (x0 + unit_error), rtol=1e-10, atol=1e-10)
    at_the_top = merged_x0(torch.cat([eps, x0], 1), eps, torch.zeros(len(x0)).double(), "epsilon")
    torch.testing.assert_close(at_the_top, x0, rtol=0, atol=0)  # pure noise: the x head alone, finite


def test_v_target_equals_diffusers_velocity():
    s = NoiseSchedule.make("linear", 1000)
    ref = DDPMScheduler(num_train_timesteps=1000)
    x0, eps = torch.randn(2, 8, 3, 4, 4).unbind(0)
    t = torch.randint(0, 1000, (8,))
    x_t = q_sample(x0, t, eps, s)
    torch.testing.assert_close(x_t, ref.add_noise(x0, eps, t), rtol=1e-5, atol=1e-5)
    v = ref.get_velocity(x0, eps, t)
    torch.testing.assert_close(predict_v(eps, x_t, s.alphas_cumprod[t], "epsilon"), v, rtol=1e-4, atol=1e-5)
    # diffusion_loss with the exact target is 0
    assert diffusion_loss(v, x0, eps, t, s, "v_prediction").item() < 1e-10


def test_score_of_gaussian_marginal():
    """For data N(mu, s^2), q_t = N(a mu, a^2 s^2 + 1 - ab): score -(x - a mu) / var, and the optimal eps
    gives it through score_from_eps."""
    mu, sd, ab = 0.3, 0.8, 0.4
    a = ab**0.5
    x = torch.linspace(-3, 3, 11, dtype=torch.float64)
    var = ab * sd**2 + 1 - ab
    x0_hat = mu + a * sd**2 / var * (x - a * mu)
    eps = (x - a * x0_hat) / (1 - ab) ** 0.5
    torch.testing.assert_close(score_from_eps(eps, ab), -(x - a * mu) / var)


def test_q_sample_moments():
    s = NoiseSchedule.make("cosine", 100)
    x0 = torch.tensor([0.5, -1.0]).view(1, 2, 1, 1).expand(20000, 2, 1, 1)
    t = torch.full((20000,), 60)
    x_t = q_sample(x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)), s)
    ab = s.alphas_cumprod[60].item()
    n = x_t.shape[0]
    torch.testing.assert_close(
        x_t.mean(0).flatten(), (ab**0.5 * x0[0]).flatten(), atol=5 * ((1 - ab) / n) ** 0.5, rtol=0
    )
    torch.testing.assert_close(
        x_t.var(0).flatten(), torch.full((2,), 1 - ab), atol=5 * (1 - ab) * (2 / n) ** 0.5, rtol=0
    )


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_min_snr_weighting(prediction):
    """Hang et al. 2023: weight min(SNR, gamma) on the x0 loss, i.e. min(SNR, gamma) / SNR on the eps loss and
    min(SNR, gamma) / (SNR + 1) on the v loss; and the weighted loss is sum_i w_i mse_i / B."""
    s = NoiseSchedule.make("linear", 1000)
    t = torch.tensor([0, 10, 200, 500, 999])
    snr = s.alphas_cumprod[t] / (1 - s.alphas_cumprod[t])
    expected = {
        "epsilon": snr.clamp(max=5) / snr,
        "v_prediction": snr.clamp(max=5) / (snr + 1),
        "sample": snr.clamp(max=5),
    }[prediction]
    torch.testing.assert_close(min_snr_weight(t, s, 5.0, prediction), expected)

    g = torch.Generator().manual_seed(0)
    x0, noise, out = (torch.randn(5, 2, 3, 3, generator=g) for _ in range(3))
    target = {
        "epsilon": noise,
        "sample": x0,
        "v_prediction": predict_v(noise, q_sample(x0, t, noise, s), s.alphas_cumprod[t], "epsilon"),
    }[prediction]
    mse = ((out - target) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(diffusion_loss(out, x0, noise, t, s, prediction), mse.mean())
    torch.testing.assert_close(
        diffusion_loss(out, x0, noise, t, s, prediction, min_snr_gamma=5.0), (mse * expected.float()).mean()
    )


def test_min_snr_zero_terminal_snr_is_finite():
    s = NoiseSchedule.make("linear", 1000, zero_terminal_snr=True)
    t = torch.tensor([999])
    assert min_snr_weight(t, s, 5.0, "epsilon").item() == 1.0  # the limit of min(SNR, 5) / SNR at SNR = 0
    assert min_snr_weight(t, s, 5.0, "v_prediction").item() == 0.0


def test_q_posterior_is_bayes():
    """q(x_{t-1} | x_t, x0) ∝ N(x_t; sqrt(alpha_t) x_{t-1}, beta_t) N(x_{t-1}; sqrt(ab_{t-1}) x0, 1 - ab_{t-1}):
    precision 1/(1 - ab_{t-1}) + alpha_t / beta_t, mean var (sqrt(ab_{t-1}) x0 / (1 - ab_{t-1}) +
    sqrt(alpha_t) x_t / beta_t)."""
    s = NoiseSchedule.make("cosine", 50)
    t = torch.tensor([1, 7, 25, 49])
    g = torch.Generator().manual_seed(0)
    x0, x_t = (
        torch.randn(4, 2, generator=g, dtype=torch.float64),
        torch.randn(4, 2, generator=g, dtype=torch.float64),
    )
    mean, var, logvar = q_posterior(x0, x_t, t, s)
    ab_prev, alpha, beta = s.alphas_cumprod[t - 1, None], s.alphas[t, None], s.betas[t, None]
    var_ref = 1 / (1 / (1 - ab_prev) + alpha / beta)
    torch.testing.assert_close(var, var_ref.expand_as(var))
    torch.testing.assert_close(logvar, var_ref.log().expand_as(var))
    torch.testing.assert_close(
        mean, var_ref * (ab_prev.sqrt() * x0 / (1 - ab_prev) + alpha.sqrt() * x_t / beta)
    )
    # t = 0: the posterior is a point mass at x0; the log-variance is clipped to the t = 1 value (Ho et al.)
    mean0, var0, logvar0 = q_posterior(x0, x_t, torch.zeros(4, dtype=torch.long), s)
    torch.testing.assert_close(mean0, x0)
    assert bool((var0 == 0).all())
    torch.testing.assert_close(logvar0, logvar[:1, :1].expand_as(logvar0))


# --- the ELBO in the analytic Gaussian case ---------------------------------------------------------------


def _gaussian_denoiser(schedule, mu, sd):
    def denoiser(x, t):
        ab = schedule.alphas_cumprod[t.long()].to(x).view(-1, *([1] * (x.ndim - 1)))
        a = ab.sqrt()
        x0 = mu + a * sd**2 / (ab * sd**2 + 1 - ab) * (x - a * mu)
        return (x - a * x0) / (1 - ab).sqrt()

    return denoiser


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_elbo_against_torch_distributions(variance):
    """The negative ELBO of the exact Gaussian denoiser on 8-bit data, recomputed term by term from
    Ho et al. eq. 5 with torch.distributions: prior KL, the T-1 posterior KLs (same noise draws), and the
    discretised decoder as Normal CDF differences over bins of width 2/255."""
    T, mu, sd = 40, 0.1, 0.5
    s = NoiseSchedule.make("linear", T, beta_start=1e-3, beta_end=0.2)
    g = torch.Generator().manual_seed(0)
    x0 = (
        (torch.randn(8, 1, 3, 3, generator=g, dtype=torch.float64) * sd + mu).clamp(-1, 1) * 127.5
    ).round() / 127.5
    den = _gaussian_denoiser(s, mu, sd)
    terms = elbo_terms(den, x0, s, variance=variance, generator=torch.Generator().manual_seed(1))
    bpd = elbo_bits_per_dim(den, x0, s, variance=variance, generator=torch.Generator().manual_seed(1))

    ab, alphas, betas = s.alphas_cumprod, s.alphas, s.betas

    def post_var(t: int) -> torch.Tensor:
        return (1 - ab[t - 1]) / (1 - ab[t]) * betas[t]

    g = torch.Generator().manual_seed(1)
    kls, decoder = [], None
    for t in range(T):
        eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        x_t = ab[t].sqrt() * x0 + (1 - ab[t]).sqrt() * eps
        a = ab[t].sqrt()
        x0_hat = mu + a * sd**2 / (ab[t] * sd**2 + 1 - ab[t]) * (x_t - a * mu)
        ab_prev = ab[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)

        def mean(x, t=t, x_t=x_t, ab_prev=ab_prev):  # Ho et al. eq. 7
            return (ab_prev.sqrt() * betas[t] * x + alphas[t].sqrt() * (1 - ab_prev) * x_t) / (1 - ab[t])

        if t == 0:
            p_var = post_var(1)  # the clipped value for both fixed_small and fixed_large
            p = Normal(mean(x0_hat), p_var.sqrt())
            hi = torch.where(x0 > 0.999, torch.ones_like(x0), p.cdf(x0 + 1 / 255))
            lo = torch.where(x0 < -0.999, torch.zeros_like(x0), p.cdf(x0 - 1 / 255))
            decoder = -(hi - lo).clamp(min=1e-12).log().flatten(1).sum(1)
        else:
            p_var = post_var(t) if variance == "fixed_small" else betas[t]
            kl = kl_divergence(Normal(mean(x0), post_var(t).sqrt()), Normal(mean(x0_hat), p_var.sqrt()))
            kls.append(kl.flatten(1).sum(1))
    prior = kl_divergence(Normal(ab[-1].sqrt() * x0, (1 - ab[-1]).sqrt()), Normal(0.0, 1.0)).flatten(1).sum(1)

    torch.testing.assert_close(terms["prior"], prior)
    torch.testing.assert_close(terms["kl"], torch.stack(kls, 1))
    torch.testing.assert_close(terms["decoder"], decoder)
    total = (prior + torch.stack(kls, 1).sum(1) + decoder) / (9 * math.log(2))
    torch.testing.assert_close(bpd, total)
    assert bool((bpd > 0).all())


def test_elbo_is_parameterisation_independent():
    """The same optimal model expressed as an eps-, v- or x0-network has the same bound."""
    T, mu, sd = 20, 0.1, 0.5
    s = NoiseSchedule.make("linear", T, beta_start=1e-3, beta_end=0.3)
    x0 = (
        torch.rand(4, 2, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 255
    ).round()
    x0 = x0 / 127.5 - 1
    eps_net = _gaussian_denoiser(s, mu, sd)

    def as_kind(kind):
        def net(x, t):
            ab = s.alphas_cumprod[t.long()]
            return convert_prediction(eps_net(x, t), x, ab, "epsilon", kind)

        return net

    bounds = [
        elbo_bits_per_dim(as_kind(k), x0, s, prediction=k, generator=torch.Generator().manual_seed(2))
        for k in PREDICTIONS
    ]
    for b in bounds[1:]:
        torch.testing.assert_close(b, bounds[0])


def _drawn_timesteps(n: int, seed: int, **options: float) -> torch.Tensor:
    """The timesteps denoising_loss draws for a batch of n, read from inside the denoiser."""
    seen: list[torch.Tensor] = []

    def denoiser(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t)
        return torch.zeros_like(x_t)

    schedule = NoiseSchedule.make("cosine", 1000)
    x0 = torch.zeros(n, 1)
    denoising_loss(
        denoiser,
        x0,
        schedule,
        num_train_timesteps=1000,
        generator=torch.Generator().manual_seed(seed),
        **options,
    )
    return seen[0]


def test_denoising_loss_draws_uniform_timesteps_then_noise_in_that_order():
    t = _drawn_timesteps(8, seed=3)
    expected = torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(t, expected)  # what recorded runs drew: 0 high-noise fraction changes nothing


def test_high_noise_fraction_moves_that_share_of_timesteps_to_the_top_of_the_schedule():
    everything = _drawn_timesteps(4000, seed=0, high_noise_fraction=1.0, high_noise_start=0.9)
    assert everything.min() >= 900 and everything.max() <= 999
    half = _drawn_timesteps(20000, seed=1, high_noise_fraction=0.5, high_noise_start=0.9)
    # P(t >= 900) = 0.5 (the high-noise draws) + 0.5 * 0.1 (the uniform ones): 0.55; 4 sigma is 0.014
    assert abs((half >= 900).float().mean().item() - 0.55) < 0.014
    below = half[half < 900].float()  # the rest stays uniform below 900: mean 449.5
    assert abs(below.mean().item() - 449.5) < 12
    for wrong in (1.5, -0.5):
        with pytest.raises(ValueError, match="high_noise_fraction"):
            _drawn_timesteps(4, seed=0, high_noise_fraction=wrong)

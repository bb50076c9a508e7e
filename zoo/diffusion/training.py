"""The forward process, the training loss and the variational bound of a discrete VP diffusion model."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from zoo.diffusion.parameterization import Prediction, predict_x0
from zoo.diffusion.samplers import randn
from zoo.diffusion.schedule import NoiseSchedule

__all__ = [
    "diffusion_loss",
    "discretized_gaussian_log_likelihood",
    "elbo_bits_per_dim",
    "elbo_terms",
    "gaussian_kl",
    "loss_target",
    "min_snr_weight",
    "q_posterior",
    "q_sample",
]

Denoiser = Callable[[Tensor, Tensor], Tensor]


def _gather(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """values[t] (float64 schedule entries) reshaped to (B, 1, ..., 1) and cast to like's dtype/device."""
    out = values[t.long().cpu()].reshape(-1, *([1] * (like.ndim - 1)))
    return out.to(device=like.device, dtype=like.dtype)


def q_sample(x0: Tensor, t: Tensor, noise: Tensor, schedule: NoiseSchedule) -> Tensor:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise, a draw of q(x_t | x0) (Ho et al., eq. 4).
    `t` is long (B,); the coefficients broadcast over the trailing dimensions."""
    ab = schedule.alphas_cumprod
    return _gather(ab.sqrt(), t, x0) * x0 + _gather((1 - ab).sqrt(), t, x0) * noise


def _posterior_variance(schedule: NoiseSchedule) -> Tensor:
    """beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t (Ho et al., eq. 7); 0 at t = 0."""
    ab = schedule.alphas_cumprod
    ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
    return (1 - ab_prev) / (1 - ab) * schedule.betas


def _clipped_log(variance: Tensor) -> Tensor:
    """log of a variance table whose first entry (0 for the posterior) is replaced by the second, as in
    Ho et al.'s code (`posterior_log_variance_clipped`)."""
    return torch.cat([variance[1:2], variance[1:]]).log()


def q_posterior(x0: Tensor, x_t: Tensor, t: Tensor, schedule: NoiseSchedule) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0) (Ho et al., eq. 6-7):
    mean = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x0 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) /
    (1 - alpha_bar_t) x_t. At t = 0 the variance is 0 and the log-variance takes the t = 1 value."""
    ab = schedule.alphas_cumprod
    ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
    coef_x0 = ab_prev.sqrt() * schedule.betas / (1 - ab)
    coef_xt = schedule.alphas.sqrt() * (1 - ab_prev) / (1 - ab)
    mean = _gather(coef_x0, t, x0) * x0 + _gather(coef_xt, t, x_t) * x_t
    var = _posterior_variance(schedule)
    return mean, _gather(var, t, x0), _gather(_clipped_log(var), t, x0)


def loss_target(
    x0: Tensor, noise: Tensor, t: Tensor, schedule: NoiseSchedule, prediction: Prediction
) -> Tensor:
    """What the network should output at x_t = q_sample(x0, t, noise): noise, v = a noise - s x0
    (Salimans & Ho 2022), or x0."""
    if prediction == "epsilon":
        return noise
    if prediction == "v_prediction":
        ab = schedule.alphas_cumprod
        return _gather(ab.sqrt(), t, x0) * noise - _gather((1 - ab).sqrt(), t, x0) * x0
    if prediction == "sample":
        return x0
    raise ValueError(f"unknown prediction {prediction!r}")


def min_snr_weight(t: Tensor, schedule: NoiseSchedule, gamma: float, prediction: Prediction) -> Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, eq. 11), float64 (B,).

    The weight on the x0-space loss ||x0 - x0_hat||^2 is min(SNR, gamma). An eps-space loss equals SNR times
    the x0-space loss and a v-space loss (SNR + 1) times it, so their weights are min(SNR, gamma) / SNR and
    min(SNR, gamma) / (SNR + 1). The eps weight is written min(1, gamma / SNR) so that SNR = 0 (zero terminal
    SNR) gives its limit 1 instead of 0 / 0."""
    snr = schedule.snr[t.long().cpu()]
    if prediction == "epsilon":
        return torch.clamp(gamma / snr, max=1.0)
    if prediction == "v_prediction":
        return torch.clamp(snr, max=gamma) / (snr + 1)
    if prediction == "sample":
        return torch.clamp(snr, max=gamma)
    raise ValueError(f"unknown prediction {prediction!r}")


def diffusion_loss(
    model_out: Tensor,
    x0: Tensor,
    noise: Tensor,
    t: Tensor,
    schedule: NoiseSchedule,
    prediction: Prediction = "epsilon",
    min_snr_gamma: float | None = None,
) -> Tensor:
    """The simple denoising loss (Ho et al., eq. 14): mean squared error between the network output and its
    target, averaged over each example, optionally weighted per example by min-SNR-gamma, then averaged
    over the batch. A scalar."""
    target = loss_target(x0, noise, t, schedule, prediction)
    per_example = (model_out - target).pow(2).flatten(1).mean(1)
    if min_snr_gamma is not None:
        per_example = per_example * min_snr_weight(t, schedule, min_snr_gamma, prediction).to(per_example)
    return per_example.mean()


def denoising_loss(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    schedule: NoiseSchedule,
    *,
    num_train_timesteps: int,
    prediction: Prediction = "epsilon",
    min_snr_gamma: float | None = None,
    generator: torch.Generator | None = None,
    high_noise_fraction: float = 0.0,
    high_noise_start: float = 0.9,
) -> Tensor:
    """One training step's loss: uniform timesteps and Gaussian noise (drawn in that order, from `generator`
    when given), `denoiser(x_t, t)` on the noised `x0`, and `diffusion_loss` of its output.

    `high_noise_fraction` of the timesteps are instead drawn from the top of the schedule,
    [high_noise_start * T, T): more training where the conditioning decides the sample's layout (for video,
    its motion); see docs/families/video_diffusion.md. At 0 every timestep is uniform and nothing more is
    drawn from `generator`, so runs without it keep their random streams."""
    t = torch.randint(0, num_train_timesteps, (len(x0),), device=x0.device, generator=generator)
    if high_noise_fraction != 0:
        if not 0 < high_noise_fraction <= 1 or not 0 <= high_noise_start < 1:
            raise ValueError(
                f"high_noise_fraction must be in (0, 1] and high_noise_start in [0, 1), got "
                f"{high_noise_fraction} and {high_noise_start}"
            )
        first = int(high_noise_start * num_train_timesteps)
        high = torch.randint(first, num_train_timesteps, (len(x0),), device=x0.device, generator=generator)
        pick = torch.rand(len(x0), device=x0.device, generator=generator) < high_noise_fraction
        t = torch.where(pick, high, t)
    noise = torch.randn(x0.shape, device=x0.device, generator=generator)
    out = denoiser(q_sample(x0, t, noise, schedule), t)
    return diffusion_loss(out, x0, noise, t, schedule, prediction=prediction, min_snr_gamma=min_snr_gamma)


# --- the variational bound (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021, section 2) ---------------------


def gaussian_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + (logvar1 - logvar2).exp() + (mean1 - mean2) ** 2 * (-logvar2).exp()
    )


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log p(x) of data in [-1, 1] quantised to 256 levels under N(mean, exp(log_scale)^2) integrated over
    each bin of width 2/255, with the edge bins extended to -inf / +inf (Ho et al., eq. 13). Elementwise,
    nats. The exact normal CDF is used (Ho et al.'s code uses a tanh approximation of it)."""
    centred = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = torch.special.ndtr(inv_std * (centred + 1 / 255))
    cdf_min = torch.special.ndtr(inv_std * (centred - 1 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def elbo_terms(
    denoiser: Denoiser,
    x0: Tensor,
    schedule: NoiseSchedule,
    prediction: Prediction = "epsilon",
    variance: str = "fixed_small",
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """The terms of the negative ELBO, in nats per example, for data x0 in [-1, 1]:

    - "prior": L_T = KL(q(x_T | x0) || N(0, I));
    - "kl": (B, T-1), L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) for t = 1 .. T-1 (0-indexed),
      each estimated with one draw x_t ~ q(x_t | x0) (noise drawn from `generator` in the order t = 0 .. T-1);
    - "decoder": L_0 = -log p(x0 | x_1), the discretised Gaussian decoder at t = 0.

    p(x_{t-1} | x_t) has the mean of q_posterior at the predicted x0 and a fixed variance: the posterior
    variance ("fixed_small") or beta_t ("fixed_large"), with the clipped log at t = 0 as in Ho et al.'s code.
    """
    T = schedule.num_train_timesteps
    B = x0.shape[0]
    ab = schedule.alphas_cumprod
    post_var = _posterior_variance(schedule)
    if variance == "fixed_small":
        model_logvar = _clipped_log(post_var)
    elif variance == "fixed_large":
        model_logvar = torch.cat([post_var[1:2], schedule.betas[1:]]).log()
    else:
        raise ValueError(f"unknown variance {variance!r}")

    kls, decoder = [], None
    for step in range(T):
        t = torch.full((B,), step, dtype=torch.long, device=x0.device)
        noise = randn(tuple(x0.shape), generator, x0.dtype, x0.device)
        x_t = q_sample(x0, t, noise, schedule)
        out = denoiser(x_t, t.to(torch.float32))
        x0_hat = predict_x0(out, x_t, float(ab[step]), prediction)
        model_mean, _, _ = q_posterior(x0_hat, x_t, t, schedule)
        logvar = _gather(model_logvar, t, x0)
        if step == 0:
            nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * logvar)
            decoder = nll.flatten(1).sum(1)
        else:
            true_mean, _, true_logvar = q_posterior(x0, x_t, t, schedule)
            kls.append(gaussian_kl(true_mean, true_logvar, model_mean, logvar).flatten(1).sum(1))
    ab_T = float(ab[-1])
    prior = gaussian_kl(
        ab_T**0.5 * x0, torch.full_like(x0, math.log(1 - ab_T)), torch.zeros_like(x0), torch.zeros_like(x0)
    )
    return {"prior": prior.flatten(1).sum(1), "kl": torch.stack(kls, 1), "decoder": decoder}


def elbo_bits_per_dim(
    denoiser: Denoiser,
    x0: Tensor,
    schedule: NoiseSchedule,
    prediction: Prediction = "epsilon",
    variance: str = "fixed_small",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Negative ELBO in bits per dimension, per example (B,), for 8-bit data scaled to [-1, 1]: an upper
    bound on the model's negative log-likelihood (Ho et al. 2020, Table 2). T network calls on the batch."""
    terms = elbo_terms(denoiser, x0, schedule, prediction, variance, generator)
    nats = terms["prior"] + terms["kl"].sum(1) + terms["decoder"]
    return nats / (x0[0].numel() * math.log(2))

"""zoo.diffusion schedules against diffusers' betas and timesteps, and against their defining formulas."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr as diffusers_rescale

from zoo.diffusion import (
    NoiseSchedule,
    cosine_betas,
    linear_betas,
    rescale_zero_terminal_snr,
    scaled_linear_betas,
)

CASES = [
    ("linear", "linear", {"beta_start": 1e-4, "beta_end": 0.02}),
    ("scaled_linear", "scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}),
    ("cosine", "squaredcos_cap_v2", {}),
]


@pytest.mark.parametrize("zero_snr", [False, True])
@pytest.mark.parametrize("name,theirs,kwargs", CASES, ids=[c[0] for c in CASES])
def test_betas_equal_diffusers(name, theirs, kwargs, zero_snr):
    ours = NoiseSchedule.make(name, 1000, zero_terminal_snr=zero_snr)
    ref = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule=theirs, rescale_betas_zero_snr=zero_snr, **kwargs
    )
    assert ours.betas.dtype == ours.alphas_cumprod.dtype == torch.float64
    if zero_snr:
        # diffusers rescales in float32, where 1 - alpha_bar_t / alpha_bar_{t-1} loses ~1e-7 absolute; its
        # own function run in float64 on the float64 betas agrees to float64 precision
        base = NoiseSchedule.make(name, 1000).betas
        torch.testing.assert_close(ours.betas, diffusers_rescale(base.clone()), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours.betas, ref.betas.double(), rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod.double(), rtol=0, atol=1e-6)
    else:  # diffusers computes in float32: agreement to float32 precision
        torch.testing.assert_close(ours.betas, ref.betas.double(), rtol=2e-6, atol=1e-7)
        torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)


def test_schedule_formulas():
    T = 1000
    torch.testing.assert_close(linear_betas(T), torch.linspace(1e-4, 0.02, T, dtype=torch.float64))
    torch.testing.assert_close(
        scaled_linear_betas(T)[[0, -1]], torch.tensor([0.00085, 0.012], dtype=torch.float64)
    )
    # cosine: alpha_bar(t) = f(t)/f(0), f(u) = cos((u + s)/(1 + s) pi/2)^2 (Nichol & Dhariwal eq. 17), where
    # no beta was clipped at 0.999 (only the last one is)
    betas = cosine_betas(T)
    assert betas[-1] == 0.999 and bool((betas[:-1] < 0.999).all())

    def f(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    ab = torch.cumprod(1 - betas, 0)
    expected = torch.tensor([f((t + 1) / T) / f(0) for t in range(T - 1)], dtype=torch.float64)
    torch.testing.assert_close(ab[:-1], expected, rtol=1e-10, atol=1e-14)


def test_zero_terminal_snr_rescale():
    """Lin et al. Algorithm 1: sqrt(alpha_bar) is an affine map of the original, equal at t = 0, zero at T-1."""
    betas = scaled_linear_betas(1000)
    new = rescale_zero_terminal_snr(betas)
    sab_old = torch.cumprod(1 - betas, 0).sqrt()
    sab_new = torch.cumprod(1 - new, 0).sqrt()
    assert sab_new[-1] == 0
    torch.testing.assert_close(sab_new[0], sab_old[0])
    affine = (sab_old - sab_old[-1]) / (sab_old[0] - sab_old[-1]) * sab_old[0]
    torch.testing.assert_close(sab_new, affine, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_snr_shift_divides_the_snr_by_its_square(name):
    """Hoogeboom et al. 2023: log-SNR moves down by 2 log(shift) at every step; shift 1 changes nothing."""
    base = NoiseSchedule.make(name, 1000)
    for shift in (2.0, 4.0, 0.5):
        shifted = NoiseSchedule.make(name, 1000, snr_shift=shift)
        torch.testing.assert_close(shifted.snr, base.snr / shift**2, rtol=1e-9, atol=0)
        assert ((shifted.betas > 0) & (shifted.betas <= 1)).all()
    torch.testing.assert_close(NoiseSchedule.make(name, 1000, snr_shift=1.0).betas, base.betas)
    with pytest.raises(ValueError, match="shift must be positive"):
        NoiseSchedule.make(name, 1000, snr_shift=0.0)


def test_snr_and_sigmas():
    s = NoiseSchedule.make("cosine", 100)
    ab = torch.cumprod(1 - s.betas, 0)
    torch.testing.assert_close(s.snr, ab / (1 - ab))
    torch.testing.assert_close(s.sigmas, (1 / s.snr).sqrt())
    ref = EulerDiscreteScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    # diffusers' sigmas are float32, descending, with a final 0
    torch.testing.assert_close(s.sigmas.flip(0).float(), ref.sigmas[:-1], rtol=1e-4, atol=1e-6)


def test_custom_betas_and_errors():
    s = NoiseSchedule(torch.tensor([0.1, 0.2, 0.5]))
    torch.testing.assert_close(s.alphas_cumprod, torch.tensor([0.9, 0.72, 0.36], dtype=torch.float64))
    assert len(s) == s.num_train_timesteps == 3
    with pytest.raises(ValueError):
        NoiseSchedule(torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError):
        NoiseSchedule.make("quadratic")
    with pytest.raises(ValueError):
        s.timesteps(2, "uniform")


@pytest.mark.parametrize("T,steps", [(1000, 10), (1000, 7), (1000, 50), (1000, 999), (1000, 1000), (100, 7)])
@pytest.mark.parametrize("spacing,offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)])
def test_timesteps_equal_diffusers(T, steps, spacing, offset):
    if spacing == "leading" and offset and steps == T:
        # diffusers returns timestep T here, past the schedule's end; zoo refuses
        with pytest.raises(ValueError, match="out of range"):
            NoiseSchedule.make("linear", T).timesteps(steps, spacing, offset)
        return
    ours = NoiseSchedule.make("linear", T).timesteps(steps, spacing, offset)
    for cls in (DDPMScheduler, DDIMScheduler):
        ref = cls(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
        ref.set_timesteps(steps)
        assert ours.tolist() == ref.timesteps.tolist()
    assert ours.dtype == torch.long and bool((ours[:-1] > ours[1:]).all())

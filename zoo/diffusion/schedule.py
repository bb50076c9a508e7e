"""Noise schedules of the variance-preserving (VP) diffusion process and sampling timesteps.

The forward process is q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) with
alpha_bar_t = prod_{s<=t} (1 - beta_s) (Ho et al. 2020, eq. 4). Timesteps are 0-indexed,
t = 0 .. T-1, as in diffusers: index t here is step t+1 of the paper.

All schedule quantities are float64 CPU tensors: cumulative products over 1000 steps lose
digits in float32, and samplers read them as Python floats anyway.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "NoiseSchedule",
    "cosine_betas",
    "linear_betas",
    "rescale_zero_terminal_snr",
    "scaled_linear_betas",
    "shift_snr",
]


def linear_betas(num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Betas evenly spaced from `beta_start` to `beta_end` (Ho et al. 2020, section 4)."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)


def scaled_linear_betas(
    num_train_timesteps: int, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """Betas whose square roots are evenly spaced (latent diffusion, Rombach et al. 2022; Stable Diffusion's
    defaults)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2


def cosine_betas(num_train_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): alpha_bar(t) = f(t)/f(0) with
    f(t) = cos(((t/T + s)/(1 + s)) * pi/2)^2, and beta_t = 1 - alpha_bar(t)/alpha_bar(t-1) clipped to
    `max_beta` so that the last step does not make x_T exactly pure noise (beta = 1)."""

    def f(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    T = num_train_timesteps
    betas = [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float64)


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Rescale betas so that the terminal SNR is exactly zero, keeping alpha_bar_0 (Lin et al. 2024,
    "Common diffusion noise schedules and sample steps are flawed", Algorithm 1): shift sqrt(alpha_bar) so
    its last value is 0, scale it so its first value is unchanged, and read the betas back."""
    sqrt_ab = torch.cumprod(1 - betas.to(torch.float64), 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    ab = sqrt_ab**2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return 1 - alphas


def shift_snr(betas: Tensor, shift: float) -> Tensor:
    """Betas whose signal-to-noise ratio is the given schedule's divided by shift^2 at every step: log-SNR moved
    down by 2 log(shift), i.e. alpha_bar' = alpha_bar / (alpha_bar + shift^2 (1 - alpha_bar)) (Hoogeboom et al.
    2023, "simple diffusion", section 3.1; Esser et al. 2024, SD3, section 5.3.2). Data with more redundancy
    (higher resolution, many frames of one scene) stays recognisable at a lower SNR, so the steps where its
    layout is decided lie at higher noise; shifting spends more of training and sampling there."""
    if not shift > 0:
        raise ValueError(f"shift must be positive, got {shift}")
    ab = torch.cumprod(1 - betas.to(torch.float64), 0)
    ab = ab / (ab + shift**2 * (1 - ab))
    return 1 - torch.cat([ab[:1], ab[1:] / ab[:-1]])


_SCHEDULES = {"linear": linear_betas, "scaled_linear": scaled_linear_betas, "cosine": cosine_betas}
SPACINGS = ("leading", "trailing", "linspace")


class NoiseSchedule:
    """A discrete VP noise schedule: `betas`, `alphas` = 1 - betas, `alphas_cumprod` (alpha_bar), all (T,)
    float64 tensors on the CPU.

    `NoiseSchedule(betas)` takes any betas in (0, 1]; `NoiseSchedule.make(name)` builds a named one.
    """

    def __init__(self, betas: Tensor) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
        if betas.ndim != 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1]")
        self.betas = betas
        self.alphas = 1 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)

    @classmethod
    def make(
        cls,
        name: str = "linear",
        num_train_timesteps: int = 1000,
        zero_terminal_snr: bool = False,
        snr_shift: float = 1.0,
        **kwargs: float,
    ) -> NoiseSchedule:
        """A named schedule: "linear" (beta 1e-4 .. 0.02, Ho et al.), "scaled_linear" (0.00085 .. 0.012,
        Stable Diffusion) or "cosine" (Nichol & Dhariwal). `kwargs` go to the beta function
        (`beta_start`, `beta_end`; `s`, `max_beta`). `snr_shift` divides the SNR by its square (`shift_snr`);
        `zero_terminal_snr` then applies Lin et al.'s rescaling."""
        if name not in _SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; known: {sorted(_SCHEDULES)}")
        betas = _SCHEDULES[name](num_train_timesteps, **kwargs)
        if snr_shift != 1.0:
            betas = shift_snr(betas, snr_shift)
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        return cls(betas)

    @property
    def num_train_timesteps(self) -> int:
        return len(self.betas)

    @property
    def snr(self) -> Tensor:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) (Kingma et al. 2021)."""
        return self.alphas_cumprod / (1 - self.alphas_cumprod)

    @property
    def sigmas(self) -> Tensor:
        """Noise levels of the equivalent variance-exploding process x / sqrt(alpha_bar) = x_0 + sigma eps:
        sigma = sqrt((1 - alpha_bar) / alpha_bar) (Karras et al. 2022, section 2)."""
        return ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()

    def __len__(self) -> int:
        return self.num_train_timesteps

    def __repr__(self) -> str:
        ab = self.alphas_cumprod
        return f"NoiseSchedule(T={len(self)}, alpha_bar {ab[0].item():.6g} .. {ab[-1].item():.6g})"

    def timesteps(self, num_steps: int, spacing: str = "leading", steps_offset: int = 0) -> Tensor:
        """`num_steps` sampling timesteps, descending, long, as diffusers' DDPM/DDIM `set_timesteps` makes
        them (Lin et al. 2024, Table 2):

        - "leading":  0, k, 2k, .. with k = T // num_steps, plus `steps_offset` (1 for Stable Diffusion);
        - "trailing": T-1, T-1-T/n, .. rounded: always starts at the last timestep;
        - "linspace": round(linspace(0, T-1, num_steps)): starts at T-1 and ends at 0.
        """
        T = self.num_train_timesteps
        if not 1 <= num_steps <= T:
            raise ValueError(f"num_steps must be in [1, {T}], got {num_steps}")
        if spacing == "leading":
            ts = torch.arange(num_steps, dtype=torch.float64) * (T // num_steps) + steps_offset
        elif spacing == "trailing":
            ts = torch.arange(T, 0, -T / num_steps, dtype=torch.float64).round() - 1
        elif spacing == "linspace":
            ts = torch.linspace(0, T - 1, num_steps, dtype=torch.float64).round()
        else:
            raise ValueError(f"unknown spacing {spacing!r}; known: {SPACINGS}")
        ts = ts.long().sort(descending=True).values
        if ts[0] >= T or ts[-1] < 0:
            raise ValueError(f"timesteps out of range [0, {T - 1}]: {ts.tolist()}")
        return ts

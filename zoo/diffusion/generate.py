"""`sample`: generation, img2img and inpainting over any sampler of `SAMPLERS`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from zoo.diffusion.parameterization import Prediction
from zoo.diffusion.samplers import SAMPLERS, randn
from zoo.diffusion.schedule import NoiseSchedule

__all__ = ["check_options", "sample", "sampling_options"]


def check_options(*, prediction: str | None = None, sampler: str | None = None) -> None:
    """A ValueError naming the choices for an unknown prediction type or sampler (families check their
    hyper-parameters and sampling options with it)."""
    from zoo.diffusion.parameterization import PREDICTIONS

    if prediction is not None and prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
    if sampler is not None and sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


def sampling_options(
    defaults: Mapping[str, Any],
    schedule: NoiseSchedule,
    device: str | torch.device,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    progress: bool = False,
) -> dict[str, Any]:
    """The arguments of `sample` that a diffusion family passes on every call: its `schedule`, its
    `prediction` type, `sampler` and step count (the family's hyper-parameters `defaults`, `sampler` and
    `sampling_steps`, unless given), and the call's generator, eta, device and progress flag."""
    sampler = defaults["sampler"] if sampler is None else sampler
    check_options(sampler=sampler)
    steps = defaults["sampling_steps"] if steps is None else steps
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a whole number of at least 1, got {steps}")
    return {
        "schedule": schedule,
        "sampler": sampler,
        "steps": int(steps),
        "prediction": defaults["prediction"],
        "generator": generator,
        "device": device,
        "eta": eta,
        "progress": progress,
    }


def sample(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    shape: Sequence[int],
    schedule: NoiseSchedule,
    sampler: str = "ddim",
    steps: int = 50,
    prediction: Prediction = "epsilon",
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    spacing: str = "leading",
    eta: float = 0.0,
    variance: str = "fixed_small",
    init: Tensor | None = None,
    strength: float = 1.0,
    mask: Tensor | None = None,
    known: Tensor | None = None,
    progress: bool = False,
    clip_sample: bool = False,
    steps_offset: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw samples of `shape` by running `sampler` for `steps` steps from x_T ~ N(0, I).

    - `denoiser(x_t, t)` returns the raw network output of kind `prediction`; t is float (B,).
    - `spacing`, `steps_offset`: the timesteps, see `NoiseSchedule.timesteps`.
    - `eta` is used by "ddim" only, `variance` by "ddpm" only.
    - img2img (`init`, clean data of `shape`): as diffusers' img2img pipelines, skip the first
      steps - int(steps * strength) timesteps, start from init noised to the first remaining timestep and
      run the rest. strength 1 starts at the first timestep (from noised init), strength 0 returns init.
    - inpainting (`mask` 1 = regenerate, broadcastable to `shape`; `known` the clean data): after every step
      the known region (mask 0) is replaced by `known` noised to the sample's new noise level with the same
      noise that drew x_T (diffusers' inpainting convention; deterministic samplers then see the known
      region on the trajectory of that noise), and pasted exactly at the end. Without `known`, `init` is it.
    - `clip_sample` clips the predicted x0 to [-1, 1] at every step (pixels only; wrong for latents).

    Returns the final sample in the data's scale, no clipping. The generator draws x_T first, then the
    sampler's noise in order.
    """
    check_options(sampler=sampler)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if mask is not None:
        known = init if known is None else known
        if known is None:
            raise ValueError("inpainting needs `known` (or `init`) alongside `mask`")
        mask = mask.to(device=device, dtype=dtype)
        known = known.to(device=device, dtype=dtype)

    timesteps = schedule.timesteps(steps, spacing, steps_offset)
    noise = randn(tuple(shape), generator, dtype, device)
    ab = schedule.alphas_cumprod
    if init is not None:
        init = init.to(device=device, dtype=dtype)
        skip = steps - min(int(steps * strength), steps)
        timesteps = timesteps[skip:]
        if len(timesteps) == 0:
            return init.clone()
        a0 = float(ab[int(timesteps[0])])
        x = a0**0.5 * init + (1 - a0) ** 0.5 * noise
    else:
        x = noise

    after_step = None
    if mask is not None:

        def paste(x_vp: Tensor, alpha_bar: float) -> Tensor:
            noised = alpha_bar**0.5 * known + (1 - alpha_bar) ** 0.5 * noise
            return mask * x_vp + (1 - mask) * noised

        def after_step(i: int, x_vp: Tensor, alpha_bar: float) -> Tensor:
            return paste(x_vp, alpha_bar)

        x = paste(x, float(ab[int(timesteps[0])]))

    options: dict[str, object] = {}
    if sampler == "ddim":
        options["eta"] = eta
    elif sampler == "ddpm":
        options["variance"] = variance
    x = SAMPLERS[sampler](
        denoiser, x, timesteps, schedule, prediction=prediction, generator=generator,
        clip_sample=clip_sample, after_step=after_step, progress=progress, **options,
    )  # fmt: skip
    if mask is not None:  # exact paste: where the mask is 0 the result is `known`, bit for bit
        x = torch.where(mask == 0, known, mask * x + (1 - mask) * known)
    return x

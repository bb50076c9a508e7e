"""The training objective of a denoising family, chosen by one hyper-parameter, `objective`:

- `diffusion`: a noise schedule, `denoising_loss` of the family's `prediction` (ε, v or x0), sampled by
  `zoo.diffusion.sample` with a sampler of `SAMPLERS`; the network sees DDPM timesteps 0..T-1.
- `flow`: rectified flow (torchcfm's convention, `zoo.diffusion.flow`: t = 0 noise, t = 1 data), the
  conditional flow matching loss with the family's `time_sampler` and `time_shift`, sampled by
  `zoo.diffusion.sample_flow` with an ODE sampler of `FLOW_SAMPLERS`; the network sees t × 1000, the
  range its timestep embedding is built for (as SD3 does).

A family keeps its network, conditioning and guidance; these functions take its network as
`net(x_t, t_net) -> output` (t_net on the network's 0..1000 scale) and do the rest. img2img and inpainting
work under both (see `sample` and `sample_flow`). The family's hyper-parameters are read by name:
`objective`, `prediction`, `num_train_timesteps`, `min_snr_gamma`, `time_sampler`, `time_shift`,
`sampler`, `sampling_steps`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from zoo.diffusion.flow import RectifiedPath, conditional_flow_matching_loss
from zoo.diffusion.flow_samplers import FLOW_SAMPLERS, sample_flow
from zoo.diffusion.generate import check_options, sample
from zoo.diffusion.schedule import NoiseSchedule
from zoo.diffusion.training import denoising_loss

__all__ = [
    "DEFAULT_SAMPLERS",
    "FLOW_TIME_SCALE",
    "OBJECTIVES",
    "check_objective",
    "objective_loss",
    "objective_sample",
]

Network = Callable[[Tensor, Tensor], Tensor]
OBJECTIVES = ("diffusion", "flow")
DEFAULT_SAMPLERS = {"diffusion": "dpmpp_2m", "flow": "euler"}
FLOW_TIME_SCALE = 1000.0  # flow time in [0, 1] -> the 0..1000 scale of the backbones' timestep embeddings


def check_objective(objective: str, sampler: str | None = None) -> str:
    """`sampler` checked against the objective's samplers (a ValueError naming them), or, when None, the
    objective's default sampler."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if sampler is None:
        return DEFAULT_SAMPLERS[objective]
    if objective == "diffusion":
        check_options(sampler=sampler)
    elif sampler not in FLOW_SAMPLERS:
        raise ValueError(
            f"the flow objective samples with an ODE sampler: {', '.join(FLOW_SAMPLERS)}; got {sampler!r} "
            "(diffusion samplers such as ddim or dpmpp_2m need objective diffusion)"
        )
    return sampler


def objective_loss(
    net: Network,
    x1: Tensor,
    hparams: Mapping[str, Any],
    schedule: NoiseSchedule,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One training step's loss on clean data `x1` under the family's objective (noise and times drawn
    from `generator` when given). Conditioning dropout is the family's, done before."""
    if hparams["objective"] == "diffusion":
        return denoising_loss(
            net, x1, schedule, num_train_timesteps=hparams["num_train_timesteps"],
            prediction=hparams["prediction"], min_snr_gamma=hparams.get("min_snr_gamma"), generator=generator,
        )  # fmt: skip
    return conditional_flow_matching_loss(
        lambda x_t, t, _: net(x_t, t * FLOW_TIME_SCALE),
        x1,
        RectifiedPath(),
        time_sampler=hparams["time_sampler"],
        shift=hparams["time_shift"],
        generator=generator,
    )


def objective_sample(
    net: Network,
    shape: tuple[int, ...],
    hparams: Mapping[str, Any],
    schedule: NoiseSchedule,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    eta: float = 0.0,
    init: Tensor | None = None,
    strength: float = 1.0,
    mask: Tensor | None = None,
    known: Tensor | None = None,
    progress: bool = False,
) -> Tensor:
    """Samples of `shape` under the family's objective, with its sampler and steps unless given; `init`,
    `strength`, `mask` and `known` as in `zoo.diffusion.sample` (img2img, inpainting)."""
    objective = hparams["objective"]
    sampler = check_objective(objective, hparams["sampler"] if sampler is None else sampler)
    steps = hparams["sampling_steps"] if steps is None else steps
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a whole number of at least 1, got {steps}")
    editing = {"init": init, "strength": strength, "mask": mask, "known": known}
    if objective == "diffusion":
        return sample(
            net, shape, schedule, sampler=sampler, steps=int(steps), prediction=hparams["prediction"],
            generator=generator, device=device, eta=eta, progress=progress, **editing,
        )  # fmt: skip
    if eta != 0.0:
        raise ValueError(
            "eta is DDIM's noise; the flow objective's ODE samplers are deterministic: leave it 0"
        )
    return sample_flow(
        lambda x, t: net(x, t * FLOW_TIME_SCALE), shape, sampler=sampler, steps=int(steps),
        shift=hparams["time_shift"], generator=generator, device=device, progress=progress, **editing,
    )  # fmt: skip

"""The diffusion core: noise schedules, parameterisations, losses, samplers, guidance and image editing,
as plain functions over a denoiser callable `denoiser(x_t, t) -> raw network output` (networks, schedules
and samplers apart, as in diffusers and k-diffusion)."""

from zoo.diffusion.editing import outpaint_canvas
from zoo.diffusion.generate import check_options, sample, sampling_options
from zoo.diffusion.guidance import (
    classifier_free_guidance,
    drop_condition,
    guided_denoiser,
    rescale_guidance,
)
from zoo.diffusion.parameterization import (
    convert_prediction,
    predict_eps,
    predict_v,
    predict_x0,
    score_from_eps,
)
from zoo.diffusion.samplers import SAMPLERS, ddim, ddpm, dpmpp_2m, euler, euler_ancestral, heun
from zoo.diffusion.schedule import (
    NoiseSchedule,
    cosine_betas,
    linear_betas,
    rescale_zero_terminal_snr,
    scaled_linear_betas,
    shift_snr,
)
from zoo.diffusion.training import (
    denoising_loss,
    diffusion_loss,
    elbo_bits_per_dim,
    elbo_terms,
    min_snr_weight,
    q_posterior,
    q_sample,
)

__all__ = [
    "SAMPLERS",
    "NoiseSchedule",
    "check_options",
    "classifier_free_guidance",
    "convert_prediction",
    "cosine_betas",
    "ddim",
    "ddpm",
    "denoising_loss",
    "diffusion_loss",
    "dpmpp_2m",
    "drop_condition",
    "elbo_bits_per_dim",
    "elbo_terms",
    "euler",
    "euler_ancestral",
    "guided_denoiser",
    "heun",
    "linear_betas",
    "min_snr_weight",
    "outpaint_canvas",
    "predict_eps",
    "predict_v",
    "predict_x0",
    "q_posterior",
    "q_sample",
    "rescale_guidance",
    "rescale_zero_terminal_snr",
    "shift_snr",
    "sample",
    "sampling_options",
    "scaled_linear_betas",
    "score_from_eps",
]

"""`dit`: class-conditional latent diffusion with a transformer, the DiT paper's setting in small
(Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

Two stages, as in the paper (which used Stable Diffusion's VAE):
1. a first stage, the `vae` family, frozen: images <-> latents (x4 smaller on each side), scaled by the
   VAE's `latent_scale` to unit variance;
2. a DiT (`zoo.nn.dit`: patches of the latents as tokens, adaLN-Zero blocks) over the latents, conditioned
   on the timestep and the class label. Labels are replaced by the null label with probability
   `label_dropout` while training, so one network gives the conditional and the unconditional prediction,
   and sampling uses classifier-free guidance on the labels (`guided_denoiser`).

The objective is the paper's by default (`objective: diffusion`): ε prediction on a linear schedule of
1,000 steps. `objective: flow` trains the same network as a rectified flow (SiT's and SD3's choice) and
samples it with an ODE solver; `zoo.diffusion.objectives` holds both. The recipe (`configs/dit/default.yaml`)
trains the flow: in its 2,000 steps the paper's objective drew blobs (benchmarks/RESULTS.md, `dit`). Not here: DiT's learned variance
(`learn_sigma` and the hybrid loss with the variational bound); zoo's samplers use fixed variances.

`python -m zoo.fit --model dit` with no `--model.first_stage` trains the first stage itself first, in
`<run>/first_stage/`, then the DiT; `--model.first_stage runs/vae/<run>/checkpoints/last.ckpt` reuses a VAE
trained on the same images. The default data is `shapes`, whose classes are colour x shape (18).

    python -m zoo.fit --model dit
    python -m zoo.sample --ckpt runs/dit/<run>/checkpoints/last.ckpt --label 3 --guidance 4
    python -m zoo.sample --ckpt ... --label 0 --sampler ddim --steps 50
    python -m zoo.fit --model dit --model.objective flow              # rectified flow, Euler sampling
    python -m zoo.evaluate --ckpt runs/dit/<run>/checkpoints/last.ckpt --metrics fid --num 500
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from zoo.conditioning import class_labels
from zoo.diffusion import (
    TIME_SAMPLERS,
    NoiseSchedule,
    check_objective,
    check_options,
    drop_condition,
    guided_denoiser,
    objective_loss,
    objective_sample,
)
from zoo.first_stage import FirstStageFamily, build_first_stage, first_stage_hparams
from zoo.module import GenerativeModule, adamw_with_warmup, check_choice, inference
from zoo.nn.dit import DiT, DiTBlock


class LatentDiT(FirstStageFamily, GenerativeModule):
    """Class-conditional latent DiT; see the module docstring.

    Args:
        in_channels: image channels (1 grey, 3 RGB); zoo.fit links it to data.channels.
        image_size: image side in pixels; zoo.fit links it to data.image_size.
        num_classes: label classes, 0 for unlabelled data; zoo.fit sets it from the datamodule.
        class_conditional: condition on the labels when num_classes > 0; false: unconditional on any data.
        first_stage: a trained `vae` checkpoint for these images; null: zoo.fit trains one first.
        first_stage_config: the vae's hyper-parameters; null: first_stage's, or zoo's default vae.
        first_stage_steps: training steps of the vae that zoo.fit trains when first_stage is null.
        patch_size: DiT patch side in latent cells; must divide the latent side (image_size / 4 by default).
        dit_width: DiT hidden size (a multiple of num_heads and of 4).
        dit_depth: DiT blocks.
        num_heads: DiT attention heads.
        label_dropout: probability a training label is replaced by the null label (for classifier-free guidance).
        objective: diffusion (a noise schedule and `prediction`, the paper's) or flow (rectified flow);
            see zoo.diffusion.objectives.
        schedule: diffusion: noise schedule: linear (the paper's), scaled_linear or cosine.
        num_train_timesteps: diffusion: steps T of the noise schedule.
        prediction: diffusion: what the DiT predicts: epsilon (the noise), v_prediction (v) or sample (x0).
        min_snr_gamma: diffusion: weight the loss by min(SNR, gamma) (Hang et al. 2023), e.g. 5; null: unweighted.
        time_sampler: flow: training times: uniform, logit_normal (SD3) or mode.
        time_shift: flow: shift of the training and sampling times (SNR / shift^2; 1: none).
        lr: AdamW learning rate, reached at the end of the warm-up (the vae stays frozen).
        weight_decay: AdamW weight decay, on every DiT parameter.
        warmup_steps: optimizer steps of linear learning-rate warm-up.
        sampler: sampler of `generate` unless given; null: the objective's default (dpmpp_2m for diffusion,
            euler for flow). diffusion: ddpm, ddim, dpmpp_2m, euler, euler_ancestral or heun; flow: euler,
            heun, midpoint, rk4 or dopri5.
        sampling_steps: sampling steps of `generate` unless given.
        guidance: classifier-free guidance scale of `generate` unless given (1: the conditional model alone).
    """

    family_name = "dit"
    modality = "image"
    default_data = "shapes"
    fsdp_blocks = (DiTBlock,)  # the FSDP unit under --trainer.strategy zoo_fsdp (zoo.strategies)

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        num_classes: int = 0,
        class_conditional: bool = True,
        first_stage: str | None = None,
        first_stage_config: dict[str, Any] | None = None,
        first_stage_steps: int = 1000,
        patch_size: int = 2,
        dit_width: int = 128,
        dit_depth: int = 6,
        num_heads: int = 4,
        label_dropout: float = 0.1,
        objective: str = "diffusion",
        schedule: str = "linear",
        num_train_timesteps: int = 1000,
        prediction: str = "epsilon",
        min_snr_gamma: float | None = None,
        time_sampler: str = "logit_normal",
        time_shift: float = 1.0,
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 200,
        sampler: str | None = None,
        sampling_steps: int = 25,
        guidance: float = 4.0,
    ) -> None:
        super().__init__()
        sampler = check_objective(objective, sampler)
        check_options(prediction=prediction)
        check_choice("time_sampler", time_sampler, tuple(TIME_SAMPLERS))
        _check_numbers(label_dropout=label_dropout, sampling_steps=sampling_steps, time_shift=time_shift)
        if first_stage_config is None:
            first_stage_config = first_stage_hparams(first_stage, in_channels, image_size, "dit")
        self.save_hyperparameters()
        # set explicitly: under LightningCLI, save_hyperparameters records the parsed values (None here);
        # the first-stage config used goes into the checkpoint, so the model rebuilds without the VAE file
        self.hparams["first_stage_config"] = first_stage_config
        self.hparams["sampler"] = sampler  # the objective's default when none was given

        self.first_stage = build_first_stage(first_stage_config)
        # True once the VAE weights are trained or loaded; saved with the weights
        self.register_buffer("first_stage_ready", torch.tensor(False))
        self.latent_channels = int(self.first_stage.hparams.latent_channels)
        self.latent_size = _latent_size(
            image_size, int(self.first_stage.hparams.downsample_factor), patch_size
        )
        self.conditional = class_conditional and num_classes > 0
        self.net = DiT(
            image_size=self.latent_size,
            in_channels=self.latent_channels,
            patch_size=patch_size,
            hidden_size=dit_width,
            depth=dit_depth,
            num_heads=num_heads,
            num_classes=num_classes if self.conditional else 0,
        )
        self.schedule = NoiseSchedule.make(schedule, num_train_timesteps)

    @property
    def null_label(self) -> int:
        return self.hparams.num_classes

    def prepare_fit(
        self, trainer: L.Trainer, datamodule: L.LightningDataModule, ckpt_path: str | None
    ) -> None:
        """Called by `zoo.fit` before training: unless one was given (or the run resumes), trains the
        first stage in `<run>/first_stage/`."""
        self.prepare_first_stage_for_fit(trainer, datamodule, ckpt_path)

    # --- training ---------------------------------------------------------------------------

    def _loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        """The objective's loss on the latents of a batch of images, labels dropped while training."""
        with torch.no_grad():
            # a posterior draw while training, as the paper's VAE latents; validation uses the mean
            # (no draws from the global generator, which exact resumption relies on)
            z0 = self.training_latents(batch["image"], sample=self.training and generator is None)
        label = None
        if self.conditional:
            label = batch["label"]
            if self.training:
                label = drop_condition(label, self.hparams.label_dropout, self.null_label, generator)
        return objective_loss(
            lambda x_t, t: self.net(x_t, t, label), z0, self.hparams, self.schedule, generator
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if not bool(self.first_stage_ready):
            raise RuntimeError(
                "the dit's first stage is untrained: train with `python -m zoo.fit --model dit` (which trains "
                "it first) or pass --model.first_stage runs/vae/<run>/checkpoints/last.ckpt"
            )
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # noise and times from a generator seeded per batch: comparable across validations
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss = self._loss(batch, generator)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["image"]))

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return adamw_with_warmup(self.net.parameters(), hp.lr, hp.weight_decay, hp.warmup_steps)

    # --- sampling ---------------------------------------------------------------------------

    @inference
    def generate(
        self,
        n: int,
        *,
        condition: Any = None,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        eta: float = 0.0,
        progress: bool = False,
    ) -> torch.Tensor:
        """`n` images in [0, 1]. `condition`: class labels (one for all, or n; None: unconditional, the null
        label); `sampler` and `steps` of the objective's samplers; `guidance` scales the conditional part of
        the prediction (classifier-free guidance); `eta` is DDIM's noise (diffusion only)."""
        hp = self.hparams
        guidance = hp.guidance if guidance is None else guidance
        labels = class_labels(
            condition, n, hp.num_classes if self.conditional else 0, family="dit", device=self.device
        )
        uncond = None if labels is None else torch.full_like(labels, self.null_label)
        denoiser = guided_denoiser(self.net, labels, uncond, guidance)
        shape = (n, self.latent_channels, self.latent_size, self.latent_size)
        latents = objective_sample(
            denoiser, shape, hp, self.schedule, sampler=sampler, steps=steps, generator=generator,
            device=self.device, eta=eta, progress=progress,
        )  # fmt: skip
        return ((self.first_stage.decode_latents(latents) + 1) / 2).clamp(0, 1)

    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Samples for each class in turn (0, 1, ..., num_classes - 1, 0, ...); unconditional without."""
        condition = torch.arange(n) % self.hparams.num_classes if self.conditional else None
        return {"samples": self.generate(n, condition=condition, generator=generator)}


def _check_numbers(*, label_dropout: float, sampling_steps: int, time_shift: float) -> None:
    if not 0 <= label_dropout <= 1:
        raise ValueError(f"label_dropout is a probability, in [0, 1]; got {label_dropout}")
    if sampling_steps < 1:
        raise ValueError(f"sampling_steps must be at least 1, got {sampling_steps}")
    if time_shift <= 0:
        raise ValueError(f"time_shift must be positive (1: no shift), got {time_shift}")


def _latent_size(image_size: int, factor: int, patch_size: int) -> int:
    """The latent side of `image_size`px images under a first stage downsampling by `factor` (the vae
    checks that it divides), checked to cut into `patch_size` patches."""
    latent = image_size // factor
    if patch_size < 1 or latent % patch_size:
        fits = [p for p in range(1, latent + 1) if latent % p == 0]
        raise ValueError(
            f"{image_size}px images give {latent}x{latent} latents (the first stage downsamples by {factor}), "
            f"which patch_size {patch_size} does not divide; use one of {', '.join(map(str, fits))}"
        )
    return latent

"""`consistency`: consistency models (Song et al. 2023), trained from scratch (CT) or distilled from a
diffusion or flow teacher (CD), sampled in one to a few steps.

The model is a consistency function f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(x, sigma) on the VE
variable x = x0 + sigma eps, with the boundary scalings of `zoo.diffusion.consistency` (f = x at sigma_min,
exactly). Each training step takes an image, a pair of adjacent noise levels sigma_n < sigma_{n+1} of the
Karras discretisation, and pulls f_theta(x0 + sigma_{n+1} z, sigma_{n+1}) towards the target network's
f(x_hat, sigma_n), with the dropout state of the online pass replayed in the target pass:

- CD (`--model.teacher CKPT`, a `ddpm` or `flow_matching` checkpoint): x_hat is one step of the teacher's
  probability-flow ODE from sigma_{n+1} (Euler, which is DDIM for a VP teacher; or Heun), guided with the
  teacher's classifier-free guidance. The student is the teacher's own network, started from its weights:
  F is its denoiser rewritten in EDM's output scaling, so at the start f is the teacher's one-step x0 guess.
  For a VP teacher the levels are its own integer timesteps (nearest to the Karras levels).
- CT (no teacher): x_hat = x0 + sigma_n z, the same z; F = U-Net(c_in x, c_noise) from scratch. The number
  of levels grows over training (CM's N(k), or improved CT's doubling), the target network is the online
  one's EMA with CM's decay mu(k) (or 0: improved CT), with the pseudo-Huber loss, lognormal level
  sampling and 1 / (sigma_{n+1} - sigma_n) weights of improved CT as options.

The target network is part of the checkpoint (a resumed run continues exactly); the teacher is not (it is
read from its file when training, which the checkpoint names with its sha256). Sampling is CM's multistep
sampler: one step from sigma_max, or more, re-noised between them.

    python -m zoo.fit --model consistency                                        # CT, on digits
    python -m zoo.fit --model consistency --model.teacher runs/ddpm/<run>/checkpoints/last.ckpt   # CD
    python -m zoo.sample --ckpt runs/consistency/<run>/checkpoints/last.ckpt --label 3 --steps 1
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from zoo import registry
from zoo.checkpoint import CheckpointError, family_of, load_model, load_teacher, read_checkpoint
from zoo.conditioning import class_labels
from zoo.diffusion import guided_denoiser
from zoo.diffusion.consistency import (
    SIGMA_DATA,
    boundary_scalings,
    consistency_loss,
    consistency_sampler,
    ct_discretization,
    edm_input_scalings,
    follow_online,
    ict_discretization,
    karras_sigmas,
    lognormal_indices,
    target_decay,
    vp_sigma_to_t,
)
from zoo.diffusion.parameterization import merged_x0, predict_x0
from zoo.diffusion.samplers import randn
from zoo.evaluate import sha256_of
from zoo.module import GenerativeModule, adamw_with_warmup, build_module, check_choice, inference
from zoo.nn.unet import UNet

TEACHERS = ("ddpm", "flow_matching")
CURRICULA = ("fixed", "ct", "ict")


class Consistency(GenerativeModule):
    """A consistency model; see the module docstring.

    Args:
        teacher: CD: a `ddpm` or `flow_matching` checkpoint to distil; its network, data and conditioning are
            the student's. None: CT from scratch with the U-Net arguments below.
        teacher_guidance: CD: the teacher's classifier-free guidance scale in the ODE step (None: the
            teacher's own default); the student learns the guided flow and samples without guidance.
        solver: CD: the teacher's ODE step: euler (DDIM for a VP teacher) or heun (two teacher calls).
        parameterization: CD of a `ddpm`: teacher (the teacher's own output) or both (the student's x is
            Salimans & Ho's merge of the teacher's head and a new x head, zero at the start: bounded where
            the noise is high, but far from the teacher where it is not).
        in_channels: CT: image channels; zoo.fit links it to data.channels (CD: the teacher's).
        image_size: CT: image side in pixels; zoo.fit links it to data.image_size (CD: the teacher's).
        num_classes: CT: label classes, 0 for unlabelled data; zoo.fit sets it from the datamodule.
        class_conditional: CT: condition on the labels when num_classes > 0.
        base_channels: CT: U-Net width at the first resolution level.
        channel_mults: CT: U-Net width of each resolution level, times base_channels.
        num_res_blocks: CT: U-Net ResBlocks per level on the way down (one more on the way up).
        attention_levels: CT: U-Net levels (indices into channel_mults) with self-attention.
        num_heads: CT: U-Net attention heads.
        dropout: CT: dropout inside the U-Net's ResBlocks (the target pass replays the online pass's masks).
        sigma_min: the lowest noise level, where f(x, sigma_min) = x (CM: 0.002); a VP teacher's own if higher.
        sigma_max: the highest noise level, where one-step sampling starts (CM: 80); a VP teacher's if lower.
        rho: the Karras discretisation's curvature (7).
        curriculum: the number of levels over training: fixed (num_levels; CD), ct (CM's N(k), from s0 to
            s1 + 1) or ict (improved CT's doubling, from s0 + 1 to s1 + 1).
        num_levels: levels of the fixed discretisation (CM's CD: 18).
        s0: the curriculum's start (CM CT: 2; improved CT: 10); also s0 of CM's target decay mu(k).
        s1: the curriculum's end (CM CT: 150; improved CT: 1280).
        curriculum_steps: the training steps K the curriculum spans (set it to max_steps).
        level_sampling: which adjacent pair a sample trains on: uniform, or lognormal (improved CT).
        loss: l2 (mean squared error) or pseudo_huber (improved CT).
        weighting: uniform, or ict: lambda = 1 / (sigma_{n+1} - sigma_n) (improved CT).
        target_ema: the target network's decay; None: CM's CT schedule mu(k) = exp(s0 ln 0.95 / N(k)); 0:
            the online network itself, gradient stopped (improved CT).
        lr: AdamW learning rate, reached at the end of the warm-up.
        weight_decay: AdamW weight decay.
        warmup_steps: optimizer steps of linear learning-rate warm-up.
        sampling_steps: steps of `generate` unless given (1: one evaluation).
        clip_denoised: clamp each step's x0 to [-1, 1] when sampling (pixels).
        teacher_sha256: set by zoo from the teacher file; leave unset.
        teacher_family: set by zoo from the teacher file; leave unset.
        teacher_hparams: set by zoo from the teacher file (its network's arguments); leave unset.
    """

    modality = "image"
    default_data = "digits"
    built_on = "teacher"

    def __init__(
        self,
        teacher: str | None = None,
        teacher_guidance: float | None = None,
        solver: str = "euler",
        parameterization: str = "teacher",
        in_channels: int = 1,
        image_size: int = 16,
        num_classes: int = 0,
        class_conditional: bool = True,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_levels: tuple[int, ...] = (2,),
        num_heads: int = 4,
        dropout: float = 0.0,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        curriculum: str = "ct",
        num_levels: int = 18,
        s0: int = 2,
        s1: int = 150,
        curriculum_steps: int = 3000,
        level_sampling: str = "uniform",
        loss: str = "l2",
        weighting: str = "uniform",
        target_ema: float | None = None,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 200,
        sampling_steps: int = 1,
        clip_denoised: bool = True,
        teacher_sha256: str | None = None,
        teacher_family: str | None = None,
        teacher_hparams: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_choice("solver", solver, ("euler", "heun"))
        check_choice("parameterization", parameterization, ("both", "teacher"))
        check_choice("curriculum", curriculum, CURRICULA)
        check_choice("level_sampling", level_sampling, ("uniform", "lognormal"))
        check_choice("loss", loss, ("l2", "pseudo_huber"))
        check_choice("weighting", weighting, ("uniform", "ict"))
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
        if target_ema is not None and not 0.0 <= target_ema < 1.0:
            raise ValueError(f"target_ema must be in [0, 1) or null, got {target_ema}")
        self.save_hyperparameters()
        teacher_weights = None
        if teacher is not None and teacher_sha256 is None:
            # first built (zoo.fit): the teacher's network and weights; rebuilt from the student's own
            # checkpoint, the teacher's hyper-parameters are in ours and the weights come with the checkpoint
            family = _teacher_family(teacher)
            taught = load_model(teacher, family=family, flag="--model.teacher")
            self.hparams.teacher_family = family
            self.hparams.teacher_hparams = dict(taught.hparams)
            self.hparams.teacher_sha256 = sha256_of(teacher)
            teacher_weights = taught.state_dict()
        hp = self.hparams
        if hp.teacher_family is not None:
            check_choice("teacher family", hp.teacher_family, TEACHERS)
            self.net = build_module(registry.get_model_class(hp.teacher_family), **hp.teacher_hparams)
            if teacher_weights is not None:
                self.net.load_state_dict(teacher_weights)
            if hp.teacher_family == "ddpm" and parameterization == "both":
                self.net.unet.add_x_head()
            if hp.teacher_family == "flow_matching" and self.net.hparams.path == "vp":
                raise ValueError(
                    "consistency distillation reads a flow teacher on the straight path; "
                    "this teacher's path is vp: distil a rectified or ot flow_matching model"
                )
            self.conditional = self.net.conditional
            self.num_classes = self.net.hparams.num_classes
            self.in_channels, self.image_size = self.net.hparams.in_channels, self.net.hparams.image_size
        else:
            self.conditional = class_conditional and num_classes > 0
            self.num_classes = num_classes
            self.in_channels, self.image_size = in_channels, image_size
            self.net = UNet(
                in_channels=in_channels,
                base_channels=base_channels,
                channel_mults=tuple(channel_mults),
                num_res_blocks=num_res_blocks,
                attention_levels=tuple(attention_levels),
                num_heads=num_heads,
                dropout=dropout,
                num_classes=num_classes if self.conditional else 0,
            )
        self.target = copy.deepcopy(self.net).requires_grad_(False)
        self.sigma_low, self.sigma_high = self._sigma_range()
        # the teacher is read from its file when training and kept out of the module (never checkpointed)
        object.__setattr__(self, "_teacher", None)

    # --- the consistency function -----------------------------------------------------------------

    def _sigma_range(self) -> tuple[float, float]:
        """The discretisation's range: the hyper-parameters', within the noise levels a teacher knows."""
        hp = self.hparams
        low, high = hp.sigma_min, hp.sigma_max
        if hp.teacher_family == "ddpm":
            sigmas = self.net.schedule.sigmas
            low, high = max(low, float(sigmas[0])), min(high, float(sigmas[-1]))
        return low, high

    def levels(self, n: int) -> Tensor:
        """The n noise levels of the discretisation, ascending, float32 on the module's device. Under a VP
        teacher each is the nearest of its integer timesteps (in log sigma), so the teacher and the
        student are only asked at noise levels the teacher was trained on."""
        hp = self.hparams
        sigmas = karras_sigmas(n, self.sigma_low, self.sigma_high, hp.rho)
        if hp.teacher_family == "ddpm":
            schedule = self.net.schedule
            steps = vp_sigma_to_t(sigmas, schedule).round().long().unique()
            sigmas = schedule.sigmas.double()[steps]
        return sigmas.to(self.device, torch.float32)

    def num_levels_at(self, step: int) -> int:
        """N(k): the number of levels at training step k, by the curriculum."""
        hp = self.hparams
        if hp.curriculum == "fixed":
            return hp.num_levels
        schedule = ct_discretization if hp.curriculum == "ct" else ict_discretization
        return schedule(step, hp.curriculum_steps, hp.s0, hp.s1)

    def denoised(
        self, net: torch.nn.Module, x: Tensor, sigma: Tensor, label: Tensor | None, student: bool = True
    ) -> Tensor:
        """A teacher-shaped network's estimate of x0 from the VE sample x at noise level sigma (B,): a VP
        network sees x / sqrt(1 + sigma^2) at its timestep for sigma (the student's x from its merged heads);
        a flow network sees t x at flow time t = 1 / (1 + sigma) (t x = t x0 + (1 - t) eps) and
        x0 = x_t + (1 - t) v."""
        view = (-1,) + (1,) * (x.ndim - 1)
        if self.hparams.teacher_family == "ddpm":
            alpha_bar = 1 / (1 + sigma.double() ** 2)
            x_vp = x * alpha_bar.sqrt().to(x.dtype).view(view)
            out = net.unet(x_vp, vp_sigma_to_t(sigma, net.schedule).float(), label)
            merged = student and self.hparams.parameterization == "both"
            return (merged_x0 if merged else predict_x0)(out, x_vp, alpha_bar, net.hparams.prediction)
        t = (1 / (1 + sigma)).view(view)
        x_t = x * t
        return x_t + (1 - t) * net.velocity(x_t, t.flatten(), label)

    def consistency(self, net: torch.nn.Module, x: Tensor, sigma: Tensor, label: Tensor | None) -> Tensor:
        """f(x, sigma) = c_skip x + c_out F (CM, Appendix C). CT: F = U-Net(c_in x, c_noise). A
        teacher-shaped student: F = (D - c_skip_edm x) / c_out_edm, its denoiser D in EDM's output scaling,
        so f = c_skip x + (c_out / c_out_edm)(D - c_skip_edm x): the teacher's D wherever sigma >> sigma_min."""
        view = (-1,) + (1,) * (x.ndim - 1)
        c_skip, c_out = (c.view(view) for c in boundary_scalings(sigma, self.sigma_low))
        if self.hparams.teacher_family is None:
            c_in, c_noise = edm_input_scalings(sigma)
            return c_skip * x + c_out * net(x * c_in.view(view), c_noise, label)
        s = sigma.view(view)
        edm_skip = SIGMA_DATA**2 / (s**2 + SIGMA_DATA**2)
        edm_out = s * SIGMA_DATA / (s**2 + SIGMA_DATA**2) ** 0.5
        return c_skip * x + (c_out / edm_out) * (self.denoised(net, x, sigma, label) - edm_skip * x)

    # --- the teacher ------------------------------------------------------------------------------

    def teacher_model(self) -> GenerativeModule:
        """The frozen teacher, read from its file on first use (on this module's device)."""
        if self._teacher is None:
            hp = self.hparams
            teacher = load_teacher(hp.teacher, hp.teacher_sha256, hp.teacher_family, self.device)
            object.__setattr__(self, "_teacher", teacher)
        return self._teacher

    def teacher_denoiser(self, label: Tensor | None) -> Any:
        """The frozen teacher's guided denoiser D(x, sigma) for `label` (its classifier-free guidance)."""
        teacher = self.teacher_model()
        hp = self.hparams
        scale = teacher.hparams.guidance if hp.teacher_guidance is None else hp.teacher_guidance
        uncond = None if label is None else torch.full_like(label, teacher.null_label)
        return guided_denoiser(
            lambda x, s, c: self.denoised(teacher, x, s, c, student=False), label, uncond, scale
        )

    # --- training ---------------------------------------------------------------------------------

    def _label(self, batch: dict[str, Any]) -> Tensor | None:
        return batch["label"] if self.conditional else None

    def _loss(self, batch: dict[str, Any], step: int, generator: torch.Generator | None = None) -> Tensor:
        hp = self.hparams
        x0, label = batch["image"], self._label(batch)
        levels = self.levels(self.num_levels_at(step))
        if hp.level_sampling == "lognormal":
            n = lognormal_indices(levels, len(x0), generator=generator)
        else:
            n = torch.randint(0, len(levels) - 1, (len(x0),), device=self.device, generator=generator)
        sigma, sigma_next = levels[n], levels[n + 1]
        distance = consistency_loss(
            lambda x, s: self.consistency(self.net, x, s, label),
            lambda x, s: self.consistency(self.target, x, s, label),
            x0, sigma, sigma_next, torch.randn(x0.shape, device=self.device, generator=generator),
            teacher=None if hp.teacher_family is None else self.teacher_denoiser(label),
            heun=hp.solver == "heun", distance=hp.loss,
        )  # fmt: skip
        weight = 1 / (sigma_next - sigma) if hp.weighting == "ict" else torch.ones_like(sigma)
        return (weight * distance).mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self.global_step > 0:
            self._follow_online()
        loss = self._loss(batch, self.global_step)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        self.log("train/levels", float(self.num_levels_at(self.global_step)), batch_size=len(batch["image"]))
        return loss

    def _follow_online(self) -> None:
        """The target network's step (`follow_online`), mu by the curriculum at step k unless fixed."""
        hp = self.hparams
        mu = hp.target_ema
        if mu is None:
            mu = target_decay(self.num_levels_at(self.global_step), s0=hp.s0)
        follow_online(self.target, self.net, mu)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # levels and noise from a generator seeded per batch, at the discretisation's end: comparable
        # across validations, and no draw from the global generator (which exact resumption relies on)
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss = self._loss(batch, self.hparams.curriculum_steps, generator)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["image"]))

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return adamw_with_warmup(self.net.parameters(), hp.lr, hp.weight_decay, hp.warmup_steps)

    # --- sampling ---------------------------------------------------------------------------------

    def sampling_levels(self, steps: int) -> Tensor:
        """The levels multistep sampling visits, descending: `steps` of the final discretisation, evenly
        spaced in its index from the top (1 step: sigma_max alone)."""
        levels = self.levels(self.num_levels_at(self.hparams.curriculum_steps))
        if not 1 <= steps <= len(levels) - 1:
            raise ValueError(f"steps must be between 1 and {len(levels) - 1} for this model, got {steps}")
        top = len(levels) - 1
        picks = [top - (i * top) // steps for i in range(steps)]
        return levels[picks]

    @inference
    def generate(
        self,
        n: int,
        *,
        condition: Any = None,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        progress: bool = False,
    ) -> Tensor:
        """`n` images in [0, 1] in `steps` consistency steps (CM, Algorithm 1). `condition`: class labels.
        The guidance of a distilled model is the teacher's, learnt: `guidance` is refused."""
        if guidance is not None:
            raise ValueError(
                "a consistency model samples with the guidance it was distilled with (--model.teacher_guidance "
                "at training); leave --guidance out"
            )
        steps = self.hparams.sampling_steps if steps is None else steps
        labels = class_labels(
            condition,
            n,
            self.num_classes if self.conditional else 0,
            family="consistency",
            device=self.device,
        )
        shape = (n, self.in_channels, self.image_size, self.image_size)
        noise = randn(shape, generator, torch.float32, self.device)

        def model(x: Tensor, sigma: Tensor) -> Tensor:
            return self.consistency(self.net, x, sigma, labels)

        images = consistency_sampler(
            model, noise, self.sampling_levels(steps).tolist(), sigma_min=self.sigma_low, generator=generator,
            clip_denoised=self.hparams.clip_denoised, progress=progress,
        )  # fmt: skip
        return ((images + 1) / 2).clamp(0, 1)

    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, Tensor]:
        condition = torch.arange(n) % self.num_classes if self.conditional else None
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        return {
            f"samples_{k}_step": self.generate(
                n, condition=condition, generator=torch.Generator().manual_seed(seed), steps=k
            )
            for k in (1, 2)
        }


def _teacher_family(path: str) -> str:
    """The family of the teacher checkpoint, when this family can distil it; else a one-line error."""
    found = family_of(read_checkpoint(path))
    if found not in TEACHERS:
        other = " (an ldm teacher: --model lcm)" if found == "ldm" else ""
        raise CheckpointError(
            f"{path} is a `{found}` checkpoint; --model.teacher needs one of {', '.join(TEACHERS)}{other}"
        )
    return found

"""`progressive_distillation`: Salimans & Ho (2022), "Progressive Distillation for Fast Sampling of Diffusion
Models": a `ddpm` teacher's DDIM sampler distilled into a student that takes half its steps, then the
student into one that takes half of that, round after round (128 -> 64 -> ... -> 4 steps by default).

The student is the teacher's network, started from its weights. In round r the student samples in
N = start_steps / 2^(r+1) DDIM steps on a fixed grid of timesteps, and its teacher (the original, with
its classifier-free guidance, in round 0; the previous round's student after) in 2N on the grid that
nests it. Each training step (Algorithm 2 of the paper):

- noises an image to a student timestep t, z_t = alpha_t x + sigma_t eps;
- runs two DDIM steps of the teacher, t -> t' -> t'' (t'' the student's next timestep);
- sets the student's target to the x that one DDIM step of the student would need to predict to land on
  the teacher's z_t'': x~ = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t)
  (not the teacher's own x prediction);
- regresses the student's x prediction on x~, weighted by SNR (below).

The student's x prediction is the teacher's own (`parameterization: teacher`, eps for the zoo `ddpm`
recipe), or the paper's merge of two output heads, x^ = sigma_t^2 x~ + alpha_t^2 x_eps (`both`): x_eps the
teacher's head and x~ a new head, zero at the start (bounded where the noise is high, but far from the
teacher where it is not). No step clips x: with x clipped to [-1, 1] (diffusers' DDIM default, and zoo
`ddpm`'s sampler) the teacher's steps near the top of the grid are not an ODE's, and the student, whose one
step must land on the teacher's two, was pulled off its teacher everywhere (benchmarks/RESULTS.md). The
grid's top timestep is below the schedule's end (`top_timestep`), where an eps network's x is undefined.
The loss weight is the paper's max(SNR, 1) on the x error (`loss_weighting: truncated_snr`), or min(SNR, 1)
(`min_snr`: the eps error where the noise is high, which an eps student bounds). The previous
round's student is part of the checkpoint, so a resumed run continues in its round exactly.

    python -m zoo.fit --model progressive_distillation --model.teacher runs/ddpm/<run>/checkpoints/last.ckpt
    python -m zoo.sample --ckpt runs/progressive_distillation/<run>/checkpoints/last.ckpt --label 3 --steps 4
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from zoo import registry
from zoo.checkpoint import load_teacher, require_family
from zoo.conditioning import class_labels
from zoo.diffusion import (
    ddim,
    guided_denoiser,
    merged_x0,
    min_snr_weight,
    predict_eps,
    predict_x0,
    q_sample,
)
from zoo.diffusion.samplers import randn
from zoo.evaluate import sha256_of
from zoo.module import GenerativeModule, adamw_with_warmup, build_module, check_choice, inference


class ProgressiveDistillation(GenerativeModule):
    """A `ddpm` distilled round by round into fewer DDIM steps; see the module docstring.

    Args:
        teacher: the `ddpm` checkpoint to distil; its network, data and labels are the student's.
        teacher_guidance: the original teacher's classifier-free guidance scale (None: its own default);
            the students learn the guided sampler and sample without guidance.
        start_steps: the original teacher's DDIM steps in round 0 (a power of two times the final steps).
        rounds: halvings; the final student samples in start_steps / 2^rounds steps.
        round_steps: training steps per round.
        top_timestep: the grid's highest timestep, where sampling starts (below T - 1: see the docstring).
        parameterization: both (the paper's merged x and eps heads) or teacher (the teacher's own output).
        loss_weighting: truncated_snr, the paper's max(SNR, 1) on the x error (max(x-MSE, eps-MSE)), or
            min_snr, min(SNR, 1) (min(x-MSE, eps-MSE): Min-SNR-1, Hang et al. 2023), the eps error where
            the noise is high, which an eps student can bound.
        lr: AdamW learning rate, reached at the end of the warm-up.
        weight_decay: AdamW weight decay.
        warmup_steps: optimizer steps of linear learning-rate warm-up (at the start of training).
        teacher_sha256: set by zoo from the teacher file; leave unset.
        teacher_hparams: set by zoo from the teacher file (the ddpm's arguments); leave unset.
    """

    modality = "image"
    default_data = "digits"
    built_on = "teacher"

    def __init__(
        self,
        teacher: str | None = None,
        teacher_guidance: float | None = None,
        start_steps: int = 128,
        rounds: int = 5,
        round_steps: int = 500,
        top_timestep: int = 979,
        parameterization: str = "teacher",
        loss_weighting: str = "min_snr",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 50,
        teacher_sha256: str | None = None,
        teacher_hparams: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_choice("parameterization", parameterization, ("both", "teacher"))
        check_choice("loss_weighting", loss_weighting, ("truncated_snr", "min_snr"))
        if teacher is None and teacher_hparams is None:
            raise ValueError(
                "progressive_distillation distils a trained ddpm: pass --model.teacher "
                "runs/ddpm/<run>/checkpoints/last.ckpt (python -m zoo.fit --model ddpm trains one)"
            )
        if rounds < 1 or start_steps % 2**rounds:
            raise ValueError(
                f"start_steps {start_steps} must be a multiple of 2**rounds ({2**rounds}), rounds >= 1"
            )
        self.save_hyperparameters()
        checkpoint = None
        if teacher_hparams is None:
            checkpoint = require_family(teacher, "ddpm", "--model.teacher")
            self.hparams.teacher_hparams = {
                k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")
            }
            self.hparams.teacher_sha256 = sha256_of(teacher)
        hp = self.hparams
        if not 0 < top_timestep < hp.teacher_hparams.get("num_train_timesteps", 1000):
            raise ValueError(f"top_timestep must be inside the teacher's schedule, got {top_timestep}")
        self.student = build_module(registry.get_model_class("ddpm"), **hp.teacher_hparams)
        if checkpoint is not None:
            self.student.load_state_dict(checkpoint["state_dict"])
        if parameterization == "both":
            self.student.unet.add_x_head()
        # the previous round's student, the teacher from round 1 on; part of the checkpoint
        self.round_teacher = copy.deepcopy(self.student.unet).requires_grad_(False)
        self.register_buffer("teacher_round", torch.tensor(0))  # the round round_teacher was copied for
        self.schedule = self.student.schedule
        # the teacher is read from its file when training and kept out of the module (never checkpointed)
        object.__setattr__(self, "_teacher", None)

    # --- the grids --------------------------------------------------------------------------------

    def grid(self, steps: int) -> Tensor:
        """The `steps` DDIM timesteps, ascending: round(i (top + 1) / steps) - 1, i = 1..steps. Every second
        timestep of the 2N grid (i = 2, 4, ...) is the N grid's, so a teacher's two steps end on the student's next."""
        i = torch.arange(1, steps + 1, dtype=torch.float64)
        return (torch.round(i * (self.hparams.top_timestep + 1) / steps) - 1).long()

    def round_at(self, step: int) -> int:
        return min(step // self.hparams.round_steps, self.hparams.rounds - 1)

    def student_steps(self, round_: int) -> int:
        return self.hparams.start_steps // 2 ** (round_ + 1)

    # --- the teachers -----------------------------------------------------------------------------

    def original_teacher(self) -> GenerativeModule:
        if self._teacher is None:
            hp = self.hparams
            teacher = load_teacher(hp.teacher, hp.teacher_sha256, "ddpm", self.device)
            object.__setattr__(self, "_teacher", teacher)
        return self._teacher

    def teacher_step(
        self, round_: int, x: Tensor, t: Tensor, alpha_bar: Tensor, label: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """The x and eps of a DDIM step of the round's teacher from x at t: in round 0 the original teacher's
        guided prediction, later the previous round's student, unguided. Never clipped: DDIM is then the
        probability-flow ODE's step, which one student step can match (see the module docstring)."""
        if round_ == 0:
            teacher, hp = self.original_teacher(), self.hparams
            scale = teacher.hparams.guidance if hp.teacher_guidance is None else hp.teacher_guidance
            uncond = None if label is None else torch.full_like(label, teacher.null_label)
            out, prediction = (
                guided_denoiser(teacher.unet, label, uncond, scale)(x, t.float()),
                teacher.hparams.prediction,
            )
            return predict_x0(out, x, alpha_bar, prediction), predict_eps(out, x, alpha_bar, prediction)
        x0 = self.student_x0(self.round_teacher, x, t, label)
        return x0, predict_eps(x0, x, alpha_bar, "sample")

    def student_x0(self, unet: torch.nn.Module, z: Tensor, t: Tensor, label: Tensor | None) -> Tensor:
        """A student's x prediction at the integer timesteps t (B,): the merged heads' sigma^2 x~ + alpha^2 x_eps,
        or (`parameterization: teacher`) the teacher-shaped output's x."""
        alpha_bar = self.schedule.alphas_cumprod.to(z.device)[t]
        out, prediction = unet(z, t.float(), label), self.student.hparams.prediction
        if self.hparams.parameterization == "teacher":
            return predict_x0(out, z, alpha_bar, prediction)
        return merged_x0(out, z, alpha_bar, prediction)

    @torch.no_grad()
    def target(
        self, z: Tensor, t: Tensor, t_mid: Tensor, t_next: Tensor, round_: int, label: Tensor | None
    ) -> Tensor:
        """x~: two teacher DDIM steps t -> t_mid -> t_next (t_next = -1: clean data), and the x whose one
        DDIM step from z_t lands where they do (Salimans & Ho, Algorithm 2)."""
        ab = self.schedule.alphas_cumprod.to(z.device)
        alpha_bar = {
            k: torch.where(s >= 0, ab[s.clamp(min=0)], 1.0)
            for k, s in (("t", t), ("mid", t_mid), ("next", t_next))
        }
        view = (-1,) + (1,) * (z.ndim - 1)
        a = {k: v.sqrt().to(z.dtype).view(view) for k, v in alpha_bar.items()}
        s = {k: (1 - v).sqrt().to(z.dtype).view(view) for k, v in alpha_bar.items()}
        x = z
        for here, there, step in (("t", "mid", t), ("mid", "next", t_mid)):
            x0, eps = self.teacher_step(round_, x, step, alpha_bar[here], label)
            x = a[there] * x0 + s[there] * eps
        ratio = s["next"] / s["t"]
        return (x - ratio * z) / (a["next"] - ratio * a["t"])

    # --- training ---------------------------------------------------------------------------------

    def _loss(self, batch: dict[str, Any], step: int, generator: torch.Generator | None = None) -> Tensor:
        x0, device = batch["image"], self.device
        label = batch["label"] if self.student.conditional else None
        round_ = self.round_at(step)
        n = self.student_steps(round_)
        student_grid = self.grid(n).to(device)
        teacher_grid = self.grid(2 * n).to(device)
        i = torch.randint(0, n, (len(x0),), device=device, generator=generator)
        t = student_grid[i]
        t_mid = teacher_grid[2 * i]  # the teacher's timestep between t and the student's next one
        t_next = torch.where(i > 0, student_grid[(i - 1).clamp(min=0)], -1)
        noise = torch.randn(x0.shape, device=device, generator=generator)
        z = q_sample(x0, t, noise, self.schedule)
        goal = self.target(z, t, t_mid, t_next, round_, label)
        ab = self.schedule.alphas_cumprod.to(device)[t]
        predicted = self.student_x0(self.student.unet, z, t, label)
        if self.hparams.loss_weighting == "truncated_snr":
            weight = torch.clamp(ab / (1 - ab), min=1.0).to(x0.dtype)  # max(x-MSE, eps-MSE)
        else:
            weight = min_snr_weight(t, self.schedule, 1.0, "sample").to(x0)  # min(x-MSE, eps-MSE)
        return (weight * (predicted - goal).flatten(1).pow(2).mean(1)).mean()

    def _enter_round(self) -> int:
        """The round of the global step; at a new round's first step the student so far becomes its teacher
        (called by validation too: a validation at a round's first step sees that round's teacher)."""
        round_ = self.round_at(self.global_step)
        if round_ > int(self.teacher_round):
            self.round_teacher.load_state_dict(self.student.unet.state_dict())
            self.teacher_round.fill_(round_)
        return round_

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        round_ = self._enter_round()
        loss = self._loss(batch, self.global_step)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        self.log("train/student_steps", float(self.student_steps(round_)), batch_size=len(batch["image"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        self._enter_round()
        loss = self._loss(batch, self.global_step, generator)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["image"]))

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return adamw_with_warmup(self.student.unet.parameters(), hp.lr, hp.weight_decay, hp.warmup_steps)

    # --- sampling ---------------------------------------------------------------------------------

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
        """`n` images in [0, 1] by DDIM over the student's grid of `steps` timesteps (default: the final
        round's). The guidance is the original teacher's, learnt: `guidance` is refused."""
        if guidance is not None:
            raise ValueError(
                "a distilled student samples with the guidance it was distilled with (--model.teacher_guidance); "
                "leave --guidance out"
            )
        hp = self.hparams
        steps = self.student_steps(hp.rounds - 1) if steps is None else steps
        if not 1 <= steps <= hp.start_steps:
            raise ValueError(f"steps must be between 1 and {hp.start_steps}, got {steps}")
        student = self.student
        labels = class_labels(
            condition, n, student.hparams.num_classes if student.conditional else 0,
            family="progressive_distillation", device=self.device,
        )  # fmt: skip
        shape = (n, student.hparams.in_channels, student.hparams.image_size, student.hparams.image_size)
        noise = randn(shape, generator, torch.float32, self.device)
        images = ddim(
            lambda x, t: self.student_x0(student.unet, x, t.long(), labels), noise, self.grid(steps).flip(0),
            self.schedule, prediction="sample", progress=progress,
        )  # fmt: skip
        return ((images + 1) / 2).clamp(0, 1)

    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, Tensor]:
        classes = self.student.hparams.num_classes
        condition = torch.arange(n) % classes if self.student.conditional else None
        steps = self.student_steps(self.round_at(max(self.global_step - 1, 0)))  # the round just trained
        return {
            f"samples_{steps}_step": self.generate(n, condition=condition, generator=generator, steps=steps)
        }

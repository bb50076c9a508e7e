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
- regresses the student's x prediction on x~ with the truncated-SNR weight max(SNR_t, 1), i.e.
  max(x-MSE, eps-MSE).

The student keeps the teacher's parameterisation (the zoo `ddpm` recipe's is eps); the teacher's steps are
zoo's DDIM steps (x predictions clipped to [-1, 1], eps the network's, as diffusers' DDIM), as is sampling, and the grid's top timestep is below
the schedule's end, where an eps-network's x is undefined (`top_timestep`). The previous round's student
is part of the checkpoint, so a resumed run continues in its round exactly.

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
from zoo.diffusion import ddim, guided_denoiser, predict_eps, predict_x0, q_sample
from zoo.diffusion.samplers import randn
from zoo.evaluate import sha256_of
from zoo.module import GenerativeModule, adamw_with_warmup, build_module, inference


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
        round_steps: int = 600,
        top_timestep: int = 979,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 50,
        teacher_sha256: str | None = None,
        teacher_hparams: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
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

    def teacher_denoiser(self, round_: int, label: Tensor | None) -> Any:
        """Round 0: the original teacher with its guidance; later: the previous round's student, unguided."""
        if round_ == 0:
            teacher = self.original_teacher()
            hp = self.hparams
            scale = teacher.hparams.guidance if hp.teacher_guidance is None else hp.teacher_guidance
            uncond = None if label is None else torch.full_like(label, teacher.null_label)
            return guided_denoiser(teacher.unet, label, uncond, scale)
        return lambda x, t: self.round_teacher(x, t, label)

    def _x0(self, out: Tensor, x: Tensor, alpha_bar: Tensor) -> Tensor:
        return predict_x0(out, x, alpha_bar, self.student.hparams.prediction)

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
        denoiser = self.teacher_denoiser(round_, label)
        x = z
        prediction = self.student.hparams.prediction
        for here, there, step in (("t", "mid", t), ("mid", "next", t_mid)):
            # zoo's DDIM step, the sampler being distilled: x0 clipped, eps the network's (as diffusers')
            out = denoiser(x, step.float())
            x0 = predict_x0(out, x, alpha_bar[here], prediction).clamp(-1, 1)
            x = a[there] * x0 + s[there] * predict_eps(out, x, alpha_bar[here], prediction)
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
        predicted = self._x0(self.student.unet(z, t.float(), label), z, ab)
        weight = torch.clamp(ab / (1 - ab), min=1.0).to(x0.dtype)  # max(SNR, 1): max(x-MSE, eps-MSE)
        return (weight * (predicted - goal).flatten(1).pow(2).mean(1)).mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        round_ = self.round_at(self.global_step)
        if round_ > int(self.teacher_round):  # a new round: the student so far becomes its teacher
            self.round_teacher.load_state_dict(self.student.unet.state_dict())
            self.teacher_round.fill_(round_)
        loss = self._loss(batch, self.global_step)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        self.log("train/student_steps", float(self.student_steps(round_)), batch_size=len(batch["image"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
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
            lambda x, t: student.unet(x, t, labels), noise, self.grid(steps).flip(0), self.schedule,
            prediction=student.hparams.prediction, clip_sample=True, progress=progress,
        )  # fmt: skip
        return ((images + 1) / 2).clamp(0, 1)

    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, Tensor]:
        classes = self.student.hparams.num_classes
        condition = torch.arange(n) % classes if self.student.conditional else None
        steps = self.student_steps(self.round_at(self.global_step))
        return {
            f"samples_{steps}_step": self.generate(n, condition=condition, generator=generator, steps=steps)
        }

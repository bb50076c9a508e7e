"""`lcm`: latent consistency distillation (Luo et al. 2023, "Latent Consistency Models") of a trained `ldm`
into a 1-4 step text-to-image model, guided in one network pass.

The student is the teacher ldm itself (its first stage, text encoder and tokenizer frozen and shared; its
U-Net trained from the teacher's weights) with a guidance-scale input added to the U-Net's timestep
embedding (`UNet.add_guidance_embedding`, zero at the start). Each training step (LCM, Algorithm 1):

- draws a guidance scale w in [guidance_min, guidance_max] and a timestep t on the skip-step grid
  t = i k - 1 (k = T // original_steps, the grid LCM samples on), and noises the image's latents to t;
- takes one DDIM step of the teacher's classifier-free-guided prediction at scale w from t to t - k
  (the skip-step solver: one teacher call per k timesteps);
- pulls the student's consistency function f(x_t, w, c, t) = c_skip(t) x_t + c_out(t) x0_hat (LCM's
  boundary scalings at timestep scaling 10, `zoo.diffusion.consistency.lcm_scalings`) towards its target
  network's (an EMA of it) f at the teacher's point, the random state of the online pass replayed.

Sampling is LCM's multistep sampler (`lcm_sampler`) on LCM's timesteps: x0 by f, re-noised to the next
timestep; `--guidance` is the w the student was told (one pass, no unconditional branch).

    python -m zoo.fit --model lcm --model.teacher runs/ldm/<run>/checkpoints/last.ckpt
    python -m zoo.sample --ckpt runs/lcm/<run>/checkpoints/last.ckpt --prompt "a red circle" --steps 4
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from zoo import registry
from zoo.checkpoint import load_teacher, require_family
from zoo.diffusion import q_sample
from zoo.diffusion.consistency import follow_online, lcm_grid, lcm_sampler, lcm_scalings, lcm_timesteps
from zoo.diffusion.parameterization import predict_eps, predict_x0
from zoo.diffusion.samplers import randn
from zoo.evaluate import sha256_of
from zoo.module import GenerativeModule, adamw_with_warmup, build_module, check_choice, inference

GUIDANCE_EMBEDDING = 256  # width of the guidance scale's sinusoidal embedding (LCM's SD students: 256)


class LCM(GenerativeModule):
    """A latent consistency model distilled from an `ldm`; see the module docstring.

    Args:
        teacher: the `ldm` checkpoint to distil (U-Net backbone, diffusion objective); its data, tokenizer,
            text encoder and first stage are the student's.
        guidance_min: the lowest classifier-free guidance scale w the student learns (1: none).
        guidance_max: the highest.
        original_steps: the skip-step grid: the teacher's schedule is crossed in this many DDIM steps of
            k = T // original_steps timesteps (LCM: 50).
        top_timestep: the grid's timesteps above this are left out, of training and sampling (None: none,
            LCM's). A cosine schedule's last timesteps have alpha_bar ~1e-9, where an eps-network's x0 is
            undefined; the default ldm's own sampler starts at 960.
        timestep_scaling: LCM's boundary scalings read the timestep times this (LCM: 10).
        target_ema: decay of the target network, an EMA of the student (LCM: 0.95).
        loss: l2, or huber (LCM's sqrt(d^2 + c^2) - c per element, c = huber_c).
        huber_c: the Huber loss's c (LCM: 0.001).
        lr: AdamW learning rate, reached at the end of the warm-up (the U-Net alone is trained).
        weight_decay: AdamW weight decay.
        warmup_steps: optimizer steps of linear learning-rate warm-up.
        sampling_steps: steps of `generate` unless given (1 to original_steps).
        guidance: the guidance scale w of `generate` unless given; None: the teacher's.
        teacher_sha256: set by zoo from the teacher file; leave unset.
        teacher_hparams: set by zoo from the teacher file (the ldm's arguments); leave unset.
    """

    modality = "image"
    default_data = "shapes"
    built_on = "teacher"
    condition_key = "caption"  # zoo.evaluate generates for the real split's captions

    def __init__(
        self,
        teacher: str | None = None,
        guidance_min: float = 2.0,
        guidance_max: float = 8.0,
        original_steps: int = 50,
        top_timestep: int | None = None,
        timestep_scaling: float = 10.0,
        target_ema: float = 0.95,
        loss: str = "l2",
        huber_c: float = 0.001,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        sampling_steps: int = 4,
        guidance: float | None = None,
        teacher_sha256: str | None = None,
        teacher_hparams: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_choice("loss", loss, ("l2", "huber"))
        if not 1.0 <= guidance_min <= guidance_max:
            raise ValueError(f"need 1 <= guidance_min <= guidance_max, got {guidance_min} and {guidance_max}")
        if teacher is None and teacher_hparams is None:
            raise ValueError(
                "lcm distils a trained ldm: pass --model.teacher runs/ldm/<run>/checkpoints/last.ckpt "
                "(python -m zoo.fit --model ldm trains one)"
            )
        self.save_hyperparameters()
        checkpoint = None
        if teacher_hparams is None:  # first built: the teacher's arguments, weights and tokenizer
            checkpoint = require_family(teacher, "ldm", "--model.teacher")
            self.hparams.teacher_hparams = {
                k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")
            }
            self.hparams.teacher_sha256 = sha256_of(teacher)
        hp = self.hparams
        if (
            hp.teacher_hparams.get("backbone", "unet") != "unet"
            or hp.teacher_hparams.get("objective") == "flow"
        ):
            raise ValueError(
                "lcm distils an ldm with the U-Net backbone and the diffusion objective; this teacher has "
                f"backbone {hp.teacher_hparams.get('backbone')} and objective {hp.teacher_hparams.get('objective')}"
            )
        self.student = build_module(registry.get_model_class("ldm"), **hp.teacher_hparams)
        if checkpoint is not None:
            self.student.on_load_checkpoint(checkpoint)
            self.student.load_state_dict(checkpoint["state_dict"])
        self.student.requires_grad_(False)
        self.student.unet.add_guidance_embedding(GUIDANCE_EMBEDDING)
        self.student.unet.requires_grad_(True)
        self.target = copy.deepcopy(self.student.unet).requires_grad_(False)
        self.schedule = self.student.schedule
        self.skip = self.schedule.num_train_timesteps // original_steps
        self.register_buffer(
            "grid",
            lcm_grid(self.schedule.num_train_timesteps, original_steps, top_timestep),
            persistent=False,
        )
        if len(self.grid) == 0:
            raise ValueError(
                f"top_timestep {top_timestep} leaves no timestep of the grid ({self.skip - 1} is its lowest)"
            )
        # the teacher is read from its file when training and kept out of the module (never checkpointed)
        object.__setattr__(self, "_teacher", None)

    # --- the consistency function -----------------------------------------------------------------

    def consistency(
        self, unet: torch.nn.Module, x: Tensor, t: Tensor, guidance: Tensor, text: dict[str, Tensor]
    ) -> Tensor:
        """f(x_t, w, c, t) = c_skip(t) x_t + c_out(t) x0_hat(x_t, w, c, t) (LCM, eq. 9)."""
        out = unet(
            x, t, context=text["states"], context_mask=text["mask"], pooled=text["pooled"], guidance=guidance
        )
        alpha_bar = self.schedule.alphas_cumprod.to(x.device)[t.long()]
        x0 = predict_x0(out, x, alpha_bar, self.student.hparams.prediction)
        c_skip, c_out = lcm_scalings(t.double(), self.hparams.timestep_scaling)
        view = (-1,) + (1,) * (x.ndim - 1)
        return c_skip.to(x.dtype).view(view) * x + c_out.to(x.dtype).view(view) * x0

    def teacher_model(self) -> GenerativeModule:
        """The frozen teacher ldm, read from its file on first use (on this module's device)."""
        if self._teacher is None:
            hp = self.hparams
            teacher = load_teacher(hp.teacher, hp.teacher_sha256, "ldm", self.device)
            object.__setattr__(self, "_teacher", teacher)
        return self._teacher

    @torch.no_grad()
    def teacher_ddim_step(
        self,
        x: Tensor,
        t: Tensor,
        t_prev: Tensor,
        guidance: Tensor,
        text: dict[str, Tensor],
        empty: dict[str, Tensor],
    ) -> Tensor:
        """One DDIM step (Song et al. 2021, eq. 12, eta = 0) of the teacher's guided prediction from t to
        t_prev: x_prev = sqrt(ab') x0_hat + sqrt(1 - ab') eps_hat, the guidance per sample."""
        teacher = self.teacher_model()
        both = {k: torch.cat([empty[k], text[k]]) for k in text}
        uncond, cond = teacher._unet(torch.cat([x, x]), torch.cat([t, t]).float(), both).chunk(2)
        view = (-1,) + (1,) * (x.ndim - 1)
        out = uncond + guidance.view(view) * (cond - uncond)
        ab = self.schedule.alphas_cumprod.to(x.device)
        prediction = self.student.hparams.prediction
        x0, eps = predict_x0(out, x, ab[t], prediction), predict_eps(out, x, ab[t], prediction)
        ab_prev = ab[t_prev].to(x.dtype).view(view)
        return ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps

    # --- training ---------------------------------------------------------------------------------

    def _loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> Tensor:
        hp = self.hparams
        images, captions = batch["image"], list(batch["caption"])
        n, device = len(images), self.device
        with torch.no_grad():
            z0 = self.student.first_stage.encode_latents(images, sample=generator is None)
            text = self.student.encode_text(captions)
            empty = self.student.encode_text([""] * n)
        uniform = torch.rand(n, device=device, generator=generator)
        guidance = hp.guidance_min + (hp.guidance_max - hp.guidance_min) * uniform
        t = self.grid[torch.randint(0, len(self.grid), (n,), device=device, generator=generator)]
        t_prev = (t - self.skip).clamp(min=0)
        noise = torch.randn(z0.shape, device=device, generator=generator)
        x_t = q_sample(z0, t, noise, self.schedule)
        state = torch.get_rng_state()  # the online pass's dropout masks, replayed in the target pass
        online = self.consistency(self.student.unet, x_t, t, guidance, text)
        with torch.no_grad():
            x_prev = self.teacher_ddim_step(x_t, t, t_prev, guidance, text, empty)
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(state)
                target = self.consistency(self.target, x_prev, t_prev, guidance, text)
        if hp.loss == "l2":
            return (online - target).pow(2).mean()
        return (((online - target) ** 2 + hp.huber_c**2).sqrt() - hp.huber_c).mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self.global_step > 0:  # the target's step after the last optimiser step (see `follow_online`)
            follow_online(self.target, self.student.unet, self.hparams.target_ema)
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # draws from a generator seeded per batch: comparable across validations, none from the global one
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss = self._loss(batch, generator)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["image"]))

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return adamw_with_warmup(self.student.unet.parameters(), hp.lr, hp.weight_decay, hp.warmup_steps)

    def train(self, mode: bool = True) -> LCM:
        super().train(mode)
        self.student.first_stage.eval()
        if self.student.text_encoder is not None:
            self.student.text_encoder.eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.student.on_save_checkpoint(checkpoint)  # the tokenizer and preview prompts
        super().on_save_checkpoint(checkpoint)  # then zoo's record of the family: lcm's, not the ldm's

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.student.on_load_checkpoint(checkpoint)

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
        """`n` images in [0, 1] for `condition` (one prompt, or n) in `steps` LCM steps, guided at
        `guidance` in one pass per step."""
        hp = self.hparams
        steps = hp.sampling_steps if steps is None else steps
        guidance = (hp.guidance or self.student.hparams.guidance) if guidance is None else guidance
        text = self.student.encode_text(self.student._prompts(condition, n))
        w = torch.full((n,), float(guidance), device=self.device)
        unet = self.student.unet

        def denoiser(x: Tensor, t: Tensor) -> Tensor:
            return unet(
                x, t, context=text["states"], context_mask=text["mask"], pooled=text["pooled"], guidance=w
            )

        size = self.student.latent_size
        shape = (n, self.student.latent_channels, size, size)
        noise = randn(shape, generator, torch.float32, self.device)
        timesteps = lcm_timesteps(
            steps, self.schedule.num_train_timesteps, hp.original_steps, hp.top_timestep
        )
        latents = lcm_sampler(
            denoiser, noise, timesteps, self.schedule, prediction=self.student.hparams.prediction,
            generator=generator, progress=progress, timestep_scaling=hp.timestep_scaling,
        )  # fmt: skip
        return ((self.student.first_stage.decode_latents(latents) + 1) / 2).clamp(0, 1)

    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, Tensor]:
        prompts = self.student._preview_prompts or sorted(set((batch or {}).get("caption", []))) or [""]
        prompts = [prompts[i % len(prompts)] for i in range(n)]
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        return {
            f"samples_{k}_step": self.generate(
                n, condition=prompts, generator=torch.Generator().manual_seed(seed), steps=k
            )
            for k in (1, 4)
        }

"""`ldm`: text-to-image latent diffusion (Rombach et al. 2022), scaled down for a CPU.

Two stages, as in Stable Diffusion:
1. a first stage, the `vae` family, frozen: images <-> latents (x4 smaller on each side), latents
   multiplied by the VAE's `latent_scale` (1 / std of latents, measured on data) so they have unit
   variance, as the diffusion schedule assumes;
2. a U-Net from `zoo.nn` over the latents that cross-attends to the token states of a text encoder
   and adds the pooled text embedding to its timestep embedding. The text encoder (a small
   transformer over a byte-level BPE tokenizer trained on the captions, `zoo.nn.text`) is trained
   jointly with the U-Net from scratch, or taken frozen from a `clip` checkpoint
   (`--model.text_encoder CKPT`). Captions are dropped (replaced by "") with probability
   `caption_dropout` so that one network gives conditional and unconditional predictions for
   classifier-free guidance; a negative prompt replaces "" at sampling time.

`python -m zoo.fit --model ldm` with no `--model.first_stage` trains the first stage itself
first, in `<run>/first_stage/` (its own progress bar, checkpoint and reconstruction grids), then
the latent model; `--model.first_stage runs/vae/<run>/checkpoints/last.ckpt` reuses a trained VAE.
Sampling, img2img, inpainting and outpainting run in latent space with the diffusion core:

    python -m zoo.sample --ckpt runs/ldm/<run>/checkpoints/last.ckpt --prompt "a red circle" --guidance 4
    python -m zoo.sample --ckpt ... --prompt "a blue square" --negative-prompt "red" --sampler dpmpp_2m --steps 25
    python -m zoo.sample --ckpt ... --prompt "a green circle" --init-image x.png --strength 0.6
    python -m zoo.sample --ckpt ... --prompt "a green circle" --init-image x.png --mask hole.png
    python -m zoo.sample --ckpt ... --prompt "a green circle" --init-image x.png --outpaint left=16
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from zoo import registry
from zoo.diffusion import (
    NoiseSchedule,
    check_options,
    classifier_free_guidance,
    outpaint_canvas,
)
from zoo.diffusion import sample as run_sampler
from zoo.module import GenerativeModule, adamw_with_warmup, build_module
from zoo.nn.text import CaptionConditioned, CaptionTokenizer, TextEncoder
from zoo.nn.unet import UNet

# The first stage the one command trains when no --model.first_stage is given (the `vae` recipe's
# settings: sharp reconstructions, KL weight small enough for latent diffusion).
DEFAULT_FIRST_STAGE = {
    "latent_channels": 4,
    "downsample_factor": 4,
    "base_channels": 32,
    "beta": 0.01,
    "lr": 1e-3,
    "warmup_steps": 100,
}
FIRST_STAGE_FILE = "first_stage.ckpt"
OUTPAINT_SIDES = ("left", "right", "top", "bottom")


def _is_secondary_rank() -> bool:
    # Set by Lightning's DDP launcher in the processes it starts, by torchrun and by SLURM.
    return any(int(os.environ.get(var, "0") or 0) > 0 for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


class LDM(CaptionConditioned, GenerativeModule):
    """Text-to-image latent diffusion; see the module docstring."""

    family_name = "ldm"
    modality = "image"
    default_data = "shapes"
    condition_key = "caption"  # zoo.evaluate generates for the real split's captions
    untrained_first_stage_message = (
        "the ldm's first stage is untrained: train with `python -m zoo.fit --model ldm` (which trains "
        "it first) or pass --model.first_stage runs/vae/<run>/checkpoints/last.ckpt"
    )

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        first_stage: str | None = None,
        first_stage_config: dict[str, Any] | None = None,
        first_stage_steps: int = 1000,
        text_encoder: str | None = None,
        text_encoder_config: dict[str, Any] | None = None,
        vocab_size: int = 1024,
        text_width: int = 128,
        text_depth: int = 2,
        text_heads: int = 4,
        max_length: int = 24,
        base_channels: int = 64,
        channel_mults: tuple[int, ...] = (1, 2),
        num_res_blocks: int = 2,
        attention_levels: tuple[int, ...] = (0, 1),
        num_heads: int = 4,
        dropout: float = 0.0,
        caption_dropout: float = 0.1,
        schedule: str = "cosine",
        num_train_timesteps: int = 1000,
        prediction: str = "epsilon",
        min_snr_gamma: float | None = None,
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 200,
        sampler: str = "dpmpp_2m",
        sampling_steps: int = 25,
        guidance: float = 4.0,
    ) -> None:
        super().__init__()
        check_options(prediction=prediction, sampler=sampler)
        if first_stage_config is None:
            first_stage_config = self._first_stage_config(first_stage, in_channels, image_size)
        # the first-stage config actually used goes into the checkpoint: the model rebuilds without the VAE file
        self.save_hyperparameters()
        # set explicitly: under LightningCLI, save_hyperparameters records the parsed values (None here)
        self.hparams["first_stage_config"] = first_stage_config

        vae_class = registry.get_model_class("vae")
        self.first_stage = build_module(vae_class, **first_stage_config)
        self.first_stage.requires_grad_(False)
        # True once the VAE weights are trained or loaded; saved with the weights
        self.register_buffer("first_stage_ready", torch.tensor(False))
        factor = self.first_stage.hparams.downsample_factor
        self.latent_channels = self.first_stage.hparams.latent_channels
        self.latent_size = image_size // factor
        if self.latent_size % 2 ** (len(channel_mults) - 1):
            raise ValueError(
                f"latents of {self.latent_size}x{self.latent_size} do not halve {len(channel_mults) - 1} times "
                f"(channel_mults {channel_mults}); use fewer levels"
            )

        self.clip = None
        if text_encoder is not None:  # a frozen clip family's text encoder
            if text_encoder_config is None:  # first built: weights and config from the clip checkpoint
                from zoo.checkpoint import load_model

                self.clip = load_model(text_encoder)
                self.hparams["text_encoder_config"] = {
                    k: v for k, v in self.clip.hparams.items() if not k.startswith("_")
                }
            else:  # rebuilt from an ldm checkpoint, which holds the clip weights and tokenizer itself
                self.clip = build_module(registry.get_model_class("clip"), **text_encoder_config)
            self.clip.requires_grad_(False)
            context_dim = int(self.clip.hparams.text_width)  # text_states() gives (B, L, text_width)
            self.text_encoder = None
        else:
            self.text_encoder = TextEncoder(vocab_size, text_width, text_depth, text_heads, max_length)
            context_dim = text_width
        self.tokenizer: CaptionTokenizer | None = None

        self.unet = UNet(
            in_channels=self.latent_channels,
            base_channels=base_channels,
            channel_mults=tuple(channel_mults),
            num_res_blocks=num_res_blocks,
            attention_levels=tuple(attention_levels),
            num_heads=num_heads,
            dropout=dropout,
            context_dim=context_dim,
            pooled_dim=context_dim,
        )
        self.schedule = NoiseSchedule.make(schedule, num_train_timesteps)
        self._preview_prompts: list[str] | None = None

    # --- the first stage ----------------------------------------------------------------------

    @staticmethod
    def _first_stage_config(path: str | None, in_channels: int, image_size: int) -> dict[str, Any]:
        if path is None:
            return {"in_channels": in_channels, "image_size": image_size, **DEFAULT_FIRST_STAGE}
        from zoo.checkpoint import read_checkpoint

        config = dict(read_checkpoint(path).get("hyper_parameters", {}))
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        if (config.get("in_channels"), config.get("image_size")) != (in_channels, image_size):
            raise ValueError(
                f"first stage '{path}' is for {config.get('in_channels')}-channel {config.get('image_size')}px "
                f"images, but this ldm is for {in_channels}-channel {image_size}px ones: train a VAE on the "
                "same data (python -m zoo.fit --model vae --data ...) or leave --model.first_stage unset"
            )
        return config

    def _load_first_stage(self, path: str) -> None:
        from zoo.checkpoint import load_model

        vae = load_model(path)
        if not all(hasattr(vae, name) for name in ("encode_latents", "decode_latents", "latent_scale")):
            raise ValueError(f"first stage '{path}' is a {type(vae).__name__}, not a vae checkpoint")
        if float(vae.latent_scale) == 1.0:
            raise ValueError(
                f"first stage '{path}' has no measured latent scale (it never ran a validation): "
                "train it with validation (the vae recipe does) before using it as a first stage"
            )
        self.first_stage.load_state_dict(vae.state_dict())
        self.first_stage_ready.fill_(True)

    def prepare_fit(
        self, trainer: L.Trainer, datamodule: L.LightningDataModule, ckpt_path: str | None
    ) -> None:
        """Called by `zoo.fit` before training: trains the tokenizer and, unless one was given (or the run
        resumes), the first stage, in `<run>/first_stage/`."""
        datamodule.setup("fit")
        self._train_tokenizer(datamodule)
        if ckpt_path is not None or bool(self.first_stage_ready):
            return  # resuming: the first stage comes back with the checkpoint's weights
        if self.hparams.first_stage is not None:
            self._load_first_stage(self.hparams.first_stage)
            return
        folder = Path(trainer.default_root_dir) / "first_stage"
        done = folder / FIRST_STAGE_FILE
        if _is_secondary_rank():  # rank 0 trains it; the others wait for its checkpoint
            deadline = time.monotonic() + 6 * 3600
            while not done.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"gave up waiting for rank 0's first stage at {done}")
                time.sleep(5)
            time.sleep(2)
        else:
            self._train_first_stage(trainer, datamodule, folder)
        self._load_first_stage(str(done))

    def _train_first_stage(self, trainer: L.Trainer, datamodule: L.LightningDataModule, folder: Path) -> None:
        from lightning.pytorch.accelerators import CUDAAccelerator
        from lightning.pytorch.callbacks import ModelCheckpoint
        from lightning.pytorch.loggers import CSVLogger

        from zoo.callbacks import SampleGrid

        steps = self.hparams.first_stage_steps
        print(f"ldm: training the first stage (vae, {steps} steps) in {folder}; then the latent model")
        vae = self.first_stage
        vae.requires_grad_(True)
        # a fresh copy of the datamodule, so the latent model's data order does not depend on stage 1
        hparams = {
            k: v for k, v in (getattr(datamodule, "hparams", {}) or {}).items() if not k.startswith("_")
        }
        data = type(datamodule)(**hparams) if hparams else datamodule
        on_gpu = isinstance(trainer.accelerator, CUDAAccelerator)
        device = trainer.strategy.root_device
        stage = L.Trainer(
            accelerator="gpu" if on_gpu else "cpu",
            devices=[device.index or 0] if on_gpu else 1,
            precision=trainer.precision,
            max_steps=steps,
            val_check_interval=max(1, steps // 2),
            check_val_every_n_epoch=None,
            limit_val_batches=8,
            log_every_n_steps=25,
            default_root_dir=str(folder),
            logger=CSVLogger(str(folder), name="", version=""),
            callbacks=[
                ModelCheckpoint(dirpath=str(folder / "checkpoints"), save_last=True, save_top_k=0),
                SampleGrid(every_n_steps=max(1, steps // 2), num_samples=32),
            ],
            enable_model_summary=False,
            enable_progress_bar=trainer.progress_bar_callback is not None,
        )
        stage.fit(vae, datamodule=data)
        stage.save_checkpoint(folder / FIRST_STAGE_FILE)
        vae.requires_grad_(False)
        vae._trainer = None  # the stage-1 trainer is done with it
        metrics = {k: float(v) for k, v in stage.callback_metrics.items() if k.startswith("val/")}
        print("ldm: first stage done: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))

    def on_fit_start(self) -> None:
        # a Python user's own Trainer (no zoo.fit, so no prepare_fit): take the given first stage now
        if not bool(self.first_stage_ready) and self.hparams.first_stage is not None:
            self._load_first_stage(self.hparams.first_stage)

    def train(self, mode: bool = True) -> LDM:
        super().train(mode)
        self.first_stage.eval()  # frozen: no dropout/normalisation updates, whatever Lightning asks
        if self.clip is not None:
            self.clip.eval()
        return self

    # --- text ------------------------------------------------------------------------------

    def _train_tokenizer(self, datamodule: L.LightningDataModule) -> None:
        if self.clip is None:  # a clip text encoder brings its own tokenizer
            super()._train_tokenizer(datamodule)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and stage == "fit":
            self._train_tokenizer(datamodule)

    def encode_text(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token states (B, L, D), their mask (B, L) and the pooled embedding (B, D) of `prompts`."""
        if self.clip is None:
            return super().encode_text(prompts)
        states, mask = self.clip.text_states(list(prompts))
        weights = mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return {"states": states, "mask": mask, "pooled": pooled}

    # --- training -----------------------------------------------------------------------------

    def _loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        images = batch["image"]
        captions = self._drop_captions(batch["caption"], generator)
        with torch.no_grad():
            # a posterior draw, as Stable Diffusion trains; validation uses the mean (no global draws)
            z0 = self.first_stage.encode_latents(images, sample=self.training and generator is None)
        return self._caption_loss(z0, captions, generator)

    def configure_optimizers(self) -> Any:
        trainable = [
            p
            for name, p in self.named_parameters()
            if p.requires_grad and not name.startswith(("first_stage.", "clip."))
        ]
        hp = self.hparams
        return adamw_with_warmup(trainable, hp.lr, hp.weight_decay, hp.warmup_steps)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # the tokenizer and preview prompts (CaptionConditioned)
        if self.clip is not None and self.clip.tokenizer is not None:
            checkpoint["clip_tokenizer"] = self.clip.tokenizer.to_str()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if self.clip is not None and "clip_tokenizer" in checkpoint:
            self.clip.tokenizer = CaptionTokenizer.from_str(checkpoint["clip_tokenizer"])

    # --- sampling -----------------------------------------------------------------------------

    def _latent_mask(self, mask: torch.Tensor) -> torch.Tensor:
        # a latent cell is regenerated if any pixel it covers is: max-pool over the VAE's footprint
        factor = self.first_stage.hparams.downsample_factor
        return F.max_pool2d(mask, factor, factor)

    def generate(
        self,
        n: int,
        *,
        condition: Any = None,
        generator: torch.Generator | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        eta: float = 0.0,
        init: torch.Tensor | None = None,
        strength: float = 1.0,
        mask: torch.Tensor | None = None,
        outpaint: dict[str, int] | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """`n` images in [0, 1] for `condition` (one prompt for all, or n prompts; None: unconditional).

        - `negative_prompt` replaces the empty prompt of classifier-free guidance (one, or n);
        - `init` (1 or n, C, H, W) in [0, 1] with `strength` < 1: img2img;
        - `init` with `mask` (1 or n, 1, H, W), 1 = regenerate: inpainting; unmasked pixels are kept exactly;
        - `init` with `outpaint` {"left": px, "right": px, "top": px, "bottom": px} (multiples of the VAE's
          downsampling factor): extend the canvas and generate the new border.
        """
        sampler = sampler or self.hparams.sampler
        check_options(sampler=sampler)
        steps = steps or self.hparams.sampling_steps
        guidance = self.hparams.guidance if guidance is None else guidance
        factor = self.first_stage.hparams.downsample_factor
        height = width = self.hparams.image_size

        if outpaint:
            if init is None:
                raise ValueError("outpainting extends an image: pass init (--init-image) with outpaint")
            unknown = set(outpaint) - set(OUTPAINT_SIDES)
            if unknown:
                raise ValueError(
                    f"outpaint sides are {', '.join(OUTPAINT_SIDES)}; got {', '.join(sorted(unknown))}"
                )
            if any(v % factor or v < 0 for v in outpaint.values()):
                raise ValueError(
                    f"outpaint amounts must be non-negative multiples of {factor} pixels, got {outpaint}"
                )
            if mask is not None:
                raise ValueError("give either mask (inpainting) or outpaint, not both")
            init, mask = outpaint_canvas(init.to(self.device, torch.float32), fill=0.0, **outpaint)
            height, width = init.shape[-2:]
            multiple = factor * 2 ** (len(self.hparams.channel_mults) - 1)
            if height % multiple or width % multiple:
                raise ValueError(
                    f"outpainting {outpaint} gives a {width}x{height} canvas; this model needs sides that are "
                    f"multiples of {multiple} pixels (its VAE downsamples by {factor}, its U-Net halves the latents "
                    f"{len(self.hparams.channel_mults) - 1} times)"
                )
        if mask is not None and init is None:
            raise ValueError("inpainting needs the image to keep: pass init (--init-image) with the mask")

        prompts = self._prompts(condition, n)
        text = self.encode_text(prompts)
        if guidance != 1.0:
            negative = self._prompts(negative_prompt if negative_prompt is not None else "", n)
            denoiser = classifier_free_guidance(self._unet, text, self.encode_text(negative), guidance)
        else:
            denoiser = lambda x, t: self._unet(x, t, text)  # noqa: E731 - a denoiser is a callable

        shape = (n, self.latent_channels, height // factor, width // factor)
        pixels = known = latent_mask = None
        if init is not None:
            pixels = (init.to(self.device, torch.float32) * 2 - 1).expand(n, -1, height, width)
            known = self.first_stage.encode_latents(pixels, sample=False)
        if mask is not None:
            mask = mask.to(self.device, torch.float32).expand(n, 1, height, width)
            latent_mask = self._latent_mask(mask)
        latents = run_sampler(
            denoiser,
            shape=shape,
            schedule=self.schedule,
            sampler=sampler,
            steps=steps,
            prediction=self.hparams.prediction,
            generator=generator,
            device=self.device,
            eta=eta,
            init=known if (mask is None or strength < 1.0) else None,
            strength=strength,
            mask=latent_mask,
            known=known if mask is not None else None,
            progress=progress,
        )
        images = self.first_stage.decode_latents(latents)
        if mask is not None:  # the kept pixels are the input's own, not their VAE reconstruction
            images = mask * images + (1 - mask) * pixels
        return ((images + 1) / 2).clamp(0, 1)

    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Samples for fixed prompts (the distinct validation captions, in order), one per prompt."""
        prompts = self._preview_prompts or ([] if batch is None else sorted(set(batch.get("caption", []))))
        if not prompts:
            return {"samples": self.generate(n, generator=generator)}
        prompts = [prompts[i % len(prompts)] for i in range(n)]
        return {"samples": self.generate(n, condition=prompts, generator=generator)}

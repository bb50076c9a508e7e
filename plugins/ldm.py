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

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from zoo import registry
from zoo.checkpoint import load_model
from zoo.diffusion import (
    NoiseSchedule,
    check_options,
    guided_denoiser,
    outpaint_canvas,
    sampling_options,
)
from zoo.diffusion import sample as run_sampler
from zoo.first_stage import build_first_stage, first_stage_hparams, load_first_stage, prepare_first_stage
from zoo.module import GenerativeModule, adamw_with_warmup, build_module, inference
from zoo.nn.layers import masked_mean
from zoo.nn.text import CaptionConditioned, CaptionTokenizer, TextEncoder
from zoo.nn.unet import UNet

OUTPAINT_SIDES = ("left", "right", "top", "bottom")


class LDM(CaptionConditioned, GenerativeModule):
    """Text-to-image latent diffusion; see the module docstring.

    Args:
        in_channels: image channels (1 grey, 3 RGB); zoo.fit links it to data.channels.
        image_size: image side in pixels; zoo.fit links it to data.image_size.
        first_stage: a trained `vae` checkpoint for these images; null: zoo.fit trains one first.
        first_stage_config: the vae's hyper-parameters; null: first_stage's, or zoo's default vae.
        first_stage_steps: training steps of the vae that zoo.fit trains when first_stage is null.
        text_encoder: a `clip` checkpoint whose text encoder is used, frozen; null: its own, trained jointly.
        text_encoder_config: the clip's hyper-parameters, filled in from text_encoder; leave it null.
        vocab_size: most tokens of the BPE tokenizer trained on the captions (unused with text_encoder).
        text_width: width of the text encoder's token states (unused with text_encoder).
        text_depth: transformer blocks of the text encoder (unused with text_encoder).
        text_heads: attention heads of the text encoder (unused with text_encoder).
        max_length: tokens per caption with <bos> and <eos>; longer ones are cut (unused with text_encoder).
        base_channels: U-Net width at the first resolution level (the timestep embedding is 4x it).
        channel_mults: U-Net width per resolution level, times base_channels; each level halves the latents.
        num_res_blocks: ResBlocks per U-Net level on the way down (one more on the way up).
        attention_levels: U-Net levels (indices into channel_mults) with self- and cross-attention; the middle has both.
        num_heads: U-Net attention heads; must divide the widths of the attention levels and the deepest.
        dropout: dropout probability inside the U-Net's ResBlocks.
        caption_dropout: probability a training caption is replaced by "" (for classifier-free guidance).
        schedule: noise schedule: linear, scaled_linear or cosine.
        num_train_timesteps: diffusion steps T of the noise schedule.
        prediction: what the U-Net predicts: epsilon (the noise), v_prediction (v) or sample (x0).
        min_snr_gamma: weight the loss by min(SNR, gamma) (Hang et al. 2023), e.g. 5; null: unweighted.
        lr: AdamW learning rate, reached at the end of the warm-up (the vae and a clip encoder stay frozen).
        weight_decay: AdamW weight decay, on every trained parameter.
        warmup_steps: optimizer steps of linear learning-rate warm-up.
        sampler: sampler of `generate` unless given: ddpm, ddim, dpmpp_2m, euler, euler_ancestral or heun.
        sampling_steps: sampling steps of `generate` unless given.
        guidance: classifier-free guidance scale of `generate` unless given (1: the conditional model alone).
    """

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
            first_stage_config = first_stage_hparams(first_stage, in_channels, image_size, "ldm")
        # the first-stage config actually used goes into the checkpoint: the model rebuilds without the VAE file
        self.save_hyperparameters()
        # set explicitly: under LightningCLI, save_hyperparameters records the parsed values (None here)
        self.hparams["first_stage_config"] = first_stage_config

        self.first_stage = build_first_stage(first_stage_config)
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
                self.clip = load_model(text_encoder, family="clip", flag="--model.text_encoder")
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

    def prepare_fit(
        self, trainer: L.Trainer, datamodule: L.LightningDataModule, ckpt_path: str | None
    ) -> None:
        """Called by `zoo.fit` before training: trains the tokenizer and, unless one was given (or the run
        resumes), the first stage, in `<run>/first_stage/`."""
        datamodule.setup("fit")
        self._train_tokenizer(datamodule)
        if ckpt_path is not None or bool(self.first_stage_ready):
            return  # resuming: the first stage comes back with the checkpoint's weights
        prepare_first_stage(
            self.first_stage,
            given=self.hparams.first_stage,
            trainer=trainer,
            datamodule=datamodule,
            steps=self.hparams.first_stage_steps,
            family="ldm",
        )
        self.first_stage_ready.fill_(True)

    def on_fit_start(self) -> None:
        # a Python user's own Trainer (no zoo.fit, so no prepare_fit): take the given first stage now
        if not bool(self.first_stage_ready) and self.hparams.first_stage is not None:
            load_first_stage(self.first_stage, self.hparams.first_stage)
            self.first_stage_ready.fill_(True)

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
        return {"states": states, "mask": mask, "pooled": masked_mean(states, mask.unsqueeze(-1), dim=1)}

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

    @inference
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
        options = sampling_options(
            self.hparams, self.schedule, self.device, sampler=sampler, steps=steps, generator=generator,
            eta=eta, progress=progress,
        )  # fmt: skip
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

        text = self.encode_text(self._prompts(condition, n))
        negative = self.encode_text(self._prompts("" if negative_prompt is None else negative_prompt, n))
        denoiser = guided_denoiser(self._unet, text, negative, guidance)

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
            init=known if (mask is None or strength < 1.0) else None,
            strength=strength,
            mask=latent_mask,
            known=known if mask is not None else None,
            **options,
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

"""`ldm`: text-to-image latent diffusion (Rombach et al. 2022), scaled down for a CPU.

Two stages, as in Stable Diffusion:
1. a first stage, the `vae` family, frozen: images <-> latents (x4 smaller on each side), latents
   multiplied by the VAE's `latent_scale` (1 / std of latents, measured on data) so they have unit
   variance, as the diffusion schedule assumes;
2. a denoising network over the latents that cross-attends to the token states of a text encoder and
   adds the pooled text embedding to its timestep embedding: the U-Net of `zoo.nn.unet` (`backbone:
   unet`, the default) or the DiT of `zoo.nn.dit` (`backbone: dit`), trained with the diffusion objective
   (a noise schedule, ε/v/x0 prediction; the default) or rectified flow (`objective: flow`), the two of
   `zoo.diffusion.objectives`. `--recipe dit_flow` is Stable Diffusion 3's choice in small: a DiT with
   rectified flow and logit-normal times, sampled by 10 Euler steps. The text encoder (a small
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
    python -m zoo.sample --ckpt ... --prompt "a red circle left of a blue square" --attend-excite   # circle, square
    python -m zoo.fit --model ldm --recipe dit_flow       # DiT + rectified flow; samples with --sampler euler|heun|...
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from zoo import registry
from zoo.checkpoint import load_model
from zoo.diffusion import (
    TIME_SAMPLERS,
    NoiseSchedule,
    check_objective,
    check_options,
    guided_denoiser,
    objective_loss,
    objective_sample,
    outpaint_canvas,
)
from zoo.diffusion import attend_excite as attend_excite_module
from zoo.first_stage import FirstStageFamily, build_first_stage, first_stage_hparams
from zoo.module import GenerativeModule, adamw_with_warmup, build_module, check_choice, inference
from zoo.nn.dit import DiT, DiTBlock
from zoo.nn.layers import masked_mean
from zoo.nn.text import CaptionConditioned, CaptionTokenizer, TextEncoder
from zoo.nn.unet import CrossAttention, ResBlock, SelfAttention, UNet

OUTPAINT_SIDES = ("left", "right", "top", "bottom")
BACKBONES = ("unet", "dit")


class LDM(CaptionConditioned, FirstStageFamily, GenerativeModule):
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
        backbone: the denoising network over the latents: unet (zoo.nn.unet) or dit (zoo.nn.dit, text by
            cross-attention and the pooled embedding).
        objective: diffusion (a noise schedule and `prediction`) or flow (rectified flow, SD3's objective);
            see zoo.diffusion.objectives.
        base_channels: U-Net width at the first resolution level (the timestep embedding is 4x it).
        channel_mults: U-Net width per resolution level, times base_channels; each level halves the latents.
        num_res_blocks: ResBlocks per U-Net level on the way down (one more on the way up).
        attention_levels: U-Net levels (indices into channel_mults) with self- and cross-attention; the middle has both.
        num_heads: U-Net attention heads; must divide the widths of the attention levels and the deepest.
        dropout: dropout probability inside the U-Net's ResBlocks.
        coordinates: U-Net: each latent cell's x and y as two more input channels (CoordConv), so that
            cross-attention knows where "left of" and "above" are (its attention has no positions).
        patch_size: DiT patch side in latent cells; must divide the latent size (image_size / 4 by default).
        dit_width: DiT hidden size (a multiple of num_heads).
        dit_depth: DiT blocks.
        caption_dropout: probability a training caption is replaced by "" (for classifier-free guidance).
        schedule: diffusion: noise schedule: linear, scaled_linear or cosine.
        num_train_timesteps: diffusion: steps T of the noise schedule.
        prediction: diffusion: what the network predicts: epsilon (the noise), v_prediction (v) or sample (x0).
        min_snr_gamma: diffusion: weight the loss by min(SNR, gamma) (Hang et al. 2023), e.g. 5; null: unweighted.
        time_sampler: flow: training times: uniform, logit_normal (SD3) or mode.
        time_shift: flow: shift of the training and sampling times (SD3's; 1: none).
        lr: AdamW learning rate, reached at the end of the warm-up (the vae and a clip encoder stay frozen).
        weight_decay: AdamW weight decay, on every trained parameter.
        warmup_steps: optimizer steps of linear learning-rate warm-up.
        sampler: sampler of `generate` unless given; diffusion: ddpm, ddim, dpmpp_2m, euler, euler_ancestral or
            heun; flow: euler, heun, midpoint, rk4 or dopri5; null: dpmpp_2m or euler.
        sampling_steps: sampling steps of `generate` unless given.
        guidance: classifier-free guidance scale of `generate` unless given (1: the conditional model alone).
    """

    family_name = "ldm"
    modality = "image"
    default_data = "shapes"
    # the FSDP units under --trainer.strategy zoo_fsdp (zoo.strategies): the U-Net's and the DiT's blocks
    fsdp_blocks = (ResBlock, SelfAttention, CrossAttention, DiTBlock)
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
        backbone: str = "unet",
        objective: str = "diffusion",
        base_channels: int = 64,
        channel_mults: tuple[int, ...] = (1, 2),
        num_res_blocks: int = 2,
        attention_levels: tuple[int, ...] = (0, 1),
        num_heads: int = 4,
        dropout: float = 0.0,
        coordinates: bool = False,
        patch_size: int = 2,
        dit_width: int = 256,
        dit_depth: int = 6,
        caption_dropout: float = 0.1,
        schedule: str = "cosine",
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
        check_choice("backbone", backbone, BACKBONES)
        check_options(prediction=prediction)
        check_choice("time_sampler", time_sampler, tuple(TIME_SAMPLERS))
        sampler = check_objective(objective, sampler)
        if first_stage_config is None:
            first_stage_config = first_stage_hparams(first_stage, in_channels, image_size, "ldm")
        # the first-stage config actually used goes into the checkpoint: the model rebuilds without the VAE file
        self.save_hyperparameters()
        # set explicitly: under LightningCLI, save_hyperparameters records the parsed values (None here)
        self.hparams["first_stage_config"] = first_stage_config
        self.hparams["sampler"] = sampler  # the objective's default when none was given

        self.first_stage = build_first_stage(first_stage_config)
        # True once the VAE weights are trained or loaded; saved with the weights
        self.register_buffer("first_stage_ready", torch.tensor(False))
        factor = self.first_stage.hparams.downsample_factor
        self.latent_channels = self.first_stage.hparams.latent_channels
        self.latent_size = image_size // factor
        if self.latent_size % self._size_multiple():
            raise ValueError(
                f"latents of {self.latent_size}x{self.latent_size} do not fit the {backbone}: "
                + (f"they do not halve {len(channel_mults) - 1} times (channel_mults {channel_mults}); use fewer levels"
                   if backbone == "unet" else f"patch_size {patch_size} does not divide them")
            )  # fmt: skip

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

        # the denoising network: one of the two, under the name its checkpoints have always used
        self.unet = self.dit = None
        if backbone == "unet":
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
                coordinates=coordinates,
            )
        else:
            self.dit = DiT(
                image_size=self.latent_size,
                in_channels=self.latent_channels,
                patch_size=patch_size,
                hidden_size=dit_width,
                depth=dit_depth,
                num_heads=num_heads,
                context_dim=context_dim,
                pooled_dim=context_dim,
            )
        self.schedule = NoiseSchedule.make(schedule, num_train_timesteps)
        self._preview_prompts: list[str] | None = None

    def _size_multiple(self) -> int:
        """What the latent sides must be a multiple of: the U-Net halves them per level, the DiT cuts patches."""
        hp = self.hparams
        return 2 ** (len(hp.channel_mults) - 1) if hp.backbone == "unet" else hp.patch_size

    def _unet(self, x: torch.Tensor, t: torch.Tensor, text: dict[str, torch.Tensor]) -> torch.Tensor:
        network = self.unet if self.unet is not None else self.dit  # one signature for both backbones
        return network(x, t, context=text["states"], context_mask=text["mask"], pooled=text["pooled"])

    # --- the first stage ----------------------------------------------------------------------

    def prepare_fit(
        self, trainer: L.Trainer, datamodule: L.LightningDataModule, ckpt_path: str | None
    ) -> None:
        """Called by `zoo.fit` before training: trains the tokenizer and, unless one was given (or the run
        resumes), the first stage, in `<run>/first_stage/`."""
        datamodule.setup("fit")
        self._train_tokenizer(datamodule)
        self.prepare_first_stage_for_fit(trainer, datamodule, ckpt_path)

    def train(self, mode: bool = True) -> LDM:
        super().train(mode)  # the first stage stays in eval mode (FirstStageFamily)
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
            z0 = self.training_latents(images, sample=self.training and generator is None)
        text = self.encode_text(captions)
        return objective_loss(
            lambda x_t, t: self._unet(x_t, t, text), z0, self.hparams, self.schedule, generator
        )

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
        attend_excite: Sequence[str] | bool | None = None,
        attend_excite_scale: float = attend_excite_module.SCALE,
        progress: bool = False,
    ) -> torch.Tensor:
        """`n` images in [0, 1] for `condition` (one prompt for all, or n prompts; None: unconditional).

        - `negative_prompt` replaces the empty prompt of classifier-free guidance (one, or n);
        - `init` (1 or n, C, H, W) in [0, 1] with `strength` < 1: img2img;
        - `init` with `mask` (1 or n, 1, H, W), 1 = regenerate: inpainting; unmasked pixels are kept exactly;
        - `init` with `outpaint` {"left": px, "right": px, "top": px, "bottom": px} (multiples of the VAE's
          downsampling factor): extend the canvas and generate the new border;
        - `attend_excite`: Attend-and-Excite (`zoo.diffusion.attend_excite`, U-Net only), so that each subject
          word of the prompt is attended somewhere in the image: True for the shape nouns of prompts of the
          shapes grammar, or the words (each one token of the prompt); `attend_excite_scale` its step size.
        """
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
            multiple = factor * self._size_multiple()
            if height % multiple or width % multiple:
                raise ValueError(
                    f"outpainting {outpaint} gives a {width}x{height} canvas; this model needs sides that are "
                    f"multiples of {multiple} pixels (its VAE downsamples by {factor}, its {self.hparams.backbone} "
                    f"needs latent sides that are multiples of {self._size_multiple()})"
                )
        if mask is not None and init is None:
            raise ValueError("inpainting needs the image to keep: pass init (--init-image) with the mask")

        prompts = self._prompts(condition, n)
        text = self.encode_text(prompts)
        negative = self.encode_text(self._prompts("" if negative_prompt is None else negative_prompt, n))
        denoiser = guided_denoiser(self._unet, text, negative, guidance)
        if attend_excite is not None and attend_excite is not False:
            denoiser = self._attend_excite(denoiser, text, prompts, attend_excite, attend_excite_scale)

        shape = (n, self.latent_channels, height // factor, width // factor)
        pixels = known = latent_mask = None
        if init is not None:
            pixels = (init.to(self.device, torch.float32) * 2 - 1).expand(n, -1, height, width)
            known = self.first_stage.encode_latents(pixels, sample=False)
        if mask is not None:
            mask = mask.to(self.device, torch.float32).expand(n, 1, height, width)
            latent_mask = self._latent_mask(mask)
        latents = objective_sample(
            denoiser, shape, self.hparams, self.schedule, sampler=sampler, steps=steps, generator=generator,
            device=self.device, eta=eta, progress=progress, init=known if (mask is None or strength < 1.0) else None,
            strength=strength, mask=latent_mask, known=known if mask is not None else None,
        )  # fmt: skip
        images = self.first_stage.decode_latents(latents)
        if mask is not None:  # the kept pixels are the input's own, not their VAE reconstruction
            images = mask * images + (1 - mask) * pixels
        return ((images + 1) / 2).clamp(0, 1)

    def _attend_excite(
        self,
        denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        text: dict[str, torch.Tensor],
        prompts: list[str],
        words: Sequence[str] | bool,
        scale: float,
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """`denoiser` with Attend-and-Excite updates for the subject `words` of `prompts` (True: found)."""
        if self.unet is None:
            raise ValueError(
                f"attend_excite reads the U-Net's cross-attention; this ldm's backbone is {self.hparams.backbone}"
            )
        if not all(prompts):
            raise ValueError("attend_excite needs prompts: give a condition (--prompt) to every sample")
        if words is True:
            per_prompt = [attend_excite_module.subject_words(p) for p in prompts]
        else:
            words = [words] if isinstance(words, str) else list(words)
            if not words:
                raise ValueError("attend_excite: name at least one subject word, or pass True to find them")
            per_prompt = [words] * len(prompts)
        # the token ids `encode_text` read: the clip's tokenizer and length, or the ldm's own
        tokenizer = self.clip.tokenizer if self.clip is not None else self.tokenizer
        if tokenizer is None:
            raise ValueError(
                "attend_excite needs the text encoder's tokenizer; this ldm has none (untrained?)"
            )
        length = self.clip.hparams.max_length if self.clip is not None else self.hparams.max_length
        ids, mask = tokenizer(prompts, length)
        subjects = attend_excite_module.subject_tokens(tokenizer, prompts, ids, per_prompt)
        return attend_excite_module.attend_and_excite(
            denoiser,
            lambda x, t: self._unet(x, t, text),
            self.unet,
            attend_excite_module.text_tokens(tokenizer, ids, mask).to(self.device),
            subjects.to(self.device),
            attend_excite_module.objective_levels(self.hparams, self.schedule),
            scale=scale,
        )

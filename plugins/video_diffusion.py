"""`video_diffusion`: text-to-video latent diffusion with factorised space-time attention, scaled for a CPU.

Built from the parts the image families already have (nothing here re-implements them):
- first stage: the `vae` family applied frame by frame (its latents times `latent_scale`), trained by the
  latent families' shared code (`zoo.first_stage`, here on the clips' frames), or taken from a vae
  checkpoint (`--model.first_stage`); `--model.pixel_space true` skips it (a small configuration that
  trains in a minute on a CPU);
- denoiser: `zoo.nn.video_unet.VideoUNet`, the image U-Net of `zoo.nn.unet` run on every frame, with a
  temporal self-attention block (identity at initialisation, rotary frame positions) after each ResBlock
  group; `--model.image_model LDM_CKPT` inflates an `ldm`'s U-Net (and takes its first stage, text
  encoder and tokenizer), so training starts from a model that already draws the frames;
- text: `zoo.nn.text` (byte-level BPE tokenizer trained on the captions, a small transformer encoder
  trained jointly, or frozen at its initialisation with `freeze_text_encoder` as in the recipe, so that
  words the denoiser learns late, like the direction, are not merged first), cross-attention in every
  attention level, pooled text added to the timestep embedding, caption dropout for classifier-free
  guidance (`zoo.diffusion.guided_denoiser`);
- training: the denoising loss of `zoo.diffusion`, with `high_noise_fraction` of the timesteps drawn
  from the top of the schedule, where the caption decides the motion (docs/families/video_diffusion.md);
- sampling: any sampler of `zoo.diffusion`; image-to-video and continuation are the core's inpainting
  over time (the given frames are the known region, mask 0; the rest is generated); clips longer than
  the training length either in one pass (relative frame positions) or window by window, each window
  continuing the last frames of the one before (`extend="continue"`).

    python -m zoo.fit --model video_diffusion                     # vae on the frames, then the video model
    python -m zoo.sample --ckpt runs/video_diffusion/<run>/checkpoints/last.ckpt --prompt "a blue square moving left" --frames 16 --out clips/
    python -m zoo.sample --ckpt ... --prompt "a red circle moving up" --init-image first.png --out i2v/
    python -m zoo.sample --ckpt ... --prompt "a red circle moving up" --init-video start.gif --frames 12 --out more/
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from zoo.checkpoint import load_model, require_family
from zoo.diffusion import NoiseSchedule, check_options, guided_denoiser, sampling_options
from zoo.diffusion import sample as run_sampler
from zoo.first_stage import build_first_stage, first_stage_hparams, load_first_stage, prepare_first_stage
from zoo.module import GenerativeModule, adamw_with_warmup, inference
from zoo.nn.text import CaptionConditioned, CaptionTokenizer, TextEncoder
from zoo.nn.video_unet import VideoUNet

EXTEND_MODES = ("direct", "continue")


# ------------------------------------------------------------------ frames of clips, for the first stage


class _FrameDataset(Dataset):
    """Every frame of every clip of a video dataset, as an image item {"image": (C, H, W)}."""

    def __init__(self, clips: Dataset, frames: int) -> None:
        self.clips, self.frames = clips, frames

    def __len__(self) -> int:
        return len(self.clips) * self.frames

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        clip, frame = divmod(index, self.frames)
        return {"image": self.clips[clip]["video"][frame]}


class VideoFramesDataModule(L.LightningDataModule):
    """A video datamodule's train/val clips seen as single frames, to train a per-frame first stage (vae).

    No hyper-parameters of its own, so `zoo.first_stage.train_first_stage` uses this object as it is."""

    def __init__(self, video: L.LightningDataModule, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        video.setup("fit")
        self.video, self.batch_size, self.seed = video, batch_size, seed
        self.frames = int(video.frames)

    def _loader(self, clips: Dataset, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            _FrameDataset(clips, self.frames),
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.video.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        # shuffled with a fixed seed: the first stage validates on 8 batches, which should span many clips
        return self._loader(self.video.val_set or self.video.train_set, shuffle=True)


# -------------------------------------------------------------------------------------------- model


class VideoDiffusion(CaptionConditioned, GenerativeModule):
    """Text-to-video latent diffusion; see the module docstring.

    Args:
        in_channels: frame channels (1 grey, 3 RGB); zoo.fit links it to data.channels.
        image_size: frame side in pixels; zoo.fit links it to data.image_size.
        frames: frames per training clip (generated clips' default length); zoo.fit links it to data.frames.
        fps: the rate clips play at (zoo.sample writes GIFs at it); zoo.fit links it to data.fps.
        pixel_space: diffuse pixels directly, with no vae (first_stage and image_model must be null).
        first_stage: a trained `vae` checkpoint for these frames; null: zoo.fit trains one on the frames.
        first_stage_config: the vae's hyper-parameters; null: first_stage's, image_model's or zoo's default.
        first_stage_steps: training steps of the vae that zoo.fit trains when no vae is given.
        first_stage_batch_size: frames per batch when zoo.fit trains the vae.
        image_model: an `ldm` checkpoint (no clip) whose U-Net, vae, text encoder and tokenizer start the model.
        vocab_size: most tokens of the BPE tokenizer trained on the captions.
        text_width: width of the text encoder's token states.
        text_depth: transformer blocks of the text encoder.
        text_heads: attention heads of the text encoder.
        max_length: tokens per caption with <bos> and <eos>; longer ones are cut.
        freeze_text_encoder: leave the text encoder untrained, as initialised (random, or image_model's).
        base_channels: U-Net width at the first resolution level (the timestep embedding is 4x it).
        channel_mults: U-Net width per resolution level, times base_channels; each level halves the latents.
        num_res_blocks: ResBlocks per U-Net level on the way down (one more on the way up).
        attention_levels: U-Net levels (indices into channel_mults) with spatial self- and cross-attention.
        num_heads: spatial attention heads; must divide the widths of the attention levels and the deepest.
        temporal_heads: heads of the temporal attention; null: num_heads.
        temporal_levels: U-Net levels with temporal attention after each ResBlock; null: all (the middle always).
        temporal_conditioning: modulate the middle temporal attention by the timestep and pooled text (adaLN).
        absolute_positions: add a sinusoidal frame-index encoding to the temporal attention's tokens.
        frame_embedding: add an embedding of the frame index to every ResBlock's timestep embedding.
        dropout: dropout probability inside the U-Net's ResBlocks.
        caption_dropout: probability a training caption is replaced by "" (for classifier-free guidance).
        schedule: noise schedule: linear, scaled_linear or cosine.
        schedule_shift: divide the schedule's SNR by schedule_shift**2 (> 1: noisier); 1: unchanged.
        num_train_timesteps: diffusion steps T of the noise schedule.
        prediction: what the U-Net predicts: epsilon (the noise), v_prediction (v) or sample (x0).
        min_snr_gamma: weight the loss by min(SNR, gamma) (Hang et al. 2023), e.g. 5; null: unweighted.
        high_noise_fraction: probability a training timestep is drawn from [high_noise_start * T, T); 0: uniform.
        high_noise_start: start of that high-noise range, as a fraction of num_train_timesteps, in [0, 1).
        lr: AdamW learning rate, reached at the end of the warm-up (the vae stays frozen).
        weight_decay: AdamW weight decay, on every trained parameter.
        warmup_steps: optimizer steps of linear learning-rate warm-up.
        sampler: sampler of `generate` unless given: ddpm, ddim, dpmpp_2m, euler, euler_ancestral or heun.
        sampling_steps: sampling steps of `generate` unless given.
        guidance: classifier-free guidance scale of `generate` unless given (1: the conditional model alone).
    """

    family_name = "video_diffusion"
    caption_limit = 2000  # clips are rendered on demand (~1 ms each): read a sample of the captions
    modality = "video"
    default_data = "moving_shapes"
    condition_key = "caption"  # zoo.evaluate generates for the real split's captions
    input_key = "video"
    untrained_first_stage_message = (
        "the video model's first stage is untrained: train with `python -m zoo.fit --model "
        "video_diffusion` (which trains it first), pass --model.first_stage runs/vae/<run>/checkpoints/"
        "last.ckpt, or --model.pixel_space true"
    )

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        frames: int = 8,
        fps: float = 8.0,
        pixel_space: bool = False,
        first_stage: str | None = None,
        first_stage_config: dict[str, Any] | None = None,
        first_stage_steps: int = 1000,
        first_stage_batch_size: int = 64,
        image_model: str | None = None,
        vocab_size: int = 1024,
        text_width: int = 128,
        text_depth: int = 2,
        text_heads: int = 4,
        max_length: int = 24,
        freeze_text_encoder: bool = False,
        base_channels: int = 64,
        channel_mults: tuple[int, ...] = (1, 2),
        num_res_blocks: int = 2,
        attention_levels: tuple[int, ...] = (0, 1),
        num_heads: int = 4,
        temporal_heads: int | None = None,
        temporal_levels: tuple[int, ...] | None = None,
        temporal_conditioning: bool = False,
        absolute_positions: bool = False,
        frame_embedding: bool = False,
        dropout: float = 0.0,
        caption_dropout: float = 0.1,
        schedule: str = "cosine",
        schedule_shift: float = 1.0,
        num_train_timesteps: int = 1000,
        prediction: str = "epsilon",
        min_snr_gamma: float | None = None,
        high_noise_fraction: float = 0.0,
        high_noise_start: float = 0.9,
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 200,
        sampler: str = "dpmpp_2m",
        sampling_steps: int = 25,
        guidance: float = 4.0,
    ) -> None:
        super().__init__()
        check_options(prediction=prediction, sampler=sampler)
        if frames < 1:
            raise ValueError(f"frames must be at least 1, got {frames}")
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if pixel_space and (first_stage is not None or image_model is not None):
            raise ValueError(
                "pixel_space=True diffuses pixels directly: leave first_stage and image_model unset "
                "(both bring a latent first stage)"
            )
        if image_model is not None and first_stage is not None:
            raise ValueError(
                "image_model brings its ldm's first stage: leave first_stage unset (it would be ignored)"
            )
        image_config = None
        if image_model is not None and first_stage_config is None:
            image_config = self._image_model_config(image_model, in_channels, image_size)
            first_stage_config = image_config["first_stage_config"]
        if not pixel_space and first_stage_config is None:
            first_stage_config = first_stage_hparams(first_stage, in_channels, image_size, "video_diffusion")
        self.save_hyperparameters()
        # set explicitly: under LightningCLI, save_hyperparameters records the parsed values (None here)
        self.hparams["first_stage_config"] = first_stage_config
        self.fps = float(fps)  # zoo.sample writes GIFs at this rate

        self.first_stage = None
        if pixel_space:
            self.latent_channels, self.latent_size, factor = in_channels, image_size, 1
        else:
            self.first_stage = build_first_stage(first_stage_config)
            factor = self.first_stage.hparams.downsample_factor
            self.latent_channels = self.first_stage.hparams.latent_channels
            self.latent_size = image_size // factor
        # True once the VAE weights are trained or loaded; saved with the weights
        self.register_buffer("first_stage_ready", torch.tensor(bool(pixel_space)))
        if self.latent_size % 2 ** (len(channel_mults) - 1):
            raise ValueError(
                f"latents of {self.latent_size}x{self.latent_size} do not halve {len(channel_mults) - 1} times "
                f"(channel_mults {channel_mults}); use fewer levels"
            )

        self.text_encoder = TextEncoder(vocab_size, text_width, text_depth, text_heads, max_length)
        if freeze_text_encoder:
            # A jointly trained encoder pulls words the denoiser does not use yet toward one another, and a
            # merged word cannot be learned later. Kept at its (random) initialisation, every word stays
            # distinct, as with the frozen pretrained encoders of large video models (benchmarks/RESULTS.md,
            # "Why the direction word went unused").
            self.text_encoder.requires_grad_(False)
        self.tokenizer: CaptionTokenizer | None = None
        self.unet = VideoUNet(
            in_channels=self.latent_channels,
            base_channels=base_channels,
            channel_mults=tuple(channel_mults),
            num_res_blocks=num_res_blocks,
            attention_levels=tuple(attention_levels),
            num_heads=num_heads,
            temporal_heads=temporal_heads,
            temporal_levels=None if temporal_levels is None else tuple(temporal_levels),
            temporal_conditioning=temporal_conditioning,
            absolute_positions=absolute_positions,
            frame_embedding=frame_embedding,
            dropout=dropout,
            context_dim=text_width,
            pooled_dim=text_width,
        )
        self.schedule = NoiseSchedule.make(schedule, num_train_timesteps, snr_shift=schedule_shift)
        self._preview_prompts: list[str] | None = None
        if image_config is not None:
            self._inflate(image_model)

    # --- the first stage and inflation ---------------------------------------------------------

    def _image_model_config(self, path: str, in_channels: int, image_size: int) -> dict[str, Any]:
        checkpoint = require_family(path, "ldm", "--model.image_model")
        config = checkpoint["hyper_parameters"]
        if (config.get("in_channels"), config.get("image_size")) != (in_channels, image_size):
            raise ValueError(
                f"image_model '{path}' is for {config.get('in_channels')}-channel {config.get('image_size')}px "
                f"images, but this model is for {in_channels}-channel {image_size}px frames"
            )
        return config

    def _inflate(self, path: str) -> None:
        """Spatial U-Net, first stage, text encoder and tokenizer from an ldm; temporal layers stay identity."""
        ldm = load_model(path, family="ldm", flag="--model.image_model")
        if ldm.clip is not None:
            raise ValueError(f"image_model '{path}' uses a clip text encoder; inflate an ldm with its own")
        if ldm.unet is None or ldm.hparams.get("objective", "diffusion") != "diffusion":
            raise ValueError(
                f"image_model '{path}' is an ldm with backbone {ldm.hparams.backbone} and objective "
                f"{ldm.hparams.objective}; video_diffusion inflates a U-Net trained with the diffusion objective "
                "(the default ldm recipe)"
            )
        if ldm.hparams.get("coordinates", False):
            raise ValueError(
                f"image_model '{path}' is an ldm whose U-Net reads coordinate channels (coordinates: true); "
                "video_diffusion inflates one without them: train the ldm with --model.coordinates false"
            )
        names = ("text_width", "text_depth", "text_heads", "max_length", "vocab_size", "base_channels",
                 "channel_mults", "num_res_blocks", "attention_levels", "num_heads")  # fmt: skip
        differ = [n for n in names if tuple(_as_tuple(ldm.hparams[n])) != tuple(_as_tuple(self.hparams[n]))]
        if differ:
            raise ValueError(
                f"image_model '{path}' was built with other {', '.join(differ)}: set them as the ldm's "
                f"({', '.join(f'{n}={ldm.hparams[n]}' for n in differ)})"
            )
        self.unet.image.load_state_dict(ldm.unet.state_dict())
        self.text_encoder.load_state_dict(ldm.text_encoder.state_dict())
        self.first_stage.load_state_dict(ldm.first_stage.state_dict())
        self.first_stage_ready.fill_(True)
        self.tokenizer = ldm.tokenizer

    def prepare_fit(
        self, trainer: L.Trainer, datamodule: L.LightningDataModule, ckpt_path: str | None
    ) -> None:
        """Called by `zoo.fit` before training: trains the tokenizer and, unless the model is in pixel space,
        was given a first stage, or resumes, the per-frame vae in `<run>/first_stage/` (`zoo.first_stage`)."""
        datamodule.setup("fit")
        self._check_data(datamodule)
        self._train_tokenizer(datamodule)
        if ckpt_path is not None or bool(self.first_stage_ready):
            return
        prepare_first_stage(
            self.first_stage,
            given=self.hparams.first_stage,
            trainer=trainer,
            datamodule=VideoFramesDataModule(
                datamodule, self.hparams.first_stage_batch_size, seed=getattr(datamodule, "seed", 0)
            ),
            steps=self.hparams.first_stage_steps,
            family="video_diffusion",
        )
        self.first_stage_ready.fill_(True)

    def _check_data(self, datamodule: L.LightningDataModule) -> None:
        if getattr(datamodule, "modality", "video") != "video" or not hasattr(datamodule, "frames"):
            raise ValueError(
                f"video_diffusion trains on clips: {type(datamodule).__name__} is not a video datamodule "
                "(use --data moving_shapes, moving_digits or video_folder)"
            )
        size = getattr(datamodule, "image_size", self.hparams.image_size)
        if size != self.hparams.image_size:
            raise ValueError(
                f"the data has {size}px frames but the model is for {self.hparams.image_size}px: "
                f"set --model.image_size {size}"
            )

    def on_fit_start(self) -> None:
        # a Python user's own Trainer (no zoo.fit, so no prepare_fit): take the given first stage now
        if not bool(self.first_stage_ready) and self.hparams.first_stage is not None:
            load_first_stage(self.first_stage, self.hparams.first_stage)
            self.first_stage_ready.fill_(True)

    def train(self, mode: bool = True) -> VideoDiffusion:
        super().train(mode)
        if self.first_stage is not None:
            self.first_stage.eval()  # frozen, whatever Lightning asks
        return self

    def encode_video(self, video: torch.Tensor, *, sample: bool = False) -> torch.Tensor:
        """Clips (B, T, C, H, W) in [-1, 1] -> latents (B, T, c, h, w), frame by frame (pixels as they are)."""
        if self.first_stage is None:
            return video
        latents = self.first_stage.encode_latents(video.flatten(0, 1), sample=sample)
        return latents.unflatten(0, video.shape[:2])

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, T, c, h, w) -> clips (B, T, C, H, W) in [-1, 1] (unclamped)."""
        if self.first_stage is None:
            return latents
        return self.first_stage.decode_latents(latents.flatten(0, 1)).unflatten(0, latents.shape[:2])

    # --- text ------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and stage == "fit":
            self._train_tokenizer(datamodule)

    # --- training --------------------------------------------------------------------------------

    def _loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        video = batch["video"]
        if video.ndim != 5:
            raise ValueError(f"batch['video'] must be (B, T, C, H, W), got shape {tuple(video.shape)}")
        captions = self._drop_captions(batch["caption"], generator)
        with torch.no_grad():
            # a posterior draw per frame, as ldm trains; validation uses the mean (no global draws)
            z0 = self.encode_video(video, sample=self.training and generator is None)
        return self._caption_loss(z0, captions, generator)

    def configure_optimizers(self) -> Any:
        trainable = [
            p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("first_stage.")
        ]
        hp = self.hparams
        return adamw_with_warmup(trainable, hp.lr, hp.weight_decay, hp.warmup_steps)

    # --- sampling --------------------------------------------------------------------------------

    def _check_init(self, init: torch.Tensor, n: int, frames: int) -> torch.Tensor:
        size, channels = self.hparams.image_size, self.hparams.in_channels
        if init.ndim == 4:  # one frame (1 or n, C, H, W): image-to-video
            init = init[:, None]
        if init.ndim != 5 or init.shape[0] not in (1, n) or tuple(init.shape[2:]) != (channels, size, size):
            raise ValueError(
                f"init must be the first frames to keep, (1 or {n}, T0, {channels}, {size}, {size}) in [0, 1]; "
                f"got shape {tuple(init.shape)}"
            )
        if init.shape[1] >= frames:
            raise ValueError(
                f"init already has {init.shape[1]} frames and {frames} were asked for: ask for more frames "
                f"(--frames) than the clip you continue"
            )
        return init.to(self.device, torch.float32).expand(n, -1, -1, -1, -1)

    def _sample_latents(
        self, denoiser: Any, n: int, frames: int, known: torch.Tensor | None, options: dict[str, Any]
    ) -> torch.Tensor:
        """Latent clips (n, frames, c, h, w); the first known.shape[1] frames are `known`, exactly."""
        shape = (n, frames, self.latent_channels, self.latent_size, self.latent_size)
        mask = full = None
        if known is not None and known.shape[1] > 0:
            # inpainting over time: frame mask 0 = keep (the given frames), 1 = generate
            mask = torch.ones(n, frames, 1, 1, 1, device=self.device)
            mask[:, : known.shape[1]] = 0
            full = torch.zeros(shape, device=self.device)
            full[:, : known.shape[1]] = known
        return run_sampler(denoiser, shape=shape, mask=mask, known=full, **options)

    @inference
    def generate(
        self,
        n: int,
        *,
        condition: Any = None,
        generator: torch.Generator | None = None,
        frames: int | None = None,
        init: torch.Tensor | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        eta: float = 0.0,
        extend: str = "direct",
        overlap: int | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """`n` clips (n, frames, C, H, W) in [0, 1] for `condition` (one prompt for all, or n; None:
        unconditional).

        - `frames`: clip length (default: the training length). Longer clips: `extend="direct"` samples
          all frames at once (temporal attention is relative, so any length runs); `extend="continue"`
          samples a training-length window, then windows that keep its last `overlap` frames (default half
          the training length) and generate the rest, until `frames` are there.
        - `init` (1 or n, T0, C, H, W) in [0, 1] (or (1 or n, C, H, W), one frame): these first frames are
          kept exactly and the rest is generated (image-to-video for T0 = 1, continuation for more).
        - `negative_prompt` replaces the empty prompt of classifier-free guidance.
        """
        if extend not in EXTEND_MODES:
            raise ValueError(f"extend must be one of {', '.join(EXTEND_MODES)}, got {extend!r}")
        frames = int(frames or self.hparams.frames)
        if frames < 1:
            raise ValueError(f"frames must be at least 1, got {frames}")
        options = sampling_options(
            self.hparams, self.schedule, self.device, sampler=sampler, steps=steps, generator=generator,
            eta=eta, progress=progress,
        )  # fmt: skip
        options["clip_sample"] = self.first_stage is None  # pixels are bounded, latents are not
        guidance = self.hparams.guidance if guidance is None else guidance
        pixels = None if init is None else self._check_init(init, n, frames)

        text = self.encode_text(self._prompts(condition, n))
        negative = self.encode_text(self._prompts("" if negative_prompt is None else negative_prompt, n))
        denoiser = guided_denoiser(self._unet, text, negative, guidance)
        known = None if pixels is None else self.encode_video(pixels * 2 - 1)

        window = self.hparams.frames
        if extend == "direct" or frames <= window:
            latents = self._sample_latents(denoiser, n, frames, known, options)
        else:
            keep = window // 2 if overlap is None else int(overlap)
            if not 1 <= keep < window:
                raise ValueError(
                    f"overlap must be in [1, {window - 1}] (the training length is {window}), got {keep}"
                )
            latents = self._sample_latents(denoiser, n, window, known, options)
            while latents.shape[1] < frames:
                new = min(window - keep, frames - latents.shape[1])
                tail = latents[:, -keep:]
                more = self._sample_latents(denoiser, n, keep + new, tail, options)
                latents = torch.cat([latents, more[:, keep:]], dim=1)
        video = self.decode_video(latents)
        if pixels is not None:  # the kept frames are the input's own pixels, not their VAE reconstruction
            video[:, : pixels.shape[1]] = pixels * 2 - 1
        return ((video + 1) / 2).clamp(0, 1)

    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Frames of max(1, n // T) clips for fixed prompts (the distinct validation captions, in order), one
        clip after the other; with n = T * T (64 for 8 frames) the square grid shows one clip a row."""
        clips = max(1, n // self.hparams.frames)
        prompts = self._preview_prompts or ([] if batch is None else sorted(set(batch.get("caption", []))))
        condition = [prompts[i % len(prompts)] for i in range(clips)] if prompts else None
        return {"samples": self.generate(clips, condition=condition, generator=generator).flatten(0, 1)}


def _as_tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)

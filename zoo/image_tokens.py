"""What the text-to-image token families (`vq_transformer`, `maskgit`) share: a frozen `vqgan` as their first
stage (the image *tokenizer*), captions as a fixed-length block of BPE tokens in front of the image codes, one
joint vocabulary for a `zoo.nn.transformer.Transformer`, classifier-free guidance on logits, and a cache of
the training images' codes.

The tokenizer is a first stage in the sense of `zoo.first_stage` (`VQGAN_TOKENIZER`): `--model.tokenizer
VQGAN_CKPT` reuses a trained vqgan; with none, `zoo.fit` trains one first in `<run>/first_stage/`, as `ldm`
trains its vae. The vqgan's interface: `encode_codes(images in [-1, 1]) -> (B, h, w)` long,
`decode_codes(codes) -> images in [-1, 1]`, the properties `codebook_size` and `code_grid` (h, w), and the
hyper-parameters `in_channels` and `image_size`.

The sequence a network reads (DALL-E 1's layout, Ramesh et al. 2021):

    [<bos> caption tokens <eos> <pad> ... <pad>]  [code_1 ... code_N]        (N = h * w, raster order)
     max_length text ids in [0, vocab_size)        ids vocab_size + code   (maskgit: + a [MASK] id)

Padding is part of the text block (every caption takes `max_length` positions, as DALL-E's learned padding),
so no attention mask is needed and the image always starts at position `max_length`. The empty caption (a
dropped one in training, the unconditional branch of guidance) is `<bos> <eos> <pad> ...`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from zoo.first_stage import FirstStageFamily, FirstStageSpec, build_first_stage, first_stage_hparams
from zoo.module import GenerativeModule, adamw_with_warmup
from zoo.nn.text import CaptionConditioned
from zoo.nn.transformer import Transformer

# The vqgan a token family trains when no --model.tokenizer is given: the `vqgan` recipe's model settings
# (configs/vqgan/default.yaml; 32px shapes -> 8x8 codes of 512). With the families' 1,000 tokenizer steps its
# discriminator (from batch 1,000) never starts.
DEFAULT_TOKENIZER: dict[str, Any] = {
    "downsample_factor": 4,
    "base_channels": 32,
    "latent_channels": 32,
    "codebook_size": 512,
    "commitment_weight": 0.25,
    "decay": 0.99,
    "dead_code_threshold": 0.1,
    "perceptual_weight": 0.1,
    "adversarial_weight": 0.5,
    "discriminator_start": 1000,
    "lr": 1e-3,
    "warmup_steps": 100,
}


def _vqgan_unusable(module: L.LightningModule) -> str | None:
    missing = [
        a for a in ("encode_codes", "decode_codes", "codebook_size", "code_grid") if not hasattr(module, a)
    ]
    if missing:
        return f"lacks {', '.join(missing)}: it is not an image tokenizer (train a vqgan: python -m zoo.fit --model vqgan)"
    return None


VQGAN_TOKENIZER = FirstStageSpec(
    family="vqgan", hparam="tokenizer", defaults=DEFAULT_TOKENIZER, unusable=_vqgan_unusable, role="tokenizer"
)


def guided_logits(cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance on logits (Ho & Salimans 2022; for autoregressive image tokens, Parti and
    Make-A-Scene): uncond + guidance * (cond - uncond). Guidance 1 is the conditional logits."""
    if guidance == 1.0:
        return cond
    return uncond + guidance * (cond - uncond)


class CodeCache:
    """The frozen tokenizer's codes of each training image, keyed by its pixels: a frozen encoder gives the same
    codes for the same pixels, so an image is encoded once per fit, not once per epoch (CPU only, as
    `zoo.first_stage.PosteriorCache`; on an accelerator the encoder is cheap and hashing copies to the host)."""

    def __init__(self) -> None:
        self.codes: dict[bytes, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, tokenizer: L.LightningModule, images: torch.Tensor) -> torch.Tensor:
        if images.device.type != "cpu":
            return tokenizer.encode_codes(images)
        keys = [hashlib.blake2b(x.tobytes(), digest_size=16).digest() for x in images.contiguous().numpy()]
        missing = [i for i, key in enumerate(keys) if key not in self.codes]
        if missing:
            for i, codes in zip(missing, tokenizer.encode_codes(images[missing]), strict=True):
                self.codes[keys[i]] = codes
        return torch.stack([self.codes[key] for key in keys])


class ImageTokenFamily(CaptionConditioned, FirstStageFamily, GenerativeModule):
    """The base of `vq_transformer` and `maskgit`: the vqgan tokenizer (`self.first_stage`), the caption
    tokenizer (`self.tokenizer`, trained on the data's captions, kept in the checkpoint), the text block, the
    joint vocabulary, training around the family's `_loss(batch, generator)`, previews.

    A subclass calls `_build_tokenizer_and_network(...)` in its `__init__` after `save_hyperparameters()`,
    and has the hyper-parameters in_channels, image_size, tokenizer, tokenizer_config, tokenizer_steps,
    vocab_size, max_length, caption_dropout, lr, weight_decay, warmup_steps."""

    modality = "image"
    default_data = "shapes"
    condition_key = "caption"  # zoo.evaluate generates for the real split's captions
    first_stage_spec = VQGAN_TOKENIZER
    extra_tokens = 0  # joint-vocabulary ids after the codes (maskgit: [MASK])

    def _build_tokenizer_and_network(
        self, *, n_layer: int, n_head: int, n_embd: int, dropout: float, causal: bool
    ) -> None:
        hp = self.hparams
        config = hp.tokenizer_config
        if config is None:
            config = first_stage_hparams(
                hp.tokenizer, hp.in_channels, hp.image_size, self.family_name, VQGAN_TOKENIZER
            )
            if (
                hp.tokenizer is not None
            ):  # the file it was built from, as the families built on a base record it
                from zoo.evaluate import sha256_of

                self.hparams["tokenizer_sha256"] = sha256_of(hp.tokenizer)
        # the tokenizer config actually used goes into the checkpoint: the model rebuilds without the vqgan file
        self.hparams["tokenizer_config"] = config
        self.first_stage = build_first_stage(config, VQGAN_TOKENIZER)
        # True once the vqgan weights are trained or loaded; saved with the weights
        self.register_buffer("first_stage_ready", torch.tensor(False))
        self.codebook_size = int(self.first_stage.codebook_size)
        self.code_grid = tuple(int(s) for s in self.first_stage.code_grid)
        self.num_codes = self.code_grid[0] * self.code_grid[1]
        self.code_offset = int(hp.vocab_size)  # codes follow the text ids in the joint vocabulary
        self.network = Transformer(
            vocab_size=self.code_offset + self.codebook_size + self.extra_tokens,
            block_size=int(hp.max_length) + self.num_codes,
            n_layer=n_layer,
            n_head=n_head,
            n_embd=n_embd,
            dropout=dropout,
            causal=causal,
        )
        self.tokenizer = None
        self._preview_prompts = None

    # --- the tokenizer (first stage) and the captions --------------------------------------------

    def prepare_fit(
        self, trainer: L.Trainer, datamodule: L.LightningDataModule, ckpt_path: str | None
    ) -> None:
        """Called by `zoo.fit` before training: trains the caption tokenizer and, unless one was given (or the
        run resumes), the vqgan tokenizer in `<run>/first_stage/`."""
        datamodule.setup("fit")
        self._check_data(datamodule)
        self._train_tokenizer(datamodule)
        self.prepare_first_stage_for_fit(trainer, datamodule, ckpt_path)

    def _check_data(self, datamodule: L.LightningDataModule) -> None:
        size = getattr(datamodule, "image_size", self.hparams.image_size)
        if size != self.hparams.image_size:
            raise ValueError(
                f"the data has {size}px images but this {self.family_name} is for {self.hparams.image_size}px: "
                f"set --model.image_size {size}"
            )

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and stage == "fit":
            self._train_tokenizer(datamodule)
            if self.tokenizer.vocab_size > self.hparams.vocab_size:
                raise ValueError(
                    f"the caption tokenizer has {self.tokenizer.vocab_size} tokens, more than vocab_size "
                    f"{self.hparams.vocab_size}: raise --model.vocab_size"
                )

    def on_fit_start(self) -> None:
        super().on_fit_start()  # a given tokenizer, for a Python user's own Trainer
        self._code_cache = CodeCache()

    def text_ids(self, prompts: Sequence[str]) -> torch.Tensor:
        """The text block (B, max_length) of `prompts`: <bos> tokens <eos>, padded (see the module docstring)."""
        if self.tokenizer is None:
            raise RuntimeError(
                f"this {self.family_name} has no caption tokenizer yet: train it with zoo.fit, or load it with "
                "zoo.checkpoint.load_model"
            )
        ids, _ = self.tokenizer(list(prompts), self.hparams.max_length)
        return ids.to(self.device)

    def training_codes(self, images: torch.Tensor) -> torch.Tensor:
        """The tokenizer's codes (B, N) of training images, flattened in raster order (through the fit's cache)."""
        cache = getattr(self, "_code_cache", None)
        with torch.no_grad():
            codes = (
                cache(self.first_stage, images)
                if cache is not None
                else self.first_stage.encode_codes(images)
            )
        return codes.flatten(1).long()

    def codes_to_images(self, codes: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from codes (B, N) in raster order."""
        images = self.first_stage.decode_codes(codes.view(-1, *self.code_grid))
        return ((images + 1) / 2).clamp(0, 1)

    # --- training ---------------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        # nanoGPT's split: weight decay on matrices and embeddings, not on biases and LayerNorm gains
        decay = [p for p in self.network.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.network.parameters() if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": hp.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return adamw_with_warmup(groups, hp.lr, hp.weight_decay, hp.warmup_steps)

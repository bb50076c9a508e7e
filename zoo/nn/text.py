"""Text side of text-conditioned families (`clip`, `ldm`, `video_diffusion`): a byte-level BPE tokenizer
trained on the captions, a small transformer text encoder built from timm's blocks, and the
`CaptionConditioned` mixin the caption-conditioned generative families share.

The tokenizer is trained with the `tokenizers` library (byte-level BPE, as GPT-2 and CLIP use), so
any string encodes, including words never seen in training. It is saved *inside the checkpoint*
(`CaptionTokenizer.to_str()`), never downloaded; the encoder's embedding table has a fixed
`vocab_size`, so a model can be built before its tokenizer is trained.

    tokenizer = CaptionTokenizer.train(["a red circle", "a blue square"], vocab_size=512)
    ids, mask = tokenizer(["a red circle"], max_length=16)     # (1, 16) long, (1, 16) bool
    encoder = TextEncoder(vocab_size=512, width=128, depth=2, heads=4, max_length=16)
    states, pooled = encoder(ids, mask)                         # (1, 16, 128), (1, 128)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import nn

from zoo.errors import DataError
from zoo.nn.layers import masked_mean

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


class CaptionTokenizer:
    """Byte-level BPE over captions; `<pad>` is id 0, and every encoding is `<bos> ... <eos>`."""

    def __init__(self, tokenizer: Any) -> None:
        from tokenizers.processors import TemplateProcessing

        self.tokenizer = tokenizer
        self.pad_id = tokenizer.token_to_id(PAD)
        self.bos_id = tokenizer.token_to_id(BOS)
        self.eos_id = tokenizer.token_to_id(EOS)
        if (self.pad_id, self.bos_id, self.eos_id) != (0, 1, 2):
            raise ValueError("not a zoo caption tokenizer: <pad>, <bos>, <eos> must be ids 0, 1, 2")
        # Set on every load, not only at training: tokenizers saved in older checkpoints have no
        # post-processor (the markers were added by hand then) and must encode the same way.
        tokenizer.post_processor = TemplateProcessing(
            single=f"{BOS} $A {EOS}", special_tokens=[(BOS, self.bos_id), (EOS, self.eos_id)]
        )
        # a caption that spells "<pad>" or "<eos>" is text, not a marker (the mask would hide it)
        tokenizer.encode_special_tokens = True

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 1024) -> CaptionTokenizer:
        """Learn merges from `texts` (deterministic for the same set of texts, whatever their order)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        corpus = sorted({t for t in texts if isinstance(t, str)})
        if not corpus:
            raise DataError(
                "no captions to train the tokenizer on: a text-conditioned family needs a datamodule "
                "whose batches have a 'caption' key (images: shapes, digits, or image_folder with a captions "
                "file; video: moving_shapes, moving_digits, or video_folder with a captions file)"
            )
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[PAD, BOS, EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(corpus, trainer=trainer)
        if tokenizer.get_vocab_size() > vocab_size:
            raise ValueError(
                f"tokenizer has {tokenizer.get_vocab_size()} tokens, more than vocab_size {vocab_size}"
            )
        return cls(tokenizer)

    def to_str(self) -> str:
        return self.tokenizer.to_str()

    @classmethod
    def from_str(cls, text: str) -> CaptionTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __call__(self, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, max_length) and a mask (B, max_length), True at real tokens. Longer texts are
        truncated (the `<eos>` is kept), shorter ones padded with `<pad>`."""
        if max_length < 2:
            raise ValueError(f"max_length {max_length} leaves no room for <bos> and <eos>")
        if isinstance(texts, str):
            texts = [texts]
        # truncation counts the post-processor's <bos> and <eos>, so the text keeps max_length - 2 tokens
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.enable_padding(length=max_length, pad_id=self.pad_id, pad_token=PAD)
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long).reshape(len(texts), max_length)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.bool).reshape(ids.shape)
        return ids, mask

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i > 2])


class TextEncoder(nn.Module):
    """Token and position embeddings, `depth` pre-norm transformer blocks (timm), a final LayerNorm.

    Returns the token states (B, L, width) that cross-attention reads, and a pooled embedding
    (B, width): the mean of the states over real tokens. Padding is masked out of attention, so a
    caption's encoding does not depend on how much padding its batch needed.
    """

    def __init__(
        self, vocab_size: int = 1024, width: int = 128, depth: int = 2, heads: int = 4, max_length: int = 24
    ) -> None:
        super().__init__()
        self.max_length = max_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.zeros(1, max_length, width))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)
        self.blocks = nn.ModuleList([Block(width, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if ids.shape[1] > self.max_length:
            raise ValueError(f"{ids.shape[1]} tokens, more than the encoder's max_length {self.max_length}")
        x = self.token_embedding(ids) + self.position_embedding[:, : ids.shape[1]]
        # (B, 1, 1, L) boolean: every query may attend to the real tokens of its caption
        attn_mask = mask[:, None, None, :]
        for block in self.blocks:
            x = block(x, attn_mask=attn_mask)
        states = self.norm(x)
        return states, masked_mean(states, mask.unsqueeze(-1), dim=1)


def dataset_captions(dataset: Any, limit: int | None = None) -> list[str]:
    """The captions of a zoo dataset, read without decoding images where the dataset allows it."""
    data = getattr(dataset, "data", None)
    if isinstance(data, dict) and "captions" in data:  # shapes keeps its captions as one list
        captions = list(data["captions"])
    else:
        captions = []
        for i in range(len(dataset) if limit is None else min(limit, len(dataset))):
            caption = dataset[i].get("caption")
            if caption is not None:
                captions.append(caption)
    return captions[:limit] if limit is not None else captions


def drop_captions(captions: Sequence[str], p: float, generator: torch.Generator | None = None) -> list[str]:
    """Each caption replaced by "" with probability `p` (one draw per caption from `generator`): conditioning
    dropout for classifier-free guidance (Ho & Salimans 2022), on text."""
    drop = torch.rand(len(captions), generator=generator) < p
    return ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]


class CaptionConditioned:
    """The text side every caption-conditioned generative family shares (`ldm`, `video_diffusion`), as a
    mixin before `GenerativeModule`: a tokenizer trained on the datamodule's captions, the distinct
    validation captions as preview prompts, both kept in the checkpoint, prompts checked for sampling,
    and `encode_text` through the family's own `TextEncoder`; the training and validation steps around the
    family's `_loss(batch, generator)`.

    The family sets `self.tokenizer = None`, `self.text_encoder`, `self.unet` (text by cross-attention and
    a pooled embedding), `self.schedule` and `self._preview_prompts = None` in `__init__`, and has the
    hyper-parameters `vocab_size`, `max_length`, `caption_dropout` and those of `denoising_loss`. `caption_limit` bounds how
    many items are read for captions (None: all; datasets that render items on demand set a limit)."""

    caption_limit: int | None = None
    tokenizer: CaptionTokenizer | None
    _preview_prompts: list[str] | None
    # training and validation steps: the batch key the family's `_loss(batch, generator)` encodes, and
    # the error raised while its `first_stage_ready` buffer is False
    input_key: str = "image"
    untrained_first_stage_message: str = "the first stage is untrained"

    family_name: str = ""  # in messages; the class name when unset

    def _family(self) -> str:
        return self.family_name or type(self).__name__

    def _train_tokenizer(self, datamodule: Any) -> None:
        if self.tokenizer is not None:
            return
        train_set = getattr(datamodule, "train_set", None)
        if train_set is None:
            raise ValueError(f"{self._family()} needs a datamodule with a train_set of captioned items")
        captions = dataset_captions(train_set, limit=self.caption_limit)
        self.tokenizer = CaptionTokenizer.train(captions, self.hparams.vocab_size)
        shown = getattr(datamodule, "val_set", None) or train_set
        limit = None if self.caption_limit is None else 256
        self._preview_prompts = sorted(set(dataset_captions(shown, limit=limit)))

    def encode_text(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token states (B, L, D), their mask (B, L) and the pooled embedding (B, D) of `prompts`."""
        if self.tokenizer is None:
            raise RuntimeError(
                f"this {self._family()} model has no tokenizer yet: train it with zoo.fit, or load it with "
                "zoo.checkpoint.load_model"
            )
        ids, mask = self.tokenizer(list(prompts), self.hparams.max_length)
        states, pooled = self.text_encoder(ids.to(self.device), mask.to(self.device))
        return {"states": states, "mask": mask.to(self.device), "pooled": pooled}

    def _drop_captions(self, captions: Sequence[str], generator: torch.Generator | None) -> list[str]:
        """While training, each caption replaced by "" with probability `caption_dropout`: the unconditional
        half of classifier-free guidance, learned by the same network."""
        if self.training and self.hparams.caption_dropout > 0:
            return drop_captions(captions, self.hparams.caption_dropout, generator)
        return list(captions)

    def _caption_loss(
        self, z0: torch.Tensor, captions: Sequence[str], generator: torch.Generator | None
    ) -> torch.Tensor:
        """The denoising loss of clean latents `z0` with the U-Net conditioned on `captions`."""
        from zoo.diffusion import denoising_loss

        hp = self.hparams
        return denoising_loss(
            lambda x_t, t: self._unet(x_t, t, self.encode_text(captions)),
            z0, self.schedule, num_train_timesteps=hp.num_train_timesteps, prediction=hp.prediction,
            min_snr_gamma=hp.min_snr_gamma, generator=generator,
            high_noise_fraction=hp.get("high_noise_fraction", 0.0), high_noise_start=hp.get("high_noise_start", 0.9),
        )  # fmt: skip

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if not bool(self.first_stage_ready):
            raise RuntimeError(self.untrained_first_stage_message)
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch[self.input_key]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # noise from a generator seeded per batch: comparable validations, no global draws (exact resume)
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss = self._loss(batch, generator)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch[self.input_key]))

    def _unet(self, x: torch.Tensor, t: torch.Tensor, text: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.unet(x, t, context=text["states"], context_mask=text["mask"], pooled=text["pooled"])

    def _prompts(self, condition: Any, n: int) -> list[str]:
        """`condition` (None: unconditional, one prompt for all, or n prompts) as n prompts."""
        if condition is None:
            return [""] * n
        prompts = [condition] if isinstance(condition, str) else list(condition)
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"{self._family()} is conditioned on text: give prompts (--prompt), not labels")
        if len(prompts) == 1:
            prompts = prompts * n
        if len(prompts) != n:
            raise ValueError(f"got {len(prompts)} prompts for {n} samples")
        return prompts

    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Samples for fixed prompts (the distinct validation captions, in order), one per prompt."""
        prompts = self._preview_prompts or ([] if batch is None else sorted(set(batch.get("caption", []))))
        if not prompts:
            return {"samples": self.generate(n, generator=generator)}
        prompts = [prompts[i % len(prompts)] for i in range(n)]
        return {"samples": self.generate(n, condition=prompts, generator=generator)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.tokenizer is not None:
            checkpoint["tokenizer"] = self.tokenizer.to_str()
        if self._preview_prompts:
            checkpoint["preview_prompts"] = list(self._preview_prompts)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "tokenizer" in checkpoint:
            self.tokenizer = CaptionTokenizer.from_str(checkpoint["tokenizer"])
        self._preview_prompts = checkpoint.get("preview_prompts", self._preview_prompts)

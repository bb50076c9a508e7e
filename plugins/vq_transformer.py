"""`vq_transformer`: text-to-image as next-token prediction over vqgan codes (DALL-E 1, Ramesh et al. 2021;
Parti, Yu et al. 2022), scaled down for a CPU.

Two stages: a frozen `vqgan` (the image tokenizer, `zoo.image_tokens`) maps a 32x32 image to 8x8 codes, and a
causal transformer (`zoo.nn.transformer`) reads the caption's text block and then the codes in raster order,
one sequence in a joint vocabulary, and learns to predict each code from everything before it (cross-entropy
on the image codes; the text is given, not predicted). Captions are dropped (replaced by "") with probability
`caption_dropout`, so one network also gives the unconditional distribution of classifier-free guidance.

Sampling decodes the codes one at a time with `zoo.generation` (temperature, top-k, top-p; a KV cache: the
text block is read once, then one code a step) and mixes the logits of a conditional and an unconditional
pass, uncond + g * (cond - uncond) (Parti's guidance); both passes run as the two halves of one batch, each
with its own rows of the cache. The codes are decoded to pixels by the vqgan.

    python -m zoo.fit --model vq_transformer                 # trains its vqgan first, in <run>/first_stage/
    python -m zoo.fit --model vq_transformer --model.tokenizer runs/vqgan/<run>/checkpoints/last.ckpt
    python -m zoo.sample --ckpt runs/vq_transformer/<run>/checkpoints/last.ckpt --prompt "a red circle" \\
        --guidance 3 --temperature 1 --top-k 64
    python -m zoo.evaluate --ckpt runs/vq_transformer/<run>/checkpoints/last.ckpt --metrics geneval
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from zoo.generation import KVCache, processors_for
from zoo.generation import sample as decode
from zoo.image_tokens import ImageTokenFamily, guided_logits
from zoo.module import inference
from zoo.nn.transformer import Block, Transformer


class CodeDecoder:
    """`zoo.generation`'s model callable over image codes: `(ids, cache=, ...) -> code logits`.

    `ids` are the text block followed by codes; the codes are shifted into the joint vocabulary before the
    network reads them, and only the code logits come back, so what `zoo.generation` samples is a code.
    With `guidance` != 1 every row is run twice in one batch, with its caption and with `uncond_text` (the
    empty caption) in the text block, and the logits are mixed (`guided_logits`); the KV cache then holds
    both halves. Positions are those of an unpadded sequence (every text block has the same length)."""

    def __init__(
        self,
        network: Transformer,
        text_length: int,
        code_offset: int,
        codebook_size: int,
        uncond_text: torch.Tensor | None = None,
        guidance: float = 1.0,
    ) -> None:
        self.network, self.text_length = network, text_length
        self.code_offset, self.codebook_size = code_offset, codebook_size
        self.uncond_text, self.guidance = uncond_text, guidance

    def __call__(self, ids: torch.Tensor, cache: KVCache | None = None, **_: Any) -> torch.Tensor:
        past = cache.length if cache is not None else 0
        positions = torch.arange(past, past + ids.shape[1], device=ids.device)
        is_code = positions >= self.text_length
        ids = torch.where(is_code, ids + self.code_offset, ids)
        if self.guidance == 1.0 or self.uncond_text is None:
            logits = self.network(ids, cache=cache)
        else:
            uncond = ids.clone()
            text_columns = torch.nonzero(~is_code).flatten()
            uncond[:, text_columns] = self.uncond_text[:, positions[text_columns]]
            cond_logits, uncond_logits = self.network(torch.cat([ids, uncond]), cache=cache).chunk(2)
            logits = guided_logits(cond_logits, uncond_logits, self.guidance)
        return logits[..., self.code_offset : self.code_offset + self.codebook_size]


class VQTransformer(ImageTokenFamily):
    """Autoregressive text-to-image over vqgan codes; see the module docstring.

    Args:
        in_channels: image channels; zoo.fit links it to data.channels.
        image_size: image side in pixels; zoo.fit links it to data.image_size.
        tokenizer: a trained `vqgan` checkpoint for these images; null: zoo.fit trains one first.
        tokenizer_config: the vqgan's hyper-parameters; null: the tokenizer checkpoint's, or zoo's default vqgan.
        tokenizer_steps: training steps of the vqgan that zoo.fit trains when tokenizer is null.
        tokenizer_sha256: the sha256 of the tokenizer checkpoint, filled in; leave it null.
        vocab_size: most tokens of the BPE caption tokenizer (the text part of the joint vocabulary).
        max_length: caption tokens with <bos> and <eos> (the text block); longer captions are cut.
        n_layer: transformer blocks.
        n_head: attention heads; must divide n_embd.
        n_embd: transformer width.
        dropout: dropout in the transformer.
        caption_dropout: probability a training caption is replaced by "" (for classifier-free guidance).
        lr: AdamW learning rate, reached at the end of the warm-up (the vqgan stays frozen).
        weight_decay: AdamW weight decay on matrices and embeddings.
        warmup_steps: optimizer steps of linear learning-rate warm-up.
        guidance: classifier-free guidance scale of `generate` unless given (1: the conditional pass alone).
        temperature: sampling temperature of `generate` unless given (0: greedy).
        top_k: sample among the k most probable codes unless given; null or 0: no limit.
        top_p: nucleus sampling's probability mass unless given; null or 1: off.
    """

    family_name = "vq_transformer"
    fsdp_blocks = (Block,)
    untrained_first_stage_message = (
        "the vq_transformer's tokenizer is untrained: train with `python -m zoo.fit --model vq_transformer` "
        "(which trains it first) or pass --model.tokenizer runs/vqgan/<run>/checkpoints/last.ckpt"
    )

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        tokenizer: str | None = None,
        tokenizer_config: dict[str, Any] | None = None,
        tokenizer_steps: int = 1000,
        tokenizer_sha256: str | None = None,
        vocab_size: int = 512,
        max_length: int = 24,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        caption_dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
        guidance: float = 3.0,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._build_tokenizer_and_network(
            n_layer=n_layer, n_head=n_head, n_embd=n_embd, dropout=dropout, causal=True
        )

    # --- training -----------------------------------------------------------------------------------

    def _loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        """Next-code cross-entropy: the text block and the codes before each code predict it."""
        codes = self.training_codes(batch["image"])
        text = self.text_ids(self._drop_captions(batch["caption"], generator))
        sequence = torch.cat([text, codes + self.code_offset], dim=1)
        logits = self.network(sequence[:, :-1])[:, text.shape[1] - 1 :]  # the positions that predict codes
        code_logits = logits[..., self.code_offset : self.code_offset + self.codebook_size]
        return F.cross_entropy(code_logits.flatten(0, 1).float(), codes.flatten())

    # --- sampling -------------------------------------------------------------------------------------

    @inference
    def generate(
        self,
        n: int,
        *,
        condition: str | Sequence[str] | None = None,
        generator: torch.Generator | None = None,
        guidance: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """`n` images in [0, 1] for `condition` (one prompt for all, or n; None: unconditional): the codes
        decoded one at a time (`temperature` 0: greedy), guided by `guidance`, then the vqgan's pixels."""
        hp = self.hparams
        guidance = hp.guidance if guidance is None else guidance
        temperature = hp.temperature if temperature is None else temperature
        top_k = hp.top_k if top_k is None else top_k
        top_p = hp.top_p if top_p is None else top_p
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
        text = self.text_ids(self._prompts(condition, n))
        codes = self.sample_codes(text, guidance, temperature, top_k, top_p, generator, use_cache)
        return self.codes_to_images(codes)

    def sample_codes(
        self,
        text: torch.Tensor,
        guidance: float,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        generator: torch.Generator | None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """The codes (B, N) that follow the text blocks `text` (B, max_length), by `zoo.generation.sample`."""
        uncond = self.text_ids([""]).expand(text.shape[0], -1) if guidance != 1.0 else None
        model = CodeDecoder(
            self.network, text.shape[1], self.code_offset, self.codebook_size, uncond, guidance
        )
        sampling = temperature > 0
        processors = processors_for(temperature=temperature, top_k=top_k, top_p=top_p, sampling=sampling)
        out = decode(
            model, text, max_new_tokens=self.num_codes, processors=processors, do_sample=sampling,
            generator=generator, use_cache=use_cache,
        )  # fmt: skip
        return out[:, text.shape[1] :]

"""`gpt`: a decoder-only transformer language model (Radford et al. 2019), nanoGPT-sized for a CPU.

The network is `zoo.nn.transformer.Transformer` (shared with the image-token families): token
embeddings plus learned position embeddings (or rotary ones, `rope=True`, Su et al. 2021),
pre-LayerNorm blocks of causal self-attention (`F.scaled_dot_product_attention`) and a tanh-GELU
MLP, a final LayerNorm, and an output layer tied to the token embeddings. The layout and names
follow GPT-2, so `load_gpt2_weights` can take the weights of a `transformers` GPT-2 (its Conv1D
layers store weights transposed) and the two give the same logits.

Training minimises next-token cross-entropy over windows of the datamodule's token stream;
`val/loss` and `val/perplexity` are logged. `generate()` decodes with `zoo.generation`: a KV cache
(prefill once, then one token a step), greedy (`temperature=0`), sampling with temperature / top-k /
top-p / min-p, beam search, penalties and stopping rules; past the context (`block_size`), a sliding
window over the last `block_size` tokens, as nanoGPT. The tokenizer is saved in the checkpoint.

    python -m zoo.fit --model gpt                                   # captions, a few minutes
    python -m zoo.fit --model gpt --data python_source --recipe python_source
    python -m zoo.sample --ckpt runs/gpt/<run>/checkpoints/last.ckpt --prompt "def " \\
        --max-new-tokens 200 --top-p 0.9 --temperature 0.8 --stop "\\n\\n"
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from zoo.generation import generate, left_pad, processors_for
from zoo.module import GenerativeModule, adamw_with_warmup, attached_trainer, inference
from zoo.nn.transformer import Block, Transformer
from zoo.tokenizers import TextTokenizer, tokenizer_from_state


def load_gpt2_weights(network: Transformer, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy a `transformers` GPT2LMHeadModel state dict into `network` (same sizes). GPT-2's Conv1D
    layers keep weights as (in, out), the transpose of nn.Linear's."""
    sd = {k.removeprefix("transformer."): v for k, v in state_dict.items()}
    mapped = {"wte.weight": sd["wte.weight"], "wpe.weight": sd["wpe.weight"]}
    for i in range(len(network.blocks)):
        h = f"h.{i}."
        for ours, theirs, transpose in (
            ("ln_1", "ln_1", False), ("ln_2", "ln_2", False), ("attn.qkv", "attn.c_attn", True),
            ("attn.proj", "attn.c_proj", True), ("mlp.fc", "mlp.c_fc", True), ("mlp.proj", "mlp.c_proj", True),
        ):  # fmt: skip
            mapped[f"blocks.{i}.{ours}.weight"] = (
                sd[h + theirs + ".weight"].t() if transpose else sd[h + theirs + ".weight"]
            )
            mapped[f"blocks.{i}.{ours}.bias"] = sd[h + theirs + ".bias"]
    mapped["ln_f.weight"], mapped["ln_f.bias"] = sd["ln_f.weight"], sd["ln_f.bias"]
    mapped["lm_head.weight"] = sd["wte.weight"]
    network.load_state_dict(mapped, strict=True)


class _VocabularyLimit:
    """Forbid ids >= `size` (a model built with more embedding rows than its tokenizer has tokens)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [scores[:, : self.size], torch.full_like(scores[:, self.size :], float("-inf"))], dim=1
        )


class GPT(GenerativeModule):
    """Decoder-only language model; see the module docstring. `python -m zoo.fit --model gpt`.

    Args:
        vocab_size: token embedding rows, at least the tokenizer's tokens; zoo.fit sets it from data.vocab_size.
        block_size: context in tokens (training windows, generation's sliding window); zoo.fit links it to data.block_size.
        n_layer: transformer blocks.
        n_head: attention heads; must divide n_embd.
        n_embd: model width: token (and position) embeddings and every block.
        dropout: dropout probability on the embeddings, the attention weights and each residual branch.
        bias: biases in the linear layers and LayerNorms (GPT-2 has them).
        rope: rotary position embeddings in the attention (Su et al. 2021) instead of learned absolute positions.
        lr: AdamW learning rate, reached at the end of the warm-up.
        weight_decay: AdamW weight decay on matrices and embeddings; none on biases and LayerNorm gains.
        betas: AdamW's (beta1, beta2).
        warmup_steps: optimizer steps of linear learning-rate warm-up.
        max_new_tokens: tokens `generate` adds unless given; cut to the room the prompt leaves in the context, if any.
        temperature: sampling temperature of `generate` unless given; 0: greedy decoding.
        top_k: sample among the k most probable tokens (`generate`'s default); null or 0: no limit.
        top_p: nucleus sampling's probability mass (`generate`'s default); null or 1: off.
    """

    modality = "text"
    default_data = "captions"
    fsdp_blocks = (Block,)  # the FSDP unit under --trainer.strategy zoo_fsdp (zoo.strategies)

    def __init__(
        self,
        vocab_size: int = 512,
        block_size: int = 128,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        bias: bool = True,
        rope: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.network = Transformer(vocab_size, block_size, n_layer, n_head, n_embd, dropout, bias, rope)
        self.tokenizer: TextTokenizer | None = None
        self.val_nll = MeanMetric()

    # --- tokenizer: from the datamodule, kept in the checkpoint ------------------------------

    def setup(self, stage: str) -> None:
        datamodule = getattr(attached_trainer(self), "datamodule", None)
        tokenizer = getattr(datamodule, "tokenizer", None)
        if tokenizer is not None:
            if tokenizer.vocab_size > self.hparams.vocab_size:
                raise ValueError(
                    f"the data's tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                    f"{self.hparams.vocab_size}: zoo.fit sets it from the data; when building GPT by hand pass "
                    "vocab_size=datamodule.vocab_size"
                )
            self.tokenizer = tokenizer

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.tokenizer is not None:
            checkpoint["tokenizer"] = self.tokenizer.to_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "tokenizer" in checkpoint:
            self.tokenizer = tokenizer_from_state(checkpoint["tokenizer"])

    # --- training -----------------------------------------------------------------------------

    def forward(self, ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.network(ids, **kwargs)

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        tokens = batch["tokens"]
        logits = self.network(tokens[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["tokens"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss = self._loss(batch)
        self.val_nll.update(loss, weight=batch["tokens"][:, 1:].numel())

    def on_validation_epoch_end(self) -> None:
        nll = self.val_nll.compute()
        self.val_nll.reset()
        self.log("val/loss", nll, prog_bar=True, sync_dist=False)
        self.log("val/perplexity", nll.exp())

    def configure_optimizers(self) -> dict[str, Any]:
        # nanoGPT's split: weight decay on matrices (and embeddings), not on biases and LayerNorm gains
        decay = [p for p in self.network.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.network.parameters() if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        config = adamw_with_warmup(
            groups, self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_steps
        )
        for group in config["optimizer"].param_groups:
            group["betas"] = tuple(self.hparams.betas)
        return config

    # --- likelihood and generation ------------------------------------------------------------

    def _require_tokenizer(self) -> TextTokenizer:
        if self.tokenizer is None:
            raise ValueError(
                "this GPT has no tokenizer: train it with zoo.fit (the data's tokenizer is saved in the "
                "checkpoint) or set model.tokenizer"
            )
        return self.tokenizer

    @inference
    def negative_log_likelihood(self, texts: Sequence[str]) -> tuple[float, int]:
        """Total NLL (nats) of `texts` and the number of tokens scored: each text is scored after the
        separator and with the separator that ends it, in windows of at most block_size tokens."""
        tokenizer = self._require_tokenizer()
        total, count = 0.0, 0
        for text in texts:
            ids = torch.tensor(
                [tokenizer.eos_id, *tokenizer.encode(text), tokenizer.eos_id], device=self.device
            )
            for start in range(0, len(ids) - 1, self.hparams.block_size):
                window = ids[start : start + self.hparams.block_size + 1]
                logits = self.network(window[None, :-1])[0].float()
                total += float(F.cross_entropy(logits, window[1:], reduction="sum"))
                count += len(window) - 1
        return total, count

    def _default_max_new_tokens(self, prompt_length: int) -> int:
        """The family's `max_new_tokens`, cut to the room the context leaves after the prompt (with a
        note), so that a default never reaches the sliding window. A prompt that fills the context
        leaves no room: then the default stands and the window slides from the first new token."""
        default, context = int(self.hparams.max_new_tokens), int(self.hparams.block_size)
        room = context - prompt_length
        if default <= room or room < 1:
            return default
        warnings.warn(
            f"max_new_tokens is {room}, not the model's default {default}: the context of {context} tokens "
            f"holds the prompt ({prompt_length} tokens with the start token) and {room} more. "
            f"Pass --max-new-tokens {default} (or more) to go on with a sliding window over the last {context} tokens",
            stacklevel=3,
        )
        return room

    @inference
    def generate(
        self,
        n: int,
        *,
        condition: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        no_repeat_ngram_size: int | None = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        min_new_tokens: int | None = None,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        early_stopping: bool | str = False,
        stop: Sequence[str] | None = None,
        min_prob: float | None = None,
        use_cache: bool = True,
    ) -> list[str]:
        """`n` texts, each its prompt (`condition[i]`, or nothing) followed by the generated text, cut
        before the end-of-text token or a stop string. `temperature=0` is greedy decoding; the
        family's defaults (hyper-parameters) apply to options left at None, with `max_new_tokens` cut
        to what the context leaves after the prompt. Past the context (`block_size` tokens, the start
        token and prompt included) the model reads a sliding window of the last `block_size` tokens,
        as nanoGPT's `generate`; a prompt longer than the context is read the same way."""
        tokenizer = self._require_tokenizer()
        prompts = [""] * n if condition is None else list(condition)
        if not all(isinstance(p, str) for p in prompts):  # a class label would silently become the text "3"
            raise ValueError("gpt is conditioned on text: give prompts (--prompt TEXT), not labels")
        if len(prompts) != n:
            raise ValueError(f"got {len(prompts)} prompts for {n} samples")
        hp = self.hparams
        temperature = hp.temperature if temperature is None else temperature
        top_k = hp.top_k if top_k is None else top_k
        top_p = hp.top_p if top_p is None else top_p
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
        encoded = [[tokenizer.eos_id, *tokenizer.encode(p)] for p in prompts]
        longest = max(len(e) for e in encoded)
        if max_new_tokens is None:
            max_new_tokens = self._default_max_new_tokens(longest)
        ids, mask = left_pad(encoded, pad_id=tokenizer.eos_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        do_sample = temperature > 0 and num_beams <= 1
        processors = processors_for(
            prompt_length=ids.shape[1], eos_ids=[tokenizer.eos_id], temperature=temperature, top_k=top_k,
            top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size, frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty, min_new_tokens=min_new_tokens, sampling=do_sample,
        )  # fmt: skip
        if hp.vocab_size > tokenizer.vocab_size:  # ids the tokenizer cannot decode are never drawn
            processors.insert(0, _VocabularyLimit(tokenizer.vocab_size))
        stop_strings = [s for s in (stop or []) if s]
        options: dict[str, Any] = {
            "eos_ids": [tokenizer.eos_id],
            "pad_id": tokenizer.eos_id,
            "use_cache": use_cache,
            "context_length": hp.block_size,  # beyond it, a sliding window (zoo.generation)
        }
        if num_beams > 1:
            options |= {"length_penalty": length_penalty, "early_stopping": early_stopping}
            if stop_strings or min_prob is not None:
                raise ValueError(
                    "stop strings and --min-prob work with greedy decoding and sampling, not beam search"
                )
        else:
            options |= {
                "stop_strings": stop_strings,
                "decode": tokenizer.decode,
                "min_prob": min_prob,
                "generator": generator,
            }
        out = generate(
            self.network, ids, mask, max_new_tokens=max_new_tokens, processors=processors,
            do_sample=do_sample, num_beams=num_beams, **options,
        )  # fmt: skip
        texts = []
        for prompt, row in zip(prompts, out[:, ids.shape[1] :].tolist(), strict=True):
            if tokenizer.eos_id in row:
                row = row[: row.index(tokenizer.eos_id)]
            completion = tokenizer.decode(row)
            for s in stop_strings:
                completion = completion.split(s, 1)[0]
            texts.append(prompt + completion)
        return texts

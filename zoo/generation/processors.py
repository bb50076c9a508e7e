"""Logits processors: small callables `(ids, scores) -> scores` that compose in a list.

`ids` (B, T) are all token ids so far (prompt and generated), `scores` (B, V) the next-token
scores (logits for greedy and sampling, log-probabilities in beam search, as in `transformers`).
A processor never changes its input in place. Filters set removed tokens to -inf.

The order `processors_for` builds is the order `transformers` applies them (penalties and bans,
then temperature, top-k, top-p, min-p), so the same options give the same distribution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NEG_INF = float("-inf")


def apply_processors(
    processors: Sequence[Processor], ids: torch.Tensor, scores: torch.Tensor
) -> torch.Tensor:
    for processor in processors:
        scores = processor(ids, scores)
    return scores


class Temperature:
    """Divide the scores by `temperature` (< 1 sharpens, > 1 flattens)."""

    def __init__(self, temperature: float) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be positive (use greedy decoding for 0), got {temperature}")
        self.temperature = temperature

    def __call__(self, ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.temperature


class TopK:
    """Keep the `k` highest-scoring tokens (ties with the k-th are kept)."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"top_k must be at least 1, got {k}")
        self.k = k

    def __call__(self, ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        k = min(self.k, scores.shape[-1])
        kth = torch.topk(scores, k, dim=-1).values[..., -1:]
        return scores.masked_fill(scores < kth, NEG_INF)


class TopP:
    """Nucleus sampling (Holtzman et al. 2020): keep the smallest set of most probable tokens whose
    probability adds up to more than `p`. The most probable token is always kept."""

    def __init__(self, p: float, min_tokens_to_keep: int = 1) -> None:
        if not 0.0 < p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {p}")
        self.p = p
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        sorted_scores, order = torch.sort(scores, dim=-1)  # ascending: the tail first
        tail_mass = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = tail_mass <= 1.0 - self.p  # tokens whose tail holds at most 1 - p
        remove_sorted[..., -self.min_tokens_to_keep :] = False
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        return scores.masked_fill(remove, NEG_INF)


class MinP:
    """Min-p sampling (Nguyen et al. 2024): keep tokens with probability at least `p` times the most
    probable token's."""

    def __init__(self, p: float, min_tokens_to_keep: int = 1) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"min_p must lie in [0, 1], got {p}")
        self.p = p
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = scores.softmax(dim=-1)
        remove = probs < self.p * probs.max(dim=-1, keepdim=True).values
        if self.min_tokens_to_keep > 1:
            top = torch.topk(scores, self.min_tokens_to_keep, dim=-1).indices
            remove = remove.scatter(-1, top, False)
        return scores.masked_fill(remove, NEG_INF)


class RepetitionPenalty:
    """CTRL's repetition penalty (Keskar et al. 2019): the score of every token already in `ids` is
    divided by `penalty` when positive and multiplied by it when negative (> 1 discourages repeats)."""

    def __init__(self, penalty: float) -> None:
        if not penalty > 0:
            raise ValueError(f"repetition_penalty must be positive (1 = none), got {penalty}")
        self.penalty = penalty

    def __call__(self, ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        seen = torch.gather(scores, 1, ids)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return scores.scatter(1, ids, seen)


class NoRepeatNGram:
    """Forbid any token that would complete an n-gram already present in `ids`."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"no_repeat_ngram_size must be at least 1, got {n}")
        self.n = n

    def __call__(self, ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        if length + 1 < self.n:
            return scores
        scores = scores.clone()
        prefix_len = self.n - 1
        for row, tokens in enumerate(ids.tolist()):
            prefix = tuple(tokens[length - prefix_len :]) if prefix_len else ()
            banned = {
                tokens[i + prefix_len]
                for i in range(length - prefix_len)
                if tuple(tokens[i : i + prefix_len]) == prefix
            }
            if banned:
                scores[row, list(banned)] = NEG_INF
        return scores


class FrequencyPresencePenalty:
    """OpenAI's additive penalties: the score of token j drops by `frequency * c[j] + presence * (c[j] > 0)`,
    where c[j] counts how often j was *generated* so far (the prompt, ids[:, :prompt_length], is not
    counted)."""

    def __init__(self, frequency: float = 0.0, presence: float = 0.0, prompt_length: int = 0) -> None:
        self.frequency, self.presence, self.prompt_length = frequency, presence, prompt_length

    def __call__(self, ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = ids[:, self.prompt_length :]
        counts = torch.zeros_like(scores).scatter_add_(
            1, generated, torch.ones_like(generated, dtype=scores.dtype)
        )
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class MinNewTokens:
    """Forbid the end-of-sequence tokens until `min_new_tokens` tokens have been generated."""

    def __init__(self, min_new_tokens: int, eos_ids: Sequence[int], prompt_length: int) -> None:
        self.min_new_tokens, self.eos_ids, self.prompt_length = min_new_tokens, list(eos_ids), prompt_length

    def __call__(self, ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] - self.prompt_length >= self.min_new_tokens or not self.eos_ids:
            return scores
        scores = scores.clone()
        scores[:, self.eos_ids] = NEG_INF
        return scores


def processors_for(
    *,
    prompt_length: int = 0,
    eos_ids: Sequence[int] = (),
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    no_repeat_ngram_size: int | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    min_new_tokens: int | None = None,
    sampling: bool = True,
) -> list[Processor]:
    """The processors for these options, in `transformers`' order. An option left at None (or at its
    neutral value: temperature 1, top_p 1, penalties 0 or 1) adds nothing. With `sampling=False`
    (greedy, beam search) temperature, top-k, top-p and min-p are left out, as `transformers` does:
    they never change which token scores highest."""
    processors: list[Processor] = []
    if repetition_penalty is not None and repetition_penalty != 1.0:
        processors.append(RepetitionPenalty(repetition_penalty))
    if no_repeat_ngram_size:
        processors.append(NoRepeatNGram(no_repeat_ngram_size))
    if frequency_penalty or presence_penalty:
        processors.append(
            FrequencyPresencePenalty(frequency_penalty or 0.0, presence_penalty or 0.0, prompt_length)
        )
    if min_new_tokens:
        processors.append(MinNewTokens(min_new_tokens, eos_ids, prompt_length))
    if sampling:
        if temperature is not None and temperature != 1.0:
            processors.append(Temperature(temperature))
        if top_k:
            processors.append(TopK(top_k))
        if top_p is not None and top_p < 1.0:
            processors.append(TopP(top_p))
        if min_p:
            processors.append(MinP(min_p))
    return processors

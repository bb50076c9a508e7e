"""Decoding loops over any autoregressive model: greedy, sampling, beam search, with stopping rules.

A model is any callable

    logits = model(ids, cache=cache, position_ids=positions, attention_mask=mask)

taking the new token ids (B, T_new), a `KVCache` to read and extend (or None: then `ids` is the
whole sequence), their positions (B, T_new) and the attention mask over all positions so far
(B, T_total, True at real tokens), and returning next-token logits (B, T_new, V). Prompts of
different lengths are left-padded; positions count real tokens only, so a padded prompt is
decoded exactly like the same prompt alone.

Outputs are the prompt followed by the generated ids (B, T_prompt + T_new); a row that stopped
early is filled with `pad_id` after its last token, as `transformers` does.

`context_length` (a model's `block_size`) lets decoding go on past what the model was trained to
see, as nanoGPT's `generate` does: once the sequence is longer, each step runs the model on the last
`context_length` tokens only, at positions 0, 1, ... within that window, with no cache (shifting the
window moves every position, so cached keys and values no longer apply). A warning says so once per
call. Without it, the model gets every position and must handle them itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from zoo.generation.cache import KVCache
from zoo.generation.processors import Processor, apply_processors

Model = Callable[..., torch.Tensor]


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (ids (B, T), mask (B, T) bool), padded on the left to the longest."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError(
            "every prompt needs at least one token (start an empty prompt with the EOS/BOS token)"
        )
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.bool)
    for row, tokens in enumerate(sequences):
        ids[row, length - len(tokens) :] = torch.as_tensor(list(tokens), dtype=torch.long)
        mask[row, length - len(tokens) :] = True
    return ids, mask


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real tokens of each row (padding gets 1, as in `transformers`; unused)."""
    positions = mask.long().cumsum(-1) - 1
    return positions.masked_fill(~mask, 1)


class _Stepper:
    """Feeds a model the whole prefix once, then one token a step (with a cache) or everything again;
    past `context_length` tokens, the last `context_length` of them each step (a sliding window)."""

    def __init__(
        self,
        model: Model,
        mask: torch.Tensor,
        max_length: int,
        use_cache: bool,
        context_length: int | None = None,
    ) -> None:
        if context_length is not None and context_length < 1:
            raise ValueError(f"context_length must be at least 1, got {context_length}")
        self.model, self.use_cache, self.context_length = model, use_cache, context_length
        # the cache never holds more than the context: beyond it, the window runs without one
        cache_length = max_length if context_length is None else min(max_length, context_length)
        self.cache = KVCache(cache_length) if use_cache else None
        self.positions = positions_from_mask(mask)
        self.fed = 0  # positions already in the cache
        self.windowed = False

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.context_length is not None and ids.shape[1] > self.context_length:
            return self._window_logits(ids, mask)
        if ids.shape[1] > self.positions.shape[1]:  # positions of the tokens appended since
            extra = ids.shape[1] - self.positions.shape[1]
            last = self.positions[:, -1:]
            steps = torch.arange(1, extra + 1, device=last.device)
            self.positions = torch.cat([self.positions, last + steps], dim=1)
        start = self.fed if self.use_cache else 0
        out = self.model(
            ids[:, start:], cache=self.cache, position_ids=self.positions[:, start:], attention_mask=mask
        )
        self.fed = ids.shape[1]
        return out[:, -1].float()

    def _window_logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """nanoGPT's step past the context: the model on the last `context_length` tokens alone."""
        window = int(self.context_length)  # type: ignore[arg-type]
        if not self.windowed:
            warnings.warn(
                f"the text is now longer than the model's context of {window} tokens: each further token is "
                f"predicted from the last {window} tokens only (a sliding window, as nanoGPT's generate), "
                "re-reading the window every step",
                stacklevel=3,
            )
            self.windowed, self.cache = True, None  # every position moves with the window: no cache applies
        ids, mask = ids[:, -window:], mask[:, -window:]
        out = self.model(ids, cache=None, position_ids=positions_from_mask(mask), attention_mask=mask)
        return out[:, -1].float()

    def reorder(self, rows: torch.Tensor) -> None:
        self.positions = self.positions.index_select(0, rows)
        if self.cache is not None:
            self.cache.reorder(rows)


def sample(
    model: Model,
    ids: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int,
    processors: Sequence[Processor] = (),
    do_sample: bool = True,
    eos_ids: Sequence[int] = (),
    pad_id: int = 0,
    stop_strings: Sequence[str] = (),
    decode: Callable[[list[int]], str] | None = None,
    min_prob: float | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    context_length: int | None = None,
) -> torch.Tensor:
    """Greedy decoding (`do_sample=False`) or ancestral sampling from the processed distribution.

    A row stops at an EOS token (kept), at `max_new_tokens`, when its generated text contains one of
    `stop_strings` (needs `decode`; the caller cuts the text at the stop string), or when the chosen
    token's probability under the processed distribution falls below `min_prob` (that token is
    dropped). Generation ends when every row has stopped. Past `context_length` tokens the model sees
    a sliding window of the last `context_length` (see the module docstring).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if stop_strings and decode is None:
        raise ValueError("stop_strings need a decode function (token ids -> text)")
    mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    prompt_length = ids.shape[1]
    stepper = _Stepper(model, mask, prompt_length + max_new_tokens, use_cache, context_length)
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=ids.device)
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        scores = apply_processors(processors, ids, stepper.logits(ids, mask))
        if do_sample:
            probs = scores.softmax(dim=-1)
            next_ids = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            next_ids = scores.argmax(dim=-1)
        stopped_now = torch.zeros_like(finished)
        if min_prob is not None:
            chosen = scores.softmax(dim=-1).gather(1, next_ids[:, None]).squeeze(1)
            stopped_now = chosen < min_prob
        next_ids = next_ids.masked_fill(finished | stopped_now, pad_id)
        ids = torch.cat([ids, next_ids[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(next_ids[:, None], dtype=torch.bool)], dim=1)
        finished = finished | stopped_now | torch.isin(next_ids, eos)
        if stop_strings:
            for row in torch.nonzero(~finished).flatten().tolist():
                text = decode(ids[row, prompt_length:].tolist())  # type: ignore[misc]
                if any(s in text for s in stop_strings):
                    finished[row] = True
        if finished.all():
            break
    return ids


def beam_search(
    model: Model,
    ids: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    num_beams: int,
    max_new_tokens: int,
    processors: Sequence[Processor] = (),
    eos_ids: Sequence[int] = (),
    pad_id: int = 0,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    num_return_sequences: int = 1,
    use_cache: bool = True,
    context_length: int | None = None,
) -> torch.Tensor:
    """Beam search with length normalisation: a finished hypothesis scores sum(log p) / length**alpha
    (length counts generated tokens, alpha = `length_penalty`).

    Each step keeps the `num_beams` best unfinished continuations out of the top
    max(2, 1 + #EOS) * num_beams, and adds those of the top `num_beams` that just ended to the
    finished set (the best `num_beams` are kept). It stops when every row's finished set cannot be
    improved: with `early_stopping=True` as soon as `num_beams` hypotheses are finished; with False
    when the best running beam, scored at its current length, cannot beat the worst finished one;
    with "never" at its best possible length. This is the procedure of `transformers` (4.50+), so
    the two give the same sequences. Returns (B * num_return_sequences, T) ids, best first. Past
    `context_length` tokens every beam is scored on its last `context_length` (a sliding window).
    """
    if num_beams < 1 or not 1 <= num_return_sequences <= num_beams:
        raise ValueError(
            f"need num_beams >= 1 and 1 <= num_return_sequences <= num_beams, got {num_beams} and {num_return_sequences}"
        )
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    batch, prompt_length = ids.shape
    max_length = prompt_length + max_new_tokens
    device = ids.device
    flat_mask = mask.repeat_interleave(num_beams, dim=0)
    stepper = _Stepper(model, flat_mask, max_length, use_cache, context_length)
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
    keep = max(2, 1 + len(eos)) * num_beams
    top_beams = torch.arange(keep, device=device) < num_beams
    big = 1.0e9

    running = torch.full((batch, num_beams, max_length), pad_id, dtype=torch.long, device=device)
    running[:, :, :prompt_length] = ids[:, None]
    running_scores = torch.zeros((batch, num_beams), device=device)
    running_scores[:, 1:] = -big  # all beams start identical: only the first may expand
    finished = running.clone()
    finished_scores = torch.full((batch, num_beams), -big, device=device)
    finished_lengths = torch.zeros((batch, num_beams), dtype=torch.long, device=device)
    is_finished = torch.zeros((batch, num_beams), dtype=torch.bool, device=device)
    improvable = torch.ones((batch, 1), dtype=torch.bool, device=device)
    offsets = torch.arange(batch, device=device)[:, None] * num_beams

    def gather(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        while index.ndim < tensor.ndim:
            index = index.unsqueeze(-1)
        return torch.take_along_dim(tensor, index, dim=1)

    length = prompt_length
    while True:
        flat = running[:, :, :length].reshape(batch * num_beams, length)
        step_mask = torch.cat([flat_mask, flat_mask.new_ones((flat.shape[0], length - prompt_length))], dim=1)
        log_probs = stepper.logits(flat, step_mask).log_softmax(dim=-1)
        log_probs = apply_processors(processors, flat, log_probs)
        vocab = log_probs.shape[-1]
        totals = (log_probs.view(batch, num_beams, vocab) + running_scores[..., None]).view(batch, -1)
        top_scores, top_index = torch.topk(totals, keep, dim=1)
        source_beam, token = top_index // vocab, top_index % vocab
        candidates = gather(running, source_beam)
        candidates[:, :, length] = token
        ends = torch.isin(token, eos) | (length + 1 >= max_length)

        # the best unfinished candidates carry on
        running_candidate_scores = top_scores - big * ends.float()
        best = torch.topk(running_candidate_scores, num_beams, dim=1).indices
        running = gather(candidates, best)
        running_scores = gather(running_candidate_scores, best)
        rows = gather(source_beam + offsets, best).flatten()

        # candidates among the top num_beams that just ended join the finished set, length-normalised
        just_finished = ends & top_beams
        normalised = top_scores / float(length + 1 - prompt_length) ** length_penalty
        full = is_finished.all(dim=1, keepdim=True) & (early_stopping is True)
        normalised = (
            normalised - big * full.float() - big * (~improvable).float() - big * (~just_finished).float()
        )
        merged_scores = torch.cat([finished_scores, normalised], dim=1)
        chosen = torch.topk(merged_scores, num_beams, dim=1).indices
        finished = gather(torch.cat([finished, candidates], dim=1), chosen)
        finished_scores = gather(merged_scores, chosen)
        new_lengths = torch.full_like(top_scores, length + 1 - prompt_length, dtype=torch.long)
        finished_lengths = gather(torch.cat([finished_lengths, new_lengths], dim=1), chosen)
        is_finished = gather(torch.cat([is_finished, just_finished], dim=1), chosen)

        stepper.reorder(rows)
        length += 1
        if early_stopping == "never" and length_penalty > 0.0:
            best_length = max_length - prompt_length
        else:
            best_length = length - prompt_length
        best_running = running_scores[:, :1] / float(best_length) ** length_penalty
        worst_finished = torch.where(
            is_finished,
            finished_scores.min(dim=1, keepdim=True).values,
            torch.full_like(finished_scores, -big),
        )
        improvable = improvable & (best_running > worst_finished).any(dim=1, keepdim=True)
        all_full = bool(is_finished.all()) and early_stopping is True
        if not bool(improvable.any()) or all_full or bool(ends.all()):
            break

    out = finished[:, :num_return_sequences].reshape(batch * num_return_sequences, max_length)
    longest = int(finished_lengths[:, :num_return_sequences].max())
    return out[:, : prompt_length + longest]


BEAM_OPTIONS = (
    "eos_ids", "pad_id", "length_penalty", "early_stopping", "num_return_sequences", "use_cache", "context_length",
)  # fmt: skip


def generate(
    model: Model,
    ids: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int,
    processors: Sequence[Processor] = (),
    do_sample: bool = True,
    num_beams: int = 1,
    **options: Any,
) -> torch.Tensor:
    """`beam_search` when num_beams > 1, else `sample` (greedy with do_sample=False)."""
    if num_beams <= 1:
        return sample(
            model,
            ids,
            mask,
            max_new_tokens=max_new_tokens,
            processors=processors,
            do_sample=do_sample,
            **options,
        )
    if do_sample:
        raise ValueError("beam search is deterministic here: use temperature 0 (greedy) with num_beams > 1")
    unsupported = sorted(
        k for k, v in options.items() if k not in BEAM_OPTIONS and v not in (None, (), [], False)
    )
    if unsupported:
        raise ValueError(
            f"beam search stops on EOS and max_new_tokens only; {', '.join(unsupported)} work with "
            "greedy decoding and sampling (num_beams 1)"
        )
    beam_options = {k: v for k, v in options.items() if k in BEAM_OPTIONS}
    return beam_search(
        model,
        ids,
        mask,
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        processors=processors,
        **beam_options,
    )

"""Text metrics: perplexity (torchmetrics), distinct-n and self-BLEU (by hand: torchmetrics has neither).

Texts are split into tokens on whitespace (`str.split`); pass token lists to use another tokenizer.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from torch import Tensor
from torchmetrics.text import Perplexity

from zoo.metrics.registry import MetricContext, register_metric

Tokens = Sequence[str]


def _tokens(text: str | Tokens) -> list[str]:
    return text.split() if isinstance(text, str) else list(text)


def _ngrams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def perplexity(logits: Tensor, targets: Tensor, ignore_index: int | None = None) -> float:
    """exp(mean negative log-likelihood) of `targets` (B, L) under `logits` (B, L, V) (torchmetrics)."""
    metric = Perplexity(ignore_index=ignore_index)
    metric.update(logits.double(), targets)
    return float(metric.compute())


def perplexity_from_nll(total_nll: float, num_tokens: int) -> float:
    """exp(total negative log-likelihood in nats / number of tokens)."""
    if num_tokens < 1:
        raise ValueError("perplexity needs at least one token")
    return math.exp(total_nll / num_tokens)


def distinct_n(texts: Sequence[str | Tokens], n: int) -> float:
    """Distinct-n (Li et al. 2016): distinct n-grams / all n-grams, over the whole set of texts."""
    counts: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        counts.update(_ngrams(_tokens(text), n))
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def sentence_bleu(
    hypothesis: str | Tokens,
    references: Sequence[str | Tokens],
    max_n: int = 4,
    smoothing: str | None = "method1",
) -> float:
    """BLEU of one hypothesis against references (Papineni et al. 2002), as nltk's `sentence_bleu`:
    clipped n-gram precisions for n = 1..max_n with uniform weights, brevity penalty against the
    reference length closest to the hypothesis'. `smoothing="method1"` adds 0.1 to zero numerators
    (nltk's method1, the Texygen self-BLEU setting); None gives 0 when any order has no match."""
    hyp = _tokens(hypothesis)
    refs = [_tokens(r) for r in references]
    if not hyp or not refs:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        counts = _ngrams(hyp, n)
        denominator = max(1, sum(counts.values()))
        max_ref: Counter[tuple[str, ...]] = Counter()
        for ref in refs:
            for gram, c in _ngrams(ref, n).items():
                max_ref[gram] = max(max_ref[gram], c)
        numerator: float = sum(min(c, max_ref[g]) for g, c in counts.items())
        if numerator == 0:
            if smoothing is None:
                return 0.0
            if smoothing != "method1":
                raise ValueError(f"unknown smoothing {smoothing!r}: use 'method1' or None")
            numerator = 0.1
        log_precision += math.log(numerator / denominator) / max_n
    hyp_len = len(hyp)
    ref_len = min((abs(len(r) - hyp_len), len(r)) for r in refs)[1]
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)


def self_bleu(texts: Sequence[str | Tokens], max_n: int = 4, smoothing: str | None = "method1") -> float:
    """Self-BLEU (Zhu et al. 2018, Texygen): mean BLEU of each text against all the others as
    references. High means the texts repeat each other (low diversity)."""
    if len(texts) < 2:
        raise ValueError("self-BLEU needs at least two texts")
    scores = [
        sentence_bleu(texts[i], [t for j, t in enumerate(texts) if j != i], max_n, smoothing)
        for i in range(len(texts))
    ]
    return sum(scores) / len(scores)


@register_metric("distinct_n", modalities=("text",), needs=("fake",), higher_is_better=True)
def _distinct(ctx: MetricContext) -> dict[str, float]:
    """Distinct-1/2/3 of the generated texts."""
    ctx.require("fake", metric="distinct_n")
    return {f"distinct_{n}": distinct_n(ctx.fake, n) for n in (1, 2, 3)}


@register_metric("self_bleu", modalities=("text",), needs=("fake",), higher_is_better=False)
def _self_bleu(ctx: MetricContext) -> dict[str, float]:
    """Self-BLEU-4 of the generated texts (lower is more diverse)."""
    ctx.require("fake", metric="self_bleu")
    return {"self_bleu": self_bleu(ctx.fake, int(ctx.options.get("bleu_n", 4)))}


@register_metric("perplexity", modalities=("text",), needs=("model", "real"), higher_is_better=False)
def _perplexity(ctx: MetricContext) -> dict[str, float]:
    """Perplexity of the model on the real split's documents (exp of the mean NLL per token)."""
    ctx.require("real", metric="perplexity")
    score = getattr(ctx.model, "negative_log_likelihood", None)
    if score is None:
        raise ValueError(
            f"perplexity needs a language model with negative_log_likelihood(texts); got {type(ctx.model).__name__}"
        )
    total, count = score(list(ctx.real))
    return {"perplexity": perplexity_from_nll(total, count), "nll_per_token": total / count}


def _shapes_grammar():  # noqa: ANN202 - the datamodule module, found through the registry
    from zoo import registry

    return registry.datamodule_module("shapes")


def attribute_distance(texts: Sequence[str], reference: Sequence[str]) -> dict[str, float]:
    """Total-variation distances between the colour, shape and object-count frequencies of the
    sentences in `texts` that parse and those of `reference` (0 = the same distribution)."""
    parse = _shapes_grammar().parse_caption

    def frequencies(sentences: Sequence[str]) -> dict[str, Counter[str]]:
        counts: dict[str, Counter[str]] = {"color": Counter(), "shape": Counter(), "count": Counter()}
        for sentence in sentences:
            objects = parse(sentence)
            if objects:
                counts["count"][str(len(objects))] += 1
                for _, color, shape in objects:
                    counts["color"][color] += 1
                    counts["shape"][shape] += 1
        return counts

    ours, theirs = frequencies(texts), frequencies(reference)
    out = {}
    for key in ours:
        a, b = sum(ours[key].values()), sum(theirs[key].values())
        keys = set(ours[key]) | set(theirs[key])
        out[key] = 0.5 * sum(abs(ours[key][k] / max(a, 1) - theirs[key][k] / max(b, 1)) for k in keys)
    return out


@register_metric("grammar", modalities=("text",), needs=("fake", "real"), higher_is_better=True)
def _grammar(ctx: MetricContext) -> dict[str, float]:
    """Fraction of generated texts that are sentences of the `shapes` caption grammar, and (given the
    real split) total-variation distances of their colour / shape / object-count frequencies."""
    ctx.require("fake", metric="grammar")
    parse = _shapes_grammar().parse_caption
    texts = [t.strip() for t in ctx.fake]
    out = {"grammar_parse_rate": sum(parse(t) is not None for t in texts) / max(len(texts), 1)}
    if ctx.real is not None and len(ctx.real) and isinstance(ctx.real[0], str):
        out |= {f"grammar_tv_{k}": v for k, v in attribute_distance(texts, list(ctx.real)).items()}
    return out

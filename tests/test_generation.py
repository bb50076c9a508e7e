"""zoo.generation and the gpt network against `transformers` (a test-only dependency) on one tiny
randomly initialised GPT-2 whose weights are ported into the zoo model."""

from __future__ import annotations

import pytest
import torch

from zoo.generation import (
    FrequencyPresencePenalty,
    MinP,
    Temperature,
    TopK,
    TopP,
    beam_search,
    left_pad,
    processors_for,
    sample,
)
from zoo.plugins.gpt import Transformer, load_gpt2_weights

transformers = pytest.importorskip("transformers")

VOCAB, CONTEXT = 97, 320
PROMPT = torch.tensor([[3, 14, 15, 9, 2], [26, 53, 58, 96, 7]])


@pytest.fixture(scope="module")
def pair() -> tuple[object, Transformer, int]:
    """(transformers GPT-2, the zoo Transformer with its weights, an EOS id the model emits often)."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=CONTEXT, n_embd=48, n_layer=2, n_head=4, initializer_range=0.2
    )
    hf = transformers.GPT2LMHeadModel(config).eval()
    ours = Transformer(VOCAB, CONTEXT, n_layer=2, n_head=4, n_embd=48).eval()
    load_gpt2_weights(ours, hf.state_dict())
    # an end-of-text id that greedy decoding actually reaches, so that stopping rules get exercised
    probe = hf.generate(PROMPT, max_new_tokens=40, do_sample=False, pad_token_id=0)
    eos = int(torch.mode(probe[:, PROMPT.shape[1] :].flatten()).values)
    return hf, ours, eos


def test_ported_logits_match_transformers(pair) -> None:
    hf, ours, _ = pair
    ids = torch.randint(0, VOCAB, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert (got - expected).abs().max() < 1e-5


def _hf_generate(hf, ids, mask=None, **kw):
    with torch.no_grad():
        return hf.generate(ids, attention_mask=mask if mask is not None else torch.ones_like(ids), **kw)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"repetition_penalty": 1.3},
        {"no_repeat_ngram_size": 2},
        {"min_new_tokens": 12},
        {"repetition_penalty": 1.2, "no_repeat_ngram_size": 3, "min_new_tokens": 5},
    ],
    ids=["plain", "repetition", "ngram", "min_new", "all"],
)
def test_greedy_is_token_identical_to_transformers(pair, options) -> None:
    hf, ours, eos = pair
    expected = _hf_generate(
        hf, PROMPT, max_new_tokens=30, do_sample=False, eos_token_id=eos, pad_token_id=eos, **options
    )
    processors = processors_for(prompt_length=PROMPT.shape[1], eos_ids=[eos], sampling=False, **options)
    with torch.no_grad():
        got = sample(
            ours, PROMPT, max_new_tokens=30, processors=processors, do_sample=False, eos_ids=[eos], pad_id=eos
        )
    assert got.tolist() == expected.tolist()


@pytest.mark.parametrize(
    "options",
    [
        {"length_penalty": 1.0, "early_stopping": False},
        {"length_penalty": 0.6, "early_stopping": True},
        {"length_penalty": 2.0, "early_stopping": "never"},
        {"length_penalty": 1.0, "no_repeat_ngram_size": 2, "repetition_penalty": 1.5, "min_new_tokens": 6},
    ],
    ids=["default", "early", "never", "penalties"],
)
@pytest.mark.parametrize("num_beams", [2, 4])
def test_beam_search_is_token_identical_to_transformers(pair, options, num_beams) -> None:
    hf, ours, eos = pair
    returns = min(2, num_beams)
    expected = _hf_generate(
        hf, PROMPT, max_new_tokens=24, do_sample=False, num_beams=num_beams, num_return_sequences=returns,
        eos_token_id=eos, pad_token_id=eos, **options,
    )  # fmt: skip
    processor_options = {k: v for k, v in options.items() if k not in ("length_penalty", "early_stopping")}
    processors = processors_for(
        prompt_length=PROMPT.shape[1], eos_ids=[eos], sampling=False, **processor_options
    )
    with torch.no_grad():
        got = beam_search(
            ours, PROMPT, num_beams=num_beams, max_new_tokens=24, processors=processors, eos_ids=[eos], pad_id=eos,
            length_penalty=options["length_penalty"], early_stopping=options.get("early_stopping", False),
            num_return_sequences=returns,
        )  # fmt: skip
    assert got.tolist() == expected.tolist()
    assert (got[:, PROMPT.shape[1] :] == eos).any(), "no hypothesis ended: the EOS rules went unexercised"


def _hf_warpers():
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    return TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper


@pytest.mark.parametrize(
    "temperature,top_k,top_p,min_p",
    [(0.7, None, None, None), (1.0, 10, None, None), (1.0, None, 0.8, None), (1.0, None, None, 0.1),
     (0.8, 20, 0.9, None), (1.3, 30, 0.95, 0.05)],
)  # fmt: skip
def test_sampling_filters_give_transformers_distributions(temperature, top_k, top_p, min_p) -> None:
    temp_w, topk_w, topp_w, minp_w = _hf_warpers()
    logits = torch.randn(6, VOCAB, generator=torch.Generator().manual_seed(2)) * 3
    ids = torch.zeros(6, 1, dtype=torch.long)
    expected = logits
    for warper, value in ((temp_w, temperature), (topk_w, top_k), (topp_w, top_p), (minp_w, min_p)):
        if value is not None and value != 1.0:
            expected = warper(value)(ids, expected)
    ours = processors_for(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    got = logits
    for processor in ours:
        got = processor(ids, got)
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    assert (got.softmax(-1) - expected.softmax(-1)).abs().max() < 1e-6
    assert torch.isinf(got).any() or (top_k is None and top_p is None and min_p is None)


def test_filters_by_hand() -> None:
    """Closed forms on a 5-token distribution: p = (0.5, 0.25, 0.15, 0.07, 0.03)."""
    probs = torch.tensor([[0.5, 0.25, 0.15, 0.07, 0.03]])
    logits = probs.log()
    ids = torch.zeros(1, 1, dtype=torch.long)
    kept = lambda scores: (~torch.isinf(scores[0])).nonzero().flatten().tolist()  # noqa: E731
    assert kept(TopK(2)(ids, logits)) == [0, 1]
    assert kept(TopP(0.7)(ids, logits)) == [0, 1]  # 0.5 + 0.25 > 0.7 > 0.5
    assert kept(TopP(0.8)(ids, logits)) == [0, 1, 2]  # 0.75 < 0.8 < 0.9
    assert kept(MinP(0.2)(ids, logits)) == [0, 1, 2]  # 0.15 >= 0.1 > 0.07
    assert torch.allclose(Temperature(2.0)(ids, logits).softmax(-1), probs.sqrt() / probs.sqrt().sum())


def test_frequency_and_presence_penalties_follow_openai_formula() -> None:
    scores = torch.randn(2, 10, generator=torch.Generator().manual_seed(3))
    prompt = torch.tensor([[4, 4], [1, 2]])
    generated = torch.tensor([[4, 7, 7, 7, 1], [3, 3, 9, 1, 1]])
    ids = torch.cat([prompt, generated], dim=1)
    got = FrequencyPresencePenalty(frequency=0.3, presence=0.5, prompt_length=2)(ids, scores)
    expected = scores.clone()
    for row in range(2):
        for token in range(10):
            c = generated[row].tolist().count(token)  # generated tokens only: the prompt's 4s do not count
            expected[row, token] -= 0.3 * c + 0.5 * (c > 0)
    assert torch.allclose(got, expected)


def test_kv_cache_and_full_recompute_agree_for_200_tokens(pair) -> None:
    _, ours, _ = pair
    with torch.no_grad():
        cached = sample(ours, PROMPT, max_new_tokens=200, do_sample=False, use_cache=True)
        full = sample(ours, PROMPT, max_new_tokens=200, do_sample=False, use_cache=False)
    assert cached.shape == (2, PROMPT.shape[1] + 200)
    assert torch.equal(cached, full)


@pytest.mark.parametrize("do_sample", [False, True])
def test_left_padded_batch_equals_one_by_one(pair, do_sample) -> None:
    _, ours, eos = pair
    prompts = [[3, 14, 15, 9, 2, 6, 5], [26, 53], [8, 9, 10, 11]]
    ids, mask = left_pad(prompts, pad_id=eos)
    processors = processors_for(top_k=20, top_p=0.9) if do_sample else []

    def run(ids, mask, seed):
        # sampling draws one token per row and step: give every row its own generator by running rows alone
        return sample(ours, ids, mask, max_new_tokens=25, processors=processors, do_sample=do_sample,
                      eos_ids=[eos], pad_id=eos, generator=torch.Generator().manual_seed(seed))  # fmt: skip

    with torch.no_grad():
        if do_sample:  # identical distributions: compare the processed next-token scores step by step instead
            batched = ours(ids, position_ids=(mask.long().cumsum(-1) - 1).clamp_min(0), attention_mask=mask)[
                :, -1
            ]
            for row, prompt in enumerate(prompts):
                alone = ours(torch.tensor([prompt]))[:, -1]
                assert (batched[row] - alone[0]).abs().max() < 1e-5
            return
        batched = run(ids, mask, 0)
        for row, prompt in enumerate(prompts):
            alone = run(torch.tensor([prompt]), None, 0)[0]
            new = batched[row, ids.shape[1] :]
            assert new[: len(alone) - len(prompt)].tolist() == alone[len(prompt) :].tolist()


def test_stopping_rules(pair) -> None:
    _, ours, eos = pair
    with torch.no_grad():
        free = sample(ours, PROMPT[:1], max_new_tokens=30, do_sample=False)[0, 5:].tolist()
        # EOS: the row ends with the EOS token and padding follows
        stopped = sample(ours, PROMPT[:1], max_new_tokens=30, do_sample=False, eos_ids=[free[3]], pad_id=-1)
        assert stopped[0, 5:].tolist()[: free.index(free[3]) + 1] == free[: free.index(free[3]) + 1]
        assert stopped.shape[1] == 5 + free.index(free[3]) + 1
        # stop string: decoding tokens as letters, stop once "<letter of the 4th token>" appears
        letters = lambda ids: "".join(chr(65 + i % 26) for i in ids)  # noqa: E731
        by_string = sample(
            ours,
            PROMPT[:1],
            max_new_tokens=30,
            do_sample=False,
            stop_strings=[letters(free[2:4])],
            decode=letters,
        )
        assert by_string.shape[1] <= 5 + 4 and letters(by_string[0, 5:].tolist()).endswith(letters(free[2:4]))
        # probability threshold: greedy's chosen token has probability p_t; stop at the first below the threshold
        logits = ours(torch.cat([PROMPT[:1], torch.tensor([free])], dim=1))[0, 4:-1]
        chosen = logits.softmax(-1).max(-1).values
        threshold = float(chosen[:10].sort().values[2]) + 1e-6
        first_low = int((chosen < threshold).nonzero()[0])
        by_prob = sample(ours, PROMPT[:1], max_new_tokens=30, do_sample=False, min_prob=threshold, pad_id=-1)
        assert (
            by_prob.shape[1] == 5 + first_low + 1 and by_prob[0, -1] == -1
        )  # the low-probability token is dropped


def test_beam_search_rejects_sampling_only_options(pair) -> None:
    from zoo.generation import generate

    _, ours, _ = pair
    with pytest.raises(ValueError, match="min_prob"):
        generate(ours, PROMPT, max_new_tokens=4, do_sample=False, num_beams=2, min_prob=0.1)

"""Decoding past a model's context (`context_length`, gpt's `block_size`): a sliding window over the
last `context_length` tokens, checked against independent loops that re-run the whole window with
no cache every step (nanoGPT's `generate`), on the zoo network and on `transformers`' GPT-2; and
gpt's default `max_new_tokens`, cut to what the context leaves after the prompt."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from zoo.generation import beam_search, left_pad, processors_for, sample
from zoo.plugins.gpt import GPT, Transformer, load_gpt2_weights
from zoo.tokenizers import CharTokenizer

VOCAB, CONTEXT = 37, 12
PROMPT = torch.tensor([[3, 14, 15, 9, 2]])


def _network(rope: bool, seed: int = 0) -> Transformer:
    """A tiny random network with weights large enough that the greedy choice is never a near-tie."""
    torch.manual_seed(seed)
    net = Transformer(VOCAB, CONTEXT, n_layer=2, n_head=2, n_embd=16, rope=rope).eval()
    for parameter in net.parameters():
        nn.init.normal_(parameter, std=0.3)
    return net


def _nanogpt_greedy(logits_of, ids: torch.Tensor, new: int, context: int) -> torch.Tensor:
    """nanoGPT's loop: crop to the last `context` tokens, run the model on them alone, take the argmax."""
    return _nanogpt_loop(logits_of, ids, new, context, generator=None)


def _nanogpt_loop(logits_of, ids: torch.Tensor, new: int, context: int, generator: torch.Generator | None):
    """nanoGPT's `generate`: each step the model on the last `context` tokens alone (no cache), then the
    argmax, or a draw from the softmax with `generator`."""
    for _ in range(new):
        logits = logits_of(ids[:, -context:])[:, -1].float()
        if generator is None:
            next_id = logits.argmax(-1, keepdim=True)
        else:
            next_id = torch.multinomial(logits.softmax(-1), 1, generator=generator)
        ids = torch.cat([ids, next_id], dim=1)
    return ids


@pytest.mark.parametrize("rope", [False, True], ids=["learned", "rope"])
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no_cache"])
@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampling"])
def test_sliding_window_decoding_equals_nanogpt_loop(rope: bool, use_cache: bool, do_sample: bool) -> None:
    """Greedy decoding of a small random model soon repeats one token; sampling (the same draws from
    one seeded generator) gives varied text, so there the window's every step counts."""
    net = _network(rope)
    new = 3 * CONTEXT  # the window slides 2.5 contexts past the first
    generator = (lambda: torch.Generator().manual_seed(1)) if do_sample else (lambda: None)
    with torch.no_grad():
        expected = _nanogpt_loop(lambda w: net(w), PROMPT, new, CONTEXT, generator())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = sample(
                net, PROMPT, max_new_tokens=new, do_sample=do_sample, use_cache=use_cache,
                context_length=CONTEXT, generator=generator(),
            )  # fmt: skip
    assert got.tolist() == expected.tolist()
    assert not do_sample or len(set(got[0, PROMPT.shape[1] :].tolist())) > 10  # varied text, not one token
    window_notes = [w for w in caught if "sliding window" in str(w.message)]
    assert len(window_notes) == 1 and f"context of {CONTEXT} tokens" in str(window_notes[0].message)


def test_the_window_really_cuts_what_a_rope_model_sees() -> None:
    """Rotary positions have no table to run out of, so without a window decoding goes on over the
    whole text; with one, the draws must change once the text outgrows the context."""
    net = _network(rope=True)
    with torch.no_grad():
        windowed, whole = (
            sample(
                net,
                PROMPT,
                max_new_tokens=3 * CONTEXT,
                context_length=context,
                generator=torch.Generator().manual_seed(1),
            )  # fmt: skip
            for context in (CONTEXT, None)
        )
    inside = CONTEXT - PROMPT.shape[1] + 1  # tokens drawn from at most CONTEXT tokens: identical
    assert windowed[:, : PROMPT.shape[1] + inside].tolist() == whole[:, : PROMPT.shape[1] + inside].tolist()
    assert windowed.tolist() != whole.tolist()


def test_left_padded_batch_past_the_context_equals_each_prompt_alone() -> None:
    net = _network(rope=False)
    prompts = [[3, 14, 15, 9, 2, 6, 5], [26, 8], [8, 9, 10, 11]]
    ids, mask = left_pad(prompts, pad_id=0)
    with torch.no_grad():
        batched = sample(net, ids, mask, max_new_tokens=20, do_sample=False, context_length=CONTEXT)
        for row, prompt in enumerate(prompts):
            alone = _nanogpt_greedy(lambda w: net(w), torch.tensor([prompt]), 20, CONTEXT)[0, len(prompt) :]
            assert batched[row, ids.shape[1] :].tolist() == alone.tolist()


def test_a_prompt_longer_than_the_context_is_read_through_the_window() -> None:
    net = _network(rope=False)
    prompt = torch.arange(1, 2 * CONTEXT + 1)[None] % VOCAB  # two contexts long
    with torch.no_grad():
        expected = _nanogpt_greedy(lambda w: net(w), prompt, 6, CONTEXT)
        got = sample(net, prompt, max_new_tokens=6, do_sample=False, context_length=CONTEXT)
    assert got.tolist() == expected.tolist()


# --- against transformers' GPT-2 ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_pair():
    """(transformers GPT-2 with a 16-position table, the zoo Transformer with its weights)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=32, n_layer=2, n_head=4, initializer_range=0.3
    )
    hf = transformers.GPT2LMHeadModel(config).eval()
    ours = Transformer(VOCAB, 16, n_layer=2, n_head=4, n_embd=32).eval()
    load_gpt2_weights(ours, hf.state_dict())
    return hf, ours


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampling"])
def test_sliding_window_matches_transformers_gpt2_run_on_each_window(gpt2_pair, do_sample: bool) -> None:
    hf, ours = gpt2_pair
    generator = (lambda: torch.Generator().manual_seed(2)) if do_sample else (lambda: None)
    with torch.no_grad():
        expected = _nanogpt_loop(lambda w: hf(w).logits, PROMPT, 40, 16, generator())
        got = sample(
            ours, PROMPT, max_new_tokens=40, do_sample=do_sample, context_length=16, generator=generator()
        )
    assert got.tolist() == expected.tolist()


def _windowed_gpt2(hf, context: int):
    """`transformers`' GPT-2 that sees only the last `context` tokens of whatever it is given, at
    positions 0.. within them, with no cache: generate(use_cache=False) then runs transformers' own
    beam search over a sliding window."""

    class Windowed(type(hf)):
        def forward(self, input_ids=None, attention_mask=None, **kwargs):  # noqa: ANN001, ANN003, ANN202
            ids, mask = input_ids[:, -context:], attention_mask[:, -context:]
            positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
            return super().forward(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
            )

    windowed = Windowed(hf.config).eval()
    windowed.load_state_dict(hf.state_dict())
    return windowed


def test_beam_search_past_the_context_matches_transformers_beam_search_over_a_window(gpt2_pair) -> None:
    hf, ours = gpt2_pair
    windowed = _windowed_gpt2(hf, 16)
    with torch.no_grad():
        # no repeated 3-grams: a small random model would otherwise settle on one token
        expected = windowed.generate(
            PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=30, do_sample=False, num_beams=3,
            num_return_sequences=2, use_cache=False, pad_token_id=0, eos_token_id=None, no_repeat_ngram_size=3,
        )  # fmt: skip
        got = beam_search(
            ours, PROMPT, num_beams=3, max_new_tokens=30, num_return_sequences=2, pad_id=0, context_length=16,
            processors=processors_for(no_repeat_ngram_size=3, sampling=False),
        )  # fmt: skip
    assert expected.shape[1] > 16  # the reference really decoded past its 16 positions
    assert got.tolist() == expected.tolist()


# --- gpt: the default max_new_tokens fits the context ---------------------------------------------------


def _gpt(max_new_tokens: int, rope: bool = False) -> GPT:
    model = GPT(
        vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16, max_new_tokens=max_new_tokens, rope=rope
    )
    model.tokenizer = CharTokenizer.train(["abc def ghi"])
    return model


def test_the_default_max_new_tokens_is_cut_to_the_room_the_prompt_leaves() -> None:
    model = _gpt(max_new_tokens=15)  # the recipe's rule: block_size - 1, room for the start token only
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        texts = model.generate(2, condition=["abc", "abc"], temperature=0)  # 3 characters + the start token
    notes = [str(w.message) for w in caught]
    assert any("max_new_tokens is 12, not the model's default 15" in note for note in notes), notes
    assert not any("now longer than the model's context" in note for note in notes)  # no window needed
    assert all(len(text) <= 3 + 12 for text in texts)  # one character a token


def test_an_explicit_max_new_tokens_past_the_context_slides_the_window() -> None:
    for rope in (False, True):
        model = _gpt(max_new_tokens=15, rope=rope)
        # no end-of-text before 40 tokens, so that the text really outgrows the 16-token context
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            text = model.generate(1, condition=["abc"], max_new_tokens=40, temperature=0, min_new_tokens=40)[
                0
            ]
        assert len(text) == 3 + 40  # one character a token
        assert sum("now longer than the model's context of 16 tokens" in str(w.message) for w in caught) == 1


def test_a_label_is_not_a_prompt() -> None:
    with pytest.raises(ValueError, match=r"conditioned on text: give prompts \(--prompt TEXT\), not labels"):
        _gpt(max_new_tokens=5).generate(1, condition=[3])

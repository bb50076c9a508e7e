"""`zoo.nn.transformer`: the stack gpt, vq_transformer and maskgit share, causal or bidirectional."""

from __future__ import annotations

import pytest
import torch

from zoo.nn.transformer import Transformer


def _pair(seed: int = 0, layers: int = 2) -> tuple[Transformer, Transformer]:
    """The same weights, causal and bidirectional."""
    torch.manual_seed(seed)
    size = {"vocab_size": 20, "block_size": 12, "n_layer": layers, "n_head": 2, "n_embd": 16}
    causal = Transformer(**size).eval()
    bidirectional = Transformer(**size, causal=False).eval()
    bidirectional.load_state_dict(causal.state_dict())
    return causal, bidirectional


def test_a_bidirectional_token_sees_later_tokens_and_a_causal_one_does_not(one_thread):
    causal, bidirectional = _pair()
    ids = torch.randint(0, 20, (2, 10))
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 20  # only the last token differs
    with torch.no_grad():
        # causal: every earlier position is exactly unchanged
        torch.testing.assert_close(causal(ids)[:, :-1], causal(changed)[:, :-1], rtol=0, atol=0)
        # bidirectional: the first position's output moves with the last token
        assert (bidirectional(ids)[:, 0] - bidirectional(changed)[:, 0]).abs().max() > 1e-4
    # in one layer the last position sees every token in both modes: the same function there
    causal, bidirectional = _pair(layers=1)
    with torch.no_grad():
        torch.testing.assert_close(bidirectional(ids)[:, -1], causal(ids)[:, -1], rtol=1e-5, atol=1e-5)


def test_bidirectional_attention_ignores_padded_keys(one_thread):
    """With an attention mask, a padded key changes nothing: the output equals the unpadded sequence's."""
    _, bidirectional = _pair(1)
    ids = torch.randint(0, 20, (1, 6))
    padded = torch.cat([ids, torch.randint(0, 20, (1, 3))], dim=1)
    mask = torch.tensor([[True] * 6 + [False] * 3])
    with torch.no_grad():
        expected = bidirectional(ids)
        got = bidirectional(padded, attention_mask=mask)[:, :6]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_bidirectional_transformer_refuses_a_kv_cache():
    from zoo.generation import KVCache

    _, bidirectional = _pair()
    with pytest.raises(ValueError, match="bidirectional"):
        bidirectional(torch.zeros(1, 3, dtype=torch.long), cache=KVCache(4))

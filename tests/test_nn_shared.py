"""The building blocks several families share (`zoo.nn.embeddings`, `zoo.nn.layers`) against independent
references (diffusers' timestep embedding, transformers' LLaMA rotary embedding, the Transformer paper's
table), and the caption tokenizer's padding and truncation against the ids and mask worked out by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch

from zoo.nn.embeddings import rotary_embedding, sinusoidal_embedding
from zoo.nn.layers import group_norm, masked_mean
from zoo.nn.text import CaptionTokenizer, TextEncoder

# --- embeddings -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [32, 33, 96, 128])
def test_timestep_embedding_equals_diffusers(dim):
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.cat([torch.tensor([0.0, 1.0, 999.0]), torch.rand(20) * 1000])  # fractional too
    theirs = get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert torch.allclose(sinusoidal_embedding(t, dim), theirs, atol=1e-6)


@pytest.mark.parametrize("dim", [64, 192])
def test_interleaved_embedding_is_the_transformer_papers_table(dim):
    # PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)), in float64
    pos = torch.arange(600, dtype=torch.float64)[:, None]
    angle = pos / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(600, dim, dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = angle.sin(), angle.cos()
    ours = sinusoidal_embedding(torch.arange(600), dim, interleaved=True)
    # float32 angles of positions up to 600 carry ~600 * 2^-24 of error
    assert (ours.double() - table).abs().max() < 1e-4
    with pytest.raises(ValueError, match="even width"):
        sinusoidal_embedding(torch.arange(3), 5, interleaved=True)


def test_rotary_embedding_equals_transformers_llama():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    torch.manual_seed(0)
    b, h, t, d = 2, 3, 7, 16
    q, k = torch.randn(b, h, t, d), torch.randn(b, h, t, d)
    positions = torch.stack([torch.arange(t), torch.arange(t) + 40])  # per-sequence offsets (B, T)
    config = LlamaConfig(
        hidden_size=h * d, num_attention_heads=h, rope_theta=10000.0, max_position_embeddings=64
    )
    cos, sin = LlamaRotaryEmbedding(config)(q, positions)
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos, sin)
    assert torch.allclose(rotary_embedding(q, positions[:, None]), q_ref, atol=1e-5)
    assert torch.allclose(rotary_embedding(k, positions[:, None]), k_ref, atol=1e-5)
    # one set of positions for every sequence, as the video U-Net's frame indices
    shared = rotary_embedding(q, torch.arange(t))
    assert torch.allclose(shared, rotary_embedding(q, torch.arange(t).expand(b, t)[:, None]))


def test_rotary_scores_depend_on_the_offset_only_and_keep_the_dtype():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)

    def score(i: int, j: int) -> torch.Tensor:
        return (rotary_embedding(q, torch.tensor([i])) * rotary_embedding(k, torch.tensor([j]))).sum()

    assert torch.allclose(score(3, 1), score(12, 10), atol=1e-5)
    assert not torch.allclose(score(3, 1), score(3, 2), atol=1e-3)
    assert rotary_embedding(q.bfloat16(), torch.tensor([5])).dtype == torch.bfloat16


# --- layers -------------------------------------------------------------------------------------------


def test_group_norm_takes_the_most_groups_of_at_least_four_channels_up_to_32():
    for channels in range(1, 300):
        groups = group_norm(channels).num_groups
        allowed = [g for g in range(1, 33) if channels % g == 0 and (channels // g >= 4 or g == 1)]
        assert groups == max(allowed), channels
    assert group_norm(96).eps == 1e-6 and group_norm(96).num_groups == 24 and group_norm(512).num_groups == 32


def test_masked_mean_averages_only_the_selected_positions():
    torch.manual_seed(0)
    states, mask = torch.randn(4, 9, 5), torch.rand(4, 9) > 0.5
    mask[0] = False  # a row without real tokens pools to zero, not NaN
    pooled = masked_mean(states, mask[..., None], dim=1)
    for row in range(1, 4):
        assert torch.allclose(pooled[row], states[row, mask[row]].mean(0), atol=1e-6)
    assert torch.equal(pooled[0], torch.zeros(5))
    # a (B, 1, T) frame mask over a (B, M, T) error: one mean over every real (band, frame)
    error, frames = torch.rand(3, 6, 10), torch.arange(10) < torch.tensor([[10], [4], [0]])
    expected = torch.cat([error[i, :, frames[i]].flatten() for i in range(3)]).mean()
    assert torch.allclose(masked_mean(error, frames[:, None]), expected, atol=1e-6)


def test_text_encoder_pools_the_mean_of_real_tokens_whatever_the_padding():
    torch.manual_seed(0)
    encoder = TextEncoder(vocab_size=50, width=16, depth=1, heads=2, max_length=10).eval()
    ids = torch.randint(3, 50, (2, 10))
    mask = torch.arange(10) < torch.tensor([[4], [10]])
    with torch.no_grad():
        states, pooled = encoder(ids, mask)
        _, short = encoder(ids[:1, :4], mask[:1, :4])
    assert torch.allclose(pooled[0], states[0, :4].mean(0), atol=1e-6)
    assert torch.allclose(pooled[1], states[1].mean(0), atol=1e-6)
    assert torch.allclose(pooled[0], short[0], atol=1e-5)  # padding changes nothing


# --- the caption tokenizer ------------------------------------------------------------------------------

CAPTIONS = [
    "a red circle",
    "a blue square left of a green triangle",
    "two small yellow stars above a hexagon",
]


@pytest.fixture(scope="module")
def tokenizer() -> CaptionTokenizer:
    return CaptionTokenizer.train(CAPTIONS, vocab_size=300)


def _by_hand(tokenizer: CaptionTokenizer, texts: list[str], max_length: int) -> tuple[list, list]:
    """<bos>, the text's first max_length - 2 BPE tokens, <eos>, then <pad> (0) up to max_length."""
    from tokenizers import Tokenizer

    plain = Tokenizer.from_str(tokenizer.to_str())
    plain.post_processor, plain.encode_special_tokens = None, True
    plain.no_padding()
    plain.no_truncation()
    ids, masks = [], []
    for text in texts:
        tokens = [1, *plain.encode(text).ids[: max_length - 2], 2]
        ids.append(tokens + [0] * (max_length - len(tokens)))
        masks.append([True] * len(tokens) + [False] * (max_length - len(tokens)))
    return ids, masks


TEXTS = [*CAPTIONS, "", "unseen wörds ✓", "a" * 40]


@pytest.mark.parametrize("max_length", [2, 3, 6, 24])
def test_caption_ids_and_mask_are_bos_text_eos_then_padding(tokenizer, max_length):
    ids, mask = tokenizer(TEXTS, max_length)
    expected_ids, expected_mask = _by_hand(tokenizer, TEXTS, max_length)
    assert ids.tolist() == expected_ids and mask.tolist() == expected_mask
    assert ids.shape == (len(TEXTS), max_length) and ids.dtype == torch.long and mask.dtype == torch.bool


def test_a_long_caption_is_cut_and_keeps_its_end_marker(tokenizer):
    ids, mask = tokenizer(["a blue square left of a green triangle"], 5)
    assert ids[0, 0] == 1 and ids[0, -1] == 2 and mask.all()
    with pytest.raises(ValueError, match="no room for <bos> and <eos>"):
        tokenizer(["a"], 1)


def test_markers_spelled_in_a_caption_are_text(tokenizer):
    ids, mask = tokenizer(["a <pad> <eos> circle"], 24)
    real = ids[0, mask[0]].tolist()
    assert real[0] == 1 and real[-1] == 2 and not {0, 1, 2} & set(real[1:-1])
    assert tokenizer.decode(ids[0].tolist()) == "a <pad> <eos> circle"


def test_a_tokenizer_saved_by_an_older_zoo_still_encodes_the_same(tokenizer):
    # older checkpoints hold the tokenizer's JSON without a post-processor, padding or truncation
    saved = json.loads(tokenizer.to_str())
    saved.update(post_processor=None, padding=None, truncation=None)
    old = CaptionTokenizer.from_str(json.dumps(saved))
    ids, mask = old(TEXTS, 8)
    assert (ids.tolist(), mask.tolist()) == _by_hand(tokenizer, TEXTS, 8)


def test_clip_restores_an_older_tokenizer_from_its_checkpoint(tokenizer):
    from zoo.plugins.clip import CLIP

    saved = json.loads(tokenizer.to_str())
    saved.update(post_processor=None, padding=None, truncation=None)
    model = CLIP(vocab_size=300, max_length=12)
    model.on_load_checkpoint({"tokenizer": json.dumps(saved)})
    ids, mask = model.tokenize(TEXTS)
    assert (ids.tolist(), mask.tolist()) == _by_hand(tokenizer, TEXTS, 12)
    assert math.isfinite(float(model.encode_text(TEXTS).sum()))

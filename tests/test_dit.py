"""zoo's DiT (`zoo.nn.dit`) against independent references: diffusers' `DiTTransformer2DModel` with ported
weights, MAE's numpy `get_2d_sincos_pos_embed`, the identity that adaLN-Zero promises at initialisation,
the masking of padded text, and a short measured learning run.

Conventions of diffusers' DiT, and how the comparison deals with them:
- **Timestep scale.** diffusers' DiT takes timesteps on the 0..1000 scale, as zoo's does (DDPM timesteps, or
  flow time × 1000 as SD3); the test feeds fractional ones too.
- **Timestep frequencies.** diffusers' `CombinedTimestepLabelEmbeddings` uses `downscale_freq_shift=1`:
  frequencies 10000^(-i / 127) instead of DiT's 10000^(-i / 128) (`TimestepEmbedder.timestep_embedding`
  in facebookresearch/DiT, which trained the published weights). At t = 999 the highest sinusoids are
  half a radian apart; the tiny model's output moves by about 1.7. zoo follows DiT; the test sets the
  shift to 0 on diffusers' side (the same slip diffusers fixed for PRX in PR #12791).
- **MLP LayerNorm eps.** diffusers' DiT builds the MLP's LayerNorm with `norm_eps` (default 1e-5); DiT
  uses 1e-6 for every LayerNorm. The test builds diffusers' model with `norm_eps=1e-6` (the
  difference is ~1e-5 on the tiny model's output).
- **One embedder per block.** diffusers gives every block its own timestep and label embedder; DiT has
  one, and diffusers' conversion script copies it into each. The test does the same copy.
- **Null label.** Both use label id `num_classes` for "no label"; diffusers drops labels to it at random
  (p = 0.1) in training mode, so its model is compared in eval mode. zoo's network never drops labels
  (the family does).
- **Learned σ.** diffusers' DiT has out_channels = 2 × in_channels (the published model: 4 → 8); zoo's
  `learn_sigma=True` gives the same, and the whole output is compared.
"""

from __future__ import annotations

import inspect
import time

import numpy as np
import pytest
import torch

from zoo.nn.dit import DiT, DiTBlock, diffusers_dit_state_dict, from_diffusers_dit, sincos_2d_positions
from zoo.nn.unet import UNet

TINY = dict(
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=4,
    out_channels=8,
    num_layers=2,
    sample_size=8,
    patch_size=2,
    num_embeds_ada_norm=5,
)


def diffusers_dit(**overrides):
    """A seeded tiny diffusers DiT with every weight moved off its initial value, one embedder shared by
    all blocks (as the DiT conversion does) and DiT's timestep frequencies."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    model = DiTTransformer2DModel(**{**TINY, "norm_eps": 1e-6, **overrides}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        shared = model.transformer_blocks[0].norm1.emb.state_dict()
        for block in model.transformer_blocks:
            block.norm1.emb.load_state_dict(shared)
            block.norm1.emb.time_proj.downscale_freq_shift = 0  # DiT's frequencies (module docstring)
    return model


def inputs(batch: int = 3, channels: int = 4, size: int = 8):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, channels, size, size, generator=g)
    t = torch.tensor([0.0, 437.5, 999.0])[:batch]
    label = torch.tensor([0, 4, 5])[:batch]  # 5 = num_classes: the null label
    return x, t, label


def randomise(net: torch.nn.Module) -> torch.nn.Module:
    """Move every weight off its (partly zero) initial value, as training would."""
    torch.manual_seed(2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net.eval()


# --- against diffusers --------------------------------------------------------------------------------------


def test_matches_diffusers_dit_with_ported_weights():
    theirs = diffusers_dit()
    ours = from_diffusers_dit(theirs).eval()
    assert ours.learn_sigma and ours.out_channels == 8 and ours.num_classes == 5
    assert sum(p.numel() for p in ours.parameters()) < sum(p.numel() for p in theirs.parameters())
    x, t, label = inputs()
    with torch.no_grad():
        expected = theirs(x, t, label).sample
        got = ours(x, t, label)
    assert got.shape == expected.shape == (3, 8, 8, 8)
    assert (got - expected).abs().max() <= 1e-5
    assert expected.abs().max() > 1  # a real signal, not two near-zero outputs


def test_loads_a_diffusers_dit_folder(tmp_path):
    theirs = diffusers_dit()
    theirs.save_pretrained(tmp_path / "pipeline" / "transformer")  # DiTPipeline's layout
    theirs.save_pretrained(tmp_path / "model")
    x, t, label = inputs()
    with torch.no_grad():
        expected = theirs(x, t, label).sample
        for folder in (tmp_path / "pipeline", tmp_path / "model"):
            assert (from_diffusers_dit(folder).eval()(x, t, label) - expected).abs().max() <= 1e-5


def test_port_refuses_blocks_with_their_own_embedders():
    theirs = diffusers_dit()
    with torch.no_grad():
        theirs.transformer_blocks[1].norm1.emb.timestep_embedder.linear_1.bias.add_(1.0)
    with pytest.raises(ValueError, match="block 1's timestep embedder"):
        diffusers_dit_state_dict(theirs.state_dict(), depth=2)


# --- adaLN-Zero at initialisation -----------------------------------------------------------------------


def test_adaln_zero_block_is_exactly_the_identity_at_init():
    torch.manual_seed(0)
    net = DiT(image_size=8, in_channels=4, hidden_size=32, depth=3, num_heads=2, context_dim=12)
    tokens = torch.randn(2, 16, 32)
    c = torch.randn(2, 32)
    context, mask = torch.randn(2, 5, 12), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    for block in net.blocks:
        assert torch.equal(block(tokens, c, context, mask), tokens)
    # a lone block too, before any network initialises it: the block's own zero regression suffices
    block = DiTBlock(32, 2)
    torch.nn.init.zeros_(block.adaLN_modulation[-1].weight)
    torch.nn.init.zeros_(block.adaLN_modulation[-1].bias)
    assert torch.equal(block(tokens, c), tokens)


@pytest.mark.parametrize(
    "options",
    [dict(num_classes=5, learn_sigma=True), dict(context_dim=12, pooled_dim=7), dict()],
    ids=["class", "text", "unconditional"],
)
def test_network_outputs_exactly_zero_at_init(options):
    torch.manual_seed(0)
    net = DiT(image_size=8, in_channels=4, hidden_size=32, depth=2, num_heads=2, **options)
    x, t, label = inputs()
    kwargs = {}
    if "num_classes" in options:
        kwargs["label"] = label
    if "context_dim" in options:
        kwargs.update(context=torch.randn(3, 5, 12), pooled=torch.randn(3, 7))
    out = net(x, t, **kwargs)
    assert out.shape == (3, 8 if options.get("learn_sigma") else 4, 8, 8)
    assert torch.equal(out, torch.zeros_like(out))
    # zero output, yet every parameter that must move first gets a gradient: the output linear's
    out.sum().backward()
    assert net.final_layer.linear.weight.grad.abs().sum() > 0


# --- positions ------------------------------------------------------------------------------------------


def mae_get_2d_sincos_pos_embed(embed_dim, grid_size):
    """MAE's reference (facebookresearch/mae, util/pos_embed.py), numpy, float64, as published."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)  # here w goes first
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])
    emb_h = mae_1d(embed_dim // 2, grid[0])  # (H*W, D/2)
    emb_w = mae_1d(embed_dim // 2, grid[1])  # (H*W, D/2)
    return np.concatenate([emb_h, emb_w], axis=1)


def mae_1d(embed_dim, pos):
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000**omega  # (D/2,)
    out = np.einsum("m,d->md", pos.reshape(-1), omega)  # (M, D/2), outer product
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


@pytest.mark.parametrize("dim, grid", [(32, 4), (384, 16), (64, 1)])
def test_2d_sincos_positions_equal_mae(dim, grid):
    expected = torch.from_numpy(mae_get_2d_sincos_pos_embed(dim, grid))
    # float32 angles of positions up to 15 carry ~15 * 2^-24 of error
    assert (sincos_2d_positions(dim, grid, grid).double() - expected).abs().max() < 1e-5
    net = DiT(image_size=2 * grid, patch_size=2, hidden_size=dim, depth=1, num_heads=4)
    assert (net.pos_embed.double() - expected).abs().max() < 1e-5


def test_rectangular_grids_take_the_same_position_per_row_and_column():
    square = sincos_2d_positions(32, 6, 6).reshape(6, 6, 32)
    assert torch.equal(sincos_2d_positions(32, 3, 5).reshape(3, 5, 32), square[:3, :5])
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_positions(30, 2, 2)


def test_runs_at_another_resolution_than_it_was_built_for():
    net = randomise(DiT(image_size=8, in_channels=1, hidden_size=32, depth=1, num_heads=2))
    with torch.no_grad():
        assert net(torch.randn(2, 1, 12, 16), torch.tensor(10.0)).shape == (2, 1, 12, 16)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        net(torch.randn(2, 1, 9, 8), torch.tensor(10.0))


# --- text conditioning ----------------------------------------------------------------------------------


def text_dit():
    return randomise(
        DiT(image_size=8, in_channels=4, hidden_size=32, depth=2, num_heads=2, context_dim=12, pooled_dim=7)
    )


def test_masked_context_tokens_do_not_change_the_output():
    net = text_dit()
    x, t, _ = inputs()
    g = torch.Generator().manual_seed(3)
    context, pooled = torch.randn(3, 6, 12, generator=g), torch.randn(3, 7, generator=g)
    lengths = torch.tensor([2, 4, 6])
    mask = torch.arange(6)[None] < lengths[:, None]
    with torch.no_grad():
        reference = net(x, t, context=context, context_mask=mask, pooled=pooled)
        garbage = torch.where(mask[..., None], context, 1e3 * torch.randn(3, 6, 12, generator=g))
        assert torch.allclose(
            net(x, t, context=garbage, context_mask=mask, pooled=pooled), reference, atol=1e-6
        )
        # padding is the same as no padding: the rows of length 2 alone, without the 4 padded tokens
        alone = net(x[:1], t[:1], context=context[:1, :2], pooled=pooled[:1])
        assert torch.allclose(alone, reference[:1], atol=1e-5)
        # and a real token does matter
        changed = context.clone()
        changed[0, 1] += 1.0
        assert (
            net(x, t, context=changed, context_mask=mask, pooled=pooled)[0] - reference[0]
        ).abs().max() > 1e-3


def test_pooled_vector_acts_only_through_the_conditioning_vector(monkeypatch):
    net = text_dit()
    x, t, _ = inputs()
    g = torch.Generator().manual_seed(4)
    context = torch.randn(3, 5, 12, generator=g)
    pooled_a, pooled_b = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)
    with torch.no_grad():
        out_a = net(x, t, context=context, pooled=pooled_a)
        out_b = net(x, t, context=context, pooled=pooled_b)
        assert (out_a - out_b).abs().max() > 1e-3  # it does change the output
        # ... but with the conditioning vector held at pooled_a's, pooled_b changes nothing
        c_a = net.embed(t, None, pooled_a)
        monkeypatch.setattr(net, "embed", lambda *args, **kwargs: c_a)
        assert torch.equal(net(x, t, context=context, pooled=pooled_b), out_a)


def test_missing_text_inputs_are_named():
    net = text_dit()
    x, t, _ = inputs()
    with pytest.raises(ValueError, match="pass pooled"):
        net(x, t, context=torch.randn(3, 5, 12))
    with pytest.raises(ValueError, match="pass context"):
        net(x, t, pooled=torch.randn(3, 7))


# --- the U-Net's call signature, labels, gradient checkpointing -------------------------------------------


def test_call_signature_is_the_unets():
    ours, theirs = inspect.signature(DiT.forward), inspect.signature(UNet.forward)
    assert list(ours.parameters) == list(theirs.parameters)
    assert all(ours.parameters[n].default == theirs.parameters[n].default for n in ours.parameters)


def test_no_label_is_the_null_label_and_scalar_t_broadcasts():
    net = randomise(DiT(image_size=8, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=5))
    x, _, _ = inputs()
    with torch.no_grad():
        null = net(x, torch.full((3,), 250.0), torch.full((3,), 5))
        assert torch.equal(net(x, torch.tensor(250.0)), null)


def test_gradient_checkpointing_gives_the_same_values_and_gradients():
    net = text_dit().train()
    x, t, _ = inputs()
    context, pooled = torch.randn(3, 5, 12), torch.randn(3, 7)

    def run(checkpointing: bool):
        net.zero_grad()
        net.gradient_checkpointing = checkpointing
        out = net(x, t, context=context, pooled=pooled)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in net.parameters()]

    (out_plain, grads_plain), (out_ckpt, grads_ckpt) = run(False), run(True)
    assert torch.allclose(out_plain, out_ckpt, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_plain, grads_ckpt, strict=True))


# --- learning -------------------------------------------------------------------------------------------


def test_tiny_dit_learns_to_regress_a_fixed_target():
    torch.manual_seed(0)
    net = DiT(image_size=8, in_channels=2, hidden_size=64, depth=2, num_heads=4, num_classes=4)
    x, t = torch.randn(8, 2, 8, 8), torch.rand(8) * 1000
    label = torch.arange(8) % 4
    target = torch.randn(8, 2, 8, 8)
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.0)
    start = time.perf_counter()
    losses = []
    for _ in range(200):
        loss = (net(x, t, label) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(target.square().mean().item())  # zero output at init
    assert min(losses[-10:]) < losses[0] / 10, (losses[0], losses[-10:])
    assert time.perf_counter() - start < 60

"""Attend-and-Excite (`zoo.diffusion.attend_excite`, `ldm.generate(attend_excite=...)`, `--attend-excite`):
the captured cross-attention, the fast path left alone, the loss going down, subject words to tokens, and the
command line on a tiny untrained checkpoint."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import zoo
from zoo.diffusion import attend_excite as ae
from zoo.nn.text import CaptionTokenizer
from zoo.nn.unet import CrossAttention
from zoo.plugins.ldm import LDM
from zoo.sample import _check_options
from zoo.sample import main as sample

PROMPT = "a red circle left of a blue square"
CAPTIONS = [PROMPT, "a blue square above a red circle", "a green triangle", "a red circle"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # conftest.one_thread, for every test here
    yield


@pytest.fixture(scope="module")
def tiny_ldm() -> LDM:
    """An untrained ldm on 16 px images (4x4 latents: cross-attention at 4x4 and 2x2) whose cross-attention is
    far from uniform: q and kv drawn wide, so that the maps, and the loss, depend on the latent."""
    torch.manual_seed(0)
    model = LDM(
        image_size=16, vocab_size=300, text_width=32, text_depth=1, base_channels=16, num_res_blocks=1,
        num_heads=2, num_train_timesteps=100, sampling_steps=6,
        first_stage_config={"in_channels": 3, "image_size": 16, "latent_channels": 4, "downsample_factor": 4, "base_channels": 8},
    )  # fmt: skip
    model.tokenizer = CaptionTokenizer.train(CAPTIONS, 300)
    for p in model.unet.parameters():
        torch.nn.init.normal_(p, std=0.05)  # the zero-initialised output layers would make every output 0
    for layer in model.unet.modules():
        if isinstance(layer, CrossAttention):
            torch.nn.init.normal_(layer.q.weight, std=0.5)
            torch.nn.init.normal_(layer.kv.weight, std=0.5)
    return model.eval()


def _inputs(model: LDM, n: int = 2) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    text = model.encode_text([PROMPT] * n)
    x = torch.randn(n, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    return text, x, torch.full((n,), 70.0)


@torch.no_grad()
def test_captured_probabilities_sum_to_one_and_match_the_layer_weights(tiny_ldm):
    text, x, t = _inputs(tiny_ldm)
    seen: list[tuple[CrossAttention, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    layers = [m for m in tiny_ldm.unet.modules() if isinstance(m, CrossAttention)]
    hooks = [
        layer.register_forward_pre_hook(lambda mod, args: seen.append((mod, *args[:3]))) for layer in layers
    ]
    try:
        with ae.captured_attention(tiny_ldm.unet) as probabilities:
            tiny_ldm._unet(x, t, text)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(probabilities) == len(layers) == len(seen)
    assert all(layer.attention_probabilities is None for layer in layers)  # the fast path is back
    mask = text["mask"]
    for (layer, h, context, _), p in zip(seen, probabilities, strict=True):
        assert p.shape == (2, layer.num_heads, *h.shape[-2:], mask.shape[1])
        torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))
        assert (p[..., ~mask[0]] == 0).all()  # padding gets nothing
        # by hand from the layer's weights: softmax(q k^T / sqrt(d)) over the real tokens
        q = layer.q(rearrange(layer.norm(h), "b c y x -> b (y x) c"))
        k = layer.kv(context)[..., : q.shape[-1]]
        q, k = (rearrange(a, "b n (h d) -> b h n d", h=layer.num_heads) for a in (q, k))
        logits = torch.einsum("bhnd,bhld->bhnl", q, k) / q.shape[-1] ** 0.5
        expected = logits.masked_fill(~mask[:, None, None], float("-inf")).softmax(-1)
        torch.testing.assert_close(rearrange(p, "b h y x l -> b h (y x) l"), expected)


def _forward_before_the_hook(self, x, context, mask, image_context=None, image_scale=1.0):
    """CrossAttention.forward as it was before the capture hook (the commit before this test's)."""
    height = x.shape[-2]
    q = rearrange(
        self.q(rearrange(self.norm(x), "b c y x -> b (y x) c")), "b n (h d) -> b h n d", h=self.num_heads
    )
    attended = self._attend(q, self.kv(context), mask)
    return x + rearrange(self.out(attended), "b (y x) c -> b c y x", y=height)


@torch.no_grad()
def test_outputs_are_bit_identical_with_the_option_off(tiny_ldm, monkeypatch):
    text, x, t = _inputs(tiny_ldm)
    out = tiny_ldm._unet(x, t, text)
    with ae.captured_attention(tiny_ldm.unet):
        captured = tiny_ldm._unet(x, t, text)
    torch.testing.assert_close(captured, out)  # the explicit path computes the same, up to rounding
    assert torch.equal(tiny_ldm._unet(x, t, text), out)  # and leaves nothing behind

    def draw(**kw) -> torch.Tensor:
        return tiny_ldm.generate(2, condition=PROMPT, generator=torch.Generator().manual_seed(0), **kw)

    plain = draw()
    assert torch.equal(draw(attend_excite=None), plain) and torch.equal(draw(attend_excite=False), plain)
    excited = draw(attend_excite=True)
    assert not torch.equal(excited, plain)
    assert torch.equal(draw(attend_excite=True, attend_excite_scale=0.0), plain)  # no step: the guided output
    assert torch.equal(draw(), plain)  # nothing left behind by an excited run
    monkeypatch.setattr(CrossAttention, "forward", _forward_before_the_hook)
    assert torch.equal(draw(), plain)


def test_the_update_steps_lower_the_loss(tiny_ldm):
    text, x, t = _inputs(tiny_ldm)
    ids, mask = tiny_ldm.tokenizer([PROMPT] * 2, tiny_ldm.hparams.max_length)
    tokens = ae.text_tokens(tiny_ldm.tokenizer, ids, mask)
    subjects = ae.subject_tokens(tiny_ldm.tokenizer, [PROMPT] * 2, ids, [["circle", "square"]] * 2)

    def loss(z: torch.Tensor) -> torch.Tensor:
        return ae.latent_loss(
            lambda x_, t_: tiny_ldm._unet(x_, t_, text), tiny_ldm.unet, z, t, tokens, subjects
        )

    with torch.no_grad():  # as generate() runs it
        before = loss(x)
        after = loss(ae.excite(loss, x, ae.SCALE, iterations=ae.MAX_REFINEMENT))
    assert ((0 < before) & (before < 1)).all()
    assert (after < before - 0.01).all(), (before, after)
    # the loss is the paper's: max over the subjects of 1 - the peak of the (smoothed) re-softmaxed map
    maps = torch.zeros(1, 2, 2, 4)
    maps[0, 0, 0, 1] = maps[0, 1, 1, 2] = 0.5  # token 1 wins a cell, token 2 another; token 3 nowhere
    real = torch.tensor([[False, True, True, True]])  # token 0: the start marker
    one_and_two, three = (
        torch.tensor([[False, True, True, False]]),
        torch.tensor([[False, False, False, True]]),
    )
    torch.testing.assert_close(ae.excite_loss(maps, real, one_and_two, sigma=1e-3), torch.tensor([0.0]))
    peak_3 = F.softmax(torch.tensor([0.0, 0.0, 0.0]), 0)[0]  # token 3's best cell: a three-way tie
    torch.testing.assert_close(ae.excite_loss(maps, real, three | one_and_two, sigma=1e-3), 1 - peak_3[None])


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample", "flow"])
def test_the_output_returned_at_x_implies_the_clean_sample_predicted_at_the_updated_latent(prediction):
    from zoo.diffusion import NoiseSchedule, predict_x0

    schedule = NoiseSchedule.make("cosine", 100)
    flow = prediction == "flow"
    hparams = {"objective": "flow" if flow else "diffusion", "prediction": "epsilon" if flow else prediction}
    t = 300.0 if flow else 70.0  # flow time 0.3 on the network's 0..1000 scale; a DDPM timestep
    level = ae.objective_levels(hparams, schedule)(t)
    x, z, out = torch.randn(3, 2, 4, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    returned = out + level.recentre * (x - z)
    if flow:  # x_t = (1 - t) noise + t data, v = data - noise
        torch.testing.assert_close(x + (1 - 0.3) * returned, z + (1 - 0.3) * out)
        assert (level.progress, level.a, level.s) == pytest.approx((0.3, 0.3, 0.7))
    else:
        ab = float(schedule.alphas_cumprod[70])
        torch.testing.assert_close(
            predict_x0(returned, x, ab, prediction), predict_x0(out, z, ab, prediction)
        )
        assert level.progress == pytest.approx(1 - 70 / 99)


def test_subject_words_map_to_their_tokens_and_absent_words_are_named(tiny_ldm):
    tokenizer = tiny_ldm.tokenizer
    ids, _ = tokenizer([PROMPT, "a blue square above a red circle"], 24)
    found = ae.subject_tokens(
        tokenizer, [PROMPT, "a blue square above a red circle"], ids, [["circle", "square"]] * 2
    )
    pieces = [[tokenizer.tokenizer.id_to_token(i) for i in row] for row in ids[:, :10].tolist()]
    assert [[pieces[r][j] for j in found[r].nonzero()[:, 0].tolist()] for r in range(2)] == [
        ["Ġcircle", "Ġsquare"],
        ["Ġsquare", "Ġcircle"],
    ]
    assert ae.subject_words(PROMPT) == ["circle", "square"]
    with pytest.raises(ValueError, match="'hexagon' is not in the prompt"):
        ae.subject_tokens(tokenizer, [PROMPT], ids[:1], [["hexagon"]])
    with pytest.raises(ValueError, match="'blu' is not in the prompt"):
        ae.subject_tokens(tokenizer, [PROMPT], ids[:1], [["blu"]])
    ids_x, _ = tokenizer(["a red xylophone"], 24)
    with pytest.raises(ValueError, match="'xylophone' is not one token"):
        ae.subject_tokens(tokenizer, ["a red xylophone"], ids_x, [["xylophone"]])
    with pytest.raises(ValueError, match="name the subject words"):
        tiny_ldm.generate(1, condition="a cat and a frog", attend_excite=True)
    with pytest.raises(ValueError, match="'frog' is not in the prompt"):
        tiny_ldm.generate(1, condition=PROMPT, attend_excite=["circle", "frog"])
    with pytest.raises(ValueError, match="needs prompts"):
        tiny_ldm.generate(1, attend_excite=True)


def test_sample_command_with_attend_excite(tiny_ldm, tmp_path: Path):
    ckpt = tmp_path / "ldm.ckpt"
    tiny_ldm.first_stage_ready.fill_(True)
    trainer = L.Trainer(max_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(tiny_ldm)
    trainer.save_checkpoint(ckpt)
    common = ["--ckpt", str(ckpt), "--num", "2", "--prompt", PROMPT, "--steps", "4"]
    plain, excited = tmp_path / "plain", tmp_path / "excited"
    sample([*common, "--out", str(plain)])
    sample([*common, "--out", str(excited), "--attend-excite", "--attend-excite-scale", "20"])
    assert len(list(excited.glob("*.png"))) == 3  # two samples and the grid
    assert (excited / "000000.png").read_bytes() != (plain / "000000.png").read_bytes()
    with pytest.raises(
        SystemExit, match="'frog' is not in the prompt"
    ):  # circle is; the words split at commas
        sample([*common, "--out", str(tmp_path / "x"), "--attend-excite", "circle, frog"])
    with pytest.raises(SystemExit, match="does not take --attend-excite"):  # a family without the option
        _check_options(zoo.create_model("vae", image_size=16, base_channels=8), {"attend_excite": True})

"""`maskgit`: the cosine mask schedule of training, the mask-length rule of decoding (against their closed
forms and a transcription of the official code), known codes never masked again, guidance, and learning
through the command line (a tiny vqgan tokenizer, then the maskgit; `zoo.sample --prompt`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.image_tokens import guided_logits
from zoo.plugins.maskgit import lowest_confidence, masked_after_step, parallel_decode, training_mask

# --- training: the mask schedule ----------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 7, 64, 256])
def test_training_masks_ceil_gamma_r_n_codes(length, one_thread):
    """Each row masks ceil(cos(pi r / 2) * N) codes (at least one), r the row's U(0, 1) draw."""
    generator = torch.Generator().manual_seed(length)
    mask = training_mask(500, length, generator=generator)
    r = torch.rand(500, generator=torch.Generator().manual_seed(length)).tolist()  # the same first draws
    expected = [max(1, math.ceil(math.cos(math.pi * x / 2) * length)) for x in r]
    assert mask.sum(dim=1).tolist() == expected


def test_training_masks_are_as_large_as_the_schedule_says_on_average(one_thread):
    """E[gamma(r)] = integral of cos(pi r / 2) over [0, 1] = 2 / pi; ceil adds about half a code; positions are
    uniform (every position masked equally often)."""
    length = 64
    mask = training_mask(20000, length, generator=torch.Generator().manual_seed(0))
    fraction = mask.float().mean().item()
    assert fraction == pytest.approx(2 / math.pi + 0.5 / length, abs=0.01)
    per_position = mask.float().mean(dim=0)
    assert (per_position - fraction).abs().max() < 0.03


# --- decoding: the mask-length rule ----------------------------------------------------------------------


def _official_mask_len(step: int, num_iter: int, unknown_at_start: int, unknown_now: int) -> int:
    """google-research/maskgit parallel_decode.py, transcribed in numpy: the cosine schedule at ratio
    (step + 1) / num_iter, mask_len = floor(N * ratio) clipped to [1, unknown - 1] (maximum of 1 last)."""
    ratio = 1.0 * (step + 1) / num_iter
    mask_ratio = np.cos(math.pi / 2.0 * ratio)
    mask_len = np.floor(unknown_at_start * mask_ratio)
    return int(np.maximum(1, np.minimum(unknown_now - 1, mask_len)))


@pytest.mark.parametrize("total", [1, 5, 16, 64, 256])
@pytest.mark.parametrize("steps", [1, 2, 4, 8, 12, 20])
def test_the_mask_length_rule_is_the_official_one(total, steps):
    unknown = total
    for step in range(steps):
        got = int(masked_after_step(step, steps, torch.tensor([total]), torch.tensor([unknown]))[0])
        if step == steps - 1:
            assert got == 0  # the official code writes out the sampled codes of its last step
        else:
            closed_form = max(
                1, min(unknown - 1, math.floor(total * math.cos(math.pi / 2 * (step + 1) / steps)))
            )
            assert got == closed_form == _official_mask_len(step, steps, total, unknown)
        unknown = got


def test_lowest_confidence_picks_the_count_lowest_per_row():
    confidence = torch.tensor([[0.3, -1.0, 2.0, float("inf")], [5.0, 4.0, 3.0, 2.0]])
    chosen = lowest_confidence(confidence, torch.tensor([2, 1]))
    assert chosen.tolist() == [[True, True, False, False], [False, False, False, True]]


def _random_logits(codebook: int, seed: int):  # noqa: ANN202
    """A fixed 'network': code logits that depend on the codes seen, so every step differs."""
    table = torch.randn(codebook + 1, codebook, generator=torch.Generator().manual_seed(seed))
    return lambda codes: table[codes] + table[codes.roll(1, dims=1)]


@pytest.mark.parametrize("steps", [1, 3, 8, 12])
def test_decoding_follows_the_schedule_and_never_masks_a_known_code(steps, one_thread):
    codebook, n, mask_id = 10, 64, 10
    seen = []

    def on_step(step: int, before: torch.Tensor, after: torch.Tensor, masked: torch.Tensor) -> None:
        known = before != mask_id
        assert torch.equal(after[known], before[known])  # known codes stay, unmasked and unchanged
        assert torch.equal(masked, after == mask_id)
        seen.append((after == mask_id).sum(dim=1).tolist())

    start = torch.full((3, n), mask_id)
    out = parallel_decode(_random_logits(codebook, 0), start, mask_id, steps, generator=torch.Generator().manual_seed(1),
                          on_step=on_step)  # fmt: skip
    assert not (out == mask_id).any() and out.max() < codebook
    unknown, expected = n, []
    for step in range(steps):
        unknown = (
            0
            if step == steps - 1
            else max(1, min(unknown - 1, math.floor(n * math.cos(math.pi / 2 * (step + 1) / steps))))
        )
        expected.append([unknown] * 3)
    assert seen == expected


def test_without_noise_the_least_probable_choices_are_masked_again(one_thread):
    """choice_temperature 0 and greedy codes: the codes masked after the first step are exactly those whose
    most probable code has the lowest probability (computed here from the logits)."""
    codebook, n, mask_id = 10, 16, 10
    logits_of = _random_logits(codebook, 2)
    start = torch.full((1, n), mask_id)
    first = {}

    def on_step(step, before, after, masked):  # noqa: ANN001, ANN202
        first.setdefault(step, masked.clone())

    parallel_decode(logits_of, start, mask_id, 4, temperature=0, choice_temperature=0.0, on_step=on_step)
    top = logits_of(start).log_softmax(-1).max(-1).values[0]
    count = math.floor(n * math.cos(math.pi / 2 * 1 / 4))
    expected = torch.zeros(n, dtype=torch.bool)
    expected[top.argsort()[:count]] = True
    assert torch.equal(first[0][0], expected)


def test_guided_logits_are_the_cfg_formula():
    cond, uncond = torch.randn(4, 7), torch.randn(4, 7)
    for g in (0.0, 1.0, 2.5, 7.0):
        torch.testing.assert_close(guided_logits(cond, uncond, g), uncond + g * (cond - uncond))
    assert guided_logits(cond, uncond, 1.0) is cond  # guidance 1: the conditional pass itself


# --- the family through the command line ---------------------------------------------------------------

TINY_TOKENIZER = (
    '{"in_channels": 3, "image_size": 16, "downsample_factor": 4, "base_channels": 8, "latent_channels": 8, '
    '"codebook_size": 32, "perceptual_weight": 0.0, "adversarial_weight": 0.0}'
)
# A tiny maskgit through the real command line: its vqgan tokenizer trains first, then the transformer.
TINY_MASKGIT = [
    "--model", "maskgit",
    "--data.image_size", "16",
    "--data.max_objects", "1",
    "--data.num_train", "64",
    "--data.num_val", "16",
    "--data.num_test", "16",
    "--data.batch_size", "16",
    "--model.tokenizer_steps", "12",
    "--model.tokenizer_config", TINY_TOKENIZER,
    "--model.n_layer", "1",
    "--model.n_head", "2",
    "--model.n_embd", "32",
    "--model.vocab_size", "300",
    "--model.max_length", "12",
    "--model.lr", "0.003",
    "--model.warmup_steps", "5",
    "--model.sampling_steps", "4",
    "--trainer.max_steps", "40",
    "--trainer.limit_val_batches", "1",
    "--trainer.val_check_interval", "null",
    "--trainer.check_val_every_n_epoch", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--samples.num_samples", "4",
    "--logger", "none",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import run_fit

    root = tmp_path_factory.mktemp("tiny_maskgit")
    torch.set_num_threads(1)
    run_fit(*TINY_MASKGIT, "--trainer.default_root_dir", str(root))
    return root


def _loss_on(model, batch) -> float:  # noqa: ANN001
    model.eval()
    with torch.no_grad():
        return float(model._loss(batch, torch.Generator().manual_seed(0)))


def test_the_command_trains_its_tokenizer_first_and_the_maskgit_learns(tiny_run):
    from zoo.checkpoint import load_model
    from zoo.datamodules.shapes import ShapesDataModule
    from zoo.nn.transformer import Transformer

    assert (tiny_run / "first_stage" / "first_stage.ckpt").is_file()  # the vqgan, in the run folder
    model = load_model(
        tiny_run / "checkpoints" / "last.ckpt"
    )  # self-contained: tokenizer and captions inside
    assert bool(model.first_stage_ready) and model.first_stage.hparams.codebook_size == 32
    assert model.code_grid == (4, 4) and model.tokenizer is not None
    data = ShapesDataModule(
        image_size=16, max_objects=1, num_train=64, num_val=16, num_test=16, batch_size=16
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    trained = _loss_on(model, batch)
    hp = model.hparams
    model.network = Transformer(model.network.wte.num_embeddings, model.network.block_size, hp.n_layer, hp.n_head,
                                hp.n_embd, causal=False)  # fmt: skip
    untrained = _loss_on(model, batch)
    assert untrained == pytest.approx(math.log(32), rel=0.1)  # uniform over the codebook at initialisation
    assert trained < 0.8 * untrained


def test_sample_with_a_prompt_writes_images_and_counts_its_steps(tiny_run, tmp_path):
    from zoo.checkpoint import load_model
    from zoo.sample import main as sample

    out = tmp_path / "samples"
    sample(["--ckpt", str(tiny_run / "checkpoints" / "last.ckpt"), "--num", "2", "--out", str(out),
            "--prompt", "a red circle", "--steps", "3", "--guidance", "2", "--top-k", "8"])  # fmt: skip
    assert len(list(out.glob("00000*.png"))) == 2
    model = load_model(tiny_run / "checkpoints" / "last.ckpt")
    steps = []
    images = model.generate(3, condition=["a red circle"] * 3, steps=5, on_step=lambda s, *_: steps.append(s))
    assert steps == [0, 1, 2, 3, 4] and images.shape == (3, 3, 16, 16)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0


def test_a_wrong_tokenizer_is_named_in_one_line(tiny_run):
    from zoo.checkpoint import CheckpointError
    from zoo.plugins.maskgit import MaskGIT

    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    with pytest.raises(
        CheckpointError, match="`maskgit` family; --model.tokenizer needs one of the `vqgan` family"
    ):
        MaskGIT(tokenizer=str(ckpt), image_size=16)
    with pytest.raises(
        ValueError, match="is for 3-channel 16px images, but this maskgit is for 3-channel 32px"
    ):
        MaskGIT(tokenizer=str(tiny_run / "first_stage" / "first_stage.ckpt"), image_size=32)

"""`vq_transformer`: decoding image codes with the KV cache equals decoding without it, classifier-free guidance
mixes the conditional and unconditional logits by its formula, and learning through the command line (a tiny
vqgan tokenizer, then the transformer; `zoo.sample --prompt`)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from zoo.generation import sample
from zoo.nn.transformer import Transformer
from zoo.plugins.vq_transformer import CodeDecoder

TEXT, OFFSET, CODEBOOK, CODES = 5, 11, 9, 12  # text block, text vocabulary, codebook, codes per image


def _network(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(OFFSET + CODEBOOK, TEXT + CODES, n_layer=2, n_head=2, n_embd=16).eval()


def _texts(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    text = torch.randint(3, OFFSET, (rows, TEXT), generator=torch.Generator().manual_seed(rows))
    empty = torch.tensor([[1, 2] + [0] * (TEXT - 2)]).expand(rows, -1)  # <bos> <eos> <pad> ...
    return text, empty


def _decode(network, text, empty, guidance, use_cache):  # noqa: ANN001, ANN202
    """Greedy decoding of the codes; returns them and the code logits of every step."""
    steps = []

    def record(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        steps.append(scores.clone())
        return scores

    model = CodeDecoder(network, TEXT, OFFSET, CODEBOOK, empty, guidance)
    with torch.no_grad():
        out = sample(
            model, text, max_new_tokens=CODES, processors=[record], do_sample=False, use_cache=use_cache
        )
    return out[:, TEXT:], torch.stack(steps)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_decoding_with_the_kv_cache_equals_decoding_without(guidance, one_thread):
    network = _network()
    text, empty = _texts(3)
    cached, cached_logits = _decode(network, text, empty, guidance, use_cache=True)
    plain, plain_logits = _decode(network, text, empty, guidance, use_cache=False)
    assert torch.equal(cached, plain)
    torch.testing.assert_close(cached_logits, plain_logits, rtol=1e-5, atol=1e-5)
    assert cached.min() >= 0 and cached.max() < CODEBOOK  # codes, not joint-vocabulary ids


def test_guided_code_logits_are_uncond_plus_g_times_cond_minus_uncond(one_thread):
    """The mix against two separate network calls, one with the caption and one with the empty caption."""
    network = _network(1)
    text, empty = _texts(2)
    codes = torch.randint(0, CODEBOOK, (2, 4))
    with torch.no_grad():
        cond = network(torch.cat([text, codes + OFFSET], 1))[..., OFFSET:]
        uncond = network(torch.cat([empty, codes + OFFSET], 1))[..., OFFSET:]
        for g in (0.0, 1.0, 4.0):
            got = CodeDecoder(network, TEXT, OFFSET, CODEBOOK, empty, g)(torch.cat([text, codes], 1))
            torch.testing.assert_close(got, uncond + g * (cond - uncond), rtol=1e-5, atol=1e-5)
        # guidance 1 is the conditional pass alone
        alone = CodeDecoder(network, TEXT, OFFSET, CODEBOOK, empty, 1.0)(torch.cat([text, codes], 1))
        torch.testing.assert_close(alone, cond, rtol=0, atol=0)


# --- the family through the command line ---------------------------------------------------------------

TINY_DATA = [
    "--data.image_size", "16",
    "--data.max_objects", "1",
    "--data.num_train", "64",
    "--data.num_val", "16",
    "--data.num_test", "16",
    "--data.batch_size", "16",
    "--trainer.limit_val_batches", "1",
    "--trainer.val_check_interval", "null",
    "--trainer.check_val_every_n_epoch", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--samples.num_samples", "4",
    "--logger", "none",
]  # fmt: skip
TINY_VQGAN = ["--model", "vqgan", "--model.base_channels", "8", "--model.latent_channels", "8",
              "--model.codebook_size", "32", "--model.perceptual_weight", "0", "--model.adversarial_weight", "0",
              "--trainer.max_steps", "12"]  # fmt: skip
TINY_VQ_TRANSFORMER = ["--model", "vq_transformer", "--model.n_layer", "1", "--model.n_head", "2",
                       "--model.n_embd", "32", "--model.vocab_size", "300", "--model.max_length", "12",
                       "--model.lr", "0.003", "--model.warmup_steps", "5", "--trainer.max_steps", "40"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny vqgan trained alone, then a vq_transformer over it (--model.tokenizer): (vqgan ckpt, run)."""
    from conftest import run_fit

    root = tmp_path_factory.mktemp("tiny_vq_transformer")
    torch.set_num_threads(1)
    run_fit(*TINY_VQGAN, *TINY_DATA, "--trainer.default_root_dir", str(root / "vqgan"))
    vqgan = root / "vqgan" / "checkpoints" / "last.ckpt"
    run_fit(*TINY_VQ_TRANSFORMER, *TINY_DATA, "--model.tokenizer", str(vqgan),
            "--trainer.default_root_dir", str(root / "run"))  # fmt: skip
    return vqgan, root / "run"


def test_a_given_tokenizer_is_used_recorded_and_the_transformer_learns(tiny_run):
    from zoo.checkpoint import load_model
    from zoo.datamodules.shapes import ShapesDataModule
    from zoo.evaluate import sha256_of

    vqgan, run = tiny_run
    assert not (run / "first_stage").exists()  # given, not trained
    model = load_model(run / "checkpoints" / "last.ckpt")
    assert model.hparams.tokenizer_sha256 == sha256_of(vqgan)
    frozen = torch.load(vqgan, weights_only=False)["state_dict"]
    assert all(torch.equal(v, frozen[k]) for k, v in model.first_stage.state_dict().items())  # frozen, inside
    data = ShapesDataModule(
        image_size=16, max_objects=1, num_train=64, num_val=16, num_test=16, batch_size=16
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    model.eval()
    with torch.no_grad():
        trained = float(model._loss(batch, torch.Generator().manual_seed(0)))
    assert trained < 0.8 * math.log(32)  # below the uniform code distribution the model starts from


def test_sample_with_a_prompt_writes_images(tiny_run, tmp_path):
    from zoo.sample import main as sample

    _, run = tiny_run
    out = tmp_path / "samples"
    sample(["--ckpt", str(run / "checkpoints" / "last.ckpt"), "--num", "2", "--out", str(out),
            "--prompt", "a red circle", "--guidance", "2", "--temperature", "0.8", "--top-p", "0.9"])  # fmt: skip
    assert len(list(out.glob("00000*.png"))) == 2
    with pytest.raises(SystemExit, match="does not take --steps"):
        sample(["--ckpt", str(run / "checkpoints" / "last.ckpt"), "--num", "1", "--out", str(out),
                "--prompt", "a red circle", "--steps", "3"])  # fmt: skip

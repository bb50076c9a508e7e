"""Cascades in `zoo.sample`: a base model followed by super-resolution stages (`--cascade`), the size check
between stages, and upscaling a given image (`--ckpt SR --init-image`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_fit
from zoo.sample import main as sample

QUIET = [
    "--trainer.limit_val_batches", "1",
    "--trainer.val_check_interval", "null",
    "--trainer.check_val_every_n_epoch", "100",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--samples.num_samples", "0",
    "--logger", "none",
    "--trainer.max_steps", "2",
]  # fmt: skip
SHAPES = ["--data", "shapes", "--data.num_train", "32", "--data.num_val", "8", "--data.num_test", "8",
          "--data.batch_size", "8"]  # fmt: skip


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A class-conditional ddpm base at 8x8 and an 8 -> 16 sr_diffusion, each trained two steps on shapes."""
    root = tmp_path_factory.mktemp("cascade")
    base = [
        "--model", "ddpm", *SHAPES, "--data.image_size", "8", "--model.base_channels", "8",
        "--model.channel_mults", "[1, 2]", "--model.attention_levels", "[]", "--model.num_train_timesteps", "50",
        "--model.sampling_steps", "2",
    ]  # fmt: skip
    sr = [
        "--model", "sr_diffusion", *SHAPES, "--data.image_size", "16", "--model.low_resolution", "8",
        "--model.base_channels", "8", "--model.channel_mults", "[1, 2]", "--model.num_train_timesteps", "50",
        "--model.sampling_steps", "2", "--model.bank_size", "4",
    ]  # fmt: skip
    paths = {}
    for name, flags in (("base", base), ("sr", sr)):
        run_fit(*flags, *QUIET, "--trainer.default_root_dir", str(root / name))
        paths[name] = root / name / "checkpoints" / "last.ckpt"
    return paths


def png_sizes(folder: Path) -> set[tuple[int, int]]:
    return {Image.open(p).size for p in folder.glob("0*.png")}


def test_cascade_writes_images_of_the_last_stage_size_and_records_the_stages(
    checkpoints, tmp_path, capsys, one_thread
):
    out = tmp_path / "cascade"
    sample(["--ckpt", str(checkpoints["base"]), "--cascade", str(checkpoints["sr"]), "--label", "3", "--num", "3",
            "--out", str(out), "--noise-level", "0.3", "--sr-steps", "2"])  # fmt: skip
    assert len(list(out.glob("0*.png"))) == 3 and png_sizes(out) == {(16, 16)}
    record = json.loads((out / "cascade.json").read_text())
    assert [r["size"] for r in record] == [8, 16] and record[0]["family"] == "ddpm"
    assert (
        record[1]["family"] == "sr_diffusion" and record[1]["noise_level"] == 0.3 and record[1]["steps"] == 2
    )
    assert "8x8 -> 16x16 at noise level 0.3" in capsys.readouterr().out


def test_stages_that_do_not_chain_are_a_clear_error(checkpoints, tmp_path, capsys, one_thread):
    base, sr = str(checkpoints["base"]), str(checkpoints["sr"])
    with pytest.raises(SystemExit) as info:  # 8 -> 16, then a stage for 8x8 inputs again
        sample(
            ["--ckpt", base, "--cascade", sr, "--cascade", sr, "--label", "1", "--out", str(tmp_path / "x")]
        )
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"--cascade {sr} upscales 3-channel 8x8 images, but {sr} makes 3-channel 16x16 ones" in err
    with pytest.raises(SystemExit):
        sample(["--ckpt", base, "--cascade", base, "--label", "1", "--out", str(tmp_path / "y")])
    assert "holds a ddpm model, not a super-resolution stage" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sample(["--ckpt", base, "--noise-level", "0.2", "--label", "1", "--out", str(tmp_path / "z")])
    assert "--noise-level is for super-resolution models" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sample(["--ckpt", sr, "--prompt", "a red circle", "--out", str(tmp_path / "w")])
    assert "not prompts or labels" in capsys.readouterr().err


def test_init_image_is_upscaled_and_an_sr_checkpoint_alone_upscales_its_examples(
    checkpoints, tmp_path, capsys, one_thread
):
    low = tmp_path / "low.png"
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    pixels[2:6, 2:6] = (255, 0, 0)
    Image.fromarray(pixels).save(low)
    up = tmp_path / "up.png"
    sample(
        ["--ckpt", str(checkpoints["sr"]), "--init-image", str(low), "--out", str(up), "--noise-level", "0.1"]
    )
    assert Image.open(up).size == (16, 16)
    assert "8x8 -> 16x16 at noise level 0.1" in capsys.readouterr().out

    big = tmp_path / "big.png"  # another size: resized to the model's input first, with a note
    Image.fromarray(np.kron(pixels, np.ones((4, 4, 1), dtype=np.uint8))).save(big)
    sample(["--ckpt", str(checkpoints["sr"]), "--init-image", str(big), "--out", str(tmp_path / "up2.png")])
    assert "is 32x32; sr_diffusion upscales 8x8 images to 16x16: resized" in capsys.readouterr().err

    folder = tmp_path / "examples"  # no --init-image: the low-res training examples it kept
    sample(["--ckpt", str(checkpoints["sr"]), "--num", "2", "--out", str(folder)])
    assert png_sizes(folder) == {(16, 16)}


def test_cascade_object_checks_sizes_before_generating(checkpoints, one_thread):
    from zoo.cascade import Cascade, CascadeError
    from zoo.checkpoint import load_model

    base, sr = load_model(checkpoints["base"]), load_model(checkpoints["sr"])
    calls = []
    base.generate = lambda *a, **k: calls.append(1)  # must not run: the sizes are known from hparams
    with pytest.raises(CascadeError, match="makes 3-channel 16x16 ones"):
        Cascade(base, [("a", sr), ("b", sr)])
    assert not calls
    cascade = Cascade(
        load_model(checkpoints["base"]), [("a", sr)], stage_options={"noise_level": 0.0, "steps": 1}
    )
    images = cascade.generate(2, condition=[0, 1], generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 16, 16) and cascade.record[-1]["noise_level"] == 0.0

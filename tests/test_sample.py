"""`python -m zoo.sample`: a family rebuilt from its checkpoint alone; seeds; bad checkpoints."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from zoo.checkpoint import CheckpointError, load_model, read_checkpoint
from zoo.sample import main as sample


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.png"))}


def test_writes_pngs_and_grid_and_same_seed_same_images(tiny_vae_ckpt, tmp_path):
    written = sample(
        [
            "--ckpt",
            str(tiny_vae_ckpt),
            "--num",
            "5",
            "--out",
            str(tmp_path / "a"),
            "--seed",
            "1",
            "--batch-size",
            "2",
        ]
    )
    assert sorted(p.name for p in written) == [
        "000000.png",
        "000001.png",
        "000002.png",
        "000003.png",
        "000004.png",
        "grid.png",
    ]
    sample(
        [
            "--ckpt",
            str(tiny_vae_ckpt),
            "--num",
            "5",
            "--out",
            str(tmp_path / "b"),
            "--seed",
            "1",
            "--batch-size",
            "2",
        ]
    )
    sample(
        [
            "--ckpt",
            str(tiny_vae_ckpt),
            "--num",
            "5",
            "--out",
            str(tmp_path / "c"),
            "--seed",
            "2",
            "--batch-size",
            "2",
        ]
    )
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b
    assert all(a[k] != c[k] for k in a if k != "grid.png")


def test_loads_from_checkpoint_alone(tiny_vae_ckpt):
    model = load_model(tiny_vae_ckpt)
    state = torch.load(tiny_vae_ckpt, weights_only=True)  # zoo checkpoints need no pickled objects
    assert model.hparams.base_channels == 8 and not model.training
    assert all(torch.equal(v, state["state_dict"][k]) for k, v in model.state_dict().items())
    # the latent scale measured on validation data travels with the weights
    assert float(model.latent_scale) != 1.0


@pytest.mark.parametrize("damage", ["truncated", "garbage", "flipped", "empty"])
def test_damaged_checkpoint_is_a_clear_error_naming_the_file(tiny_vae_ckpt, tmp_path, damage):
    data = tiny_vae_ckpt.read_bytes()
    bad = tmp_path / f"{damage}.ckpt"
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 3])
    elif damage == "garbage":
        bad.write_bytes(b"this is not a checkpoint\n" * 10)
    elif damage == "flipped":
        middle = bytearray(data)
        for i in range(len(middle) // 4, len(middle) - 4096, 5):
            middle[i] ^= 0xFF
        bad.write_bytes(bytes(middle))
    else:
        bad.write_bytes(b"")
    with pytest.raises(SystemExit) as info:
        sample(["--ckpt", str(bad), "--num", "2", "--out", str(tmp_path / "out")])
    message = str(info.value)
    assert str(bad) in message and ("corrupt" in message or "truncated" in message)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_missing_and_foreign_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.ckpt")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError, match="not a zoo one"):
        load_model(foreign)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint"):
        load_model(plain)


def test_options_the_family_does_not_take_are_refused(tiny_vae_ckpt, tmp_path):
    with pytest.raises(SystemExit, match="does not take --steps; its sampling options: --temperature"):
        sample(["--ckpt", str(tiny_vae_ckpt), "--num", "2", "--steps", "10", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="unconditional"):
        sample(
            ["--ckpt", str(tiny_vae_ckpt), "--num", "2", "--prompt", "a red circle", "--out", str(tmp_path)]
        )
    with pytest.raises(SystemExit, match="--init-video is for video families"):
        sample(["--ckpt", str(tiny_vae_ckpt), "--num", "1", "--init-video", "x.gif", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="does not take --vocoder"):
        sample(["--ckpt", str(tiny_vae_ckpt), "--num", "1", "--vocoder", "v.ckpt", "--out", str(tmp_path)])
    written = sample(
        ["--ckpt", str(tiny_vae_ckpt), "--num", "2", "--temperature", "0.5", "--out", str(tmp_path / "t")]
    )
    assert len(written) == 3

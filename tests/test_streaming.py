"""`python -m zoo.data.optimize` and the `streaming` datamodule: lossless round trips of every modality,
training through zoo.fit, DDP sharding, exact resume, and the errors of a corrupt or missing data set."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from conftest import TINY_VAE, run_fit
from zoo.data.optimize import main as optimize
from zoo.errors import DataError, MissingDataError

TESTS = Path(__file__).parent
SHAPES = ["--data", "shapes", "--data.num_train", "48", "--data.num_val", "16", "--data.num_test", "16"]
# TINY_VAE's own flags, without its --data.* sizes: the streaming data brings its own
VAE = [
    a
    for i, a in enumerate(TINY_VAE)
    if not (a.startswith("--data.num") or TINY_VAE[i - 1].startswith("--data.num"))
]


def _items(dataset) -> list[dict]:
    return [dataset[i] for i in range(len(dataset))]


def _assert_same_items(streamed: list[dict], source: list[dict], atol: float = 0.0) -> None:
    assert len(streamed) == len(source)
    for got, want in zip(streamed, source, strict=True):
        assert set(got) == {k for k, v in want.items() if v is not None}
        for key, value in got.items():
            if isinstance(value, torch.Tensor):
                expected = torch.as_tensor(want[key])
                assert value.dtype == expected.dtype and value.shape == expected.shape, key
                assert torch.allclose(value.double(), expected.double(), atol=atol, rtol=0), key
            else:
                assert value == want[key], key


@pytest.fixture(scope="module")
def shapes_stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes_stream")
    counts = optimize([*SHAPES, "--data.max_objects", "3", "--out", str(out), "--chunk-bytes", "200kb"])
    assert counts == {"train": 48, "val": 16, "test": 16}
    return out


def test_shapes_round_trip_is_lossless_and_keeps_the_attributes(shapes_stream):
    source = zoo.create_datamodule("shapes", num_train=48, num_val=16, num_test=16, max_objects=3)
    source.setup("fit")
    source.setup("test")
    streamed = zoo.create_datamodule("streaming", root=str(shapes_stream))
    streamed.setup("fit")
    for split in ("train", "val", "test"):
        _assert_same_items(_items(getattr(streamed, f"{split}_set")), _items(getattr(source, f"{split}_set")))
    assert (streamed.modality, streamed.image_size, streamed.channels) == ("image", 32, 3)
    assert streamed.class_names == source.class_names and streamed.num_classes == source.num_classes
    assert (
        len(json.loads((shapes_stream / "train" / "index.json").read_text())["chunks"]) > 1
    )  # several chunks
    # the captions are in zoo.json, for a family's tokenizer, without decoding the images
    assert streamed.train_set.data["captions"] == [it["caption"] for it in _items(source.train_set)]


def test_a_family_trains_on_it_with_its_attributes_linked(shapes_stream, in_tmp):
    cli = run_fit(*VAE, "--data", "streaming", "--data.root", str(shapes_stream), "--trainer.max_steps", "2")
    assert cli.trainer.global_step == 2
    assert cli.model.hparams.image_size == 32 and cli.model.hparams.in_channels == 3  # from zoo.json
    batch = next(iter(cli.datamodule.train_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32) and len(batch["caption"]) == 8


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_from_last_ckpt_continues_exactly(shapes_stream, in_tmp):
    # 48 items in batches of 8: 6 steps an epoch; stopping at step 4 interrupts the first epoch
    common = [*VAE, "--data", "streaming", "--data.root", str(shapes_stream), "--seed_everything", "3",
              "--checkpoint.every_n_train_steps", "2"]  # fmt: skip
    straight = run_fit(*common, "--trainer.max_steps", "8")
    first = run_fit(*common, "--trainer.max_steps", "4")
    last = Path(first.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
    # litdata's loader state is what makes it exact: the checkpoint holds its position in the epoch
    state = torch.load(last, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert state["num_samples_yielded"] == 32  # 4 batches of 8
    resumed = run_fit(*common, "--trainer.max_steps", "8", "--ckpt_path", str(last))
    assert (
        resumed.trainer.global_step == 8 and resumed.trainer.current_epoch == straight.trainer.current_epoch
    )
    a, b = _params(straight.model), _params(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.slow
def test_two_ddp_ranks_see_every_sample_of_an_epoch_exactly_once(shapes_stream, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    record = tmp_path / "record"
    command = [
        sys.executable, "-m", "zoo.fit", *VAE, "--data", "streaming", "--data.root", str(shapes_stream),
        "--trainer.max_steps", "3", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
        "--trainer.strategy", "ddp", "--trainer.callbacks+=recording.RecordBatches",
        f"--trainer.callbacks.out_dir={record}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [3, 3]
    seen = [[digest for epoch, digest in r["seen"] if epoch == 0] for r in ranks]
    assert len(seen[0]) == len(seen[1]) == 24  # 3 steps of batch 8 on each rank: one epoch of 48
    assert not set(seen[0]) & set(seen[1])
    from recording import digest

    data = zoo.create_datamodule("streaming", root=str(shapes_stream))
    data.setup("fit")
    assert set(seen[0]) | set(seen[1]) == {digest(it["image"]) for it in _items(data.train_set)}


def _corrupt_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_a_truncated_chunk_is_named(shapes_stream, tmp_path):
    root = _corrupt_copy(shapes_stream, tmp_path / "copy")
    chunk = sorted((root / "train").glob("*.bin"))[1]
    chunk.write_bytes(chunk.read_bytes()[:1000])
    data = zoo.create_datamodule("streaming", root=str(root))
    with pytest.raises(DataError, match=f"chunk {chunk}.* is truncated.*zoo.data.optimize"):
        data.setup("fit")


def test_a_chunk_with_damaged_bytes_is_named_when_read(shapes_stream, tmp_path, in_tmp, capsys):
    root = _corrupt_copy(shapes_stream, tmp_path / "copy")
    chunk = sorted((root / "train").glob("*.bin"))[0]
    raw = bytearray(chunk.read_bytes())
    start = raw.index(b"IDAT") + 8  # the pixels of the chunk's first PNG
    raw[start : start + 64] = bytes(range(64))
    chunk.write_bytes(bytes(raw))
    with pytest.raises(SystemExit):
        run_fit(*VAE, "--data", "streaming", "--data.root", str(root), "--trainer.max_steps", "12")
    error = capsys.readouterr().err
    assert f"data error: cannot read item 0 from chunk {chunk}: OSError" in error
    assert "is corrupt; write the split again with python -m zoo.data.optimize" in error


def test_a_folder_that_was_not_written_by_optimize_says_how_to_write_one(tmp_path):
    with pytest.raises(MissingDataError, match="does not exist.*zoo.data.optimize --data NAME"):
        zoo.create_datamodule("streaming", root=str(tmp_path / "nowhere"))
    with pytest.raises(MissingDataError, match="no zoo.json"):
        zoo.create_datamodule("streaming", root=str(tmp_path))


def test_optimize_refuses_to_overwrite_and_names_bad_flags(shapes_stream, capsys):
    with pytest.raises(SystemExit) as info:
        optimize([*SHAPES, "--out", str(shapes_stream), "--split", "val"])
    assert info.value.code == 2 and "already holds a val split; pass --overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        optimize(["--data", "shapes", "--data.num_trian", "4", "--out", str(shapes_stream / "x")])
    assert "num_trian" in capsys.readouterr().err


def test_an_image_folder_converts_with_its_classes(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "photos" / label / f"{i}.png")
    flags = ["--data", "image_folder", "--data.root", str(tmp_path / "photos"), "--data.image_size", "8"]
    optimize([*flags, "--out", str(tmp_path / "stream"), "--split", "train"])
    source = zoo.create_datamodule("image_folder", root=str(tmp_path / "photos"), image_size=8)
    source.setup("fit")
    streamed = zoo.create_datamodule("streaming", root=str(tmp_path / "stream"))
    streamed.setup("fit")
    _assert_same_items(_items(streamed.train_set), _items(source.train_set), atol=1e-6)
    assert streamed.class_names == ["cats", "dogs"]


def test_audio_round_trips_through_flac_and_keeps_the_padding_collate(tmp_path):
    flags = ["--data", "tones", "--data.num_train", "6", "--data.num_val", "2", "--data.num_test", "2"]
    optimize([*flags, "--out", str(tmp_path / "tones"), "--split", "train"])
    source = zoo.create_datamodule("tones", num_train=6, num_val=2, num_test=2)
    source.setup("fit")
    streamed = zoo.create_datamodule("streaming", root=str(tmp_path / "tones"), batch_size=3)
    streamed.setup("fit")
    _assert_same_items(_items(streamed.train_set), _items(source.train_set), atol=2**-23)  # 24-bit FLAC
    assert streamed.sample_rate == source.sample_rate and streamed.modality == "audio"
    batch = next(iter(streamed.train_dataloader()))
    assert "length" in batch  # the source's pad_collate, not torch's default


def test_video_and_text_round_trip(tmp_path):
    video = [
        "--data",
        "moving_shapes",
        "--data.num_train",
        "4",
        "--data.num_val",
        "2",
        "--data.image_size",
        "16",
    ]
    optimize([*video, "--out", str(tmp_path / "video"), "--split", "train"])
    source = zoo.create_datamodule("moving_shapes", num_train=4, num_val=2, image_size=16)
    source.setup("fit")
    streamed = zoo.create_datamodule("streaming", root=str(tmp_path / "video"))
    streamed.setup("fit")
    _assert_same_items(_items(streamed.train_set), _items(source.train_set), atol=1e-6)
    assert (streamed.frames, streamed.fps) == (source.frames, source.fps)

    optimize(["--data", "captions", "--out", str(tmp_path / "text"), "--split", "train"])
    text = zoo.create_datamodule("captions")
    text.setup("fit")
    streamed = zoo.create_datamodule("streaming", root=str(tmp_path / "text"))
    streamed.setup("fit")
    _assert_same_items(_items(streamed.train_set), _items(text.train_set))
    assert streamed.vocab_size == text.vocab_size and streamed.block_size == text.block_size
    sentence = "a red circle left of a blue square"
    assert streamed.tokenizer.encode(sentence) == text.tokenizer.encode(sentence)

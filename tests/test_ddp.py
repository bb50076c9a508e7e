"""DDP on CPU (gloo): `python -m zoo.fit` as a subprocess, as a user launches it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_VAE

TESTS = Path(__file__).parent


@pytest.mark.slow
def test_two_ranks_train_on_disjoint_shards_and_write_one_checkpoint(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    record = tmp_path / "record"
    command = [
        sys.executable, "-m", "zoo.fit", *TINY_VAE, "--trainer.max_steps", "5",
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.callbacks+=recording.RecordBatches", f"--trainer.callbacks.out_dir={record}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [5, 5]
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 5 * 8  # 5 steps of batch 8 each
    # 48 images, batch 8 a rank: an epoch is 3 steps, so epoch 0 is whole and epoch 1 has 2 steps.
    for epoch, size in ((0, 24), (1, 16)):
        seen0 = {h for e, h in ranks[0]["seen"] if e == epoch}
        seen1 = {h for e, h in ranks[1]["seen"] if e == epoch}
        assert len(seen0) == len(seen1) == size
        assert not seen0 & seen1  # the two ranks' shards never overlap within an epoch
    epoch0 = {h for r in ranks for e, h in r["seen"] if e == 0}
    assert len(epoch0) == 48  # and together they cover the data set
    runs = list((tmp_path / "runs" / "vae").iterdir())
    assert len(runs) == 1, runs  # both ranks wrote into one run folder
    checkpoints = sorted(p.name for p in (runs[0] / "checkpoints").iterdir())
    assert checkpoints == ["last.ckpt"]
    state = torch.load(runs[0] / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 5

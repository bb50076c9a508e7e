"""Past one process: two "nodes" launched by torchrun on this machine, and FSDP (`zoo_fsdp`) on CPU with gloo."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_VAE

TESTS = Path(__file__).parent
CPU_PAIR = ["--trainer.accelerator", "cpu", "--trainer.devices", "2"]
TINY_GPT = [
    "--model", "gpt", "--model.n_layer", "2", "--model.n_head", "2", "--model.n_embd", "32",
    "--data.num_train", "200", "--data.num_val", "16", "--data.num_test", "16", "--data.tokenizer", "char",
    "--data.block_size", "32", "--data.batch_size", "4", "--trainer.limit_val_batches", "1",
    "--trainer.val_check_interval", "null", "--trainer.enable_progress_bar", "false", "--logger", "csv",
    "--samples.every_n_steps", "0", "--seed_everything", "0",
]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_torchrun_nodes_share_one_run_folder_and_end_with_equal_weights(tmp_path):
    record, port = tmp_path / "record", _free_port()

    def node(rank: int) -> list[str]:
        return [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port), "--rdzv-id", "t1",
            "-m", "zoo.fit", *TINY_VAE, "--trainer.max_steps", "3", "--trainer.accelerator", "cpu",
            "--trainer.devices", "1", "--trainer.num_nodes", "2", "--trainer.strategy", "ddp",
            "--trainer.callbacks+=recording.RecordBatches", f"--trainer.callbacks.out_dir={record}",
        ]  # fmt: skip

    nodes = [
        subprocess.Popen(node(r), cwd=tmp_path, env=_env(), stderr=subprocess.PIPE, text=True) for r in (0, 1)
    ]
    errors = [p.communicate(timeout=300)[1] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [3, 3]
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP kept the two nodes' replicas equal
    assert not {d for _, d in ranks[0]["seen"]} & {d for _, d in ranks[1]["seen"]}  # each node its own shard
    runs = list((tmp_path / "runs" / "vae").iterdir())
    assert [r.name for r in runs] == ["job-t1"]  # both nodes chose the same folder from torchrun's job id
    assert sorted(p.name for p in (runs[0] / "checkpoints").iterdir()) == ["last.ckpt"]


def _fit(tmp_path: Path, name: str, *flags: str) -> Path:
    root = tmp_path / name
    command = [sys.executable, "-m", "zoo.fit", *TINY_GPT, "--trainer.default_root_dir", str(root), *flags]
    done = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_fsdp_trains_as_ddp_does_and_both_checkpoint_types_load(tmp_path):
    from zoo.checkpoint import load_model

    ddp = _fit(tmp_path, "ddp", *CPU_PAIR, "--trainer.strategy", "ddp", "--trainer.max_steps", "4")
    # activation checkpointing recomputes the same values: it changes memory, not the weights
    fsdp = _fit(
        tmp_path, "fsdp", *CPU_PAIR, "--trainer.strategy", "zoo_fsdp_checkpointed", "--trainer.max_steps", "4"
    )
    sharded = _fit(
        tmp_path, "sharded", *CPU_PAIR, "--trainer.strategy", "zoo_fsdp_sharded", "--trainer.max_steps", "4"
    )
    assert fsdp.is_file() and sharded.is_dir()  # a full checkpoint, and a folder of shards
    assert len(list(sharded.glob("*.distcp"))) == 2  # one shard a rank: the weights really were sharded
    reference = torch.load(ddp, weights_only=False)["state_dict"]
    for path in (fsdp, sharded):
        model = load_model(path)  # what zoo.sample and zoo.evaluate call
        state = model.state_dict()
        assert set(state) == set(reference)
        for (
            key,
            value,
        ) in reference.items():  # the same data, order and updates: equal up to float reduction order
            assert torch.allclose(state[key], value, atol=1e-5), key
        assert len(model.generate(2, max_new_tokens=8)) == 2

"""The same metric value on 1 process and on 2 DDP processes (gloo on CPU, in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import zoo.metrics as zm

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    def run(rank, world, out):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
        dist.init_process_group("gloo", rank=rank, world_size=world)
        torch.set_num_threads(1)
        from zoo.metrics.image import KNNPrecisionRecall, fid_metric
        data = np.load(sys.argv[1])
        real, fake = (torch.from_numpy(data[k])[rank::world] for k in ("real", "fake"))  # this rank's shard
        fid = fid_metric(real.shape[1])
        fid.update(real, real=True)
        fid.update(fake, real=False)
        pr = KNNPrecisionRecall(k=3)
        pr.update(real, real=True)
        pr.update(fake, real=False)
        values = {"fid": float(fid.compute()), "precision_recall": [float(v) for v in pr.compute()]}
        if rank == 0:
            with open(out, "w") as f:
                json.dump(values, f)
        dist.destroy_process_group()

    if __name__ == "__main__":
        import zoo.metrics.image  # imported once, before forking: the ranks start at once
        mp.start_processes(run, args=(2, sys.argv[3]), nprocs=2, start_method="fork")
    """
)


@pytest.mark.slow
def test_fid_and_precision_recall_equal_on_one_and_two_processes(tmp_path):
    rng = np.random.default_rng(0)
    real = rng.normal(size=(101, 10))  # odd: the two shards differ in size
    fake = rng.normal(size=(90, 10)) * 1.3 + 0.2
    np.savez(tmp_path / "features.npz", real=real, fake=fake)
    script = tmp_path / "ddp_metrics.py"
    script.write_text(SCRIPT)
    port = str(29500 + int(rng.integers(0, 2000)))
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "features.npz"), port, str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "out.json").read_text())
    one_fid = zm.frechet_distance(torch.from_numpy(real), torch.from_numpy(fake))
    one_pr = zm.precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=3)
    assert two["fid"] == pytest.approx(one_fid, rel=1e-9)
    assert two["precision_recall"] == pytest.approx(list(one_pr), abs=1e-12)

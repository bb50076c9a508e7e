"""Shared fixtures: a quiet, offline environment; tiny zoo.fit runs; throwaway plugins."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

# Under pytest-xdist (two workers on two cores) each worker computes on one thread: two processes of two
# threads each on two cores slow each other down several times. Set before anything imports torch.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)

# A tiny VAE on a tiny `shapes`: the flags every CLI test starts from (seconds, not minutes).
TINY_VAE = [
    "--model", "vae",
    "--model.base_channels", "8",
    "--data.num_train", "48",
    "--data.num_val", "16",
    "--data.num_test", "16",
    "--data.batch_size", "8",
    "--trainer.limit_val_batches", "1",
    "--trainer.val_check_interval", "null",
    "--trainer.check_val_every_n_epoch", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--samples.num_samples", "4",
    "--logger", "none",
]  # fmt: skip


def run_fit(*args: str) -> object:
    """`python -m zoo.fit ARGS` in this process; returns the LightningCLI object."""
    from zoo.fit import main

    return main(list(args))


def fit_in(root: Path, *args: str) -> Path:
    """`run_fit(*args)` with `root` as the working folder (so `runs/` lands there); its last.ckpt."""
    cwd = os.getcwd()
    os.chdir(root)
    try:
        cli = run_fit(*args)
    finally:
        os.chdir(cwd)
    return root / cli.trainer.default_root_dir / "checkpoints" / "last.ckpt"


def assert_resume_is_exact(flags: list[str], root: Path, steps: int) -> tuple[object, object]:
    """`steps` training steps in one go (root/full), or half of them and then the rest from last.ckpt
    (root/half): the same global step and the same state_dict, tensor for tensor. `flags` must checkpoint
    every steps // 2. Returns the uninterrupted run's and the resumed run's CLI objects."""
    import torch

    full, half = root / "full", root / "half"
    whole = run_fit(*flags, "--trainer.max_steps", str(steps), "--trainer.default_root_dir", str(full))
    run_fit(*flags, "--trainer.max_steps", str(steps // 2), "--trainer.default_root_dir", str(half))
    resumed = run_fit(*flags, "--trainer.max_steps", str(steps), "--trainer.default_root_dir", str(half),
                      "--ckpt_path", str(half / "checkpoints" / "last.ckpt"))  # fmt: skip
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(half / "checkpoints" / "last.ckpt", weights_only=False)
    assert b["global_step"] == steps and a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    return whole, resumed


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for tests of tiny tensors: ~100x faster than two threads fighting a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty folder, so `runs/` lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def tiny_vae_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of a tiny VAE trained for 12 steps, shared by the sampling tests."""
    root = tmp_path_factory.mktemp("tiny_vae")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        cli = run_fit(*TINY_VAE, "--trainer.max_steps", "12", "--checkpoint.every_n_train_steps", "6")
    finally:
        os.chdir(cwd)
    ckpt = Path(cli.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
    ckpt = ckpt if ckpt.is_absolute() else root / ckpt
    assert ckpt.is_file()
    return ckpt


# A tiny class-conditional ddpm on 12x12 digits (a size no recipe uses, so a student that gets it took
# it from the teacher's checkpoint), trained enough that its one-step guess is far from its ODE's solution:
# the teacher of the distillation tests (consistency, progressive_distillation).
DIGITS_TEACHER = [
    "--model", "ddpm", "--model.base_channels", "16", "--model.channel_mults", "[1, 2]",
    "--model.attention_levels", "[1]", "--model.lr", "0.002",
    "--data.image_size", "12", "--data.batch_size", "24",
    "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "null",
    "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false", "--samples.num_samples", "0", "--logger", "none",
    "--trainer.max_steps", "300",
]  # fmt: skip


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `ddpm` checkpoint of DIGITS_TEACHER (12x12 digits, batch 24, T = 1000, 300 steps)."""
    return fit_in(tmp_path_factory.mktemp("digits_teacher"), *DIGITS_TEACHER)


class FakeDistributions:
    """Installs throwaway distributions as real `.dist-info` folders on sys.path.

    The registry then finds them through importlib.metadata exactly as it finds pip-installed
    plugins: no mocking of the discovery itself.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def add(
        self, dist: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str] | None = None
    ) -> None:
        info = self.root / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = []
        for group, entries in entry_points.items():
            lines.append(f"[{group}]")
            lines += [f"{name} = {value}" for name, value in entries.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for name, source in (modules or {}).items():
            (self.root / f"{name}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def fake_dists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDistributions]:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    before = set(sys.modules)
    yield FakeDistributions(root)
    for name in set(sys.modules) - before:  # forget the throwaway modules
        if sys.modules[name] is not None and str(root) in str(
            getattr(sys.modules[name], "__file__", "") or ""
        ):
            del sys.modules[name]


QUIET = [
    "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "null",
    "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false", "--samples.num_samples", "0", "--logger", "none",
]  # fmt: skip
FIRST_STAGE = (
    '{"in_channels": 3, "image_size": 16, "latent_channels": 4, "downsample_factor": 2, "base_channels": 8}'
)
TINY_LDM = [
    "--model", "ldm", "--model.first_stage_steps", "30", "--model.first_stage_config", FIRST_STAGE,
    "--model.base_channels", "16", "--model.channel_mults", "[1, 2]", "--model.attention_levels", "[1]",
    "--model.num_res_blocks", "1", "--model.num_heads", "2", "--model.text_width", "16",
    "--model.text_depth", "1", "--model.text_heads", "2", "--model.vocab_size", "300",
    "--model.lr", "0.002", "--model.warmup_steps", "10",
    "--data.image_size", "16", "--data.num_train", "256", "--data.num_val", "16", "--data.num_test", "16",
    "--data.batch_size", "16", *QUIET,
]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_ldm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ldm on 16x16 shapes (8x8 latents), 150 steps: the base or teacher of the families built on
    one (lcm, controlnet); enough that its guided many-step samples differ from its one-step x0 guess."""
    return fit_in(tmp_path_factory.mktemp("tiny_ldm"), *TINY_LDM, "--trainer.max_steps", "150")


@pytest.fixture(autouse=True, scope="module")
def _thread_count_restored() -> Iterator[None]:
    """A test file that sets torch's thread count must put it back: two fixtures left it at 1, and every later
    file then ran on one thread (the suite took 18:41 instead of about 14 minutes)."""
    import torch

    threads = torch.get_num_threads()
    yield
    assert torch.get_num_threads() == threads, (
        f"this test file left torch.get_num_threads() at {torch.get_num_threads()}, not {threads}: restore it "
        "(torch.set_num_threads in a try/finally), or every later test file runs on the wrong thread count"
    )

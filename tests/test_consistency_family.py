"""`consistency`: the family over `zoo.diffusion.consistency` (tested against diffusers and closed forms in
test_consistency.py), through the real command line: distillation from `ddpm` and `flow_matching`
teachers, training from scratch, the data taken from the teacher's checkpoint, exact resumption."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from conftest import assert_resume_is_exact, fit_in, run_fit
from zoo.checkpoint import load_model
from zoo.diffusion.consistency import ode_step

QUIET = [
    "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "null",
    "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false", "--samples.num_samples", "0", "--logger", "none",
]  # fmt: skip
FLOW_TEACHER = [
    "--model", "flow_matching", "--model.base_channels", "16", "--model.channel_mults", "[1, 2]",
    "--model.attention_levels", "[1]", "--model.num_heads", "2", "--model.lr", "0.002",
    "--data.image_size", "12", "--data.batch_size", "24", *QUIET, "--trainer.max_steps", "300",
]  # fmt: skip


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory, digits_teacher: Path) -> dict[str, Path]:
    """conftest's tiny ddpm, and a flow_matching of the same size and training (12x12 digits, 300 steps)."""
    return {
        "ddpm": digits_teacher,
        "flow_matching": fit_in(tmp_path_factory.mktemp("flow_matching"), *FLOW_TEACHER),
    }


def _flow_map_error(student, steps: int = 60) -> float:
    """Mean |f(x, sigma_max) - the student's teacher's own ODE solution from x| over a fixed batch, the
    ODE solved with many Euler steps over the teacher's guided denoiser (what CD distils)."""
    generator = torch.Generator().manual_seed(3)
    label = torch.arange(8) % 10
    levels = student.levels(steps)
    x = torch.randn(8, 1, 12, 12, generator=generator) * levels[-1]
    with torch.no_grad():
        denoiser = student.teacher_denoiser(label)
        y = x
        for i in range(len(levels) - 1, 0, -1):
            y = ode_step(denoiser, y, levels[i].expand(8), levels[i - 1].expand(8))
        f = student.consistency(student.net, x, levels[-1].expand(8), label)
    return (f - y).abs().mean().item()


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ddpm", "flow_matching"])
def test_distillation_through_the_cli_approaches_the_teachers_flow_map(in_tmp, teachers, family):
    """`--recipe distill --model.teacher CKPT` alone: the student takes the teacher's network, weights and
    data (12x12 digits, batch 24), records the teacher's sha256, and its one-step map moves towards the
    teacher's ODE solution; the checkpoint samples in 1 and 2 steps with the teacher file gone."""
    from zoo.evaluate import sha256_of
    from zoo.plugins.consistency import Consistency
    from zoo.sample import main as sample

    teacher = in_tmp / "teacher.ckpt"
    shutil.copy(teachers[family], teacher)
    args = ["--model", "consistency", "--recipe", "distill", "--model.teacher", str(teacher), *QUIET]
    # the teacher's own head: the tiny teacher's many-step ODE ends far outside [-1, 1] (its eps error over
    # alpha at sigma 80), which the recipe's merged x head, bounded there, cannot and should not follow
    untrained = Consistency(teacher=str(teacher), parameterization="teacher")
    cli = run_fit(*args, "--model.parameterization", "teacher", "--model.lr", "0.0003", "--model.warmup_steps", "5",
                  "--trainer.max_steps", "100")  # fmt: skip
    assert cli.datamodule.hparams.image_size == 12 and cli.datamodule.hparams.batch_size == 24
    student = cli.model.eval()
    assert student.hparams.teacher_family == family and student.hparams.teacher_sha256 == sha256_of(teacher)
    before, after = _flow_map_error(untrained.eval()), _flow_map_error(student)
    # measured: ddpm 5.61 -> 3.67; flow_matching 0.116 -> 0.106 (a straighter flow: its one-step guess starts
    # closer to the ODE's solution)
    assert after < {"ddpm": 0.8, "flow_matching": 0.95}[family] * before, (before, after)

    teacher.unlink()
    ckpt = Path(cli.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
    model = load_model(ckpt)
    for steps in (1, 2):
        images = model.generate(
            4, condition=[0, 1, 2, 3], steps=steps, generator=torch.Generator().manual_seed(0)
        )
        assert images.shape == (4, 1, 12, 12) and torch.isfinite(images).all()
    assert sample(
        ["--ckpt", str(ckpt), "--num", "2", "--label", "3", "--steps", "2", "--out", str(in_tmp / "out")]
    )
    with pytest.raises(ValueError, match="leave --guidance out"):
        model.generate(2, condition=1, guidance=3.0)


@pytest.mark.parametrize("family", ["ddpm", "flow_matching"])
def test_a_distilled_student_starts_as_the_teachers_denoiser_and_keeps_the_boundary(teachers, family):
    """f(x, sigma_min) = x exactly; at the start, wherever sigma >> sigma_min, f is the teacher's own x0
    estimate (the student is the teacher's network, its denoiser in EDM's output scaling). A ddpm student's
    merged heads start as alpha^2 = 1 / (1 + sigma^2) times the teacher's x0 (the x head is zero)."""
    from zoo.plugins.consistency import Consistency

    student = Consistency(teacher=str(teachers[family])).eval()
    teacher = load_model(teachers[family])
    x = torch.randn(4, 1, 12, 12)
    label = torch.tensor([1, 2, 3, 4])
    low = torch.full((4,), student.sigma_low)
    assert torch.equal(student.consistency(student.net, x, low, label), x)
    sigma = torch.full((4,), 20.0)
    with torch.no_grad():
        f = student.consistency(student.net, x * 20, sigma, label)
        d = student.denoised(teacher, x * 20, sigma, label, student=False)
    torch.testing.assert_close(f, d, atol=2e-3 * d.abs().max().item(), rtol=1e-3)
    merged = Consistency(teacher=str(teachers[family]), parameterization="both").eval()
    assert torch.equal(merged.consistency(merged.net, x, low, label), x)
    with torch.no_grad():
        d_merged = merged.denoised(merged.net, x * 20, sigma, label)
    scale = 1 / (1 + 20.0**2) if family == "ddpm" else 1.0
    torch.testing.assert_close(d_merged, scale * d, atol=1e-5 * d.abs().max().item(), rtol=1e-4)


def test_a_teacher_of_another_family_is_refused_in_one_line(in_tmp, teachers):
    from zoo.checkpoint import CheckpointError
    from zoo.plugins.consistency import Consistency

    checkpoint = torch.load(teachers["ddpm"], weights_only=True)
    checkpoint["zoo"]["model"] = "ldm"
    wrong = in_tmp / "ldm.ckpt"
    torch.save(checkpoint, wrong)
    with pytest.raises(CheckpointError) as info:
        Consistency(teacher=str(wrong))
    assert str(info.value) == (
        f"{wrong} is a `ldm` checkpoint; --model.teacher needs one of ddpm, flow_matching (an ldm teacher: --model lcm)"
    )
    with pytest.raises(SystemExit):
        run_fit("--model", "consistency", "--model.teacher", str(in_tmp / "missing.ckpt"), *QUIET)


NET = ["--model.base_channels", "16", "--model.channel_mults", "[1, 2]", "--model.attention_levels", "[1]"]
CT = ["--model", "consistency", *NET, "--data.image_size", "8", "--data.batch_size", "16", *QUIET]


def test_training_from_scratch_resumes_exactly(tmp_path):
    """CT's state (the online and target networks, the curriculum's step) survives a resume: 3 + 3 steps
    end where 6 steps do, weight for weight."""
    flags = [
        *CT,
        "--model.curriculum_steps",
        "6",
        "--model.target_ema",
        "null",
        "--checkpoint.every_n_train_steps",
        "3",
    ]
    _, resumed = assert_resume_is_exact(flags, tmp_path, 6)
    assert resumed.model.num_levels_at(6) == 161  # the curriculum's end (the recipe's s1 160)


def test_sampling_levels_and_options():
    from zoo.plugins.consistency import Consistency

    model = Consistency(
        curriculum="fixed", num_levels=18, base_channels=8, channel_mults=(1,), attention_levels=()
    )
    levels = model.levels(18)
    torch.testing.assert_close(model.sampling_levels(1), levels[[17]])
    torch.testing.assert_close(model.sampling_levels(2), levels[[17, 9]])
    with pytest.raises(ValueError, match="between 1 and 17"):
        model.sampling_levels(18)
    with pytest.raises(ValueError, match="unknown curriculum 'cosine'; choose one of fixed, ct, ict"):
        Consistency(curriculum="cosine")

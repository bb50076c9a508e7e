"""`progressive_distillation`: the student's target against zoo's DDIM sampler (itself checked against
diffusers in test_diffusion_samplers.py), the nested grids, rounds and resumption through the command line,
the merged x and eps heads of the student, the exact resumption of rounds, and learning: a round through the
command line brings the student's steps towards its teacher's."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import assert_resume_is_exact, run_fit
from zoo.checkpoint import load_model
from zoo.diffusion import ddim, guided_denoiser, predict_x0

QUIET = [
    "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "null",
    "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false", "--samples.num_samples", "0", "--logger", "none",
]  # fmt: skip
SMALL = ["--model.start_steps", "16", "--model.rounds", "2", "--model.top_timestep", "959"]


@pytest.fixture(scope="module")
def teacher(digits_teacher: Path) -> Path:
    return digits_teacher  # conftest's tiny ddpm: 12x12 digits, batch 24, T = 1000


def test_the_grids_nest(teacher):
    from zoo.plugins.progressive_distillation import ProgressiveDistillation

    model = ProgressiveDistillation(teacher=str(teacher))  # top 979, 128 -> 4
    for n in (4, 8, 16, 32, 64):
        assert torch.equal(model.grid(2 * n)[1::2], model.grid(n))
    assert model.grid(4).tolist() == [244, 489, 734, 979]


def test_the_target_makes_one_student_step_land_on_two_teacher_steps(teacher):
    """x~ is the x for which the student's DDIM step t -> t'' equals the teacher's two DDIM steps
    t -> t' -> t'' (x not clipped: the ODE's steps): checked against zoo's DDIM sampler run by the teacher."""
    from zoo.plugins.progressive_distillation import ProgressiveDistillation

    model = ProgressiveDistillation(teacher=str(teacher)).eval()
    ddpm = model.original_teacher()
    ab = model.schedule.alphas_cumprod
    label = torch.tensor([3, 7])
    z = torch.randn(2, 1, 12, 12)
    for t, t_mid, t_next in ((489, 367, 244), (244, 121, -1)):
        ts = [torch.full((2,), v) for v in (t, t_mid, t_next)]
        goal = model.target(z, *ts, 0, label)
        a_t, s_t = ab[t].sqrt().float(), (1 - ab[t]).sqrt().float()
        a_n, s_n = (ab[t_next].sqrt().float(), (1 - ab[t_next]).sqrt().float()) if t_next >= 0 else (1.0, 0.0)
        one_student_step = a_n * goal + s_n * (z - a_t * goal) / s_t
        landed = {}
        denoiser = guided_denoiser(
            ddpm.unet, label, torch.full_like(label, ddpm.null_label), ddpm.hparams.guidance
        )
        steps = torch.tensor([t, t_mid] + ([t_next] if t_next >= 0 else []))
        with torch.no_grad():
            final = ddim(denoiser, z, steps, ddpm.schedule,
                         after_step=lambda i, x, _, seen=landed: seen.setdefault(i, x.clone()) if i == 1 else x)  # fmt: skip
        reference = landed[1] if t_next >= 0 else final
        torch.testing.assert_close(one_student_step, reference, atol=2e-5, rtol=1e-5)


def test_rounds_resume_and_sampling_through_the_cli(tmp_path, teacher):
    """Two rounds of 2 steps (16 -> 8 -> 4 steps): run 4 steps in one go, or 2 and then 2 more from
    last.ckpt across the round boundary: the same weights, the round's teacher included. The data is the
    teacher's (12x12, batch 24); the checkpoint samples with the teacher file gone."""
    copy = tmp_path / "teacher.ckpt"
    shutil.copy(teacher, copy)
    flags = ["--model", "progressive_distillation", "--model.teacher", str(copy), *SMALL, "--model.round_steps", "2",
             *QUIET, "--checkpoint.every_n_train_steps", "2"]  # fmt: skip
    cli, _ = assert_resume_is_exact(flags, tmp_path, 4)
    assert cli.datamodule.hparams.image_size == 12 and cli.datamodule.hparams.batch_size == 24
    assert int(cli.model.teacher_round) == 1
    copy.unlink()
    model = load_model(tmp_path / "full" / "checkpoints" / "last.ckpt")
    images = model.generate(3, condition=[1, 2, 3], generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 1, 12, 12) and torch.isfinite(images).all()
    with pytest.raises(ValueError, match="leave --guidance out"):
        model.generate(1, condition=1, guidance=2.0)


def test_a_missing_teacher_is_one_clear_line():
    from zoo.plugins.progressive_distillation import ProgressiveDistillation

    with pytest.raises(ValueError, match=r"distils a trained ddpm: pass --model\.teacher"):
        ProgressiveDistillation()


def test_the_target_is_the_data_for_a_teacher_exact_on_a_point_mass(teacher):
    """Closed form: for data that is one point mu, the exact eps-teacher is eps(z_t) = (z_t - alpha_t mu) /
    sigma_t, DDIM follows the true ODE exactly, and the student's target x~ is mu itself, from any z_t and for
    any pair of steps (the final one to clean data included)."""
    from zoo.plugins.progressive_distillation import ProgressiveDistillation

    model = ProgressiveDistillation(teacher=str(teacher))
    mu = torch.linspace(-0.8, 0.8, 144).view(1, 1, 12, 12)
    ab = model.schedule.alphas_cumprod

    def exact_eps(z, t, label):
        a = ab[t.long()].sqrt().float().view(-1, 1, 1, 1)
        return (z - a * mu) / (1 - a**2).sqrt()

    exact = SimpleNamespace(
        unet=exact_eps, hparams=SimpleNamespace(guidance=1.0, prediction="epsilon"), null_label=None
    )
    model.original_teacher = lambda: exact
    z = 3 * torch.randn(4, 1, 12, 12)
    for t, t_mid, t_next in ((979, 734, 489), (489, 367, 244), (244, 121, -1)):
        goal = model.target(z, *(torch.full((4,), v) for v in (t, t_mid, t_next)), 0, None)
        torch.testing.assert_close(goal, mu.expand(4, -1, -1, -1), atol=2e-4, rtol=0)


def test_the_merged_heads_start_as_the_teacher_weighted_by_alpha_squared(teacher):
    """x^ = sigma^2 x~ + alpha^2 x_eps with x~ zero at the start: alpha^2 times the teacher's own x at every
    timestep (so the teacher's x where alpha ~ 1), finite at the top of the schedule where x_eps is not."""
    from zoo.plugins.progressive_distillation import ProgressiveDistillation

    model = ProgressiveDistillation(teacher=str(teacher), parameterization="both").eval()
    ddpm = model.original_teacher()
    ab = model.schedule.alphas_cumprod.float()
    z, label = torch.randn(3, 1, 12, 12), torch.tensor([0, 4, 9])
    with torch.no_grad():
        for step in (0, 250, 979, 999):
            t = torch.full((3,), step)
            ours = model.student_x0(model.student.unet, z, t, label)
            teachers = predict_x0(ddpm.unet(z, t.float(), label), z, ab[t], "epsilon")
            torch.testing.assert_close(ours, ab[step] * teachers, atol=1e-5, rtol=1e-5)
            assert torch.isfinite(ours).all()


def test_the_x_head_gets_gradient_where_the_noise_is_high(teacher):
    """At the grid's top sigma^2 ~ 1: the loss reaches the new head (the teacher's head is scaled by alpha^2)."""
    from zoo.plugins.progressive_distillation import ProgressiveDistillation

    model = ProgressiveDistillation(teacher=str(teacher), parameterization="both")
    z, t = torch.randn(2, 1, 12, 12), torch.full((2,), 979)
    model.student_x0(model.student.unet, z, t, torch.tensor([1, 2])).pow(2).sum().backward()
    grad = model.student.unet.conv_out.weight.grad
    assert grad[1:].abs().sum() > 10 * grad[:1].abs().sum() > 0


def _gap_to_the_teacher(model) -> float:
    """Mean |the student's 8 DDIM steps - the original teacher's guided 16| from the same noise: what round 0
    distils (16 -> 8), on a fixed batch."""
    teacher = model.original_teacher()
    label = torch.arange(16) % 10
    x = torch.randn(16, 1, 12, 12, generator=torch.Generator().manual_seed(5))
    guided = guided_denoiser(
        teacher.unet, label, torch.full_like(label, teacher.null_label), teacher.hparams.guidance
    )
    with torch.no_grad():
        goal = ddim(guided, x, model.grid(16).flip(0), model.schedule)
        ours = ddim(
            lambda z, t: model.student_x0(model.student.unet, z, t.long(), label), x, model.grid(8).flip(0),
            model.schedule, prediction="sample",
        )  # fmt: skip
    return (ours - goal).abs().mean().item()


@pytest.mark.slow
def test_round_zero_through_the_cli_brings_the_students_steps_to_the_teachers(tmp_path, teacher):
    """One round (16 -> 8 steps) through the command line on the tiny teacher: the student's 8 steps move
    towards the teacher's guided 16 (they start apart: the student is unguided)."""
    from zoo.plugins.progressive_distillation import ProgressiveDistillation

    small = dict(start_steps=16, rounds=1, top_timestep=959)
    untrained = ProgressiveDistillation(teacher=str(teacher), **small).eval()
    cli = run_fit("--model", "progressive_distillation", "--model.teacher", str(teacher),
                  *(f"--model.{k}={v}" for k, v in small.items()), "--model.round_steps", "150",
                  "--model.lr", "0.0003", *QUIET, "--trainer.max_steps", "150",
                  "--trainer.default_root_dir", str(tmp_path))  # fmt: skip
    before, after = _gap_to_the_teacher(untrained), _gap_to_the_teacher(cli.model.eval())
    assert after < 0.7 * before, (before, after)

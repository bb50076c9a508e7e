"""`progressive_distillation`: the student's target against zoo's DDIM sampler (itself checked against
diffusers in test_diffusion_samplers.py), the nested grids, rounds and resumption through the command line,
and the exact resumption of rounds. Measured learning is not here yet: on the tiny teacher the round-0
student of an eps-network drifted from its teacher's 2N steps (docs/families/few_step.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from conftest import run_fit
from zoo.checkpoint import load_model
from zoo.diffusion import ddim, guided_denoiser

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
    t -> t' -> t'' (clipped x predictions): checked against zoo's DDIM sampler run by the teacher."""
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
            final = ddim(denoiser, z, steps, ddpm.schedule, clip_sample=True,
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
    full, half = tmp_path / "full", tmp_path / "half"
    cli = run_fit(*flags, "--trainer.max_steps", "4", "--trainer.default_root_dir", str(full))
    assert cli.datamodule.hparams.image_size == 12 and cli.datamodule.hparams.batch_size == 24
    assert int(cli.model.teacher_round) == 1
    run_fit(*flags, "--trainer.max_steps", "2", "--trainer.default_root_dir", str(half))
    run_fit(*flags, "--trainer.max_steps", "4", "--trainer.default_root_dir", str(half),
            "--ckpt_path", str(half / "checkpoints" / "last.ckpt"))  # fmt: skip
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(half / "checkpoints" / "last.ckpt", weights_only=False)
    assert b["global_step"] == 4
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    copy.unlink()
    model = load_model(full / "checkpoints" / "last.ckpt")
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

    def exact(round_, label):
        def eps(z, t):
            a = ab[t.long()].sqrt().float().view(-1, 1, 1, 1)
            return (z - a * mu) / (1 - a**2).sqrt()

        return eps

    model.teacher_denoiser = exact
    z = 3 * torch.randn(4, 1, 12, 12)
    for t, t_mid, t_next in ((979, 734, 489), (489, 367, 244), (244, 121, -1)):
        goal = model.target(z, *(torch.full((4,), v) for v in (t, t_mid, t_next)), 0, None)
        torch.testing.assert_close(goal, mu.expand(4, -1, -1, -1), atol=2e-4, rtol=0)

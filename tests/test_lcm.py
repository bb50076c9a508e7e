"""`lcm`: latent consistency distillation of an `ldm` (the sampler and scalings are tested against diffusers'
`LCMScheduler` in test_consistency.py), through the real command line on a tiny teacher, learning included: on
the recipe's grid (top 959: LCM's own top, 999, leaves the cosine schedule's eps network no x0) the student's
one-step map moves towards the teacher's guided ODE solution."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from conftest import QUIET, assert_resume_is_exact, run_fit
from zoo.checkpoint import load_model
from zoo.diffusion import ddim
from zoo.diffusion.consistency import lcm_scalings
from zoo.diffusion.parameterization import predict_x0


@pytest.fixture(scope="module")
def teacher(tiny_ldm: Path) -> Path:
    return tiny_ldm


def _text(model, prompts):
    return model.student.encode_text(prompts)


def test_the_guidance_embedding_starts_at_zero(teacher):
    """At the start the student is the teacher: its f is c_skip x + c_out (the teacher's conditional x0),
    whatever guidance scale it is told (the guidance projection starts at zero)."""
    from zoo.plugins.lcm import LCM

    student = LCM(teacher=str(teacher)).eval()
    ldm = load_model(teacher)
    x = torch.randn(3, 4, 8, 8)
    t = torch.tensor([999, 499, 19])
    text = _text(student, ["a red circle", "a blue square", "a green triangle"])
    with torch.no_grad():
        f = student.consistency(student.student.unet, x, t, torch.tensor([2.0, 5.0, 8.0]), text)
        x0 = predict_x0(ldm._unet(x, t.float(), text), x, ldm.schedule.alphas_cumprod[t], "epsilon")
    c_skip, c_out = lcm_scalings(t.double())
    expected = c_skip.float().view(-1, 1, 1, 1) * x + c_out.float().view(-1, 1, 1, 1) * x0
    torch.testing.assert_close(f, expected, atol=1e-5, rtol=1e-5)


def test_the_skip_step_solver_is_the_ddim_samplers_step(teacher):
    """The teacher's guided step from t to t - k equals the first step of zoo's DDIM sampler over the
    timesteps (t, t - k) with the same guided denoiser (diffusers-checked in test_diffusion_samplers.py)."""
    from zoo.diffusion import guided_denoiser
    from zoo.plugins.lcm import LCM

    student = LCM(teacher=str(teacher)).eval()
    ldm = student.teacher_model()
    x = torch.randn(2, 4, 8, 8)
    prompts = ["a red circle", "a blue square"]
    text, empty = _text(student, prompts), _text(student, ["", ""])
    t, t_prev = torch.tensor([519, 519]), torch.tensor([499, 499])
    ours = student.teacher_ddim_step(x, t, t_prev, torch.tensor([4.0, 4.0]), text, empty)
    captured = {}

    def capture(i, x_vp, alpha_bar):
        captured.setdefault(i, x_vp.clone())
        return x_vp

    with torch.no_grad():
        ddim(
            guided_denoiser(ldm._unet, text, empty, 4.0),
            x,
            torch.tensor([519, 499]),
            ldm.schedule,
            after_step=capture,
        )
    torch.testing.assert_close(ours, captured[0], atol=1e-5, rtol=1e-5)


def test_distillation_through_the_cli_is_self_contained(in_tmp, teacher):
    """`--model lcm --model.teacher CKPT` alone: the data is the teacher's (16x16 scenes, its split sizes),
    the checkpoint records the teacher's sha256, loads and samples in 1 and 4 steps with the teacher gone."""
    from zoo.evaluate import sha256_of
    from zoo.sample import main as sample

    copy = in_tmp / "teacher.ckpt"
    shutil.copy(teacher, copy)
    cli = run_fit("--model", "lcm", "--model.teacher", str(copy), *QUIET, "--trainer.max_steps", "3")
    assert cli.datamodule.hparams.image_size == 16 and cli.datamodule.hparams.num_train == 256
    assert cli.model.hparams.teacher_sha256 == sha256_of(copy)
    copy.unlink()
    ckpt = Path(cli.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
    model = load_model(ckpt)
    for steps in (1, 4):
        images = model.generate(
            2, condition="a red circle", steps=steps, generator=torch.Generator().manual_seed(0)
        )
        assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    out = in_tmp / "out"
    assert sample(
        [
            "--ckpt",
            str(ckpt),
            "--num",
            "2",
            "--prompt",
            "a red circle",
            "--steps",
            "4",
            "--guidance",
            "3",
            "--out",
            str(out),
        ]
    )


def test_a_missing_or_wrong_teacher_is_one_clear_line(in_tmp, teacher, capsys):
    from zoo.checkpoint import CheckpointError
    from zoo.plugins.lcm import LCM

    with pytest.raises(ValueError, match=r"lcm distils a trained ldm: pass --model\.teacher"):
        LCM()
    checkpoint = torch.load(teacher, weights_only=False)
    checkpoint["zoo"]["model"] = "ddpm"
    wrong = in_tmp / "ddpm.ckpt"
    torch.save(checkpoint, wrong)
    with pytest.raises(CheckpointError, match="needs one of the `ldm` family"):
        LCM(teacher=str(wrong))
    checkpoint["zoo"]["model"] = "ldm"
    checkpoint["hyper_parameters"]["objective"] = "flow"
    torch.save(checkpoint, wrong)
    with pytest.raises(ValueError, match="U-Net backbone and the diffusion objective"):
        LCM(teacher=str(wrong))


def _gap_to_the_teachers_ode(model, ldm) -> float:
    """Mean |f(x, 959, w = 4) - the teacher's guided DDIM from x over the whole skip-step grid (959, 939, ..,
    19, then x0)|: the map LCM distils, on a fixed batch of latents and prompts."""
    from zoo.diffusion import guided_denoiser

    x = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    prompts = ["a red circle", "a blue square", "a green triangle", "a yellow circle"] * 2
    text, empty = _text(model, prompts), _text(model, [""] * 8)
    with torch.no_grad():
        solution = ddim(guided_denoiser(ldm._unet, text, empty, 4.0), x, model.grid, ldm.schedule)
        f = model.consistency(model.student.unet, x, torch.full((8,), 959), torch.full((8,), 4.0), text)
    return (f - solution).abs().mean().item()


@pytest.mark.slow
def test_distillation_through_the_cli_approaches_the_teachers_ode_solution(in_tmp, teacher):
    """The recipe's grid (top 959) on the tiny teacher: the student's one-step map moves towards the
    teacher's guided many-step solution from the same latents."""
    from zoo.plugins.lcm import LCM

    untrained = LCM(teacher=str(teacher), top_timestep=959).eval()
    ldm = untrained.teacher_model()
    cli = run_fit("--model", "lcm", "--model.teacher", str(teacher), "--model.top_timestep", "959",
                  "--model.lr", "0.0005", "--model.warmup_steps", "10", *QUIET, "--trainer.max_steps", "150")  # fmt: skip
    before, after = _gap_to_the_teachers_ode(untrained, ldm), _gap_to_the_teachers_ode(cli.model.eval(), ldm)
    assert after < 0.8 * before, (before, after)


def test_resume_continues_exactly(tmp_path, teacher):
    """4 steps in one go, or 2 and 2 more from last.ckpt: the same weights, the target network's included."""
    flags = [
        "--model",
        "lcm",
        "--model.teacher",
        str(teacher),
        *QUIET,
        "--checkpoint.every_n_train_steps",
        "2",
    ]
    assert_resume_is_exact(flags, tmp_path, 4)

"""`flow_matching`: the family over the flow core (`zoo.diffusion.flow`, tested against torchcfm and
diffusers in test_flow_paths.py and test_flow_samplers.py), through the real command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import run_fit
from zoo.checkpoint import load_model

TINY = [
    "--model", "flow_matching",
    "--model.base_channels", "16", "--model.channel_mults", "[1, 2]", "--model.attention_levels", "[1]",
    "--model.num_heads", "2", "--model.lr", "0.002", "--model.warmup_steps", "20",
    "--data.image_size", "8", "--data.batch_size", "32",
    "--trainer.limit_val_batches", "2", "--trainer.val_check_interval", "null",
    "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false", "--samples.num_samples", "0", "--logger", "none",
]  # fmt: skip


def _val_loss(model, datamodule, batches: int = 4) -> float:
    model.eval()
    losses = []
    with torch.no_grad():
        for i, batch in enumerate(datamodule.val_dataloader()):
            if i == batches:
                break
            losses.append(float(model._loss(batch, torch.Generator().manual_seed(i))))
    return sum(losses) / len(losses)


@pytest.mark.slow
def test_learns_digits_through_the_cli_and_samples_with_every_sampler(in_tmp):
    """A tiny run of the real command: the validation loss falls well below the untrained network's
    (which outputs zeros: the loss of predicting no velocity is E|x1 - x0|^2, about 1.5), and the
    checkpoint samples with each ODE sampler and with guidance."""
    from zoo.plugins.flow_matching import FlowMatching

    cli = run_fit(*TINY, "--trainer.max_steps", "150")
    untrained = FlowMatching(**{k: v for k, v in cli.model.hparams.items() if not k.startswith("_")})
    before, after = _val_loss(untrained, cli.datamodule), _val_loss(cli.model, cli.datamodule)
    assert after < 0.6 * before, (before, after)
    ckpt = Path(cli.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
    model = load_model(ckpt)
    assert model.conditional and model.hparams.num_classes == 10
    for sampler in ("euler", "heun", "midpoint", "rk4", "dopri5"):
        images = model.generate(4, condition=[0, 1, 2, 3], sampler=sampler, steps=2, guidance=2.0,
                                generator=torch.Generator().manual_seed(0))  # fmt: skip
        assert images.shape == (4, 1, 8, 8) and torch.isfinite(images).all()


def test_unknown_options_name_the_choices():
    from zoo.plugins.flow_matching import FlowMatching

    with pytest.raises(ValueError, match="unknown path 'straight'; choose one of rectified, ot, vp"):
        FlowMatching(path="straight")
    with pytest.raises(ValueError, match="unknown sampler 'ddim'; choose one of euler, heun"):
        FlowMatching(sampler="ddim")
    model = FlowMatching(base_channels=8, channel_mults=(1,), attention_levels=(), num_heads=1)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        model.generate(1, steps=0)


def test_zero_network_gives_the_noise_and_guidance_one_calls_the_net_once_per_step():
    """At initialisation the U-Net's last convolution is zero, so the velocity is 0 and Euler returns the
    starting noise unchanged (x1 = x0): a closed form of the whole sampling path, image scaling included."""
    from zoo.plugins.flow_matching import FlowMatching

    model = FlowMatching(
        num_classes=10, base_channels=8, channel_mults=(1,), attention_levels=(), num_heads=1
    )
    calls = []
    model.net.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    images = model.generate(
        3, condition=[1, 2, 3], steps=4, guidance=1.0, generator=torch.Generator().manual_seed(5)
    )
    noise = torch.randn((3, 1, 16, 16), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(images, ((noise + 1) / 2).clamp(0, 1))
    assert calls == [3, 3, 3, 3]
    calls.clear()
    model.generate(3, condition=[1, 2, 3], steps=4, guidance=3.0)
    assert calls == [6, 6, 6, 6]  # conditional and unconditional in one batch per step


# --- reflow -------------------------------------------------------------------------------------

REFLOW_TINY = [
    "--model", "flow_matching", "--recipe", "reflow",
    "--model.reflow_pairs", "96", "--model.reflow_val_pairs", "32", "--model.reflow_steps", "4",
    "--model.warmup_steps", "1", "--model.lr", "0.002", "--data.batch_size", "32",
    "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "3",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--samples.num_samples", "0", "--logger", "none",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A flow_matching checkpoint of a tiny U-Net (8x8 digits) trained for 20 steps."""
    import os

    root = tmp_path_factory.mktemp("teacher")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        cli = run_fit(*TINY, "--trainer.max_steps", "20")
    finally:
        os.chdir(cwd)
    return root / cli.trainer.default_root_dir / "checkpoints" / "last.ckpt"


def test_reflow_through_the_cli_is_self_contained_and_samples_in_one_step(in_tmp, tiny_teacher):
    """`--recipe reflow --model.teacher CKPT` alone: the student takes the teacher's network (8x8, width 16,
    though the command's data is 16x16 and the default width 32) and weights, draws the pairs into
    <run>/reflow_pairs/, logs the straightness, records the teacher's sha256, and its checkpoint loads,
    resumes its pairs and samples in one step with the teacher file gone."""
    import shutil
    from types import SimpleNamespace

    from zoo.evaluate import sha256_of
    from zoo.sample import main as sample

    teacher = in_tmp / "teacher.ckpt"
    shutil.copy(tiny_teacher, teacher)
    cli = run_fit(*REFLOW_TINY, "--model.teacher", str(teacher), "--trainer.max_steps", "6")
    run = Path(cli.trainer.default_root_dir)
    assert sorted(p.name for p in (run / "reflow_pairs").iterdir()) == [
        "shard-000.safetensors",
        "val.safetensors",
    ]
    metrics = cli.trainer.callback_metrics
    assert {"val/straightness", "val/one_step_error", "val/loss"} <= set(metrics)
    hp = cli.model.hparams
    assert (hp.image_size, hp.base_channels, hp.num_classes) == (8, 16, 10)
    assert hp.teacher_sha256 == sha256_of(teacher)
    assert cli.model._pairs["image"].shape == (96, 1, 8, 8)
    assert cli.model._pairs["label"][:12].tolist() == [*range(10), 0, 1]  # spread evenly over the classes

    teacher.unlink()
    ckpt = run / "checkpoints" / "last.ckpt"
    student = load_model(ckpt)
    assert student.hparams.teacher_sha256 == hp.teacher_sha256
    shard = run / "reflow_pairs" / "shard-000.safetensors"
    stamp = shard.stat().st_mtime_ns
    trainer = SimpleNamespace(
        default_root_dir=str(run), strategy=SimpleNamespace(root_device=torch.device("cpu"))
    )
    student.prepare_fit(trainer, None, ckpt_path=str(ckpt))  # resuming: the shards are kept, no teacher read
    assert shard.stat().st_mtime_ns == stamp and len(student._pairs["image"]) == 96
    images = student.generate(4, condition=[0, 1, 2, 3], steps=1, generator=torch.Generator().manual_seed(0))
    assert images.shape == (4, 1, 8, 8) and torch.isfinite(images).all()
    written = sample(
        ["--ckpt", str(ckpt), "--num", "2", "--label", "3", "--steps", "1", "--out", str(in_tmp / "out")]
    )
    assert written


def test_reflow_teacher_must_be_a_flow_matching_checkpoint(in_tmp, tiny_teacher):
    from zoo.checkpoint import CheckpointError
    from zoo.plugins.flow_matching import FlowMatching

    checkpoint = torch.load(tiny_teacher, weights_only=True)
    checkpoint["zoo"]["model"] = "ddpm"
    wrong = in_tmp / "ddpm.ckpt"
    torch.save(checkpoint, wrong)
    with pytest.raises(CheckpointError) as info:
        FlowMatching(teacher=str(wrong))
    assert (
        str(info.value)
        == f"{wrong} is a checkpoint of the `ddpm` family; --model.teacher needs one of the `flow_matching` family"
    )


def test_reflow_straightens_a_curved_flow():
    """Liu et al.'s claim on a closed form: the exact rectified-flow velocity from N(0, I) to two points
    (+-2, 0) bends its paths; a small network trained on its rk4 couplings (`draw_pairs`, the loss with
    x0 = noise, as the family does) has far lower straightness and one-step error on the same noise."""
    from zoo.diffusion.flow import PATHS, conditional_flow_matching_loss
    from zoo.diffusion.reflow import draw_pairs, one_step_error, straightness

    points = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])

    def teacher(x, t):  # noqa: ANN001, ANN202  E[x1 - x0 | x_t] for x1 uniform on `points`
        t = torch.as_tensor(t, dtype=x.dtype).clamp(max=1 - 1e-4).reshape(-1, 1)
        logits = -((x[:, None] - t[..., None] * points) ** 2).sum(-1) / (2 * (1 - t) ** 2)
        mean = logits.softmax(-1) @ points
        return (mean - x) / (1 - t)

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 64),
        torch.nn.SiLU(),
        torch.nn.Linear(64, 64),
        torch.nn.SiLU(),
        torch.nn.Linear(64, 2),
    )

    def student(x, t, condition=None):  # noqa: ANN001, ANN202
        t = torch.as_tensor(t, dtype=x.dtype).expand(len(x))
        return net(torch.cat([x, t[:, None]], 1))

    noise, sample = draw_pairs(
        teacher, (2048, 2), sampler="rk4", steps=32, generator=torch.Generator().manual_seed(1)
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    path = PATHS["rectified"](0.0)
    for step in range(400):
        index = torch.randint(0, 2048, (256,), generator=torch.Generator().manual_seed(step))
        loss = conditional_flow_matching_loss(student, sample[index], path, x0=noise[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test_noise, test_sample = draw_pairs(
        teacher, (512, 2), sampler="rk4", steps=32, generator=torch.Generator().manual_seed(2)
    )
    before, after = straightness(teacher, test_noise), straightness(student, test_noise)
    assert after < 0.35 * before, (before, after)  # 1.22 -> 0.19 here
    assert one_step_error(student, test_noise, test_sample) < 0.3 * one_step_error(
        teacher, test_noise, test_sample
    )

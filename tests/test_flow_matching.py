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

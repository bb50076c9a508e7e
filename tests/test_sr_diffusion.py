"""The `sr_diffusion` family: output size, the noise-conditioning augmentation against its closed form (in
training and at sampling), the checks on the low-resolution input, and measured learning through the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import run_fit
from zoo.plugins.sr_diffusion import SRDiffusion

TINY = dict(
    in_channels=3, image_size=16, low_resolution=8, base_channels=8, channel_mults=(1, 2), num_heads=2,
    num_train_timesteps=100, sampling_steps=3, max_noise_level=0.6,
)  # fmt: skip

TINY_SR = [
    "--model", "sr_diffusion",
    "--data", "shapes",
    "--data.image_size", "16",
    "--data.max_objects", "2",
    "--data.num_train", "256",
    "--data.num_val", "32",
    "--data.num_test", "16",
    "--data.batch_size", "16",
    "--model.low_resolution", "8",
    "--model.base_channels", "16",
    "--model.channel_mults", "[1, 2]",
    "--model.bank_size", "24",  # more than a batch: filled over two
    "--model.lr", "0.002",
    "--model.warmup_steps", "10",
    "--model.sampling_steps", "3",
    "--trainer.limit_val_batches", "1",
    "--trainer.val_check_interval", "null",
    "--trainer.check_val_every_n_epoch", "100",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--samples.num_samples", "4",
    "--samples.every_n_steps", "1000",
    "--logger", "none",
    "--trainer.callbacks", "[]",  # no EMA of the recipe: 60 steps are measured, not an average lagging behind them
]  # fmt: skip


def closed_form_alpha_bar(s: float) -> float:
    """Nichol & Dhariwal's continuous cosine schedule, f(s) / f(0), written out here."""

    def f(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    return f(s) / f(0.0)


def upsampled_low_res(x: torch.Tensor, low: int, size: int) -> torch.Tensor:
    """The reference condition: a box filter down (integer factor), bicubic up, clamped to the data range."""
    factor = x.shape[-1] // low
    return F.interpolate(F.avg_pool2d(x, factor), size=(size, size), mode="bicubic").clamp(-1, 1)


def recording(model: SRDiffusion) -> list[dict[str, torch.Tensor]]:
    """Record every U-Net call's input and pooled (level) embedding."""
    calls: list[dict[str, torch.Tensor]] = []
    forward = model.unet.forward

    def spy(x, t, *args, **kwargs):
        calls.append(
            {"x": x.detach().clone(), "t": t.detach().clone(), "pooled": kwargs["pooled"].detach().clone()}
        )
        return forward(x, t, *args, **kwargs)

    model.unet.forward = spy
    return calls


def test_output_has_the_asked_size_and_range(one_thread):
    torch.manual_seed(0)
    for size, low in ((16, 8), (24, 8), (16, 4)):
        model = SRDiffusion(**{**TINY, "image_size": size, "low_resolution": low})
        out = model.generate(
            3, condition=torch.rand(3, 3, low, low), generator=torch.Generator().manual_seed(0)
        )
        assert out.shape == (3, 3, size, size)
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    one = model.generate(2, condition=torch.rand(1, 3, 4, 4))  # one image for all n
    assert one.shape == (2, 3, 16, 16)


def test_training_conditions_on_the_closed_form_noised_image_at_the_level_it_embeds(one_thread):
    torch.manual_seed(0)
    model = SRDiffusion(**TINY)
    calls = recording(model)
    x0 = torch.rand(4, 3, 16, 16) * 2 - 1
    loss, level = model._loss({"image": x0}, torch.Generator().manual_seed(7))
    assert torch.isfinite(loss)

    # the documented draw order, replayed: timesteps, x_t's noise, levels ~ U(0, max), augmentation noise
    g = torch.Generator().manual_seed(7)
    t = torch.randint(0, 100, (4,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    s = torch.rand(4, generator=g) * 0.6
    eps = torch.randn(x0.shape, generator=g)
    ab = torch.tensor([closed_form_alpha_bar(float(v)) for v in s]).view(4, 1, 1, 1)
    expected = ab.sqrt() * upsampled_low_res(x0, 8, 16) + (1 - ab).sqrt() * eps

    (call,) = calls
    torch.testing.assert_close(level, s)
    assert torch.equal(call["t"], t)
    abar_t = model.schedule.alphas_cumprod[t].float().view(4, 1, 1, 1)
    torch.testing.assert_close(call["x"][:, :3], abar_t.sqrt() * x0 + (1 - abar_t).sqrt() * noise)
    torch.testing.assert_close(call["x"][:, 3:], expected, atol=1e-5, rtol=1e-5)  # the noised condition
    assert float((call["x"][:, 3:] - upsampled_low_res(x0, 8, 16)).abs().mean()) > 0.05  # noise was added

    # the level is embedded and reaches the network: the pooled input is the levels' embedding, and the
    # output moves with the level alone (weights perturbed: zero-initialised layers hide the embedding at first)
    with torch.no_grad():
        torch.testing.assert_close(call["pooled"], model.level_embedding(s))
        assert not torch.allclose(call["pooled"][0], model.level_embedding(s[:1] + 0.3)[0])
        for p in model.unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        x = call["x"][:, :3]
        a, b = (model.denoise(x, t, call["x"][:, 3:], torch.full((4,), v)) for v in (0.0, 0.5))
    assert float((a - b).abs().max()) > 1e-4


def test_sampling_uses_the_fixed_level_for_every_step_and_records_it(one_thread):
    torch.manual_seed(0)
    model = SRDiffusion(**TINY)
    calls = recording(model)
    low = torch.rand(2, 3, 8, 8)
    model.generate(2, condition=low, generator=torch.Generator().manual_seed(3), noise_level=0.25, steps=3)
    eps = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))  # the first draw
    ab = closed_form_alpha_bar(0.25)
    expected = ab**0.5 * upsampled_low_res(low * 2 - 1, 8, 16) + (1 - ab) ** 0.5 * eps
    assert len(calls) == 3
    for call in calls:
        torch.testing.assert_close(call["x"][:, 3:], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(call["pooled"], model.level_embedding(torch.full((2,), 0.25)))
    assert model.last_sampling["noise_level"] == 0.25 and model.last_sampling["steps"] == 3

    calls.clear()  # the default level: the hyper-parameter; level 0: the clean upsampled image
    model.generate(2, condition=low, steps=1)
    assert model.last_sampling["noise_level"] == 0.2
    calls.clear()
    model.generate(2, condition=low, steps=1, noise_level=0.0)
    torch.testing.assert_close(
        calls[0]["x"][:, 3:], upsampled_low_res(low * 2 - 1, 8, 16), atol=1e-5, rtol=1e-5
    )


def test_low_resolution_input_is_checked(one_thread):
    model = SRDiffusion(**TINY)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\].*\(x \+ 1\) / 2"):
        model.generate(1, condition=torch.rand(1, 3, 8, 8) * 2 - 1)
    with pytest.raises(ValueError, match="upscales 3-channel 8x8 images to 16x16; got a condition of shape"):
        model.generate(1, condition=torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="no low-resolution image to upscale"):
        model.generate(1)  # untrained: no examples kept
    with pytest.raises(ValueError, match="low-resolution images"):
        model.generate(1, condition=["a red circle"])
    with pytest.raises(ValueError, match="noise_level must be in"):
        model.generate(1, condition=torch.rand(1, 3, 8, 8), noise_level=1.5)
    with pytest.raises(ValueError, match="below image_size"):
        SRDiffusion(**{**TINY, "low_resolution": 16})


def held_out_x0_error(model: SRDiffusion, images: torch.Tensor, t: int) -> float:
    """Mean squared error of the model's x0 estimate at timestep t (fixed noise), conditioned at level 0."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(images.shape, generator=g)
    ab = float(model.schedule.alphas_cumprod[t])
    x_t = ab**0.5 * images + (1 - ab) ** 0.5 * noise
    tt = torch.full((len(images),), t)
    with torch.no_grad():
        v = model.denoise(x_t, tt, upsampled_low_res(images, 8, 16), torch.zeros(len(images)))
    x0 = ab**0.5 * x_t - (1 - ab) ** 0.5 * v  # v-prediction (Salimans & Ho 2022)
    return float(((x0.clamp(-1, 1) - images) ** 2).mean())


def test_learns_through_the_cli_and_keeps_examples_for_unconditional_sampling(tmp_path: Path, one_thread):
    import zoo
    from zoo.checkpoint import load_model

    cli = run_fit(*TINY_SR, "--trainer.max_steps", "60", "--trainer.default_root_dir", str(tmp_path))
    level = float(cli.trainer.callback_metrics["train/noise_level"])
    assert 0.0 < level < 0.5  # recorded: levels are U(0, 0.5) by default
    trained = load_model(tmp_path / "checkpoints" / "last.ckpt")
    untrained = SRDiffusion(**{k: v for k, v in trained.hparams.items() if not k.startswith("_")})

    data = zoo.create_datamodule(
        "shapes", image_size=16, max_objects=2, num_train=256, num_val=32, num_test=16
    )
    data.setup("fit")
    held_out = torch.stack([data.test_set[i]["image"] for i in range(16)])
    # at a middle timestep the x0 estimate must be far better than the untrained one's (zero output: x0 = x_t
    # scaled), measured on held-out scenes; a harder bar (beating bicubic) is for benchmarks/sr_quality.py
    before, after = (held_out_x0_error(m, held_out, 500) for m in (untrained, trained))
    assert after < 0.5 * before, (before, after)

    assert int(trained.bank_count) == len(trained.bank)
    # distinct scenes, none repeated
    assert len(torch.unique(trained.bank.flatten(1), dim=0)) == len(trained.bank)
    out = trained.generate(3, generator=torch.Generator().manual_seed(0))  # from its kept low-res examples
    assert out.shape == (3, 3, 16, 16)

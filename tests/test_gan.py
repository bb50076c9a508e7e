"""The GAN families (`dcgan`, `lsgan`, `wgan_gp`, `sngan`, `stylegan`) and `zoo.nn.adversarial`:
closed forms of the objectives and penalties, spectral norm, the StyleGAN mechanisms (modulation,
truncation, style mixing), measured learning on digits, the EMA callback under manual
optimisation, divergence stops, the command line and exact resumption."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EMAWeightAveraging

import zoo
from conftest import run_fit
from zoo.metrics.image import frechet_distance
from zoo.module import NonFiniteLossError
from zoo.nn.adversarial import (
    diff_augment,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
    gradient_penalty,
    r1_penalty,
)
from zoo.plugins.gan import DCGAN, GAN, SNGAN, WGANGP, DivergedLossError
from zoo.plugins.stylegan import ModulatedConv2d, StyleGAN, mix_styles
from zoo.sample import main as sample

TINY = [
    "--data.image_size", "8",
    "--data.batch_size", "16",
    "--model.g_channels", "8",
    "--model.d_channels", "8",
    "--model.latent_dim", "16",
    "--trainer.limit_val_batches", "1",
    "--trainer.val_check_interval", "null",
    "--trainer.check_val_every_n_epoch", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--samples.num_samples", "10",
    "--logger", "none",
]  # fmt: skip


def _trainer(max_steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, **kwargs,
    )  # fmt: skip


# --- objectives and penalties ------------------------------------------------------------------


def test_objectives_match_their_formulas():
    r, f = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([-0.3, 0.8, 1.5])
    sig = torch.sigmoid
    bce = -(torch.log(sig(r))).mean() - torch.log(1 - sig(f)).mean()
    assert torch.allclose(discriminator_loss("nonsaturating", r, f), bce)
    smoothed = -(0.9 * torch.log(sig(r)) + 0.1 * torch.log(1 - sig(r))).mean() - torch.log(1 - sig(f)).mean()
    assert torch.allclose(discriminator_loss("nonsaturating", r, f, real_label=0.9), smoothed)
    assert torch.allclose(generator_loss("nonsaturating", f), -torch.log(sig(f)).mean())
    assert torch.allclose(
        discriminator_loss("lsgan", r, f), 0.5 * ((r - 1) ** 2).mean() + 0.5 * (f**2).mean()
    )
    assert torch.allclose(generator_loss("lsgan", f), 0.5 * ((f - 1) ** 2).mean())
    assert torch.allclose(discriminator_loss("wgan_gp", r, f), f.mean() - r.mean())
    hinge = torch.clamp(1 - r, min=0).mean() + torch.clamp(1 + f, min=0).mean()
    assert torch.allclose(discriminator_loss("hinge", r, f), hinge)
    assert torch.allclose(generator_loss("hinge", f), -f.mean())
    assert discriminator_loss("nonsaturating", torch.zeros(4), torch.zeros(4)).item() == pytest.approx(
        2 * math.log(2)
    )
    feats = [torch.ones(2, 3), torch.zeros(2, 5)]
    assert feature_matching_loss(feats, [torch.zeros(2, 3), torch.full((2, 5), 2.0)]).item() == 3.0
    with pytest.raises(ValueError, match="unknown GAN objective"):
        discriminator_loss("minimax", r, f)


def test_gradient_penalty_equals_the_formula_by_hand():
    # toy critic f(x) = 0.5 (a.x)^2 + b.x + sin(x_0): grad = (a.x) a + b + cos(x_0) e_0
    torch.manual_seed(0)
    a, b = torch.randn(6, requires_grad=True), torch.randn(6)
    critic = lambda x: 0.5 * (x.flatten(1) @ a) ** 2 + x.flatten(1) @ b + torch.sin(x.flatten(1)[:, 0])  # noqa: E731
    real, fake = torch.randn(5, 1, 2, 3), torch.randn(5, 1, 2, 3)
    eps = torch.rand(5, 1, 1, 1)
    gp = gradient_penalty(critic, real, fake, eps=eps)

    x_hat = (eps * real + (1 - eps) * fake).flatten(1).detach()
    e0 = torch.zeros(6)
    e0[0] = 1
    grads = (x_hat @ a.detach())[:, None] * a.detach() + b + torch.cos(x_hat[:, :1]) * e0
    expected = ((grads.norm(dim=1) - 1) ** 2).mean()
    assert torch.allclose(gp, expected, atol=1e-5)
    # and per sample with torch.autograd.grad, one interpolate at a time
    by_autograd = []
    for i in range(5):
        x = x_hat[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(critic(x.view(1, 1, 2, 3)).sum(), x)
        by_autograd.append((g.norm() - 1) ** 2)
    assert torch.allclose(gp, torch.stack(by_autograd).mean(), atol=1e-5)
    # the penalty is differentiable w.r.t. the critic's weights (create_graph)
    gp.backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_r1_penalty_of_a_linear_critic_is_its_squared_weight_norm():
    w = torch.randn(12)
    critic = lambda x: x.flatten(1) @ w  # noqa: E731
    real = torch.randn(4, 3, 2, 2)
    penalty, out = r1_penalty(critic, real)
    assert penalty.item() == pytest.approx(float(w.pow(2).sum()), rel=1e-5)
    assert torch.allclose(out, real.flatten(1) @ w)


def test_diff_augment_is_differentiable_random_per_sample_and_reproducible():
    x = torch.rand(8, 1, 16, 16, requires_grad=True)
    out = diff_augment(x, "color,translation,cutout", generator=torch.Generator().manual_seed(1))
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # G's gradient passes through
    again = diff_augment(x, "color,translation,cutout", generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    same = torch.rand(1, 1, 16, 16).expand(8, -1, -1, -1)
    moved = diff_augment(same, "translation", generator=torch.Generator().manual_seed(2))
    assert len({tuple(m.flatten().tolist()) for m in moved}) > 1  # a new draw per sample
    # cutout with ratio 0.5 zeroes exactly a quarter of the pixels of each image
    cut = diff_augment(torch.ones(8, 3, 16, 16), "cutout", generator=torch.Generator().manual_seed(3))
    assert torch.all((cut == 0).float().mean(dim=(1, 2, 3)) == 0.25)
    # translation by at most 1/8 of the size, zero-padded: the content is shifted, not warped
    one = torch.zeros(1, 1, 16, 16)
    one[0, 0, 8, 8] = 1.0
    shifted = diff_augment(
        one.expand(16, -1, -1, -1), "translation", generator=torch.Generator().manual_seed(4)
    )
    assert torch.all(shifted.sum(dim=(1, 2, 3)) == 1.0)
    ys, xs = torch.nonzero(shifted[:, 0], as_tuple=True)[1:]
    assert (ys - 8).abs().max() <= 2 and (xs - 8).abs().max() <= 2
    assert torch.equal(diff_augment(x, ""), x)
    with pytest.raises(ValueError, match="unknown DiffAugment policy"):
        diff_augment(x, "rotate")


# --- networks -----------------------------------------------------------------------------------


def test_spectral_norm_makes_the_top_singular_value_one():
    torch.manual_seed(0)
    model = SNGAN(in_channels=1, image_size=16, num_classes=10)
    d = model.discriminator.train()
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    for _ in range(30):  # one power iteration per training forward
        d(x, y)
    normalised = [m for m in d.modules() if hasattr(m, "parametrizations")]
    assert len(normalised) == 4  # two convolutions, the head and the class embedding
    for module in normalised:
        weight = module.weight.detach()
        sigma = torch.linalg.svdvals(weight.reshape(weight.shape[0], -1))[0]
        assert sigma.item() == pytest.approx(1.0, abs=0.02), type(module).__name__
        original = module.parametrizations.weight.original.detach()
        raw_sigma = torch.linalg.svdvals(original.reshape(original.shape[0], -1))[0]
        assert abs(raw_sigma.item() - 1.0) > 0.1  # so the normalisation did something
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())


def test_family_defaults():
    w, s, dc = WGANGP(), SNGAN(), DCGAN()
    assert (w.hparams.objective, w.hparams.n_critic, w.hparams.gp_weight, w.hparams.d_norm) == (
        "wgan_gp",
        5,
        10.0,
        "none",
    )
    assert not any(
        isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)) for m in w.discriminator.modules()
    )
    assert (s.hparams.objective, s.hparams.spectral_norm) == ("hinge", True)
    assert dc.hparams.objective == "nonsaturating"
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in dc.discriminator.modules())


def test_conditional_batch_norm_and_projection_use_the_label():
    torch.manual_seed(0)
    model = DCGAN(in_channels=1, image_size=8, num_classes=10, g_channels=8, d_channels=8).eval()
    norm = model.generator.norms[0]
    torch.nn.init.normal_(norm.gain.weight)
    z = torch.randn(1, 64).expand(2, -1)
    with torch.no_grad():
        images = model.generator(z, torch.tensor([3, 4]))
    assert not torch.allclose(images[0], images[1])  # same z, different class
    x = torch.randn(1, 1, 8, 8).expand(2, -1, -1, -1)
    d = model.discriminator
    with torch.no_grad():
        h = d.features(x).flatten(1)
        out = d(x, torch.tensor([3, 4]))
    # D(x, y) = linear(h) + <embed(y), h>, by hand
    expected = d.head(h).squeeze(1) + (d.embed.weight[[3, 4]] * h).sum(1)
    assert torch.allclose(out, expected, atol=1e-5)


def test_dcgan_truncation_zero_gives_one_image_per_class():
    model = DCGAN(in_channels=1, image_size=8, num_classes=10, g_channels=8, d_channels=8)
    images = model.generate(6, condition=[2], generator=torch.Generator().manual_seed(0), truncation=0.0)
    assert torch.allclose(images, images[:1].expand(6, -1, -1, -1))
    varied = model.generate(6, condition=[2], generator=torch.Generator().manual_seed(0), truncation=0.7)
    assert not torch.allclose(varied, varied[:1].expand(6, -1, -1, -1))
    with torch.no_grad():  # psi = 0 is G(0, y)
        mean_image = (model.eval().generator(torch.zeros(1, 64), torch.tensor([2])) + 1) / 2
    assert torch.allclose(images[0], mean_image[0], atol=1e-6)


def test_modulated_convolution_equals_per_sample_demodulated_weights():
    torch.manual_seed(0)
    conv = ModulatedConv2d(6, 5, 3, w_dim=8)
    x, w = torch.randn(4, 6, 7, 7), torch.randn(4, 8)
    assert torch.allclose(conv(x, w), conv.grouped_forward(x, w), atol=1e-5)
    # demodulated: for unit-variance i.i.d. input the output has about unit variance, whatever the style
    big = conv(torch.randn(64, 6, 16, 16), 10 * torch.randn(64, 8))
    assert 0.7 < big.std().item() < 1.3


def test_stylegan_truncation_zero_gives_the_mean_w_image_for_every_z():
    torch.manual_seed(0)
    model = StyleGAN(in_channels=1, image_size=16, num_classes=0)
    g = model.generator
    # the tracked mean: a training forward moves w_avg towards the batch mean by (1 - beta)
    g.train()
    z = torch.randn(32, 64)
    with torch.no_grad():
        w = g.mapping(z)
        g.ws(z)
    assert torch.allclose(g.w_avg, (1 - 0.995) * w.mean(0), atol=1e-6)
    g.w_avg.copy_(torch.randn(64))  # as if tracked over a long training run
    images = model.generate(8, generator=torch.Generator().manual_seed(1), truncation=0.0, noise_mode="const")
    with torch.no_grad():
        ws = g.w_avg.view(1, 1, -1).expand(1, g.num_ws, -1)
        mean_w_image = (g.eval().synthesis(ws, noise_mode="const") + 1) / 2
    assert torch.allclose(images, mean_w_image.clamp(0, 1).expand(8, -1, -1, -1), atol=1e-5)
    free = model.generate(8, generator=torch.Generator().manual_seed(1), truncation=1.0, noise_mode="const")
    assert not torch.allclose(free, free[:1].expand(8, -1, -1, -1), atol=1e-3)


def test_style_mixing_sends_coarse_and_fine_layers_their_own_w():
    torch.manual_seed(0)
    model = StyleGAN(in_channels=1, image_size=16, num_classes=0).eval()
    g = model.generator
    w1, w2 = torch.randn(2, 64), torch.randn(2, 64)
    crossover = 3  # w indices 0-2: the 4x4 conv, 4x4 to_rgb / first 8x8 conv, second 8x8 conv
    seen: list[torch.Tensor] = []
    affines = [layer.conv.affine for block in g.synthesis.blocks for layer in block]
    hooks = [a.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0])) for a in affines]
    with torch.no_grad():
        mixed, mixed_features = g.synthesis(
            mix_styles(w1, w2, g.num_ws, crossover), "const", return_features=True
        )
    for h in hooks:
        h.remove()
    assert len(seen) == g.num_ws - 1  # five convolutions (the last w feeds the final to_rgb)
    for i, w_in in enumerate(seen):
        assert torch.equal(w_in, w1 if i < crossover else w2), i
    with torch.no_grad():
        pure1, features1 = g.synthesis(w1.unsqueeze(1).repeat(1, g.num_ws, 1), "const", return_features=True)
        pure2 = g.synthesis(w2.unsqueeze(1).repeat(1, g.num_ws, 1), "const")
    # coarse resolution (4x4) comes from w1 alone, fine ones are changed by w2
    assert torch.equal(mixed_features[0], features1[0])
    assert not torch.allclose(mixed_features[2], features1[2])
    assert not torch.allclose(mixed, pure1) and not torch.allclose(mixed, pure2)
    # in training, style mixing with probability 1 gives the layers two different w's
    g.train()
    g.style_mixing = 1.0
    seen.clear()
    hooks = [a.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0])) for a in affines]
    with torch.no_grad():
        g(torch.randn(2, 64))
    for h in hooks:
        h.remove()
    assert not torch.equal(seen[0], seen[-1])


# --- learning -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits8():
    L.seed_everything(0)
    data = zoo.create_datamodule("digits", image_size=8, batch_size=32)
    data.setup()
    real = torch.stack([data.train_set[i]["image"] for i in range(len(data.train_set))])
    # a fixed random feature space, independent of every GAN: two random conv layers, pooled
    torch.manual_seed(123)
    features = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.Tanh(), torch.nn.AvgPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
    ).requires_grad_(False)  # fmt: skip
    return data, features, features(real)


SMALL = {"g_channels": 32, "d_channels": 32}


@pytest.mark.parametrize(
    ("family", "options", "batches"),
    [
        ("dcgan", SMALL, 300),
        ("lsgan", SMALL, 300),
        ("sngan", SMALL, 300),
        ("wgan_gp", {**SMALL, "lr_g": 2e-4, "lr_d": 2e-4}, 600),  # 120 G steps at n_critic 5
        ("stylegan", {}, 150),
    ],
)
def test_each_family_moves_fake_features_towards_the_real_ones(digits8, family, options, batches):
    data, features, real_features = digits8
    L.seed_everything(0)
    model = zoo.create_model(family, in_channels=1, image_size=8, num_classes=10, **options)

    def distance() -> float:
        fake = model.generate(len(real_features), generator=torch.Generator().manual_seed(0)) * 2 - 1
        return frechet_distance(real_features, features(fake))

    before = distance()
    _trainer(batches + batches // model.hparams.n_critic).fit(model, data)
    after = distance()
    # measured here: dcgan 1.67 -> 0.08, wgan_gp 1.67 -> 0.27, stylegan 7.8 -> 0.1 (8x8, seed 0)
    assert after * 3 < before and after < 0.5, (before, after)


# --- training mechanics -------------------------------------------------------------------------


def test_n_critic_schedule_and_what_max_steps_counts(digits8):
    data = digits8[0]
    model = WGANGP(in_channels=1, image_size=8, num_classes=10, g_channels=8, d_channels=8, n_critic=5)
    trainer = _trainer(12)  # 12 optimiser steps = 10 batches: 10 critic + 2 generator steps
    trainer.fit(model, data)
    opt_g, opt_d = model.optimizers()
    steps = lambda opt: int(next(iter(opt.optimizer.state.values()))["step"])  # noqa: E731
    assert (steps(opt_d), steps(opt_g), trainer.global_step) == (10, 2, 12)
    assert trainer.fit_loop.epoch_loop.total_batch_idx + 1 == 10


def test_ema_callback_averages_the_weights_under_manual_optimisation(digits8):
    data = digits8[0]
    model = DCGAN(in_channels=1, image_size=8, num_classes=10, g_channels=8, d_channels=8)
    history: list[torch.Tensor] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            history.append(pl_module.generator.fc.weight.detach().clone())

    _trainer(8, callbacks=[Record(), EMAWeightAveraging(decay=0.5)]).fit(model, data)
    assert len(history) == 4  # one update per batch, after both optimisers stepped
    expected = history[0]
    for w in history[1:]:
        expected = 0.5 * expected + 0.5 * w
    # at the end of training the callback copies the average into the model
    assert torch.allclose(model.generator.fc.weight, expected, atol=1e-6)
    assert not torch.allclose(model.generator.fc.weight, history[-1])


class NaNAfterOneBatch(DCGAN):
    def training_step(self, batch, batch_idx):
        if self.global_step >= 2:
            batch = {**batch, "image": batch["image"] * float("nan")}
        return super().training_step(batch, batch_idx)


def test_nan_loss_stops_with_a_message_and_keeps_finite_weights(in_tmp, fake_dists):
    fake_dists.add(
        "nan-gan",
        {"zoo.models": {"nan_gan": "nan_gan_mod:NaNGAN"}},
        {"nan_gan_mod": "from test_gan import NaNAfterOneBatch as NaNGAN\n"},
    )
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 2"):
        run_fit("--model", "nan_gan", "--data", "digits", *TINY, "--trainer.max_steps", "10")
    kept = next(Path("runs/nan_gan").glob("*/checkpoints/on_exception.ckpt"))
    state = torch.load(kept, weights_only=True)
    assert state["global_step"] == 2
    weights = state.get("current_model_state", state["state_dict"])
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_exploding_loss_stops_with_a_message(in_tmp):
    with pytest.raises(DivergedLossError, match="beyond max_loss 0.001.*diverged"):
        run_fit("--model", "lsgan", *TINY, "--model.max_loss", "0.001", "--trainer.max_steps", "10")
    # the loss is beyond 0.001 at the very first step: nothing was trained, so nothing is kept (a NaN
    # after some steps keeps its checkpoint: test_nan_loss_stops_with_a_message_and_keeps_finite_weights)
    assert not list(Path("runs/lsgan").glob("*/checkpoints/on_exception.ckpt"))


def test_cli_trains_and_samples_with_label_and_truncation(in_tmp):
    for family in ("dcgan", "stylegan"):
        extra = ["--model.max_channels", "16"] if family == "stylegan" else []
        cli = run_fit("--model", family, *TINY, *extra, "--trainer.max_steps", "4")
        assert cli.model.hparams.num_classes == 10 and cli.model.conditional  # linked from digits
        assert cli.model.hparams.image_size == 8 and cli.trainer.global_step == 4
        run = Path(cli.trainer.default_root_dir)
        assert (run / "samples" / "samples_step000004.png").is_file()
        ckpt = run / "checkpoints" / "last.ckpt"
        out = in_tmp / f"samples_{family}"
        sample(["--ckpt", str(ckpt), "--num", "3", "--out", str(out), "--label", "3", "--truncation", "0.7"])
        assert len(list(out.glob("*.png"))) == 4  # three samples and the grid
    with pytest.raises(SystemExit, match="labels must lie in 0..9"):
        sample(["--ckpt", str(ckpt), "--num", "1", "--out", str(in_tmp / "x"), "--label", "12"])
    with pytest.raises(SystemExit, match="does not take --steps"):
        sample(["--ckpt", str(ckpt), "--num", "1", "--out", str(in_tmp / "x"), "--steps", "3"])


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_from_last_ckpt_is_exact(in_tmp):
    # wgan_gp with n_critic 2, DiffAugment and the recipe's EMA: stopping at global step 4 is after 3
    # batches, in the middle of a D/D/G cycle; the resumed run must continue the cycle, the loader,
    # the augmentation and interpolation draws, and the EMA exactly.
    common = [
        "--model", "wgan_gp", *TINY, "--model.n_critic", "2", "--model.diff_augment", "color,translation,cutout",
        "--seed_everything", "3", "--checkpoint.every_n_train_steps", "1",
    ]  # fmt: skip
    straight = run_fit(*common, "--trainer.max_steps", "10")
    first = run_fit(*common, "--trainer.max_steps", "4")
    last = Path(first.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4
    resumed = run_fit(*common, "--trainer.max_steps", "10", "--ckpt_path", str(last))
    assert resumed.trainer.global_step == 10
    a, b = _params(straight.model), _params(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert not torch.equal(a["generator.fc.weight"], _params(first.model)["generator.fc.weight"])


def test_generate_contract():
    model = GAN(in_channels=3, image_size=16, num_classes=0, g_channels=8, d_channels=8)
    images = model.generate(5, generator=torch.Generator().manual_seed(0))
    assert images.shape == (5, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    again = model.generate(5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(images, again) and model.training  # the base class restores train mode
    with pytest.raises(ValueError, match="unconditional"):
        model.generate(2, condition=[1])
    with pytest.raises(ValueError, match="power of two"):
        GAN(image_size=24)
    assert F.mse_loss(images, again) == 0

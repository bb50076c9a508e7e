"""Normalizing flows (`zoo.nn.flows`, `zoo.flow_family`; families nice, realnvp, glow) and `bits_per_dim`.

Checked against closed forms and brute force, never against the code's own output: every layer's inverse, its
log-determinant against `slogdet` of its autograd Jacobian, the whole model's log-density against the change of
variables through its Jacobian, a linear flow's density against the Gaussian it is, a nonlinear 2D flow's density
integrating to one, ActNorm's data-dependent initialisation, the dequantisation's bits; then a realnvp learning
through `zoo.fit`, editing through `zoo.sample` and `bits_per_dim` through `zoo.evaluate`. Tiny sizes throughout.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import fit_in
from zoo import registry
from zoo.cli import UsageError
from zoo.nn.flows import (
    ActNorm,
    Coupling,
    FlowModel,
    FlowSequence,
    InvConv1x1,
    ReverseChannels,
    SplitPrior,
    Squeeze,
    TopPrior,
    bin_centres,
    bits_per_dim,
    dequantize,
    standard_normal_log_prob,
    to_images,
)


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Tiny tensors: one intra-op thread (see conftest.one_thread)."""


def _randomise(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its (often zero) initial value, so no layer is tested as the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


# (name, layer factory, channels) for inputs (B, channels, 4, 4)
LAYERS = [
    ("squeeze", lambda c: Squeeze(), 2),
    ("reverse", lambda c: ReverseChannels(), 3),
    ("actnorm", lambda c: ActNorm(c), 3),
    ("conv1x1", lambda c: InvConv1x1(c), 4),
    ("split_prior", lambda c: SplitPrior(c), 4),
    ("top_prior", lambda c: TopPrior(c, 4), 2),
    *[
        (f"{kind}_{mask}_{parity}", lambda c, k=kind, m=mask, p=parity: Coupling(c, 8, k, m, p), 3)
        for kind in ("additive", "affine")
        for mask in ("checkerboard", "channel")
        for parity in (0, 1)
    ],
]


def _layer(factory, channels: int, dtype: torch.dtype) -> torch.nn.Module:  # noqa: ANN001
    torch.manual_seed(0)
    layer = _randomise(factory(channels)).to(dtype)
    if isinstance(layer, ActNorm):  # initialise on other data first: the check is of the initialised layer
        layer(torch.randn(8, channels, 4, 4, dtype=dtype) * 2 + 1)
    return layer


@pytest.mark.parametrize(("name", "factory", "channels"), LAYERS, ids=[n for n, *_ in LAYERS])
def test_every_layer_inverts_its_forward(name, factory, channels):
    layer = _layer(factory, channels, torch.float32)
    x = torch.randn(5, channels, 4, 4, generator=torch.Generator().manual_seed(1))
    z, logdet = layer(x)
    assert z.numel() == x.numel() and logdet.shape == (5,)
    assert torch.allclose(layer.inverse(z), x, atol=1e-4)


@pytest.mark.parametrize(("name", "factory", "channels"), LAYERS, ids=[n for n, *_ in LAYERS])
def test_every_layer_logdet_is_slogdet_of_its_jacobian(name, factory, channels):
    layer = _layer(factory, channels, torch.float64)
    x = torch.randn(1, channels, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    jacobian = torch.autograd.functional.jacobian(lambda v: layer(v.view_as(x))[0].flatten(), x.flatten())
    sign, logabsdet = torch.linalg.slogdet(jacobian)
    assert sign != 0
    assert layer(x)[1].item() == pytest.approx(logabsdet.item(), abs=1e-4)


# FlowModel configurations: the three families' layouts, and Glow with a class-conditional prior
MODELS = {
    "nice": dict(layout="realnvp", levels=1, steps=2, coupling="additive", permutation="none", actnorm=False),
    "realnvp": dict(layout="realnvp", levels=2, steps=2, coupling="affine", permutation="none", actnorm=True),
    "glow": dict(layout="glow", levels=2, steps=2, coupling="affine", permutation="conv1x1", actnorm=True),
    "glow_reverse": dict(layout="glow", levels=2, steps=2, permutation="reverse", actnorm=False),
    "glow_classes": dict(layout="glow", levels=2, steps=2, permutation="conv1x1", num_classes=3),
}


def _model(name: str, dtype: torch.dtype = torch.float32, channels: int = 1, size: int = 4) -> FlowModel:
    torch.manual_seed(0)
    model = FlowModel(channels, size, hidden=8, **MODELS[name]).to(dtype)
    model(torch.rand(6, channels, size, size, dtype=dtype) * 2 - 1, torch.arange(6) % 3)  # ActNorm's init
    return _randomise(model, scale=0.1)


@pytest.mark.parametrize("name", MODELS)
def test_the_whole_model_inverts_and_its_density_is_the_change_of_variables(name):
    model = _model(name, torch.float64)
    label = torch.tensor([1]) if model.num_classes else None
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    code = model.encode(x, label)
    assert code.shape == (1, 16)
    assert torch.allclose(model.decode(code, label), x, atol=1e-4)
    # log p(x) = log N(code; 0, I) + log |det d code / dx|, the Jacobian by autograd through every level
    jacobian = torch.autograd.functional.jacobian(lambda v: model.encode(v.view_as(x), label)[0], x.flatten())
    expected = standard_normal_log_prob(code) + torch.linalg.slogdet(jacobian)[1]
    assert model.log_prob(x, label).item() == pytest.approx(expected.item(), abs=1e-4)


def test_batches_invert_in_float32_and_sampling_decodes_temperature_scaled_noise():
    model = _model("glow", channels=3, size=8)
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    assert torch.allclose(model.decode(model.encode(x)), x, atol=1e-4)
    generator = torch.Generator().manual_seed(0)
    samples = model.sample(3, temperature=0.5, generator=generator)
    noise = torch.randn((3, model.num_dims), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(model.encode(samples), 0.5 * noise, atol=1e-4)


def test_a_class_conditional_models_marginal_averages_its_classes():
    model = _model("glow_classes")
    x = torch.rand(5, 1, 4, 4) * 2 - 1
    per_class = torch.stack([model.log_prob(x, torch.full((5,), y)) for y in range(3)])
    assert torch.allclose(model.log_prob(x), per_class.exp().mean(0).log(), atol=1e-4)


def test_actnorm_standardises_its_first_batch_and_a_reload_keeps_its_parameters():
    x = (
        torch.randn(16, 3, 5, 5) * torch.tensor([0.5, 2.0, 7.0])[:, None, None]
        + torch.tensor([-3.0, 0.0, 4.0])[:, None, None]
    )
    layer = ActNorm(3)
    z, _ = layer(x)
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    reloaded = ActNorm(3)
    reloaded.load_state_dict(layer.state_dict())
    assert bool(reloaded.initialized)
    z_other, _ = reloaded(torch.randn(16, 3, 5, 5))  # another batch: no second initialisation
    assert torch.equal(reloaded.bias, layer.bias) and torch.equal(reloaded.log_scale, layer.log_scale)
    assert not torch.allclose(z_other.mean((0, 2, 3)), torch.zeros(3), atol=1e-2)


def test_a_linear_2d_flow_has_the_density_of_its_gaussian():
    """ActNorm, a 1x1 convolution and the top prior on 2D points (B, 2, 1, 1) are affine: x is Gaussian."""
    torch.manual_seed(0)
    dtype = torch.float64
    flow = FlowSequence([ActNorm(2), InvConv1x1(2)]).to(dtype)
    flow[0](torch.randn(64, 2, 1, 1, dtype=dtype) * 3)
    prior = _randomise(TopPrior(2, 1), scale=0.4).to(dtype)
    x = torch.randn(100, 2, 1, 1, dtype=dtype) * 2
    z, logdet = flow(x)
    eps, prior_logdet = prior(z)
    log_px = standard_normal_log_prob(eps) + logdet + prior_logdet
    # eps = M x + k with M = diag(1/sigma) W diag(s): x ~ N(-M^-1 k, M^-1 M^-T)
    s, b = flow[0].log_scale.flatten().exp(), flow[0].bias.flatten()
    mean, log_sigma = prior.mean_and_log_scale(1)
    mean, sigma = mean.flatten(), log_sigma.flatten().exp()
    w = flow[1].weight().detach()
    m = torch.diag(1 / sigma) @ w @ torch.diag(s)
    k = torch.diag(1 / sigma) @ (w @ (s * b) - mean)
    m_inv = torch.linalg.inv(m)
    gaussian = torch.distributions.MultivariateNormal(-(m_inv @ k), covariance_matrix=m_inv @ m_inv.T)
    assert torch.allclose(log_px, gaussian.log_prob(x.flatten(1)).detach(), atol=1e-6)


def test_a_nonlinear_2d_flows_density_integrates_to_one():
    torch.manual_seed(0)
    flow = FlowSequence([ActNorm(2), InvConv1x1(2), Coupling(2, 16, "affine", "channel", 0),
                         InvConv1x1(2), Coupling(2, 16, "affine", "channel", 1)]).double()  # fmt: skip
    _randomise(flow, scale=0.3)
    flow[0].initialized.fill_(False)  # standardise what enters, so the density's tails stay inside the grid
    flow[0](torch.randn(256, 2, 1, 1, dtype=torch.float64))
    step = 0.08
    axis = torch.arange(-8, 8, step, dtype=torch.float64) + step / 2
    grid = torch.cartesian_prod(axis, axis)[:, :, None, None]
    with torch.no_grad():
        z, logdet = flow(grid)
        log_px = standard_normal_log_prob(z) + logdet
    assert log_px.exp().sum().item() * step**2 == pytest.approx(1.0, abs=1e-4)
    assert logdet.std() > 0.05  # not an affine map in disguise: the couplings' log-determinants vary


def test_uniform_dequantisation_and_bits_per_dim():
    pixels = torch.arange(256.0)
    x = dequantize(pixels.expand(50, 256), torch.Generator().manual_seed(0))
    assert x.min() >= -1 and x.max() < 1
    assert torch.equal(to_images(x), (pixels / 255).expand(50, 256))  # each draw stays in its pixel's cell
    assert torch.equal(to_images(bin_centres(pixels)), pixels / 255)
    # an overflowed decode (an edit far off the data) still comes back as an image
    overflowed = to_images(torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30]))
    assert torch.equal(overflowed, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    # a density uniform on [-1, 1)^D is 2^-D: every one of the 256 levels equally likely, 8 bits
    assert bits_per_dim(torch.tensor(-64 * math.log(2.0)), 64).item() == pytest.approx(8.0)


def test_the_discretized_laplace_of_the_vae_bound_is_a_distribution_over_the_pixel_levels():
    from zoo.plugins.vae import discretized_laplace_log_likelihood

    x = torch.arange(256, dtype=torch.float64) / 255 * 2 - 1
    for mean, scale in ((0.1, 0.01), (-0.97, 0.2), (0.5, 3.0), (1.3, 0.005)):
        log_p = discretized_laplace_log_likelihood(x, torch.tensor(mean, dtype=torch.float64), scale)
        assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
        laplace = torch.distributions.Laplace(torch.tensor(mean, dtype=torch.float64), scale)
        inner = laplace.cdf(x[1:-1] + 1 / 255) - laplace.cdf(x[1:-1] - 1 / 255)
        visible = inner > 1e-12
        assert torch.allclose(log_p[1:-1][visible], inner[visible].log(), atol=1e-6)
        assert torch.isfinite(log_p).all()  # far bins: log probabilities, not log 0


def test_bits_per_dim_metric_for_vae_and_ddpm_bounds_and_a_family_without_one():
    from zoo.metrics.registry import MetricContext, get_metric

    metric = get_metric("bits_per_dim", "image")
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    vae = registry.get_model_class("vae")(in_channels=1, image_size=8, base_channels=8)
    ddpm = registry.get_model_class("ddpm")(
        in_channels=1, image_size=8, num_classes=2, base_channels=8, channel_mults=(1,), attention_levels=(),
        num_train_timesteps=10,
    )  # fmt: skip
    for model in (vae, ddpm):
        value = metric.fn(MetricContext(real=images, model=model, batch_size=2))["bits_per_dim"]
        assert math.isfinite(value) and value > 0, type(model).__name__
    with pytest.raises(ValueError, match="bits_per_dim needs a family with a likelihood"):
        metric.fn(MetricContext(real=images, model=object()))


def test_a_class_conditional_glow_samples_edits_and_previews():
    torch.manual_seed(0)
    glow = registry.get_model_class("glow")(
        image_size=8, num_classes=3, class_conditional=True, levels=2, steps_per_level=1, hidden_channels=8
    )
    images, labels = torch.rand(12, 1, 8, 8), torch.arange(12) % 3
    glow.measure_label_means(images, labels)
    assert glow.label_code_counts.tolist() == [4, 4, 4]
    generator = torch.Generator().manual_seed(0)
    samples = glow.generate(4, condition=[2], generator=generator, temperature=0.5)
    assert samples.shape == (4, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 1
    # strength 0 with the same label: the 8-bit image itself
    assert torch.equal(glow.edit(images[:2], 1, 1, 0.0), (images[:2] * 255).round() / 255)
    sweep = glow.generate(3, init=images[:1], edit_from=0, edit_to=2, edit_strength=1.0)
    assert sweep.shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="edit_from and edit_to"):
        glow.generate(1, init=images[:1])
    with pytest.raises(ValueError, match="no mean code of label 0 yet"):
        registry.get_model_class("glow")(image_size=8, num_classes=3, levels=1, steps_per_level=1).edit(
            images[:1], 0, 1
        )
    batch = {"image": images * 2 - 1, "label": labels}
    assert set(glow.previews(batch, n=4, generator=generator)) == {"samples", "samples_t0.7"}
    unconditional = registry.get_model_class("realnvp")(
        image_size=8, levels=1, steps_per_level=1, hidden_channels=8
    )
    previews = unconditional.previews(batch, n=16, generator=generator)
    assert previews["interpolations"].shape == (16, 1, 8, 8)  # two rows of 8, from one image to the next


# --- the families through the command line ----------------------------------------------------------

TINY_REALNVP = [
    "--model", "realnvp", "--data", "digits", "--data.image_size", "8", "--data.batch_size", "32",
    "--model.levels", "2", "--model.steps_per_level", "2", "--model.hidden_channels", "16",
    "--model.lr", "0.005", "--model.warmup_steps", "5",
    "--trainer.max_steps", "45", "--trainer.val_check_interval", "45", "--trainer.check_val_every_n_epoch", "null",
    "--trainer.limit_val_batches", "6", "--trainer.num_sanity_val_steps", "0",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--samples.num_samples", "16", "--logger", "none",
]  # fmt: skip


@pytest.fixture(scope="module")
def realnvp_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny realnvp trained for 45 steps on 8x8 digits (the digits' own size) by `python -m zoo.fit`."""
    # one thread for this tiny run, then the suite's own count back: left at 1, every later test file ran
    # with one thread (the whole suite 18:41 instead of about 14 minutes)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fit_in(tmp_path_factory.mktemp("realnvp"), *TINY_REALNVP)
    finally:
        torch.set_num_threads(threads)


def _val_digits(num: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    datamodule = registry.get_datamodule_class("digits")(image_size=8)
    datamodule.setup("fit")
    items = [datamodule.val_set[i] for i in range(num)]
    images = torch.stack([item["image"] for item in items])
    return (images + 1) / 2, torch.stack([item["label"] for item in items])


def test_realnvp_learns_through_the_cli_and_keeps_its_actnorm(realnvp_ckpt):
    from zoo.checkpoint import load_model

    model = load_model(realnvp_ckpt)
    images, _ = _val_digits()
    torch.manual_seed(0)
    untrained = type(model)(**model.hparams).train()
    untrained.flow.log_prob(images * 2 - 1)  # its ActNorm layers initialise on these images
    before, after = (m.bits_per_dim(images, generator=torch.Generator().manual_seed(0)).mean().item()
                     for m in (untrained, model))  # fmt: skip
    assert after < before - 0.8, (before, after)  # measured: 8.6 -> 7.3 bits/dim
    actnorm = next(m for m in model.modules() if isinstance(m, ActNorm))
    saved = actnorm.bias.clone()
    model.bits_per_dim(torch.rand(8, 1, 8, 8))  # a reloaded model does not initialise again
    assert bool(actnorm.initialized) and torch.equal(actnorm.bias, saved)
    # the validation recorded a mean code per digit for editing
    assert model.label_code_counts.sum().item() > 0


def test_zoo_sample_edits_an_image_from_one_label_towards_another(realnvp_ckpt, tmp_path):
    from zoo.sample import main as sample

    images, labels = _val_digits()
    index = int((labels == 3).nonzero()[0])
    picture = tmp_path / "three.png"
    Image.fromarray((images[index, 0] * 255).round().byte().numpy(), mode="L").save(picture)
    out = tmp_path / "edit"
    args = ["--ckpt", str(realnvp_ckpt), "--init-image", str(picture), "--edit-from", "3", "--edit-to", "8"]
    written = sample([*args, "--num", "3", "--out", str(out), "--edit-strength", "1.5"])
    assert len([p for p in written if p.name != "grid.png"]) == 3
    # the sweep starts at strength 0: the picture itself, exactly (a flow's code loses nothing)
    first = torch.from_numpy(np.asarray(Image.open(out / "000000.png").convert("L")))
    assert torch.equal(first, (images[index, 0] * 255).round().byte())
    last = torch.from_numpy(np.asarray(Image.open(out / "000002.png").convert("L")))
    assert not torch.equal(last, first)
    with pytest.raises(UsageError, match="--edit-from and --edit-to go together"):
        sample(["--ckpt", str(realnvp_ckpt), "--init-image", str(picture), "--edit-from", "3"])
    with pytest.raises(UsageError, match="need --init-image"):
        sample(["--ckpt", str(realnvp_ckpt), "--edit-from", "3", "--edit-to", "8"])


def test_zoo_sample_says_when_a_family_cannot_edit(tiny_vae_ckpt, tmp_path):
    from zoo.sample import main as sample

    picture = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(picture)
    with pytest.raises(UsageError, match="VAE cannot edit in latent space.*nice, realnvp, glow"):
        sample(
            ["--ckpt", str(tiny_vae_ckpt), "--init-image", str(picture), "--edit-from", "0", "--edit-to", "1"]
        )


def test_zoo_evaluate_reports_bits_per_dim_of_a_flow(realnvp_ckpt, tmp_path):
    from zoo.checkpoint import load_model
    from zoo.evaluate import main as evaluate

    result = evaluate(["--ckpt", str(realnvp_ckpt), "--metrics", "bits_per_dim", "--split", "val", "--num", "180",
                       "--out", str(tmp_path / "bpd.json"), "--no-progress"])  # fmt: skip
    (row,) = result["metrics"]
    assert row["metric"] == "bits_per_dim" and row["num_real"] == 180 and row["higher_is_better"] is False
    # the whole validation split (180 digits), one dequantisation draw each from a generator seeded with --seed
    images, _ = _val_digits(180)
    expected = load_model(realnvp_ckpt).bits_per_dim(images, generator=torch.Generator().manual_seed(0))
    assert row["value"] == pytest.approx(expected.mean().item(), abs=1e-5)

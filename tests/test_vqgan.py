"""The `vqgan` family and the perceptual / adversarial autoencoder losses it shares with `vae`: taming's
adaptive weight against its closed form, LPIPS against torchmetrics' implementation with weights made here,
the discriminator's start, the tokenizer interface, and measured learning through the command line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from conftest import TINY_VAE, run_fit
from zoo.autoencoding import AutoencoderLoss
from zoo.checkpoint import load_model
from zoo.nn.patchgan import PatchDiscriminator, adaptive_weight
from zoo.nn.perceptual import (
    LPIPS,
    PerceptualWeightsError,
    perceptual_choice,
    perceptual_network,
    vgg16_weights_path,
)
from zoo.plugins.vqgan import VQGAN
from zoo.sample import main as sample

TINY_VQGAN = [
    "--model", "vqgan",
    "--model.base_channels", "8",
    "--model.latent_channels", "8",
    "--model.codebook_size", "32",
    "--model.lr", "0.003",
    "--model.warmup_steps", "5",
    "--data.num_train", "256",
    "--data.num_val", "32",
    "--data.num_test", "16",
    "--data.batch_size", "16",
    "--trainer.limit_val_batches", "2",
    "--trainer.val_check_interval", "null",
    "--trainer.check_val_every_n_epoch", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--samples.num_samples", "4",
    "--logger", "none",
]  # fmt: skip


def _fit_in(root: Path, *args: str) -> tuple[object, Path]:
    cwd = os.getcwd()
    os.chdir(root)
    try:
        cli = run_fit(*args)
    finally:
        os.chdir(cwd)
    return cli, root / cli.trainer.default_root_dir / "checkpoints" / "last.ckpt"


# --- the adaptive weight and the discriminator ---------------------------------------------------


def test_adaptive_weight_equals_its_closed_form():
    # decoder: out = W h with last layer W; L_rec = ||W h - y||^2, L_G = -sum(c * W h)
    g = torch.Generator().manual_seed(0)
    h, y, c = torch.randn(5, generator=g), torch.randn(3, generator=g), torch.randn(3, generator=g)
    w = torch.randn(3, 5, generator=g, requires_grad=True)
    out = w @ h
    rec, gan = (out - y).pow(2).sum(), -(c * out).sum()
    rec_grad = 2 * torch.outer((w @ h - y).detach(), h)  # d L_rec / d W
    gan_grad = -torch.outer(c, h)  # d L_G / d W
    expected = rec_grad.norm() / (gan_grad.norm() + 1e-4)
    weight = adaptive_weight(rec, gan, w)
    torch.testing.assert_close(weight, expected)
    assert not weight.requires_grad
    (rec + weight * gan).backward()  # both graphs were kept for the backward that follows
    # a vanishing adversarial gradient is clamped at 1e4
    assert adaptive_weight((w * 3).sum(), (w * 0).sum(), w) == 1e4


def test_patch_discriminator_gives_a_map_of_patch_logits():
    d = PatchDiscriminator(3, 8, layers=2)
    assert d(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 6, 6)
    assert PatchDiscriminator(3, 8, layers=3)(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 6, 6)


def test_discriminator_is_off_before_its_start_and_on_after(tmp_path):
    import lightning as L

    import zoo

    snapshots: list[torch.Tensor] = []
    logged: list[set[str]] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            snapshots.append(module.autoencoder_loss.discriminator.net[0].weight.detach().clone())
            logged.append({k for k in trainer.callback_metrics if k.startswith("train/")})

    L.seed_everything(0)
    data = zoo.create_datamodule("shapes", num_train=64, num_val=16, num_test=16, batch_size=8)
    model = VQGAN(
        base_channels=8, latent_channels=8, codebook_size=16, perceptual_weight=0.0,
        adversarial_weight=0.5, discriminator_start=3, discriminator_channels=8,
    )  # fmt: skip
    before = model.autoencoder_loss.discriminator.net[0].weight.detach().clone()
    trainer = L.Trainer(
        max_steps=7, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
        limit_val_batches=0, callbacks=[Record()],
    )  # fmt: skip
    trainer.fit(model, data)
    # batches 0-2: autoencoder steps only; from batch 3 on, a discriminator step too (2 steps a batch):
    # 3 + 2 + 2 = 7 optimiser steps are 5 batches
    assert len(snapshots) == 5
    for i in range(3):
        torch.testing.assert_close(snapshots[i], before)
        assert "train/d_loss" not in logged[i] and "train/g_loss" not in logged[i]
    assert not torch.equal(snapshots[3], before) and not torch.equal(snapshots[4], snapshots[3])
    assert {"train/d_loss", "train/g_loss", "train/adaptive_weight"} <= logged[4]


# --- perceptual distances ----------------------------------------------------------------------


def test_lpips_matches_torchmetrics_with_weights_made_here(tmp_path):
    from torchmetrics.functional.image.lpips import _LPIPS

    torch.manual_seed(0)
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS.CHANNELS)}
    torch.save(lin, tmp_path / "lin.pth")
    reference = _LPIPS(
        pretrained=True, net="vgg", pnet_rand=True, model_path=str(tmp_path / "lin.pth")
    ).eval()
    # torchvision's file layout (features.N.*) from the reference's random VGG16
    vgg = {f"features.{k.split('.', 1)[1]}": v for k, v in reference.net.state_dict().items()}
    torch.save(vgg, tmp_path / "vgg16.pth")
    ours = LPIPS().load(tmp_path / "vgg16.pth", tmp_path / "lin.pth")
    x, y = torch.rand(3, 3, 32, 32) * 2 - 1, torch.rand(3, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(ours(x, y), reference(x, y).flatten(), rtol=1e-4, atol=1e-6)
    # found by the environment variable, as the FID InceptionV3 is
    os.environ["ZOO_VGG16_WEIGHTS"] = str(tmp_path / "vgg16.pth")
    try:
        assert vgg16_weights_path() == tmp_path / "vgg16.pth"
    finally:
        del os.environ["ZOO_VGG16_WEIGHTS"]
    with pytest.raises(PerceptualWeightsError, match="vgg16-397923af.pth"):
        vgg16_weights_path(tmp_path / "missing.pth")


def test_zoo_perceptual_distance_over_the_data_extractor():
    distance = perceptual_network("zoo", data="shapes", image_size=32, channels=3)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    assert torch.allclose(distance(x, x), torch.zeros(2), atol=1e-6)
    d = distance(y, x)
    assert (d > 0).all()
    d.sum().backward()
    assert y.grad.abs().sum() > 0  # a loss: its gradient reaches the reconstruction
    assert all(not p.requires_grad for p in distance.parameters())
    with pytest.raises(ValueError, match="lpips"):
        perceptual_network("zoo", data="tones")


def test_auto_perceptual_network_is_zoos_on_embedded_data_and_none_elsewhere():
    assert perceptual_choice("auto", "shapes") == "zoo" and perceptual_choice("auto", "digits") == "zoo"
    assert perceptual_choice("auto", "image_folder") is None  # LPIPS only when asked, with its weights
    assert perceptual_choice("lpips", "image_folder") == "lpips"
    loss = AutoencoderLoss(3, perceptual_weight=0.1)
    with pytest.warns(UserWarning, match="no perceptual term.*--model.perceptual_network lpips"):
        loss.build_perceptual("image_folder", 32, 3)
    assert loss.perceptual_weight == 0 and float(loss.perceptual(torch.zeros(1), torch.zeros(1))) == 0


# --- the tokenizer ------------------------------------------------------------------------------


def test_tokenizer_interface():
    model = VQGAN(base_channels=8, latent_channels=8, codebook_size=16, image_size=16, perceptual_weight=0.0)
    assert model.code_grid == (4, 4) and model.codebook_size == 16
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    model.train()(images)  # k-means
    state = {k: v.clone() for k, v in model.state_dict().items()}
    codes = model.encode_codes(images)
    assert codes.shape == (3, 4, 4) and codes.dtype == torch.long
    decoded = model.decode_codes(codes)
    assert decoded.shape == images.shape and decoded.min() >= -1 and decoded.max() <= 1
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key])  # tokenizing changed no statistics
    samples = model.generate(2, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (2, 3, 16, 16) and samples.min() >= 0 and samples.max() <= 1
    with pytest.raises(ValueError, match="16px"):
        model.encode_codes(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="codes"):
        model.decode_codes(torch.zeros(1, 8, 8, dtype=torch.long))


# --- through the command line -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vqgan(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    """A tiny vqgan: 48 batches of 16 on 32x32 shapes, perceptual loss on, discriminator from batch 32 (64 steps)."""
    root = tmp_path_factory.mktemp("vqgan")
    return _fit_in(
        root, *TINY_VQGAN, "--model.discriminator_start", "32", "--model.discriminator_channels", "8",
        "--trainer.max_steps", "64",
    )  # fmt: skip


def test_tiny_vqgan_learns_and_uses_many_codes(tiny_vqgan):
    import zoo

    cli, ckpt = tiny_vqgan
    assert ckpt.is_file()
    model = load_model(ckpt).eval()
    data = zoo.create_datamodule("shapes", num_train=256, num_val=32, num_test=16, batch_size=32)
    data.setup("fit")
    x = next(iter(data.val_dataloader()))["image"]
    codes = model.encode_codes(x)
    error = (model.decode_codes(codes) - x).abs().mean()
    # the same network untrained, its codebook k-means-initialised on these images: where training began
    torch.manual_seed(0)
    untrained = VQGAN(**{k: v for k, v in model.hparams.items() if not k.startswith("_")})
    untrained.train()(x)
    start = (untrained.decode_codes(untrained.encode_codes(x)) - x).abs().mean()
    assert error < 0.4 * start, (float(error), float(start))
    assert codes.unique().numel() > 4
    metrics = cli.trainer.callback_metrics
    assert metrics["val/codebook_usage"] > 4 / 32 and metrics["val/perplexity"] > 2
    assert metrics["train/d_loss"].isfinite()  # the discriminator ran after its start


def test_sample_writes_images_from_a_vqgan_checkpoint(tiny_vqgan, tmp_path):
    written = sample(["--ckpt", str(tiny_vqgan[1]), "--num", "3", "--out", str(tmp_path)])
    assert written and all(Path(p).is_file() for p in written)


def test_vae_with_perceptual_and_adversarial_terms_trains_through_the_cli(tmp_path):
    cli, ckpt = _fit_in(
        tmp_path, *TINY_VAE, "--model.perceptual_weight", "1.0", "--model.adversarial_weight", "0.5",
        "--model.discriminator_start", "2", "--model.discriminator_channels", "8", "--trainer.max_steps", "14",
    )  # fmt: skip
    state = torch.load(ckpt, weights_only=True)
    # 2 batches of one step, then 6 of two (autoencoder + discriminator): 8 batches, one epoch of 6 validated
    assert state["global_step"] == 14
    assert any(k.startswith("autoencoder_loss.discriminator.") for k in state["state_dict"])
    metrics = cli.trainer.callback_metrics
    for key in ("train/perceptual", "train/g_loss", "train/d_loss", "val/loss"):
        assert metrics[key].isfinite(), key
    assert isinstance(load_model(ckpt).autoencoder_loss.discriminator, PatchDiscriminator)

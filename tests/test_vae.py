"""The `vae` family: its KL against torch.distributions, its latents, and measured learning."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.distributions import Normal, kl_divergence

import zoo
from conftest import TINY_VAE, run_fit
from zoo.module import NonFiniteLossError
from zoo.plugins.vae import VAE, gaussian_kl


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(4, 3, 5, 5, generator=g) * 2
    logvar = torch.randn(4, 3, 5, 5, generator=g)
    expected = kl_divergence(
        Normal(mean, (0.5 * logvar).exp()), Normal(torch.zeros_like(mean), torch.ones_like(mean))
    )
    torch.testing.assert_close(gaussian_kl(mean, logvar), expected)


def test_loss_parts_follow_their_definitions():
    model = VAE(base_channels=8)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    reconstruction = torch.zeros_like(x)
    mean, logvar = torch.ones(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)
    parts = model.losses(x, reconstruction, mean, logvar)
    torch.testing.assert_close(parts["reconstruction"], x.abs().mean())
    torch.testing.assert_close(parts["kl"], torch.tensor(0.5))  # 0.5 * mean^2 per element
    torch.testing.assert_close(parts["loss"], x.abs().mean() + 0.01 * 0.5 * 4 * 8 * 8 / (3 * 32 * 32))


@pytest.mark.parametrize("factor,latent", [(4, 8), (8, 4)])
def test_shapes_of_latents_and_samples(factor, latent):
    model = VAE(base_channels=8, downsample_factor=factor, latent_channels=3).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = model.encode_latents(x, sample=False)
    assert z.shape == (2, 3, latent, latent)
    assert model.decode_latents(z).shape == x.shape
    images = model.generate(3, generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    assert model.training is False and torch.is_grad_enabled()  # generate left no trace


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="not divisible"):
        VAE(image_size=36, downsample_factor=8)
    with pytest.raises(ValueError, match="reconstruction_loss"):
        VAE(reconstruction_loss="huber")


@pytest.mark.slow
def test_validation_reconstruction_error_falls_fivefold_on_shapes(tmp_path):
    L.seed_everything(0)
    data = zoo.create_datamodule("shapes", num_train=1024, num_val=128, num_test=32, batch_size=32)
    model = VAE(base_channels=16, latent_channels=4, lr=2e-3, warmup_steps=20)
    trainer = L.Trainer(
        max_steps=300, limit_val_batches=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
    )  # fmt: skip
    before = trainer.validate(model, data, verbose=False)[0]["val/l1"]
    trainer.fit(model, data)
    after = trainer.validate(model, data, verbose=False)[0]["val/l1"]
    assert after * 5 <= before, (before, after)
    # the latent scale is measured on the data: scaled posterior means have unit variance
    batch = next(iter(data.val_dataloader()))
    z = model.encode_latents(batch["image"], sample=False)
    assert 0.7 < float(z.std()) < 1.4


class NaNAfterTwoSteps(VAE):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step >= 2 else loss


def test_nan_loss_stops_with_a_message_and_keeps_finite_weights(in_tmp, fake_dists):
    fake_dists.add(
        "nan-plugins",
        {"zoo.models": {"nan_vae": "nan_mod:NaNVAE"}},
        {"nan_mod": "from test_vae import NaNAfterTwoSteps as NaNVAE\n"},
    )
    args = [a if a != "vae" else "nan_vae" for a in TINY_VAE]
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 2.*--trainer.gradient_clip_val"):
        run_fit(*args, "--trainer.max_steps", "6")
    kept = next(Path("runs/nan_vae").glob("*/checkpoints/on_exception.ckpt"))
    state = torch.load(kept, weights_only=True)
    assert state["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())


def test_widths_that_are_not_multiples_of_32_build():
    model = VAE(base_channels=52, downsample_factor=8)  # 52, 104, 208, 208 channels
    assert model(torch.zeros(1, 3, 32, 32))[0].shape == (1, 3, 32, 32)


def test_color_augment_is_an_hsv_recolouring_written_out_with_colorsys():
    """Each recoloured image: hue turned by the drawn angle, saturation and value scaled by the drawn factors,
    checked pixel by pixel against Python's colorsys; black stays black, an image not drawn is unchanged."""
    import colorsys

    vae = VAE(color_augment=0.5)
    x = torch.full((6, 3, 4, 4), -1.0)
    x[:, :, 1:3, 1:3] = torch.tensor([225, 30, 30]).view(3, 1, 1) / 127.5 - 1  # a red square on black
    torch.manual_seed(1)
    out = vae.recolor(x)
    torch.manual_seed(1)  # the same draws, in recolor's order
    chosen, hue = torch.rand(6) < 0.5, (torch.rand(6) * 2 - 1) * torch.pi
    saturation, value = 0.4 + 0.6 * torch.rand(6), 0.5 + 0.5 * torch.rand(6)
    assert 0 < int(chosen.sum()) < 6
    for i in range(6):
        h, s, v = colorsys.rgb_to_hsv(225 / 255, 30 / 255, 30 / 255)
        if chosen[i]:
            h = (h + float(hue[i]) / (2 * torch.pi)) % 1.0
            s, v = min(1.0, s * float(saturation[i])), v * float(value[i])
        expected = torch.tensor(colorsys.hsv_to_rgb(h, s, v)) * 2 - 1
        torch.testing.assert_close(out[i, :, 1, 1], expected, atol=2e-3, rtol=0)
        assert torch.equal(out[i, :, 0, 0], torch.full((3,), -1.0))
    assert torch.equal(VAE(color_augment=0.0).recolor(x), x)

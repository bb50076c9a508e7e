"""What the image GAN families share through `zoo.gan.GANModule` and `zoo.conditioning`: one argument
check, every option a flag with the family's own default, the D and G steps under Lightning's
`toggled_optimizer`, and class labels checked the same way for GANs and ddpm."""

from __future__ import annotations

import inspect
import subprocess
import sys

import lightning as L
import pytest
import torch
from jsonargparse import ArgumentParser

import zoo
from zoo import registry
from zoo.conditioning import class_labels
from zoo.gan import GANModule

FAMILIES = ("dcgan", "lsgan", "wgan_gp", "sngan", "stylegan")
TRAINING_OPTIONS = [p for p in inspect.signature(GANModule.__init__).parameters if p != "self"]


def _tiny(family: str, **options) -> GANModule:
    size = {} if family == "stylegan" else {"g_channels": 8, "d_channels": 8}
    return zoo.create_model(family, in_channels=1, image_size=8, num_classes=10, **size, **options)


# --- one argument check -----------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("objective", "minimax", "unknown GAN objective"),
        ("n_critic", 0, "n_critic and r1_every must be >= 1"),
        ("r1_every", 0, "n_critic and r1_every must be >= 1"),
        ("label_smoothing", 1.0, r"label_smoothing must lie in \[0, 1\)"),
        ("label_smoothing", -0.1, r"label_smoothing must lie in \[0, 1\)"),
        ("diff_augment", "color,blur", "unknown DiffAugment policy 'blur'"),
    ],
)
def test_every_family_refuses_the_same_bad_options(family, option, value, message):
    with pytest.raises(ValueError, match=message):
        _tiny(family, **{option: value})


# --- signatures, flags and hyper-parameters ---------------------------------------------------------


def _cli_defaults(cls: type) -> dict:
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "model")
    return vars(parser.get_defaults()["model"])


@pytest.mark.parametrize("family", FAMILIES)
def test_every_option_is_a_flag_and_a_recorded_hyperparameter_with_the_family_default(family):
    cls = registry.get_model_class(family)
    flags = _cli_defaults(cls)  # what LightningCLI offers (jsonargparse reads the signature)
    recorded = dict(cls().hparams)  # what save_hyperparameters keeps (Lightning walks the __init__ frames)
    assert set(TRAINING_OPTIONS) <= set(flags)
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in flags.items()} == {
        k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()
    }
    # zoo.fit links the data's channels, size and classes to these parameters by signature
    assert {"in_channels", "image_size", "num_classes"} <= set(inspect.signature(cls.__init__).parameters)


def test_family_defaults_are_their_papers():
    hp = {family: registry.get_model_class(family)().hparams for family in FAMILIES}
    # Gulrajani et al. 2017, Algorithm 1: lambda 10, n_critic 5, Adam(1e-4, 0, 0.9)
    assert (hp["wgan_gp"].gp_weight, hp["wgan_gp"].n_critic, hp["wgan_gp"].lr_d, tuple(hp["wgan_gp"].betas)) == (
        10.0, 5, 1e-4, (0.0, 0.9),
    )  # fmt: skip
    assert (hp["sngan"].objective, hp["sngan"].spectral_norm, hp["sngan"].d_norm) == ("hinge", True, "none")
    assert (hp["lsgan"].objective, hp["dcgan"].objective) == ("lsgan", "nonsaturating")
    # StyleGAN2: Adam(2e-3, 0, 0.99), lazy R1 every 4 minibatches
    assert (hp["stylegan"].lr_g, tuple(hp["stylegan"].betas), hp["stylegan"].r1_every) == (
        2e-3,
        (0.0, 0.99),
        4,
    )


def test_a_variant_takes_positional_arguments_and_refuses_unknown_ones():
    cls = registry.get_model_class("wgan_gp")
    model = cls(1, 8, 8, 8, num_classes=10)  # in_channels, image_size, g_channels, d_channels
    assert (model.hparams.in_channels, model.hparams.image_size, model.hparams.num_classes) == (1, 8, 10)
    assert model.discriminator.head.in_features == 8 * 4 * 4  # d_channels 8 at 4x4 (8x8 halved once)
    with pytest.raises(TypeError, match="unexpected keyword argument 'lr'"):
        cls(lr=1e-3)


def test_stylegan_does_not_import_another_family():
    code = "import sys, zoo.plugins.stylegan; print('zoo.plugins.gan' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- the D and G steps ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["dcgan", "stylegan"])
def test_each_step_trains_one_network_and_leaves_the_other_without_gradients(family):
    L.seed_everything(0)
    data = zoo.create_datamodule("digits", image_size=8, batch_size=8)
    model = _tiny(family, r1_weight=0.0)
    seen: list[tuple[str, bool]] = []

    def record(name: str, other: torch.nn.Module):
        def hook(module, args):
            if torch.is_grad_enabled():  # D's fakes are drawn without a graph
                seen.append((name, any(p.requires_grad for p in other.parameters())))

        return hook

    model.generator.register_forward_pre_hook(record("G", model.discriminator))
    model.discriminator.register_forward_pre_hook(record("D", model.generator))
    L.Trainer(
        max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0,
    ).fit(model, data)  # fmt: skip
    # D step: D on reals and on fakes, G frozen; G step: G frozen-D forward, D sees G's images
    assert seen == [("D", False), ("D", False), ("G", False), ("D", True)]
    assert all(p.requires_grad for p in model.parameters())  # both networks trainable again


# --- class labels ---------------------------------------------------------------------------------


def test_class_labels_expand_one_label_and_check_count_and_range():
    assert class_labels(None, 4, 10, family="ddpm") is None
    assert class_labels(3, 4, 10, family="ddpm").tolist() == [3, 3, 3, 3]
    assert class_labels(torch.tensor([[1], [2]]), 2, 10, family="ddpm").tolist() == [1, 2]
    assert class_labels([0, 9, 5], 3, 10, family="ddpm").dtype == torch.long
    with pytest.raises(ValueError, match="got 2 labels for 3 samples"):
        class_labels([1, 2], 3, 10, family="ddpm")
    with pytest.raises(ValueError, match=r"labels must lie in 0..9, got \[10\]"):
        class_labels([10], 1, 10, family="ddpm")
    with pytest.raises(ValueError, match=r"labels must lie in 0..9, got \[-1, 2\]"):
        class_labels([-1, 2], 2, 10, family="ddpm")
    with pytest.raises(ValueError, match="this sngan is unconditional"):
        class_labels([1], 1, 0, family="sngan")


@pytest.mark.parametrize("family", ["dcgan", "stylegan", "ddpm"])
def test_families_read_labels_alike(family):
    options = {"base_channels": 8, "channel_mults": (1, 2), "sampling_steps": 2} if family == "ddpm" else {}
    model = _tiny(family, **options) if family != "ddpm" else zoo.create_model(
        "ddpm", in_channels=1, image_size=8, num_classes=10, **options
    )  # fmt: skip
    labels = model._labels([7], 3, None) if family != "ddpm" else model._labels([7], 3)
    assert labels.tolist() == [7, 7, 7]
    with pytest.raises(ValueError, match="labels must lie in 0..9"):
        model.generate(1, condition=[10])
    unconditional = type(model)(
        in_channels=1, image_size=8, num_classes=10, class_conditional=False, **options
    )
    with pytest.raises(ValueError, match=f"this {family} is unconditional"):
        unconditional.generate(1, condition=[1])


def test_an_unlabelled_conditional_gan_draws_classes_uniformly():
    model = _tiny("dcgan")
    labels = model._labels(None, 10_000, torch.Generator().manual_seed(0))
    counts = torch.bincount(labels, minlength=10).float()
    # a uniform draw: each class near 1000, within 5 binomial standard deviations (sqrt(10000 * .1 * .9) = 30)
    assert ((counts - 1000).abs() < 150).all(), counts

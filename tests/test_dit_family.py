"""The `dit` family (a class-conditional latent DiT over a vae): the command line end to end, learning,
class conditioning and guidance, and the errors for bad options."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import assert_resume_is_exact, run_fit
from zoo.checkpoint import load_model
from zoo.diffusion import objective_sample
from zoo.plugins.dit import LatentDiT
from zoo.sample import main as sample

FIRST_STAGE = {"latent_channels": 4, "downsample_factor": 4, "base_channels": 8}

# A tiny dit through the real command line: the first stage trains first (16 steps), then 120 DiT steps.
TINY = [
    "--model", "dit",
    "--data.image_size", "16", "--data.num_train", "256", "--data.num_val", "32", "--data.num_test", "32",
    "--data.batch_size", "32",
    "--model.first_stage_steps", "16",
    "--model.first_stage_config", '{"in_channels": 3, "image_size": 16, "latent_channels": 4, "downsample_factor": 4, "base_channels": 8}',
    "--model.patch_size", "1", "--model.dit_width", "32", "--model.dit_depth", "2", "--model.num_heads", "2",
    "--model.lr", "0.003", "--model.warmup_steps", "10", "--model.sampling_steps", "4",
    "--model.objective", "diffusion", "--model.sampler", "null",  # the paper's objective (the recipe's is flow)
    "--trainer.max_steps", "120",
    "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "null",
    "--trainer.check_val_every_n_epoch", "100", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false", "--trainer.callbacks", "[]",
    "--samples.num_samples", "4", "--logger", "none",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    root = tmp_path_factory.mktemp("tiny_dit")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread, far faster than two on a busy machine
    try:
        cli = run_fit(*TINY, "--trainer.default_root_dir", str(root))
    finally:
        torch.set_num_threads(threads)
    return cli, root


def _val_loss(model: LatentDiT, batch: dict[str, torch.Tensor], draws: int = 8) -> float:
    """The validation loss of `batch` averaged over `draws` seeded draws of timesteps and noise."""
    model.eval()
    with torch.no_grad():
        losses = [float(model._loss(batch, torch.Generator().manual_seed(i))) for i in range(draws)]
    return sum(losses) / len(losses)


def test_cli_trains_the_first_stage_then_the_dit_and_samples_a_label(tiny_run, tmp_path, one_thread):
    cli, root = tiny_run
    assert cli.trainer.global_step == 120
    assert (root / "first_stage" / "first_stage.ckpt").is_file()  # stage 1, inside the run folder
    ckpt = root / "checkpoints" / "last.ckpt"
    assert list((root / "samples").glob("samples_step*.png"))  # previews, one per class in turn
    model = load_model(ckpt)  # from the checkpoint alone
    assert bool(model.first_stage_ready) and float(model.first_stage.latent_scale) != 1.0
    assert model.hparams.num_classes == 18 and model.conditional  # shapes' colour x shape classes
    assert model.hparams.sampler == "dpmpp_2m"  # the diffusion objective's default, resolved and saved
    out = tmp_path / "label3"
    sample(["--ckpt", str(ckpt), "--num", "2", "--out", str(out), "--label", "3", "--steps", "3",
            "--guidance", "2"])  # fmt: skip
    assert len(list(out.glob("0*.png"))) == 2
    with pytest.raises(SystemExit, match="class-conditional"):
        sample(["--ckpt", str(ckpt), "--num", "1", "--out", str(out), "--prompt", "a red circle"])
    with pytest.raises(SystemExit, match=r"labels must lie in 0\.\.17"):
        sample(["--ckpt", str(ckpt), "--num", "1", "--out", str(tmp_path / "x"), "--label", "18"])


def test_the_loss_falls_with_training(tiny_run, one_thread):
    """120 steps lower the validation loss well below the untrained DiT's: adaLN-Zero makes its output 0, so
    its ε loss is E[ε²], about 1 (measured here, on the same first stage, noise and timesteps)."""
    cli, _ = tiny_run
    trained = cli.model
    hparams = {k: v for k, v in trained.hparams.items() if not k.startswith("_")}
    untrained = LatentDiT(**hparams)
    untrained.first_stage.load_state_dict(trained.first_stage.state_dict())
    batch = next(iter(cli.datamodule.val_dataloader()))
    before, after = _val_loss(untrained, batch), _val_loss(trained, batch)
    assert 0.9 < before < 1.1, before
    assert after < 0.5 * before, (before, after)


def test_resume_continues_exactly(tmp_path, one_thread):
    """6 steps in one go, or 3, then 3 more from last.ckpt: the same weights (the first stage is not retrained
    on resuming; label dropout and posterior draws take up the saved random state)."""
    short = [*TINY, "--model.first_stage_steps", "4", "--checkpoint.every_n_train_steps", "3",
             "--samples.num_samples", "0"]  # fmt: skip
    assert_resume_is_exact(short, tmp_path, 6)


# --- class conditioning ----------------------------------------------------------------------------


def _colour_batch(n: int, generator: torch.Generator, size: int = 8) -> dict[str, torch.Tensor]:
    """Images of one colour each, the label its dominant channel: 0 red, 1 green, 2 blue (in [-1, 1])."""
    label = torch.randint(0, 3, (n,), generator=generator)
    colour = 0.3 * torch.rand(n, 3, 1, 1, generator=generator)
    colour[torch.arange(n), label] = 0.6 + 0.4 * torch.rand(n, 1, 1, generator=generator)
    image = colour.expand(n, 3, size, size) + 0.05 * torch.randn(n, 3, size, size, generator=generator)
    return {"image": (image * 2 - 1).clamp(-1, 1), "label": label}


def _train_on_colours(objective: str) -> LatentDiT:
    """A tiny dit trained on `_colour_batch` images: its vae for 50 steps (latent scale measured as zoo's
    vae does, 1 / std), then the DiT for 200."""
    torch.manual_seed(0)
    model = LatentDiT(
        image_size=8, num_classes=3, first_stage_config={"in_channels": 3, "image_size": 8, **FIRST_STAGE},
        patch_size=1, dit_width=32, dit_depth=2, num_heads=2, objective=objective, sampling_steps=10,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    vae = model.first_stage
    vae.requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), 3e-3)
    for _ in range(50):
        x = _colour_batch(32, generator)["image"]
        loss = vae.losses(x, *vae(x))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vae.requires_grad_(False)
    with torch.no_grad():
        latents = vae.eval().encode_latents(_colour_batch(256, generator)["image"], sample=False)
    vae.latent_scale.fill_(1 / float(latents.std()))
    model.first_stage_ready.fill_(True)
    model.train()
    optimizer = torch.optim.AdamW(model.net.parameters(), 3e-3)
    for _ in range(200):
        loss = model._loss(_colour_batch(64, generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("objective", ["diffusion", "flow"])
def test_samples_take_the_colour_of_their_label(objective, one_thread):
    """Trained where the label is the colour, samples of label k are mostly channel k (the data's is 0.8 on
    average, the others 0.15), under both objectives, with and without guidance; the same noise with
    another label gives another colour."""
    model = _train_on_colours(objective)
    for guidance in (1.0, 3.0):
        for k in range(3):
            images = model.generate(
                16, condition=k, guidance=guidance, generator=torch.Generator().manual_seed(2)
            )
            means = images.mean((0, 2, 3))
            others = [means[c] for c in range(3) if c != k]
            assert means[k] > 0.55 and max(others) < 0.35, (objective, guidance, k, means)


def _random_model(objective: str) -> LatentDiT:
    """A tiny dit whose zero-initialised layers are given random weights, so its output depends on its inputs."""
    torch.manual_seed(0)
    model = LatentDiT(
        image_size=8, num_classes=3, first_stage_config={"in_channels": 3, "image_size": 8, **FIRST_STAGE},
        patch_size=1, dit_width=16, dit_depth=1, num_heads=2, objective=objective, sampling_steps=3,
    )  # fmt: skip
    for p in model.net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return model.eval()


@pytest.mark.parametrize("objective", ["diffusion", "flow"])
def test_guidance_is_the_classifier_free_formula_on_the_labels(objective, one_thread):
    """generate(guidance=g) samples with u + g (c - u), u the network at the null label (id num_classes) and
    c at the given labels (Ho & Salimans 2022, eq. 6), written out here; at g = 1, the conditional network."""
    model = _random_model(objective)
    labels = torch.tensor([0, 2])
    null = torch.full_like(labels, 3)
    shape = (2, 4, 2, 2)

    def reference(g: float) -> torch.Tensor:
        def denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            t = t.expand(len(x)) if t.ndim == 0 else t
            u, c = model.net(x, t, null), model.net(x, t, labels)
            return u + g * (c - u)

        with torch.no_grad():
            latents = objective_sample(denoiser, shape, model.hparams, model.schedule,
                                       generator=torch.Generator().manual_seed(5))  # fmt: skip
            return ((model.first_stage.decode_latents(latents) + 1) / 2).clamp(0, 1)

    for g in (1.0, 2.5):
        images = model.generate(2, condition=labels, guidance=g, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(images, reference(g), atol=1e-5, rtol=1e-4)
    swapped = model.generate(
        2, condition=labels.flip(0), guidance=2.5, generator=torch.Generator().manual_seed(5)
    )
    assert (swapped - images).abs().max() > 1e-3  # the labels, not the batch position, steer the samples


def test_previews_go_through_the_classes_in_turn(one_thread, monkeypatch):
    model = _random_model("diffusion")
    seen = []
    monkeypatch.setattr(model, "generate", lambda n, condition=None, generator=None: seen.append(condition))
    model.previews(None, n=7, generator=torch.Generator())
    assert seen[0].tolist() == [0, 1, 2, 0, 1, 2, 0]


# --- bad options -----------------------------------------------------------------------------------


def _build(**options: object) -> LatentDiT:
    return LatentDiT(**{"first_stage_config": {"in_channels": 3, "image_size": 32, **FIRST_STAGE}, **options})


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="unknown objective 'score'; choose one of diffusion, flow"):
        _build(objective="score")
    with pytest.raises(ValueError, match="flow objective samples with an ODE sampler.*got 'ddim'"):
        _build(objective="flow", sampler="ddim")
    with pytest.raises(ValueError, match="unknown sampler 'rk4'"):
        _build(objective="diffusion", sampler="rk4")
    with pytest.raises(ValueError, match="8x8 latents.*patch_size 3 does not divide; use one of 1, 2, 4, 8"):
        _build(patch_size=3)
    with pytest.raises(ValueError, match="image_size 30 is not divisible by downsample_factor 4"):
        LatentDiT(image_size=30, first_stage_config={"in_channels": 3, "image_size": 30, **FIRST_STAGE})
    with pytest.raises(ValueError, match="unknown time_sampler 'normal'"):
        _build(time_sampler="normal")
    with pytest.raises(ValueError, match="prediction must be one of"):
        _build(prediction="noise")
    with pytest.raises(ValueError, match="label_dropout is a probability"):
        _build(label_dropout=1.5)
    assert _build(objective="flow").hparams.sampler == "euler"  # None: the objective's default


def test_bad_sampling_options_and_labels_are_named(one_thread):
    flow = _random_model("flow")
    with pytest.raises(ValueError, match="flow objective samples with an ODE sampler"):
        flow.generate(1, condition=0, sampler="ddim")
    with pytest.raises(ValueError, match="eta is DDIM's noise"):
        flow.generate(1, condition=0, eta=0.5)
    with pytest.raises(ValueError, match="steps must be a whole number of at least 1"):
        flow.generate(1, condition=0, steps=0)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2"):
        flow.generate(1, condition=3)
    unconditional = _build(class_conditional=False, num_classes=18)
    with pytest.raises(ValueError, match="unconditional"):
        unconditional.generate(1, condition=0)

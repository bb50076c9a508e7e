"""`python -m zoo.fit`: defaults, config round trip, overrides, errors, repeatability, exact resume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY_VAE, run_fit
from zoo.fit import UsageError


def _ckpt_dir(cli) -> Path:
    return Path(cli.trainer.default_root_dir) / "checkpoints"


def test_default_run_folder_checkpoint_and_samples(in_tmp):
    cli = run_fit(*TINY_VAE, "--trainer.max_steps", "4", "--samples.every_n_steps", "2")
    run = Path(cli.trainer.default_root_dir)
    assert run.parent == Path("runs/vae") and run.name[:8].isdigit()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "samples" / "samples_step000002.png").is_file()
    assert (run / "samples" / "reconstructions_step000004.png").is_file()
    assert (run / "config.yaml").is_file()  # LightningCLI's record of the full configuration
    assert cli.trainer.global_step == 4


def test_print_config_round_trip(in_tmp, capsys):
    with pytest.raises(SystemExit) as info:
        run_fit("--model", "vae", "--print_config")
    assert info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["latent_channels"] == 4 and config["trainer"]["max_steps"] == 1000
    assert "in_channels" not in config["model"]  # linked from data.channels
    config["model"]["latent_channels"] = 3
    config["model"]["base_channels"] = 8
    config["data"].update(num_train=16, num_val=8, num_test=8, batch_size=8)
    config["trainer"].update(max_steps=2, limit_val_batches=1, enable_progress_bar=False)
    config["trainer"]["logger"] = False
    Path("my.yaml").write_text(yaml.safe_dump(config))
    cli = run_fit("--model", "vae", "--config", "my.yaml")
    assert cli.model.hparams.latent_channels == 3 and cli.trainer.global_step == 2
    assert cli.model.encoder.net[-1].out_channels == 6  # the network really has 3 latent channels


def test_data_and_model_overrides(in_tmp):
    shapes_only = {"--data.num_train", "--data.num_val", "--data.num_test"}
    flags = [a for i, a in enumerate(TINY_VAE) if a not in shapes_only and TINY_VAE[i - 1] not in shapes_only]
    cli = run_fit(
        *flags, "--data", "digits", "--data.image_size", "16",
        "--model.latent_channels", "2", "--model.downsample_factor", "8", "--trainer.max_steps", "2",
    )  # fmt: skip
    assert type(cli.datamodule).__name__ == "DigitsDataModule"
    assert cli.model.hparams.in_channels == 1 and cli.model.hparams.image_size == 16  # linked from the data
    assert cli.model.hparams.latent_channels == 2
    images = cli.model.generate(2)
    assert images.shape == (2, 1, 16, 16)


def test_unknown_model_lists_close_matches(in_tmp, capsys):
    with pytest.raises(UsageError) as info:
        run_fit("--model", "vea")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown model 'vea'" in err and "Did you mean 'vae'" in err


def test_unknown_data_and_missing_model(in_tmp, capsys):
    with pytest.raises(UsageError):
        run_fit("--model", "vae", "--data", "shape")
    assert "Did you mean 'shapes'" in capsys.readouterr().err
    with pytest.raises(UsageError):
        run_fit("--trainer.max_steps", "3")
    assert "--model NAME is required" in capsys.readouterr().err


def test_wrong_modality_is_refused(in_tmp, fake_dists, capsys):
    fake_dists.add(
        "text-plugins",
        {"zoo.datamodules": {"poems": "poems_mod:Poems"}},
        {
            "poems_mod": "from zoo.data import ZooDataModule\nclass Poems(ZooDataModule):\n    modality = 'text'\n"
        },
    )
    with pytest.raises(UsageError):
        run_fit("--model", "vae", "--data", "poems")
    err = capsys.readouterr().err
    assert "gives text data, but model 'vae' needs image data" in err and "shapes" in err


def test_bad_flag_value_is_a_clear_error(in_tmp, capsys):
    with pytest.raises(SystemExit) as info:
        run_fit("--model", "vae", "--model.latent_channels", "many")
    assert info.value.code == 2
    assert "latent_channels" in capsys.readouterr().err


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_seed_same_run_and_different_seed_differs(in_tmp):
    a = _params(run_fit(*TINY_VAE, "--trainer.max_steps", "3", "--seed_everything", "7").model)
    b = _params(run_fit(*TINY_VAE, "--trainer.max_steps", "3", "--seed_everything", "7").model)
    c = _params(run_fit(*TINY_VAE, "--trainer.max_steps", "3", "--seed_everything", "8").model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_from_last_ckpt_is_exact(in_tmp):
    # 48 training images in batches of 8: 6 steps an epoch. Stopping at step 4 interrupts the
    # first epoch; the remaining 6 steps finish it and run into the second.
    common = [*TINY_VAE, "--seed_everything", "3", "--checkpoint.every_n_train_steps", "2"]
    straight = run_fit(*common, "--trainer.max_steps", "10")
    first = run_fit(*common, "--trainer.max_steps", "4")
    last = _ckpt_dir(first) / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4
    resumed = run_fit(*common, "--trainer.max_steps", "10", "--ckpt_path", str(last))
    assert Path(resumed.trainer.default_root_dir) == Path(first.trainer.default_root_dir)  # same run folder
    assert resumed.trainer.global_step == 10
    a, b = _params(straight.model), _params(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    # and resuming without the saved loader and RNG states would not have been exact
    check = torch.load(last, weights_only=True)
    assert check["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches_yielded"] == 4
    assert "rng_states" in check and check["zoo"]["model"] == "vae"


def test_help_all_lists_every_flag():
    out = subprocess.run(
        [sys.executable, "-m", "zoo.fit", "--model", "vae", "--help-all"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0
    assert "--model.latent_channels" in out.stdout and "--data.num_train" in out.stdout
    assert "--checkpoint.every_n_train_steps" in out.stdout and "--samples.every_n_steps" in out.stdout


@pytest.mark.slow
def test_default_logger_is_offline_wandb_in_the_run_folder(in_tmp, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline must come from zoo, not the environment
    flags = [a for i, a in enumerate(TINY_VAE) if a != "--logger" and TINY_VAE[i - 1] != "--logger"]
    cli = run_fit(*flags, "--trainer.max_steps", "2")
    logger = cli.trainer.logger
    assert type(logger).__name__ == "WandbLogger" and logger._offline
    run = Path(cli.trainer.default_root_dir)
    offline_runs = list((run / "wandb").glob("offline-run-*"))
    assert offline_runs, list(run.rglob("*"))[:20]
    assert list(offline_runs[0].rglob("*.png"))  # the sample grid went to W&B too

"""`python -m zoo.fit`: the defects found by trying the project as a new user would (issue 26), one test each.

Each test fails on the code before its fix: a run of 5 steps saved every 4 steps kept step 4 as
`last.ckpt`; a config file's logger beat `--logger none`; a wrong-family `--ckpt_path` failed deep in
LightningCLI; a misspelled flag printed a hundred lines; CSV runs wrote `config.yaml` elsewhere.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY_VAE, run_fit
from zoo.cli import UsageError

# TINY_VAE without its `shapes` data sizes, for runs on image_folder
TINY_VAE_FOLDER = [
    a
    for i, a in enumerate(TINY_VAE)
    if not (a.startswith("--data.num_") or TINY_VAE[i - 1].startswith("--data.num_"))
]


def _run_dir(cli) -> Path:
    return Path(cli.trainer.default_root_dir)


def test_last_ckpt_holds_the_final_step(in_tmp):
    cli = run_fit(*TINY_VAE, "--trainer.max_steps", "5", "--checkpoint.every_n_train_steps", "4")
    last = torch.load(_run_dir(cli) / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 5 == cli.trainer.global_step
    # and it resumes as a finished run: no step is repeated
    weights = {k: v.clone() for k, v in cli.model.state_dict().items()}
    assert all(torch.equal(weights[k], v) for k, v in last["state_dict"].items())


def test_flags_win_over_config_files(in_tmp, capsys):
    with pytest.raises(SystemExit):
        run_fit(*[a for a in TINY_VAE if a not in ("--logger", "none")], "--print_config")
    config = yaml.safe_load(capsys.readouterr().out)
    assert "WandbLogger" in config["trainer"]["logger"]["class_path"]  # the file asks for W&B
    config["trainer"]["max_steps"] = 7
    Path("my.yaml").write_text(yaml.safe_dump(config))
    # the flags come before the file on purpose: position must not matter
    cli = run_fit("--model", "vae", "--logger", "none", "--trainer.max_steps", "2", "--config", "my.yaml")
    assert cli.trainer.global_step == 2
    assert cli.trainer.logger is None
    assert not list(_run_dir(cli).glob("wandb")), "the config file's W&B logger ran despite --logger none"


def test_config_yaml_is_in_the_run_folder_with_csv(in_tmp):
    cli = run_fit(
        *TINY_VAE[:-2], "--logger", "csv", "--trainer.max_steps", "2", "--trainer.log_every_n_steps", "1"
    )
    run = _run_dir(cli)
    assert (run / "config.yaml").is_file()
    assert not list(run.rglob("*/config.yaml")), "a second config.yaml below the run folder"
    assert list(run.rglob("metrics.csv"))


def test_run_folder_and_checkpoint_are_printed(in_tmp, capsys):
    cli = run_fit(*TINY_VAE, "--trainer.max_steps", "2")
    err = capsys.readouterr().err
    run = _run_dir(cli)
    assert f"run folder {run}" in err
    assert f"checkpoint {run / 'checkpoints' / 'last.ckpt'} (step 2)" in err


def test_misspelled_flag_names_the_close_match_in_few_lines(in_tmp):
    out = subprocess.run(
        [sys.executable, "-m", "zoo.fit", "--model", "vae", "--trainer.max_stpes", "5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "did you mean --trainer.max_steps" in errors[0], out.stderr
    assert "usage:" not in out.stderr


def test_abbreviated_flags_are_not_taken_silently(in_tmp, capsys):
    # argparse's prefix matching took --trainer.max_step as --trainer.max_steps
    with pytest.raises(UsageError):
        run_fit(*TINY_VAE, "--trainer.max_step", "2")
    assert "did you mean --trainer.max_steps" in capsys.readouterr().err


@pytest.fixture(scope="module")
def gpt_ckpt(tmp_path_factory) -> Path:
    import os

    root = tmp_path_factory.mktemp("gpt")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        cli = run_fit(
            "--model", "gpt", "--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "16",
            "--data.num_train", "40", "--data.num_val", "8", "--data.num_test", "8", "--data.tokenizer", "char",
            "--data.block_size", "16", "--data.batch_size", "8", "--trainer.max_steps", "1",
            "--trainer.limit_val_batches", "0", "--samples.num_samples", "0", "--logger", "none",
            "--trainer.enable_progress_bar", "false",
        )  # fmt: skip
    finally:
        os.chdir(cwd)
    return root / _run_dir(cli) / "checkpoints" / "last.ckpt"


def test_resume_from_another_familys_checkpoint_says_what_it_holds(in_tmp, gpt_ckpt, capsys):
    with pytest.raises(UsageError):
        run_fit(*TINY_VAE, "--ckpt_path", str(gpt_ckpt))
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(
        f"{gpt_ckpt} is a `gpt` checkpoint; --ckpt_path needs a `vae` one (or train that family: --model gpt)"
    )


def test_resume_from_a_truncated_checkpoint_names_the_file(in_tmp, gpt_ckpt, capsys):
    Path("truncated.ckpt").write_bytes(gpt_ckpt.read_bytes()[:4000])
    with pytest.raises(UsageError):
        run_fit(*TINY_VAE, "--ckpt_path", "truncated.ckpt")
    err = capsys.readouterr().err
    assert "checkpoint 'truncated.ckpt'" in err and "truncated" in err
    assert "Traceback" not in err and "PytorchStreamReader" not in err


def test_a_data_error_is_one_line_and_keeps_no_checkpoint(in_tmp, capsys):
    with pytest.raises(SystemExit) as info:
        run_fit(
            *TINY_VAE_FOLDER,
            "--data",
            "image_folder",
            "--data.root",
            "no_such_folder",
            "--trainer.max_steps",
            "2",
        )
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "data error: image_folder root 'no_such_folder' does not exist" in err
    assert "Traceback" not in err
    assert not list(Path("runs").rglob("*.ckpt"))


def test_a_data_error_inside_fit_keeps_no_step_zero_checkpoint(in_tmp, capsys):
    from PIL import Image

    Path("pics").mkdir()
    for i in range(8):
        Image.new("RGB", (16, 16), (30 * i, 0, 0)).save(f"pics/{i}.png")
    Path("pics/broken.png").write_bytes(b"not a png")
    with pytest.raises(SystemExit):  # raised in setup(), inside Trainer.fit
        run_fit(*TINY_VAE_FOLDER, "--data", "image_folder", "--data.root", "pics", "--data.image_size", "16",
                "--trainer.max_steps", "2")  # fmt: skip
    err = capsys.readouterr().err
    assert "cannot read image file" in err and "broken.png" in err and "Traceback" not in err
    assert not list(Path("runs").rglob("on_exception.ckpt"))


def test_traceback_flag_shows_the_traceback(in_tmp):
    from zoo.errors import DataError

    with pytest.raises(DataError):
        run_fit(*TINY_VAE_FOLDER, "--data", "image_folder", "--data.root", "no_such_folder", "--traceback")


def test_a_used_run_folder_is_refused(in_tmp, capsys):
    run_fit(*TINY_VAE, "--trainer.max_steps", "1", "--trainer.default_root_dir", "mine")
    with pytest.raises(UsageError):
        run_fit(*TINY_VAE, "--trainer.max_steps", "1", "--trainer.default_root_dir", "mine")
    assert "mine already holds a run" in capsys.readouterr().err
    # resuming into it is what the folder is for
    cli = run_fit(*TINY_VAE, "--trainer.max_steps", "2", "--trainer.default_root_dir", "mine",
                  "--ckpt_path", "mine/checkpoints/last.ckpt")  # fmt: skip
    assert cli.trainer.global_step == 2


def test_help_shows_zoo_flags_and_the_familys_arguments_briefly():
    out = subprocess.run(
        [sys.executable, "-m", "zoo.fit", "--model", "vae", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    # brief = not Lightning's every flag (--help-all: about 900 lines); the vae's own arguments are about 100
    assert len(lines) < 150, f"--help is {len(lines)} lines"
    text = out.stdout
    assert text.index("--logger") < text.index("--model.latent_channels")  # zoo's own flags first
    assert "--recipe" in text and "--help-all" in text and "--data.num_train" in text
    # the family's arguments come with their recipe's values and their docstrings
    assert "default: 1000" not in text.split("--model.latent_channels")[0]


def test_a_value_the_family_refuses_is_one_line_and_traceback_shows_it(in_tmp, capsys):
    """A ValueError from a family's __init__ (here ddpm's unknown sampler) is a usage error, exit 2, one
    line; --traceback re-raises the ValueError itself."""
    with pytest.raises(SystemExit) as info:
        run_fit("--model", "ddpm", "--model.sampler", "nope", "--trainer.max_steps", "1")
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("python -m zoo.fit: error: unknown sampler 'nope'; choose one of"), err
    assert not any("Traceback" in line for line in err)
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        run_fit("--model", "ddpm", "--model.sampler", "nope", "--trainer.max_steps", "1", "--traceback")

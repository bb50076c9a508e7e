"""`python -m zoo.fit --model NAME --help`: zoo's own flags first, then the family's and the datamodule's
arguments with their docstrings and the recipe's values. LightningCLI's full help (every trainer,
checkpoint, sample and metric flag: some 800 lines) stays behind `--help-all`."""

from __future__ import annotations

import argparse
import contextlib
import inspect
from pathlib import Path
from typing import Any

import yaml

LIGHTNING_FLAGS = """\
Lightning's flags (`--help-all` lists every one):
  --config FILE           a configuration file (`--print_config` writes the whole configuration)
  --ckpt_path CKPT        resume a run from its checkpoint (runs/<model>/<run>/checkpoints/last.ckpt)
  --seed_everything S     the seed of the whole run (default 0)
  --trainer.KEY V         Lightning's Trainer: max_steps, accelerator, devices, strategy, precision, ...
  --checkpoint.KEY V      checkpointing: every_n_train_steps, ...
  --samples.KEY V         sample grids during training: every_n_steps, num_samples, ...
  --metrics.KEY V         metrics during training: every_n_steps, metrics, ..."""


def _recipe_values(config_files: list[str], section: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path in config_files:
        config = yaml.safe_load(Path(path).read_text()) or {}
        values.update(config.get(section) or {})
    return values


def _arguments_help(cls: type, section: str, title: str, defaults: dict[str, Any]) -> str:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(add_help=False)
    group_help = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0]
    parser.add_class_arguments(cls, section, help=group_help)
    for key, value in defaults.items():
        with contextlib.suppress(Exception):  # a recipe value the parser cannot show as a default
            parser.set_defaults({f"{section}.{key}": value})
    text = parser.format_help()
    # the group's part only: argparse's usage line repeats every flag
    start = text.find("\n\n")
    return f"{title}\n{text[start + 2 :].rstrip()}" if start >= 0 else text


def print_family_help(
    model_name: str,
    model_class: type,
    data_name: str,
    data_class: type,
    config_files: list[str],
    pre_parser: argparse.ArgumentParser,
) -> None:
    prog = f"python -m zoo.fit --model {model_name}"
    print(f"usage: {prog} [--data NAME] [--recipe NAME] [--logger NAME] [--config FILE] [--KEY VALUE ...]\n")
    zoo_flags = pre_parser.format_help()
    print("zoo's flags:\n" + zoo_flags[zoo_flags.find("options:") + len("options:") :].strip("\n") + "\n")
    print(LIGHTNING_FLAGS + "\n")
    print(
        _arguments_help(
            model_class,
            "model",
            f"the family '{model_name}' ({model_class.__module__}.{model_class.__qualname__}), "
            "defaults from its recipe:",
            _recipe_values(config_files, "model"),
        )
        + "\n"
    )
    print(
        _arguments_help(
            data_class,
            "data",
            f"the data '{data_name}' ({data_class.__module__}.{data_class.__qualname__}):",
            _recipe_values(config_files, "data"),
        )
    )

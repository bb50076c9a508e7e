"""`python -m zoo.fit --model NAME [--data NAME] [LightningCLI arguments]`: train a family.

`--model` and `--data` are registry names, resolved before LightningCLI sees the rest of the
command line, which it then parses as its `fit` subcommand: `--config FILE`, `--print_config`,
`--trainer.KEY V`, `--model.KEY V`, `--data.KEY V`, `--checkpoint.KEY V`, `--samples.KEY V`,
`--metrics.KEY V` (in-training metrics, off by default),
`--ckpt_path`, `--seed_everything`. A family built on others (`default_parents`, e.g. controlnet's ldm)
trains each one the command does not give (`--model.base`) first, by its own recipe and `--parent-config
NAME=FILE`. The family's recipe `configs/<model>/default.yaml` is the
first config file, so every flag overrides it. `sys.argv` is never edited: Lightning's DDP
launcher starts the other ranks with the same command line.

Defaults: a run folder `runs/<model>/<timestamp>/` (the checkpoint's run folder when resuming
with `--ckpt_path`), a W&B logger (offline unless WANDB_API_KEY is set), `ModelCheckpoint`
keeping `last.ckpt`, and `SampleGrid` writing sample grids to `<run>/samples/`.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import inspect
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from zoo import registry
from zoo.cli import UsageError, usage_errors_reported

PROG = "python -m zoo.fit"
RUN_DIR_ENV = "ZOO_RUN_DIR"
LOGGERS = {
    "wandb": "lightning.pytorch.loggers.WandbLogger",
    "csv": "lightning.pytorch.loggers.CSVLogger",
    "tensorboard": "lightning.pytorch.loggers.TensorBoardLogger",
}
# data attribute -> model argument, linked when both exist, so a model sizes itself to its data
LINKS = {
    "channels": "in_channels",
    "image_size": "image_size",
    "block_size": "block_size",
    "sample_rate": "sample_rate",
    "frames": "frames",
    "fps": "fps",
}


def default_config(model_name: str, model_class: type) -> Path | None:
    """The family's recipe: `zoo.configs/<name>/default.yaml`, else the class's `default_config`."""
    shipped = resources.files("zoo.configs") / model_name / "default.yaml"
    if shipped.is_file():
        return Path(str(shipped))
    own = getattr(model_class, "default_config", None)
    if own:
        return Path(own)
    return None


def recipes(model_name: str) -> list[str]:
    """Names of the recipes shipped for a family (`configs/<name>/<recipe>.yaml`)."""
    folder = resources.files("zoo.configs") / model_name
    return (
        sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")) if folder.is_dir() else []
    )


def recipe_config(model_name: str, recipe: str) -> Path:
    path = resources.files("zoo.configs") / model_name / f"{recipe}.yaml"
    if not path.is_file():
        raise UsageError(
            f"model '{model_name}' has no recipe '{recipe}'; its recipes: {', '.join(recipes(model_name)) or '(none)'}"
        )
    return Path(str(path))


def new_run_dir(model_name: str, root: str | Path = "runs") -> Path:
    """`runs/<model>/<timestamp>`; a cluster job's id instead, so every node agrees on it."""
    for var in ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        job = os.environ.get(var)
        if job and job != "none":
            return Path(root) / model_name / f"job-{job}"
    base = Path(root) / model_name / time.strftime("%Y%m%d-%H%M%S")
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return path


def _run_dir_of_checkpoint(ckpt_path: str | None) -> Path | None:
    if not ckpt_path:
        return None
    path = Path(ckpt_path)
    return path.parent.parent if path.parent.name == "checkpoints" else None


def _init_params(cls: type) -> dict[str, Any]:
    """The keyword arguments `cls(...)` takes, following `**kwargs` up to the base classes' `__init__`, each
    with its default (the most derived `__init__`'s; None for a required one)."""
    defaults: dict[str, Any] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        try:
            params = inspect.signature(klass.__init__).parameters
        except (TypeError, ValueError):
            break
        for n, p in params.items():
            if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                defaults.setdefault(n, None if p.default is p.empty else p.default)
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return defaults


def _pre_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, add_help=False, allow_abbrev=False)
    parser.add_argument("--model", help="a model family's registry name (python -m zoo.list)")
    parser.add_argument("--data", help="a datamodule's registry name; default: the family's own")
    parser.add_argument(
        "--recipe", help="a shipped recipe, configs/<model>/<recipe>.yaml, read after default.yaml"
    )
    parser.add_argument(
        "--logger", choices=[*LOGGERS, "none"], help="logger (default wandb, offline without WANDB_API_KEY)"
    )
    parser.add_argument(
        "--traceback", action="store_true", help="on a data error, print the full traceback too"
    )
    parser.add_argument(
        "--parent-config",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="a family built on others (controlnet, lora, ...) trains each one not given (--model.NAME) "
        "first; this file is read after its recipe (e.g. base=small_ldm.yaml)",
    )
    parser.add_argument("-h", "--help", action="store_true", help="zoo's flags and the family's arguments")
    parser.add_argument(
        "--help-all", action="store_true", help="every flag, Lightning's included (LightningCLI's help)"
    )
    return parser


def check_modality(model_name: str, model_class: type, data_name: str, data_class: type) -> None:
    model_modality = getattr(model_class, "modality", None)
    data_modality = getattr(data_class, "modality", None)
    if model_modality and data_modality and model_modality != data_modality:
        fitting = []
        for name, entry in registry.datamodule_entries().items():
            with contextlib.suppress(registry.RegistryError):
                if getattr(entry.load(), "modality", None) == model_modality:
                    fitting.append(name)
        raise UsageError(
            f"--data {data_name} gives {data_modality} data, but model '{model_name}' needs {model_modality} data. "
            f"Datamodules with {model_modality} data: {', '.join(fitting) or '(none installed)'}."
        )


@contextlib.contextmanager
def _scoped_env(name: str) -> Iterator[None]:
    # The run folder is passed to DDP ranks through the environment; an in-process caller (a
    # test, a notebook) must not see it leak into its next run.
    before = os.environ.get(name)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _recipe_for_data(recipe: Path, data_name: str, data_class: type) -> Path:
    """The recipe, less the `data:` keys the chosen datamodule does not take (a note names them).

    A recipe is written for its family's own data (`hifigan` sets `data.num_train` for `tones`);
    with `--data audio_folder` those keys would make LightningCLI refuse the whole command.
    """
    import yaml

    config = yaml.safe_load(recipe.read_text()) or {}
    data = config.get("data")
    if not isinstance(data, dict):
        return recipe
    accepted = _init_params(data_class)
    dropped = sorted(k for k in data if k not in accepted)
    if not dropped:
        return recipe
    config["data"] = {k: v for k, v in data.items() if k in accepted}
    if _is_rank_zero():
        print(
            f"note: recipe {recipe.parent.name}/{recipe.name} sets {', '.join('data.' + k for k in dropped)}, "
            f"which --data {data_name} does not take; left out",
            file=sys.stderr,
        )
    handle, name = tempfile.mkstemp(prefix=f"zoo-{recipe.parent.name}-{recipe.stem}-", suffix=".yaml")
    with os.fdopen(handle, "w") as file:
        yaml.safe_dump(config, file)
    atexit.register(lambda: Path(name).unlink(missing_ok=True))
    return Path(name)


def _is_rank_zero() -> bool:
    """True outside DDP and on rank 0, from the launcher's environment: used before Lightning is imported
    (so `--help` and typos stay fast); past that point, Lightning's `rank_zero_only.rank` decides."""
    return all(os.environ.get(var, "0") == "0" for var in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _files_first(args: list[str]) -> list[str]:
    """`--config FILE` arguments ahead of every other flag: jsonargparse applies arguments in order, and
    a flag typed on the command line must win over a file wherever the two stand."""
    files: list[str] = []
    flags: list[str] = []
    i = 0
    while i < len(args):
        if args[i] in ("--config", "-c") and i + 1 < len(args):
            files += args[i : i + 2]
            i += 2
            continue
        (files if args[i].startswith("--config=") else flags).append(args[i])
        i += 1
    return files + flags


def _logger_config(logger: str) -> Any:
    """`--logger NAME` as the value of `trainer.logger` (save_dir "runs" is filled in with the run folder)."""
    if logger == "none":
        return False
    init_args: dict[str, Any] = {"save_dir": "runs"}
    if logger == "wandb":
        init_args.update(project="zoo", offline=not os.environ.get("WANDB_API_KEY"))
    return {"class_path": LOGGERS[logger], "init_args": init_args}


def parent_flag_value(model_class: type, args: Sequence[str]) -> tuple[str, str] | None:
    """(flag, path) of the checkpoint a family is built on (`built_on = "teacher"` reads `--model.teacher`,
    "base" `--model.base`) when the command line gives one, else None."""
    built_on = getattr(model_class, "built_on", None)
    if not built_on:
        return None
    flag = f"--model.{built_on}"
    value = _flag_value(args, flag)
    return None if value is None else (flag, value)


def _data_of_parent(model_class: type, args: Sequence[str]) -> tuple[str, dict[str, Any]] | None:
    """The datamodule name and arguments of the checkpoint the family is built on (DESIGN: the data comes
    from the teacher's or base's checkpoint unless --data is given); None without one."""
    parent = parent_flag_value(model_class, args)
    if parent is None:
        return None
    from zoo.checkpoint import CheckpointError, read_checkpoint
    from zoo.evaluate import data_of_checkpoint

    flag, path = parent
    try:
        checkpoint = read_checkpoint(path)
    except CheckpointError as err:
        raise UsageError(f"{flag}: {err}") from err
    try:
        return data_of_checkpoint(checkpoint, model_class)
    except ValueError as err:
        raise UsageError(f"{flag} {path}: {err}") from err


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return None if value in (None, "", "null", "None") else value


def _parent_configs(known: argparse.Namespace, parents: dict[str, str]) -> dict[str, str]:
    configs = {}
    for entry in known.parent_config:
        name, _, path = entry.partition("=")
        if name not in parents or not path:
            names = ", ".join(parents) or "(none: this family is built on no other)"
            raise UsageError(f"--parent-config takes NAME=FILE with NAME one of {names}; got {entry!r}")
        configs[name] = path
    return configs


def _with_parents(known: argparse.Namespace, model_class: type, rest: list[str]) -> list[str]:
    """`rest` with a `--model.NAME CKPT` for each checkpoint the family is built on (`default_parents`:
    {NAME: family}) that the command line does not give: a resumed run's from its checkpoint, otherwise one
    trained here first by `zoo.fit --model FAMILY` (its recipe, the command's data, `--parent-config`)."""
    parents: dict[str, str] = getattr(model_class, "default_parents", {}) or {}
    configs = _parent_configs(known, parents)
    resume = _flag_value(rest, "--ckpt_path")
    for name, family in parents.items():
        flag = f"--model.{name}"
        if _flag_value(rest, flag) is not None:
            continue
        if resume is not None:  # the run continues on the checkpoint it began with
            from zoo.checkpoint import CheckpointError, read_checkpoint

            try:
                given = (read_checkpoint(resume).get("hyper_parameters") or {}).get(name)
            except CheckpointError as err:
                raise UsageError(f"--ckpt_path: {err}") from err
            if not given:
                raise UsageError(f"--ckpt_path {resume} records no {flag}: give {flag} CKPT")
            rest = [*rest, flag, str(given)]
            continue
        if os.environ.get("LOCAL_RANK") is not None:
            raise UsageError(
                f"a distributed run cannot train its {family} first: train it, then give {flag} CKPT"
            )
        data = ["--data", known.data] if known.data else []
        data += [
            a for i, a in enumerate(rest)
            if a.startswith("--data.") or (i and rest[i - 1].startswith("--data.") and "=" not in rest[i - 1])
        ]  # fmt: skip
        extra = ["--config", configs[name]] if name in configs else []
        logger = ["--logger", known.logger] if known.logger else []
        print(
            f"{PROG}: no {flag} given: training the {family} it needs first (python -m zoo.fit --model {family})"
        )
        cli = main(["--model", family, *data, *logger, *extra])
        checkpoint = Path(cli.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        print(f"{PROG}: {family} trained, {checkpoint}; now {known.model} with {flag} {checkpoint}")
        rest = [*rest, flag, str(checkpoint)]
    return rest


def _parent_data_config(data_class: type, hparams: dict[str, Any]) -> str:
    """A config file `data: {...}` with the parent's datamodule arguments that `data_class` takes, read after
    the recipe (so the parent's image size wins over the family's default) and before the command line."""
    import yaml

    accepted = _init_params(data_class)
    data = {k: v for k, v in hparams.items() if k in accepted}
    handle, name = tempfile.mkstemp(prefix="zoo-parent-data-", suffix=".yaml")
    with os.fdopen(handle, "w") as file:
        yaml.safe_dump({"data": data}, file)
    atexit.register(lambda: Path(name).unlink(missing_ok=True))
    return name


def _family_and_data(
    known: argparse.Namespace, parent_data: tuple[str, dict[str, Any]] | None = None
) -> tuple[type, str, type]:
    if known.model is None:
        raise UsageError(
            "--model NAME is required. Installed families: "
            f"{', '.join(registry.list_models()) or '(none)'}; `python -m zoo.list` describes them."
        )
    try:
        model_class = registry.get_model_class(known.model)
        parent_name = parent_data[0] if parent_data else None
        data_name = known.data or parent_name or getattr(model_class, "default_data", None)
        if not data_name:
            raise UsageError(f"model '{known.model}' names no default datamodule: pass --data NAME")
        data_class = registry.get_datamodule_class(data_name)
    except registry.RegistryError as err:
        raise UsageError(str(err)) from err
    check_modality(known.model, model_class, data_name, data_class)
    return model_class, data_name, data_class


def _recipe_files(
    known: argparse.Namespace, model_class: type, data_name: str, data_class: type
) -> list[str]:
    extra = recipe_config(known.model, known.recipe) if known.recipe and known.recipe != "default" else None
    files = [p for p in (default_config(known.model, model_class), extra) if p is not None]
    return [str(_recipe_for_data(p, data_name, data_class)) for p in files]


def main(argv: Sequence[str] | None = None, *, run: bool = True) -> Any:
    """Entry point of `python -m zoo.fit`; returns the LightningCLI object (for tests and notebooks)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    known, rest = _pre_parser().parse_known_args(argv)
    with usage_errors_reported(PROG):
        if known.model is None and known.help:
            _pre_parser().print_help()
            print("\nWith --model NAME, --help lists the arguments of that family and its datamodule.")
            return None
        model_class, data_name, data_class = _family_and_data(known)
        if not (known.help or known.help_all):
            hint = getattr(model_class, "data_hint", None)  # a family whose data only its user has
            if hint and not known.data:
                raise UsageError(f"model '{known.model}' trains on data of your own: pass --data {hint}")
            rest = _with_parents(known, model_class, rest)
        parent_data = None if known.data else _data_of_parent(model_class, rest)
        if parent_data is not None:
            model_class, data_name, data_class = _family_and_data(known, parent_data)
        config_files = _recipe_files(known, model_class, data_name, data_class)
        if parent_data is not None:
            config_files.append(_parent_data_config(data_class, parent_data[1]))
        if known.help:
            from zoo.fit_help import print_family_help

            print_family_help(known.model, model_class, data_name, data_class, config_files, _pre_parser())
            return None
        args = _files_first(rest)
        if known.logger:  # after every file, so the flag wins over a config file's logger
            args += ["--trainer.logger", json.dumps(_logger_config(known.logger))]
        if known.help_all:
            args.append("--help")
        return _run_cli(known, model_class, data_class, config_files, args, run=run)


def _run_cli(
    known: argparse.Namespace,
    model_class: type,
    data_class: type,
    config_files: list[str],
    args: list[str],
    *,
    run: bool,
) -> Any:
    from zoo.data import DataError

    prog = f"{PROG} --model {known.model}"
    # exit_on_error=False: ZooCLI.parse_arguments turns a parse error into one line with close matches
    parser_kwargs: dict[str, Any] = {"prog": prog, "exit_on_error": False, "allow_abbrev": False}
    if config_files:
        parser_kwargs["default_config_files"] = config_files
    from zoo.lightning_cli import SaveConfigToRunFolder, ZooCLI

    cli_class = type("ZooCLI", (ZooCLI,), {"model_name": known.model, "show_traceback": known.traceback})
    with _scoped_env(RUN_DIR_ENV), warnings.catch_warnings():
        # zoo passes LightningCLI the command line minus --model/--data on purpose
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        try:
            return cli_class(
                model_class,
                data_class,
                args=["fit", *args] if run else args,
                run=run,
                seed_everything_default=0,
                trainer_defaults={"logger": _logger_config("wandb")},
                parser_kwargs={
                    "prog": prog,
                    "exit_on_error": False,
                    "allow_abbrev": False,
                    "fit": parser_kwargs,
                }
                if run
                else parser_kwargs,
                save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
                save_config_callback=SaveConfigToRunFolder,
            )
        except DataError as err:
            if known.traceback:
                raise
            print(f"{PROG}: data error: {err}\n(--traceback shows where it was raised)", file=sys.stderr)
            raise SystemExit(1) from err


if __name__ == "__main__":
    main()

"""`python -m zoo.fit --model NAME [--data NAME] [LightningCLI arguments]`: train a family.

`--model` and `--data` are registry names, resolved before LightningCLI sees the rest of the
command line, which it then parses as its `fit` subcommand: `--config FILE`, `--print_config`,
`--trainer.KEY V`, `--model.KEY V`, `--data.KEY V`, `--checkpoint.KEY V`, `--samples.KEY V`,
`--metrics.KEY V` (in-training metrics, off by default),
`--ckpt_path`, `--seed_everything`. The family's recipe `configs/<model>/default.yaml` is the
first config file, so every flag overrides it. `sys.argv` is never edited: Lightning's DDP
launcher starts the other ranks with the same command line.

Defaults: a run folder `runs/<model>/<timestamp>/` (the checkpoint's run folder when resuming
with `--ckpt_path`), a W&B logger (offline unless WANDB_API_KEY is set), `ModelCheckpoint`
keeping `last.ckpt`, and `SampleGrid` writing sample grids to `<run>/samples/`.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from zoo import registry

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


class UsageError(SystemExit):
    """A command-line mistake: printed as `error: ...` and exit status 2, without a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message


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


def _init_params(cls: type) -> set[str]:
    try:
        return set(inspect.signature(cls.__init__).parameters) - {"self"}
    except (TypeError, ValueError):
        return set()


def _make_cli_class():  # noqa: ANN202 - imports Lightning lazily, so `--help` on a typo stays fast
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.cli import LightningCLI

    from zoo.callbacks import CheckpointOnException, MetricsCallback, SampleGrid

    class ZooCLI(LightningCLI):
        """LightningCLI with zoo's run folder, checkpointing and sample-grid defaults."""

        model_name: str = ""
        run_dir: Path | None = None

        def add_arguments_to_parser(self, parser: Any) -> None:
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0})
            parser.add_lightning_class_args(SampleGrid, "samples")
            # off unless --metrics.every_n_steps N (> 0): e.g. --metrics.every_n_steps 500 --metrics.metrics fid,kid
            parser.add_lightning_class_args(MetricsCallback, "metrics")
            model_params = _init_params(self.model_class)
            data_params = _init_params(self.datamodule_class)
            for source, target in LINKS.items():
                if source in data_params and target in model_params:
                    parser.link_arguments(f"data.{source}", f"model.{target}", apply_on="parse")
            # the number of classes is known once the datamodule exists (image_folder counts folders)
            if "num_classes" in model_params and hasattr(self.datamodule_class, "num_classes"):
                parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
            # a text model's vocabulary is its data's tokenizer's, known once the datamodule exists
            if "vocab_size" in model_params and hasattr(self.datamodule_class, "vocab_size"):
                parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand] if self.subcommand else self.config
            root = config.trainer.default_root_dir
            if root is None:
                resumed = _run_dir_of_checkpoint(config.get("ckpt_path"))
                root = os.environ.get(RUN_DIR_ENV) or resumed or self.run_dir or new_run_dir(self.model_name)
                config.trainer.default_root_dir = str(root)
            # DDP ranks started by the launcher inherit this, so all ranks share one run folder.
            os.environ[RUN_DIR_ENV] = str(root)
            if config.checkpoint.dirpath is None:
                config.checkpoint.dirpath = str(Path(root) / "checkpoints")
            logger = config.trainer.logger
            if hasattr(logger, "init_args"):
                init_args = logger.init_args
                if getattr(init_args, "save_dir", None) in (None, ".", "", "runs"):
                    init_args.save_dir = str(root)
                if "Wandb" in logger.class_path:
                    if getattr(init_args, "name", None) is None:
                        init_args.name = f"{self.model_name}/{Path(root).name}"
                    if not os.environ.get("WANDB_API_KEY"):
                        init_args.offline = True

        def before_fit(self) -> None:
            # A family may need work before its training proper: `ldm` trains its tokenizer and its first
            # stage here (with their own progress bars), in the run folder, unless the run resumes.
            prepare = getattr(self.model, "prepare_fit", None)
            if callable(prepare):
                config = self.config[self.subcommand] if self.subcommand else self.config
                prepare(self.trainer, self.datamodule, ckpt_path=config.get("ckpt_path"))

        def instantiate_trainer(self, **kwargs: Any) -> Any:
            # Keep the weights of a run that fails (a NaN loss, Ctrl-C): <run>/checkpoints/on_exception.ckpt
            config = self.config_init[self.subcommand] if self.subcommand else self.config_init
            configured = config.trainer.get("callbacks") or []
            configured = [configured] if isinstance(configured, L.Callback) else list(configured)
            kwargs["callbacks"] = [
                CheckpointOnException(config.checkpoint.dirpath),
                *configured,
                *kwargs.get("callbacks", []),
            ]
            return super().instantiate_trainer(**kwargs)

    return ZooCLI


def _pre_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m zoo.fit", add_help=False, allow_abbrev=False)
    parser.add_argument("--model", help="a model family's registry name (python -m zoo.list)")
    parser.add_argument("--data", help="a datamodule's registry name; default: the family's own")
    parser.add_argument(
        "--logger", choices=[*LOGGERS, "none"], help="logger (default wandb, offline without WANDB_API_KEY)"
    )
    parser.add_argument(
        "--recipe", help="a shipped recipe, configs/<model>/<recipe>.yaml, read after default.yaml"
    )
    parser.add_argument("-h", "--help", action="store_true")
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


def main(argv: Sequence[str] | None = None, *, run: bool = True) -> Any:
    """Entry point of `python -m zoo.fit`; returns the LightningCLI object (for tests and notebooks)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    known, rest = _pre_parser().parse_known_args(argv)
    try:
        if known.model is None:
            if known.help:
                _pre_parser().print_help()
                print("\nWith --model NAME, --help lists every flag of that family and its datamodule.")
                return None
            raise UsageError(
                "--model NAME is required. Installed families: "
                f"{', '.join(registry.list_models()) or '(none)'}; `python -m zoo.list` describes them."
            )
        try:
            model_class = registry.get_model_class(known.model)
            data_name = known.data or getattr(model_class, "default_data", None)
            if not data_name:
                raise UsageError(f"model '{known.model}' names no default datamodule: pass --data NAME")
            data_class = registry.get_datamodule_class(data_name)
        except registry.RegistryError as err:
            raise UsageError(str(err)) from err
        check_modality(known.model, model_class, data_name, data_class)
        extra_recipe = (
            recipe_config(known.model, known.recipe) if known.recipe and known.recipe != "default" else None
        )
    except UsageError as err:
        print(f"python -m zoo.fit: error: {err.message}", file=sys.stderr)
        raise

    if known.help:
        rest.append("--help")
    trainer_defaults: dict[str, Any] = {}
    logger = known.logger or "wandb"
    # save_dir "runs" is a placeholder: before_instantiate_classes puts the run folder there
    trainer_defaults["logger"] = (
        False if logger == "none" else {"class_path": LOGGERS[logger], "init_args": {"save_dir": "runs"}}
    )
    if logger == "wandb":
        trainer_defaults["logger"]["init_args"].update(
            project="zoo", offline=not os.environ.get("WANDB_API_KEY")
        )

    parser_kwargs: dict[str, Any] = {"prog": f"python -m zoo.fit --model {known.model}"}
    recipe = default_config(known.model, model_class)
    config_files = [str(p) for p in (recipe, extra_recipe) if p is not None]
    if config_files:
        parser_kwargs["default_config_files"] = config_files

    cli_class = _make_cli_class()
    cli_class.model_name = known.model
    with _scoped_env(RUN_DIR_ENV), warnings.catch_warnings():
        # zoo passes LightningCLI the command line minus --model/--data on purpose
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        cli = cli_class(
            model_class,
            data_class,
            args=["fit", *rest] if run else rest,
            run=run,
            seed_everything_default=0,
            trainer_defaults=trainer_defaults,
            parser_kwargs={"prog": parser_kwargs["prog"], "fit": parser_kwargs} if run else parser_kwargs,
            save_config_kwargs={"overwrite": True},
        )
    return cli


if __name__ == "__main__":
    try:
        main()
    except UsageError as err:
        sys.exit(err.code)

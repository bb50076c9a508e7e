"""`ZooCLI`: the LightningCLI that `zoo.fit` runs, with zoo's run folder, callbacks and errors.

What it adds to LightningCLI, hook by hook:
- `add_arguments_to_parser`: `--checkpoint.*` (`FinalCheckpoint`), `--samples.*`, `--metrics.*`, and the
  data-to-model links (`zoo.fit.LINKS`, classes, vocabulary);
- `parse_arguments`: a parse error in one line with the close matches of a mistyped flag, and
  `--ckpt_path` checked to be a readable checkpoint of the family being trained;
- `before_instantiate_classes`: the run folder (new, the resumed run's, or refused when another run
  already lives in an explicit `--trainer.default_root_dir`), announced on stderr;
- `before_fit` / `after_fit`: a family's `prepare_fit` (ldm trains its first stage there) and the path
  of the final checkpoint;
- `instantiate_trainer`: `CheckpointOnException` ahead of the configured callbacks.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from zoo import registry
from zoo.callbacks import CheckpointOnException, FinalCheckpoint, MetricsCallback, SampleGrid
from zoo.cli import UsageError
from zoo.fit import (
    LINKS,
    PROG,
    RUN_DIR_ENV,
    _init_params,
    _run_dir_of_checkpoint,
    check_modality,
    new_run_dir,
)

ZOO_FLAGS = ("--model", "--data", "--recipe", "--logger", "--traceback", "--help", "--help-all")


class ZooCLI(LightningCLI):
    """LightningCLI with zoo's run folder, checkpointing and sample-grid defaults."""

    model_name: str = ""
    show_traceback: bool = False  # --traceback: a configuration error keeps its traceback

    def add_arguments_to_parser(self, parser: Any) -> None:
        self.fit_parser = parser  # for the close matches of a mistyped flag
        parser.add_lightning_class_args(FinalCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0})
        parser.add_lightning_class_args(SampleGrid, "samples")
        # off unless --metrics.every_n_steps N (> 0): e.g. --metrics.every_n_steps 500 --metrics.metrics fid,kid
        parser.add_lightning_class_args(MetricsCallback, "metrics")
        model_params = _init_params(self.model_class)
        data_params = _init_params(self.datamodule_class)
        from_root = getattr(self.datamodule_class, "attributes_from_root", False)  # streaming data's zoo.json
        for source, target in LINKS.items():
            if source in data_params and target in model_params:
                parser.link_arguments(f"data.{source}", f"model.{target}", apply_on="parse")
            elif from_root and target in model_params:
                parser.link_arguments(
                    "data",
                    f"model.{target}",
                    compute_fn=partial(_data_attribute, source, model_params[target]),
                    apply_on="instantiate",
                )
        # the number of classes is known once the datamodule exists (image_folder counts folders)
        if "num_classes" in model_params and hasattr(self.datamodule_class, "num_classes"):
            parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        # a text model's vocabulary is its data's tokenizer's, known once the datamodule exists
        if "vocab_size" in model_params and hasattr(self.datamodule_class, "vocab_size"):
            parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")
        elif "vocab_size" in model_params and from_root:
            compute = partial(_data_attribute, "vocab_size", model_params["vocab_size"])
            parser.link_arguments("data", "model.vocab_size", compute_fn=compute, apply_on="instantiate")

    def parse_arguments(self, parser: Any, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:
            raise UsageError(explain_parse_error(err, getattr(self, "fit_parser", parser)), PROG) from err
        config = self.config[self.config["subcommand"]] if self.config.get("subcommand") else self.config
        if config.get("ckpt_path"):
            check_resume_checkpoint(config["ckpt_path"], self.model_name)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = config.trainer.default_root_dir
        if root is None:
            resumed = _run_dir_of_checkpoint(config.get("ckpt_path"))
            root = os.environ.get(RUN_DIR_ENV) or resumed or new_run_dir(self.model_name)
            config.trainer.default_root_dir = str(root)
        elif self.subcommand and not config.get("ckpt_path") and os.environ.get(RUN_DIR_ENV) != str(root):
            refuse_used_run_folder(Path(root))
        # DDP ranks started by the launcher inherit this, so all ranks share one run folder.
        os.environ[RUN_DIR_ENV] = str(root)
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(Path(root) / "checkpoints")
        point_logger_at(config.trainer.logger, Path(root), self.model_name)
        if self.subcommand and rank_zero_only.rank == 0:
            print(f"{PROG}: run folder {root}", file=sys.stderr)

    def instantiate_classes(self) -> None:
        # a family's or datamodule's __init__ refusing a value (an unknown sampler, a patch size that does
        # not divide the latents) is a usage error: one line naming it, not a traceback. Data errors pass on.
        from zoo.errors import DataError

        try:
            super().instantiate_classes()
        except ValueError as err:
            if isinstance(err, DataError) or self.show_traceback:
                raise
            raise UsageError(f"{err} (--traceback shows where it was raised)", PROG) from err

    def before_fit(self) -> None:
        # streaming data knows its modality once its zoo.json is read: the parse-time check again, on the instances
        data_name = registry.name_of(type(self.datamodule), registry.DATAMODULE_GROUP) or "?"
        check_modality(self.model_name, self.model, data_name, self.datamodule)
        # A family may need work before its training proper: `ldm` trains its tokenizer and its first
        # stage here (with their own progress bars), in the run folder, unless the run resumes.
        prepare = getattr(self.model, "prepare_fit", None)
        if callable(prepare):
            config = self.config[self.subcommand] if self.subcommand else self.config
            prepare(self.trainer, self.datamodule, ckpt_path=config.get("ckpt_path"))

    def after_fit(self) -> None:
        last = Path(self.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        if self.trainer.is_global_zero and last.is_file():
            state = "interrupted; " if self.trainer.interrupted else ""
            print(f"{PROG}: {state}checkpoint {last} (step {self.trainer.global_step})", file=sys.stderr)

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


class SaveConfigToRunFolder(SaveConfigCallback):
    """`config.yaml` in the run folder, whatever the logger: Lightning's own callback writes it to the
    logger's `log_dir` (`lightning_logs/version_0/` for CSV and TensorBoard). Used with
    `save_to_log_dir=False`, so only this copy is written (on rank zero)."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        folder = Path(trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, folder / self.config_filename, skip_none=False, overwrite=True)


def _data_attribute(name: str, default: Any, data: Any) -> Any:
    """`data.name`, or the model argument's default where the data has no such attribute (streaming data
    of another modality, or without a tokenizer)."""
    value = getattr(data, name, None)
    return default if value is None else value


def point_logger_at(logger: Any, root: Path, model_name: str) -> None:
    """The logger writes into the run folder; W&B gets the run's name and stays offline without a key."""
    if not hasattr(logger, "init_args"):
        return
    init_args = logger.init_args
    if getattr(init_args, "save_dir", None) in (None, ".", "", "runs"):
        init_args.save_dir = str(root)
    if "Wandb" in logger.class_path:
        if getattr(init_args, "name", None) is None:
            init_args.name = f"{model_name}/{root.name}"
        if not os.environ.get("WANDB_API_KEY"):
            init_args.offline = True


def explain_parse_error(err: argparse.ArgumentError, parser: Any) -> str:
    """LightningCLI's parse error in one line, with the close matches of a mistyped flag.

    The known flags are read from `parser._actions`, argparse's list of arguments, which jsonargparse
    keeps one action per nested key in; argparse has no public accessor for it."""
    text = str(err).strip()
    message = text.splitlines()[0] if text else "cannot parse the command line"
    known = sorted({o for action in parser._actions for o in action.option_strings if o.startswith("--")})
    known = sorted(set(known) | set(ZOO_FLAGS))
    typed = [word.split("=", 1)[0].strip("'\",") for word in text.split() if word.startswith(("--", "'--"))]
    hints = []
    for flag in dict.fromkeys(f.strip("'") for f in typed):
        if flag in known:
            continue
        # a dotted flag (--data.foo) is close to other dotted flags, not to its namespace (--data)
        candidates = [k for k in known if ("." in k) == ("." in flag)]
        close = difflib.get_close_matches(flag, candidates, n=3, cutoff=0.75)
        if close:
            hints.append(f"did you mean {' or '.join(close)} (for {flag})?")
    tip = " ".join(hints) or "`--help` lists zoo's flags and the family's, `--help-all` every flag."
    return f"{message.rstrip('.')}. {tip}"


def check_resume_checkpoint(path: str | Path, model_name: str) -> None:
    """--ckpt_path must be a readable zoo checkpoint of the family being trained."""
    from zoo.checkpoint import CheckpointError, read_checkpoint

    try:
        checkpoint = read_checkpoint(path)
    except CheckpointError as err:
        raise UsageError(f"--ckpt_path: {err}", PROG) from err
    family = (checkpoint.get("zoo") or {}).get("model")
    if family is None:
        raise UsageError(f"{path} is not a zoo checkpoint; --ckpt_path needs a `{model_name}` one", PROG)
    if family != model_name:
        raise UsageError(
            f"{path} is a `{family}` checkpoint; --ckpt_path needs a `{model_name}` one "
            f"(or train that family: --model {family})",
            PROG,
        )


def refuse_used_run_folder(root: Path) -> None:
    """Two runs in one folder would mix their checkpoints, samples and logs without a word."""
    used = [name for name in ("checkpoints", "config.yaml", "samples") if (root / name).exists()]
    if used:
        raise UsageError(
            f"--trainer.default_root_dir {root} already holds a run ({', '.join(used)}): resume it with "
            f"--ckpt_path {root / 'checkpoints' / 'last.ckpt'}, or give a new folder",
            PROG,
        )

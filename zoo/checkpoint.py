"""Loading a family from its checkpoint alone, with clear errors for files that are not one."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from zoo import registry
from zoo.module import build_module


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not written by zoo."""


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's dictionary, read with `weights_only=True` where the file allows it."""
    path = Path(path)
    from lightning.fabric.strategies.fsdp import _is_sharded_checkpoint

    if _is_sharded_checkpoint(path):
        return read_sharded_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint '{path}' does not exist (runs keep theirs in runs/<model>/<run>/checkpoints/)"
        )
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"checkpoint '{path}' is not a PyTorch checkpoint (not a zip archive): the file is truncated, "
            "corrupt or of another format. Use another checkpoint of the run (e.g. checkpoints/last.ckpt) or train again."
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):
            raise CheckpointError(f"checkpoint '{path}' is corrupt: {_first_line(err)}") from err
        # A family whose hyperparameters hold Python objects beyond tensors and plain values.
        warnings.warn(
            f"{path}: loading with weights_only=False (the file holds Python objects); load only files you trust",
            stacklevel=2,
        )
        try:
            checkpoint = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as err2:
            raise CheckpointError(f"checkpoint '{path}' cannot be read: {_first_line(err2)}") from err2
    except Exception as err:  # a damaged archive, a wrong format
        raise CheckpointError(
            f"checkpoint '{path}' cannot be read ({type(err).__name__}: {_first_line(err)}): the file is truncated or "
            "corrupt. Use another checkpoint of the run (e.g. checkpoints/last.ckpt) or train again."
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"'{path}' is a PyTorch file but not a Lightning checkpoint (it has no 'state_dict')"
        )
    return checkpoint


def read_sharded_checkpoint(path: Path) -> dict[str, Any]:
    """A folder that FSDP wrote with `state_dict_type="sharded"` (`--trainer.strategy zoo_fsdp_sharded`), consolidated
    into one checkpoint dictionary in memory, the way Lightning's `consolidate_checkpoint` does it on disk."""
    from lightning.fabric.utilities.load import _load_distributed_checkpoint
    from lightning.pytorch.utilities.consolidate_checkpoint import _format_checkpoint

    try:
        checkpoint = _format_checkpoint(_load_distributed_checkpoint(path))
    except Exception as err:
        raise CheckpointError(
            f"sharded checkpoint folder '{path}' cannot be read ({type(err).__name__}: {_first_line(err)}): a shard "
            "is missing or corrupt. Use another checkpoint of the run or train again."
        ) from err
    return checkpoint


def family_of(checkpoint: dict[str, Any]) -> str | None:
    """The registry name of the family that wrote `checkpoint`; None for a checkpoint not written by zoo."""
    return (checkpoint.get("zoo") or {}).get("model")


def require_family(
    path: str | Path, expected: str, flag: str, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """The checkpoint at `path` when the family `expected` wrote it, else a one-line `CheckpointError` that
    names the file, what it holds and what `flag` (the option that named the file) needs. A missing,
    truncated or corrupt file is named too (`read_checkpoint`)."""
    checkpoint = read_checkpoint(path, map_location)
    found = family_of(checkpoint)
    if found != expected:
        meta = checkpoint.get("zoo") or {}
        if found is not None:
            holds = f"a checkpoint of the `{found}` family"
        elif meta.get("class_path"):
            holds = f"a zoo checkpoint of {meta['class_path']}"
        else:
            holds = "a Lightning checkpoint not written by zoo"
        raise CheckpointError(f"{path} is {holds}; {flag} needs one of the `{expected}` family")
    return checkpoint


def model_class_of(checkpoint: dict[str, Any], path: str | Path = "<checkpoint>") -> type:
    """The family class that wrote `checkpoint`: by registry name, else by class path."""
    meta = checkpoint.get("zoo")
    if not meta:
        raise CheckpointError(
            f"'{path}' is a Lightning checkpoint but not a zoo one (no 'zoo' entry): train it with "
            "`python -m zoo.fit`, or load it with its own class's load_from_checkpoint"
        )
    name = meta.get("model")
    if name:
        try:
            return registry.get_model_class(name)
        except registry.UnknownNameError as err:
            raise CheckpointError(
                f"'{path}' was written by the family '{name}', which is not installed here: {err}"
            ) from err
    module_name, _, attr = meta["class_path"].partition(":")
    module = __import__(module_name, fromlist=["_"])
    return getattr(module, attr)


def load_model(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    *,
    family: str | None = None,
    flag: str = "this option",
) -> Any:
    """Rebuild a family from its checkpoint alone, in eval mode. With `family`, the checkpoint must be of
    that family (`require_family`; `flag` is the option that named the file, for the message)."""
    if family is None:
        checkpoint = read_checkpoint(path, map_location)
    else:
        checkpoint = require_family(path, family, flag, map_location)
    cls = model_class_of(checkpoint, path)
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    hparams = {k: v for k, v in hparams.items() if not k.startswith("_")}
    # build_module: load_model may run inside another family's __init__ (ldm loads a clip)
    model = build_module(cls, **hparams)
    # the family's own extra state (a tokenizer, ...) before the weights, as Lightning orders it
    model.on_load_checkpoint(checkpoint)
    missing, unexpected = model.load_state_dict(checkpoint["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"'{path}' does not match {cls.__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.to(map_location).eval()


def load_teacher(path: str | Path, sha256: str, family: str, map_location: str | torch.device = "cpu") -> Any:
    """The frozen teacher of a distillation run (`--model.teacher`), refused in one line when the file is
    not the one the run began with (its sha256, recorded in the student's hyper-parameters): a resumed
    run must distil the same teacher."""
    from zoo.evaluate import sha256_of

    if sha256_of(path) != sha256:
        raise CheckpointError(
            f"--model.teacher {path} changed since this run began (sha256 differs): give the file the run was "
            "started with"
        )
    # built without drawing from the global random stream: a teacher read on the first step of a resumed
    # run must leave the run's random numbers where the uninterrupted run has them
    with torch.random.fork_rng(devices=[]):
        return load_model(path, map_location, family=family, flag="--model.teacher").requires_grad_(False)

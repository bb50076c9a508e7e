"""Discovery of model families and datamodules through Python entry points.

Built-in families are lines in zoo's setup.cfg; a third-party family is a line in its own
package metadata, in the same groups:

    [options.entry_points]
    zoo.models =
        my_gan = my_package.gan:MyGAN
    zoo.datamodules =
        my_data = my_package.data:MyDataModule

Listing reads installed metadata only. A class is imported when it is asked for; a plugin that
fails to import is reported as broken (with its distribution and error) and never hides the
others.
"""

from __future__ import annotations

import difflib
import importlib.metadata as metadata
import traceback
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

MODEL_GROUP = "zoo.models"
DATAMODULE_GROUP = "zoo.datamodules"


class RegistryError(LookupError):
    """A name that cannot be resolved: unknown, claimed twice, or broken."""


class UnknownNameError(RegistryError):
    pass


class DuplicateNameError(RegistryError):
    pass


class BrokenPluginError(RegistryError):
    pass


@dataclass
class Entry:
    """One registered name: where it points and, once loaded, what it is."""

    name: str
    group: str
    value: str  # "module:attribute"
    distribution: str
    version: str
    claims: list[tuple[str, str]] = field(default_factory=list)  # (distribution, value) of every claimant

    @property
    def kind(self) -> str:
        return "model" if self.group == MODEL_GROUP else "datamodule"

    @property
    def is_duplicate(self) -> bool:
        return len(self.claims) > 1

    def load(self) -> type:
        """Import the class. Raises BrokenPluginError (chained to the original) if that fails."""
        if self.is_duplicate:
            owners = " and ".join(f"'{dist}' ({value})" for dist, value in self.claims)
            raise DuplicateNameError(
                f"the {self.kind} name '{self.name}' is registered by two distributions: {owners}. "
                f"Uninstall one of them (pip uninstall ...) or rename its entry point in group '{self.group}'."
            )
        module_name, _, attr = self.value.partition(":")
        try:
            module = __import__(module_name, fromlist=["_"])
            obj: Any = module
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as err:
            raise BrokenPluginError(
                f"the {self.kind} '{self.name}' from distribution '{self.distribution}' "
                f"({self.value}) failed to import: {type(err).__name__}: {err}. "
                f"Fix or reinstall '{self.distribution}', or uninstall it to hide this entry."
            ) from err
        return obj


def _normalise(dist_name: str) -> str:
    return dist_name.lower().replace("_", "-").replace(".", "-")


def _entries(group: str) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    seen: set[tuple[str, str, str]] = set()
    for dist in metadata.distributions():
        dist_name = dist.metadata["Name"] or "unknown"
        for ep in dist.entry_points:
            if ep.group != group:
                continue
            # The same distribution can be visible twice (an editable install plus its egg-info
            # in the working directory): that is one claim, not two.
            key = (_normalise(dist_name), ep.name, ep.value)
            if key in seen:
                continue
            seen.add(key)
            if ep.name in entries:
                entries[ep.name].claims.append((dist_name, ep.value))
            else:
                entries[ep.name] = Entry(
                    ep.name, group, ep.value, dist_name, dist.version, [(dist_name, ep.value)]
                )
    # a distribution visible twice under different versions is still one claimant
    for entry in entries.values():
        owners = {_normalise(d) for d, _ in entry.claims}
        if len(owners) == 1:
            entry.claims = entry.claims[:1]
    return dict(sorted(entries.items()))


def model_entries() -> dict[str, Entry]:
    return _entries(MODEL_GROUP)


def datamodule_entries() -> dict[str, Entry]:
    return _entries(DATAMODULE_GROUP)


def list_models() -> list[str]:
    """Names of the installed model families (reads metadata only; imports nothing)."""
    return list(model_entries())


def list_datamodules() -> list[str]:
    """Names of the installed datamodules (reads metadata only; imports nothing)."""
    return list(datamodule_entries())


def _lookup(name: str, entries: dict[str, Entry], kind: str) -> Entry:
    if name in entries:
        return entries[name]
    known = ", ".join(entries) or "(none installed)"
    close = difflib.get_close_matches(name, list(entries), n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownNameError(
        f"unknown {kind} '{name}'.{hint} Known {kind}s: {known}. "
        f"`python -m zoo.list` shows them all; a third-party {kind} appears once its package is installed."
    )


def get_model_class(name: str) -> type:
    """The class registered under `name` in `zoo.models`."""
    return _lookup(name, model_entries(), "model").load()


def get_datamodule_class(name: str) -> type:
    """The class registered under `name` in `zoo.datamodules`."""
    return _lookup(name, datamodule_entries(), "datamodule").load()


def datamodule_module(name: str) -> ModuleType:
    """The module of the datamodule registered under `name`: what zoo/ reads beside a datamodule class (the
    `shapes` grammar, its judge's data) without importing the datamodules package by path."""
    import importlib

    return importlib.import_module(get_datamodule_class(name).__module__)


def create_model(name: str, **kwargs: Any) -> Any:
    """Instantiate the model family `name` with keyword arguments of its `__init__`."""
    return get_model_class(name)(**kwargs)


def create_datamodule(name: str, **kwargs: Any) -> Any:
    """Instantiate the datamodule `name` with keyword arguments of its `__init__`."""
    return get_datamodule_class(name)(**kwargs)


def name_of(cls: type, group: str = MODEL_GROUP) -> str | None:
    """The registered name whose entry point is exactly `cls`, if any (no import needed)."""
    target = f"{cls.__module__}:{cls.__qualname__}"
    for entry in _entries(group).values():
        if entry.value.replace(" ", "") == target:
            return entry.name
    return None


@dataclass
class Status:
    """What `zoo.list` shows of one entry."""

    name: str
    kind: str
    distribution: str
    version: str
    modality: str | None
    default_data: str | None
    ok: bool
    error: str | None
    traceback: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "traceback"}


def describe(entries: dict[str, Entry]) -> list[Status]:
    """Import every entry and report what it is, or why it is broken; one failure hides nothing."""
    statuses = []
    for entry in entries.values():
        try:
            cls = entry.load()
            statuses.append(
                Status(
                    entry.name,
                    entry.kind,
                    entry.distribution,
                    entry.version,
                    getattr(cls, "modality", None),
                    getattr(cls, "default_data", None),
                    True,
                    None,
                )
            )
        except RegistryError as err:
            cause = err.__cause__
            short = f"{type(cause).__name__}: {cause}" if cause is not None else str(err)
            tb = "".join(traceback.format_exception(cause)) if cause is not None else None
            statuses.append(
                Status(
                    entry.name, entry.kind, entry.distribution, entry.version, None, None, False, short, tb
                )
            )
    return statuses

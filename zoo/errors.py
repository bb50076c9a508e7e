"""Errors about the user's data, shared by datamodules, file readers and the commands (no torch import)."""

from __future__ import annotations


class DataError(ValueError):
    """A problem with the user's data that the user can fix: a missing folder, a malformed metadata file,
    an unreadable file, an option that does not fit the data. `zoo.fit` prints it as one line without a
    traceback (`--traceback` adds it) and keeps no checkpoint of an untrained model."""


class MissingDataError(DataError, FileNotFoundError):
    """A file or folder the data needs does not exist."""

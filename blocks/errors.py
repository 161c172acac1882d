"""Errors a user can act on.

Every error that reaches the command line is a :class:`DistilBlocksError`: it carries the place
(a file and a JSON path, or a file and a line) and is printed as one message, without a traceback.
"""
from __future__ import annotations

import difflib
from typing import Iterable


def close_match(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``word`` (case-insensitive), or None when nothing is close."""
    candidates = list(candidates)
    lowered = {c.lower(): c for c in candidates}
    found = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[found[0]] if found else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    match = close_match(word, candidates)
    return f"; did you mean '{match}'?" if match else ""


class DistilBlocksError(Exception):
    """Base of all errors meant for the user."""


class ConfigError(DistilBlocksError):
    """Something wrong in a config file, at a JSON path such as ``/models/student/graph/2/hidden``."""

    def __init__(self, message: str, file: str | None = None, path: str | None = None):
        self.file, self.path, self.message = file, path, message
        where = ": ".join(p for p in (file, path) if p)
        super().__init__(f"{where}: {message}" if where else message)


class DataError(DistilBlocksError):
    """Something wrong in a data file, at a line (1-based) when one is known.

    ``field``: the logical field the error is about, when it is one; the experiment then adds the
    config file and JSON path that asked for that field (see ``blocks.experiment.field_place``).
    """

    def __init__(self, message: str, file: str | None = None, line: int | None = None, field: str | None = None):
        self.file, self.line, self.message, self.field = file, line, message, field
        where = file or ""
        if line is not None:
            where += f", line {line}"
        super().__init__(f"{where}: {message}" if where else message)


class CheckpointError(DistilBlocksError):
    """A checkpoint or run directory that cannot be read."""

    def __init__(self, message: str, file: str | None = None):
        self.file, self.message = file, message
        super().__init__(f"{file}: {message}" if file else message)


class TrainingError(DistilBlocksError):
    """Training cannot go on (for example the loss became NaN)."""


class WidthError(ValueError):
    """Raised by a block whose inputs cannot fit; the graph builder adds the config path."""

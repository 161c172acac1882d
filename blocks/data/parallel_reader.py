"""Parallel corpora for sequence-to-sequence tasks: (source, target) sentence pairs.

Two layouts are read:

* two line-aligned text files (``train.en`` / ``train.de``): line *i* of one is the translation
  of line *i* of the other (:func:`read_parallel_files`);
* two fields of the rows of one data file (TSV/CSV/JSON Lines/JSON), read by
  :func:`blocks.data.readers.read_rows` with its usual options (:func:`read_parallel_fields`).

Policies, stated once:

* **Alignment.** Two files with different line counts are refused: a :class:`DataError` naming
  both files and both counts. Nothing is guessed or dropped.
* **Line breaks.** Only ``\\n`` ends a line (a ``\\r`` before it is dropped), so a stray
  ``\\u2028`` or form feed inside a sentence cannot shift the alignment, as ``str.splitlines``
  would. A final line without ``\\n`` counts; the file's end after a ``\\n`` does not.
* **Whitespace.** Each side is stripped of surrounding whitespace; inner whitespace is kept as is
  (the subword tokenizer normalises it).
* **Empty sides.** A pair whose source or target is empty after stripping is skipped (``empty=
  "skip"``, the default) and counted in :attr:`ParallelCorpus.skipped_empty`, which the caller
  writes to the log (:meth:`ParallelCorpus.summary`); ``empty="error"`` refuses it with the file
  and line instead.

How it plugs into the engine (the seq2seq task type, a later step): the task's data reading
calls one of these two functions per split and keeps :attr:`ParallelCorpus.lines` so that later
errors (a sentence longer than the model's maximum) can name the line; the subword tokenizers
(:mod:`blocks.data.subword`) are trained on the train split's ``sources`` and ``targets``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from blocks.data.readers import read_rows
from blocks.errors import DataError

EmptyPolicy = Literal["skip", "error"]


@dataclass
class ParallelCorpus:
    """Aligned sentence pairs and where each came from.

    Attributes:
        sources: source sentences (stripped, never empty).
        targets: target sentences, ``targets[i]`` the translation of ``sources[i]``.
        lines: the 1-based line (or row line) each pair came from.
        source_file: the file the sources came from.
        target_file: the file the targets came from (the same file for two fields of one file).
        skipped_empty: pairs skipped because a side was empty.
    """

    sources: list[str]
    targets: list[str]
    lines: list[int]
    source_file: str
    target_file: str
    skipped_empty: int = 0
    skipped_lines: list[int] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.sources)

    def summary(self) -> str:
        """One line for the log: how many pairs were read and how many were skipped."""
        where = self.source_file if self.source_file == self.target_file else \
            f"{self.source_file} / {self.target_file}"
        line = f"{where}: {len(self)} sentence pairs"
        if self.skipped_empty:
            first = ", ".join(str(n) for n in self.skipped_lines[:5])
            more = ", ..." if self.skipped_empty > 5 else ""
            line += f"; {self.skipped_empty} skipped with an empty side (lines {first}{more})"
        return line


def read_parallel_files(source_path: str | os.PathLike, target_path: str | os.PathLike, *,
                        encoding: str = "utf-8-sig", empty: EmptyPolicy = "skip") -> ParallelCorpus:
    """Read two line-aligned files into a :class:`ParallelCorpus`.

    Args:
        source_path: the source-language file, one sentence per line.
        target_path: the target-language file, aligned with the source file line by line.
        encoding: text encoding of both files; ``utf-8-sig`` strips a byte-order mark.
        empty: ``skip`` a pair with an empty side (counted), or ``error``.

    Raises:
        DataError: a file is missing or undecodable (with the line), the line counts differ
            (naming both files and counts), or ``empty="error"`` meets an empty side.
    """
    _check_policy(empty, str(source_path))
    source_file, target_file = str(source_path), str(target_path)
    sources = _read_lines(source_file, encoding)
    targets = _read_lines(target_file, encoding)
    if len(sources) != len(targets):
        raise DataError(f"parallel files differ in length: {source_file} has {len(sources)} lines, "
                        f"{target_file} has {len(targets)}; they must be aligned line by line",
                        source_file)
    corpus = ParallelCorpus([], [], [], source_file, target_file)
    for number, (source, target) in enumerate(zip(sources, targets), start=1):
        _add_pair(corpus, source.strip(), target.strip(), number, empty,
                  source_file if not source.strip() else target_file)
    return corpus


def read_parallel_fields(path: str | os.PathLike, source_field: str, target_field: str, *,
                         empty: EmptyPolicy = "skip", **reader_options: Any) -> ParallelCorpus:
    """Read sentence pairs from two fields of one data file.

    Args:
        path: the data file (TSV, CSV, JSON Lines or JSON; see :func:`read_rows`).
        source_field: the column or key holding the source sentence.
        target_field: the column or key holding the target sentence.
        empty: ``skip`` a pair with an empty side (counted), or ``error``.
        reader_options: passed to :func:`read_rows` (``format``, ``header``, ``columns``,
            ``quoting``, ``encoding``, ...).

    Raises:
        DataError: what :func:`read_rows` raises, a missing field (with the row's line and the
            fields it has), or ``empty="error"`` meeting an empty side.
    """
    file = str(path)
    _check_policy(empty, file)
    corpus = ParallelCorpus([], [], [], file, file)
    for row in read_rows(path, **reader_options):
        for name in (source_field, target_field):
            if name not in row.fields:
                raise DataError(f"no field '{name}' (the row has: {', '.join(row.fields)})", file, row.line)
        _add_pair(corpus, row.fields[source_field].strip(), row.fields[target_field].strip(),
                  row.line, empty, file)
    return corpus


def _check_policy(empty: str, file: str) -> None:
    if empty not in ("skip", "error"):
        raise DataError(f"unknown empty-line policy '{empty}' (known: skip, error)", file)


def _add_pair(corpus: ParallelCorpus, source: str, target: str, line: int, empty: EmptyPolicy,
              empty_file: str) -> None:
    if source and target:
        corpus.sources.append(source)
        corpus.targets.append(target)
        corpus.lines.append(line)
        return
    if empty == "error":
        side = "source" if not source else "target"
        raise DataError(f"empty {side} sentence (set the empty-line policy to 'skip' to drop such pairs)",
                        empty_file, line)
    corpus.skipped_empty += 1
    corpus.skipped_lines.append(line)


def _read_lines(file: str, encoding: str) -> list[str]:
    """The lines of ``file`` without their ``\\n`` (and a ``\\r`` before it)."""
    if not os.path.exists(file):
        raise DataError("file not found", file)
    if os.path.isdir(file):
        raise DataError("is a directory, not a text file", file)
    try:
        with open(file, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise DataError(f"cannot read file: {error.strerror or error}", file) from None
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise DataError(f"cannot decode bytes as {encoding} ({error.reason}); set the encoding",
                        file, line) from None
    except LookupError:
        raise DataError(f"unknown encoding '{encoding}'", file) from None
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the file ends with a line break
    return [line[:-1] if line.endswith("\r") else line for line in lines]

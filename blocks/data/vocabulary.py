"""A token vocabulary: tokens <-> integer ids, with padding and unknown-token specials.

Index 0 is ``<pad>`` (the padding id everywhere in the framework) and index 1 is ``<unk>`` (any
token not in the vocabulary). The other tokens follow in the order :meth:`Vocabulary.build` gives
them: by count, most frequent first, ties broken by the tokens' Unicode code-point order
(``sorted``), so the result depends only on the counts, never on how the Counter was filled.

Saved as UTF-8 text, one token per line, specials first. A backslash, newline, carriage return
or tab inside a token is written as ``\\\\``, ``\\n``, ``\\r``, ``\\t`` so that every token
round-trips.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from typing import Iterable

from blocks.errors import CheckpointError

PAD = "<pad>"
UNK = "<unk>"
SPECIALS = (PAD, UNK)

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNESCAPES = {v[1]: k for k, v in _ESCAPES.items()}
_TO_ESCAPE = re.compile(r"[\\\n\r\t]")
_ESCAPED = re.compile(r"\\(.?)", re.S)


def _escape(token: str) -> str:
    return _TO_ESCAPE.sub(lambda m: _ESCAPES[m.group()], token)


def _unescape(text: str) -> str:
    def replace(match: re.Match) -> str:
        try:
            return _UNESCAPES[match.group(1)]
        except KeyError:
            raise ValueError(f"unknown escape '\\{match.group(1)}'") from None

    return _ESCAPED.sub(replace, text) if "\\" in text else text


class Vocabulary:
    """Tokens and their ids: ``<pad>`` = 0, ``<unk>`` = 1, then the given tokens in order.

    ``Vocabulary(tokens)`` takes the non-special tokens (duplicates and the specials themselves
    are ignored); :meth:`build` makes one from token counts.
    """

    pad_index = 0
    unk_index = 1

    def __init__(self, tokens: Iterable[str] = ()):
        self._tokens: list[str] = list(SPECIALS)
        self._index: dict[str, int] = {token: i for i, token in enumerate(SPECIALS)}
        for token in tokens:
            if not isinstance(token, str):
                raise TypeError(f"a vocabulary token must be a string, got {token!r}")
            if token not in self._index:
                self._index[token] = len(self._tokens)
                self._tokens.append(token)

    @classmethod
    def build(cls, counts: Counter, min_freq: int = 1, max_size: int | None = None) -> "Vocabulary":
        """The tokens counted at least ``min_freq`` times, the ``max_size`` most frequent.

        Args:
            counts: token -> count (a ``collections.Counter`` or any mapping).
            min_freq: least count a token needs to be kept.
            max_size: most tokens kept, not counting ``<pad>`` and ``<unk>``; None = no limit.

        Order: count descending, ties by code-point order of the tokens (deterministic).
        """
        if min_freq < 1:
            raise ValueError(f"min_freq must be at least 1, got {min_freq}")
        if max_size is not None and max_size < 0:
            raise ValueError(f"max_size must be at least 0, got {max_size}")
        kept = [(token, count) for token, count in counts.items()
                if count >= min_freq and token not in SPECIALS]
        kept.sort(key=lambda item: (-item[1], item[0]))
        if max_size is not None:
            kept = kept[:max_size]
        return cls(token for token, _ in kept)

    # -- lookups ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def __iter__(self):
        return iter(self._tokens)

    @property
    def tokens(self) -> list[str]:
        """All tokens by id, specials first. The vocabulary's own list (no copy, so cheap to
        call per example): read it, do not modify it."""
        return self._tokens

    @property
    def pad(self) -> str:
        return PAD

    @property
    def unk(self) -> str:
        return UNK

    def index(self, token: str) -> int:
        """The id of ``token``; :attr:`unk_index` for a token not in the vocabulary."""
        return self._index.get(token, 1)

    def token(self, index: int) -> str:
        """The token with id ``index``."""
        return self._tokens[index]

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Ids of ``tokens`` (unknown tokens get :attr:`unk_index`)."""
        get = self._index.get
        return [get(token, 1) for token in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ``ids`` (padding included; strip it with the mask)."""
        tokens = self._tokens
        return [tokens[int(i)] for i in ids]

    # -- comparison ------------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self._tokens == other._tokens

    __hash__ = None  # compared by content

    def __repr__(self) -> str:
        preview = ", ".join(repr(t) for t in self._tokens[2:7])
        more = ", ..." if len(self._tokens) > 7 else ""
        return f"Vocabulary({len(self)} tokens: <pad>, <unk>{', ' if preview else ''}{preview}{more})"

    # -- files -----------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write one token per line (UTF-8, ``\\n`` line ends, specials first, escaped)."""
        text = "".join(_escape(token) + "\n" for token in self._tokens)
        with open(path, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        """Read a file written by :meth:`save`.

        Raises:
            CheckpointError: the file is missing, unreadable, or not a vocabulary file.
        """
        file = str(path)
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            raise CheckpointError("vocabulary file not found", file) from None
        except IsADirectoryError:
            raise CheckpointError("is a directory, not a vocabulary file", file) from None
        except OSError as error:
            raise CheckpointError(f"cannot read the vocabulary file: {error.strerror or error}", file) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            line = raw.count(b"\n", 0, error.start) + 1
            raise CheckpointError(f"corrupt vocabulary file: line {line} is not UTF-8", file) from None
        if not text.endswith("\n"):
            raise CheckpointError("corrupt vocabulary file: truncated (no line break at the end)", file)
        lines = text[:-1].split("\n")
        if lines[:2] != list(SPECIALS):
            raise CheckpointError(f"corrupt vocabulary file: the first lines must be {PAD} and {UNK}", file)
        tokens = []
        seen = set()
        for number, line in enumerate(lines, 1):
            try:
                token = _unescape(line)
            except ValueError as error:
                raise CheckpointError(f"corrupt vocabulary file: line {number}: {error}", file) from None
            if token in seen:
                raise CheckpointError(f"corrupt vocabulary file: line {number}: token {token!r} "
                                      f"appears twice", file)
            seen.add(token)
            tokens.append(token)
        return cls(tokens[2:])

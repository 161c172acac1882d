"""Reading rows of raw strings from TSV, CSV, JSON-lines and JSON files.

:func:`read_rows` turns a data file into a list of :class:`Row`, each a dict of column name to
raw string plus the file and the 1-based line where the row starts, so that every later error
("unknown label 'positve'") can point at the line to fix. The quirks of real data files are
handled through options, never by editing the files:

* a UTF-8 byte-order mark (``encoding="utf-8-sig"``, the default, strips it);
* CRLF line endings (files are opened with ``newline=""`` and parsed by :mod:`csv`);
* quote characters that are plain text (``quoting="none"``, the default: SST-2, MRPC, WikiQA)
  or fields that are CSV-quoted (``quoting="csv"``: RTE);
* no header line (``header=False``: columns are named by ``columns`` or by their 0-based index
  as strings ``"0"``, ``"1"``, ...);
* a JSON object keyed by id (``{"0": {"text_a": ..., "label": ...}, ...}``) or a JSON array;
* a separator that also occurs inside the last field (``label<space>text`` lines: ``delimiter=" "``
  with ``maxsplit=1``);
* extra trailing fields on some rows (``extra_columns="ignore"``: they are dropped and counted in
  the rows' ``notes``).
"""
from __future__ import annotations

import codecs
import contextlib
import csv
import gc
import io
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Iterator, Literal

from blocks.errors import DataError

Format = Literal["auto", "tsv", "csv", "jsonl", "json", "columns", "parallel"]

EXTENSIONS = {".tsv": "tsv", ".txt": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "json"}
FORMATS = ("tsv", "csv", "jsonl", "json", "columns", "parallel")


class Rows(list):
    """The rows of a file (a list of :class:`Row`), with ``notes``: what the reader left out, in
    words for the log (e.g. extra trailing fields it ignored)."""

    def __init__(self, rows=(), notes: list[str] | None = None):
        super().__init__(rows)
        self.notes = notes or []


@dataclass(slots=True)
class Row:
    """One record of a data file.

    Attributes:
        fields: column name -> raw string value (for the ``columns`` format: the list of a
            sentence's values, one string per token).
        file: the path as given to :func:`read_rows`.
        line: 1-based line number in the file where the row starts.
    """

    fields: dict[str, str] | dict[str, list[str]]
    file: str
    line: int


def _raise_field_size_limit() -> None:
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:  # a C long smaller than sys.maxsize (Windows)
            limit //= 2


def format_of(path: str | os.PathLike, format: Format = "auto") -> str:
    """The concrete format of ``path``: ``format`` itself, or guessed from the extension."""
    if format != "auto":
        if format not in FORMATS:
            raise DataError(f"unknown format '{format}' (known: auto, {', '.join(FORMATS)})", str(path))
        return format
    ext = os.path.splitext(str(path))[1].lower()
    try:
        return EXTENSIONS[ext]
    except KeyError:
        shown = f"extension '{ext}'" if ext else "a file without an extension"
        raise DataError(f"cannot tell the format of {shown}; set format to one of "
                        f"{', '.join(FORMATS)} ({', '.join(f'{e} = {f}' for e, f in EXTENSIONS.items())})",
                        str(path)) from None


def _read_parallel_rows(file: str, languages: list[str] | None, encoding: str, empty: str,
                        text: str | None) -> Rows:
    """Rows of two line-aligned files ``<file>.<language>`` (the ``parallel`` format)."""
    from blocks.data.parallel_reader import read_parallel_files

    if not languages or len(languages) != 2 or languages[0] == languages[1]:
        raise DataError(f"the parallel format needs two different languages (file suffixes), got {languages}", file)
    if text is not None:
        raise DataError("the parallel format is read from files only", file)
    source, target = languages
    corpus = read_parallel_files(f"{file}.{source}", f"{file}.{target}", encoding=encoding, empty=empty)
    notes = []
    if corpus.skipped_empty:
        lines = ", ".join(str(n) for n in corpus.skipped_lines[:5]) + (", ..." if corpus.skipped_empty > 5 else "")
        notes.append(f"{corpus.skipped_empty} sentence pair(s) with an empty side skipped (lines {lines})")
    return Rows([Row({source: s, target: t}, corpus.source_file, line)
                 for s, t, line in zip(corpus.sources, corpus.targets, corpus.lines)], notes)


def read_rows(path: str | os.PathLike, *, format: Format = "auto", header: bool = True,
              columns: list[str] | None = None, quoting: Literal["none", "csv"] = "none",
              encoding: str = "utf-8-sig", delimiter: str | None = None, skip_blank: bool = True,
              comment: str | None = None, document_separator: str | None = "-DOCSTART-",
              maxsplit: int | None = None, extra_columns: Literal["error", "ignore"] = "error",
              text: str | None = None, languages: list[str] | None = None,
              empty: Literal["skip", "error"] = "skip") -> Rows:
    """Read a data file into rows of raw strings.

    Args:
        path: the file (with ``text``: only its name, for messages and the format).
        format: ``tsv``, ``csv``, ``jsonl`` (one JSON object per line), ``json`` (an object keyed
            by id, or an array of objects), or ``auto``: from the extension (``.tsv``/``.txt`` =
            tsv, ``.csv``, ``.jsonl``, ``.json``).
        header: tsv/csv: the first (non-blank, non-comment) row names the columns (names are
            stripped of surrounding whitespace).
        columns: tsv/csv: the column names; with ``header`` they replace the header's names
            (same count required); without it they name the columns (default: ``"0"``, ``"1"``,
            ...). jsonl/json: the fields every record must have; only these are kept.
        quoting: tsv/csv: ``none`` = quote characters are ordinary text; ``csv`` = a field may be
            enclosed in double quotes (with ``""`` for a quote inside), so it can hold the
            delimiter or a line break.
        encoding: text encoding; ``utf-8-sig`` reads UTF-8 and strips a byte-order mark.
        delimiter: tsv/csv field separator (one character); default tab for tsv, comma for csv.
        skip_blank: skip blank lines (otherwise a blank line is a row of one empty field in
            tsv/csv, and an error in jsonl).
        comment: tsv/csv/jsonl: skip lines starting with this prefix (checked on raw lines,
            before any quote handling).
        maxsplit: tsv/csv without CSV quoting: split each line (the header too) on its first
            ``maxsplit`` delimiters only, so the last field keeps the rest of the line, delimiters
            and all (``delimiter=" ", maxsplit=1`` reads ``label<space>text`` lines).
        extra_columns: tsv/csv: a row with more fields than the header (or ``columns``) is an
            error (``error``), or its extra trailing fields are dropped (``ignore``) and the
            number of such rows is written to the result's ``notes``. Fewer fields are always
            an error.
        text: the file's content, already read (e.g. standard input): nothing is read from
            ``path``. Not for the ``columns`` format.
        document_separator: columns: lines starting with this text separate documents and are
            skipped (see :mod:`blocks.data.column_reader`; ``format="columns"`` reads one row per
            sentence, each field a list of strings, and ignores ``header``, ``quoting`` and
            ``skip_blank``).
        languages: parallel: the suffixes of two line-aligned files ``<path>.<language>``
            (``train`` with ``["en", "de"]`` reads ``train.en`` and ``train.de``); each row has one
            field per language, its file the first file and its line the line number in both
            (:mod:`blocks.data.parallel_reader`: files of different lengths are an error).
        empty: parallel: a pair with an empty side is skipped (counted in ``notes``) or an error.

    Returns:
        The rows in file order (a :class:`Rows`, empty for a file without rows: the caller
        decides whether that is an error).

    Raises:
        DataError: with the file and, where known, the line: file missing or a directory,
            undecodable bytes, a row with the wrong number of fields, malformed JSON.
    """
    file = str(path)
    if text is None and format != "parallel":  # the parallel format names two files by suffix
        _check_readable(file)
    fmt = format_of(path, format)
    if quoting not in ("none", "csv"):
        raise DataError(f"unknown quoting '{quoting}' (known: none, csv)", file)
    if extra_columns not in ("error", "ignore"):
        raise DataError(f"unknown extra_columns '{extra_columns}' (known: error, ignore)", file)
    if maxsplit is not None and (maxsplit < 1 or quoting == "csv" or fmt not in ("tsv", "csv")):
        raise DataError(f"maxsplit {maxsplit}: needs a tsv or csv file without CSV quoting and a "
                        f"number >= 1 (the file is {fmt}, quoting {quoting})", file)
    if comment == "":
        comment = None
    if columns is not None:
        columns = [str(c) for c in columns]
        _check_unique(columns, file, None, "columns")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"unknown encoding '{encoding}'", file) from None
    if fmt == "parallel":
        return _read_parallel_rows(file, languages, encoding, empty, text)
    if fmt == "columns":
        from blocks.data.column_reader import read_column_rows

        if text is not None:
            raise DataError("the columns format is read from files only", file)

        return read_column_rows(file, columns=columns, delimiter=delimiter, encoding=encoding,
                                document_separator=document_separator, comment=comment)
    if fmt in ("tsv", "csv"):
        if delimiter is None:
            delimiter = "\t" if fmt == "tsv" else ","
        if len(delimiter) != 1 or delimiter in "\r\n":
            raise DataError(f"the delimiter must be one character other than a line break, "
                            f"got {delimiter!r}", file)
    with reading_errors(file, encoding), _gc_paused():
        if fmt in ("tsv", "csv"):
            return _read_delimited(file, header, columns, quoting, encoding, delimiter,
                                   skip_blank, comment, maxsplit, extra_columns, text)
        if fmt == "jsonl":
            return Rows(_read_jsonl(file, columns, encoding, skip_blank, comment, text))
        return Rows(_read_json(file, columns, encoding, text))


# ----------------------------------------------------------------------------------------------
# shared helpers


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector while reading: the many small dicts and rows a reader
    allocates (none of them in cycles) otherwise trigger collections that double the time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _open_text(file: str, encoding: str, text: str | None, newline: str | None = None):
    """The file opened for reading, or ``text`` (its content, already read) as a stream."""
    if text is not None:
        return io.StringIO(text, newline=newline)
    return open(file, "r", encoding=encoding, newline=newline)


def _check_readable(file: str) -> None:
    if not os.path.exists(file):
        raise DataError("file not found", file)
    if os.path.isdir(file):
        raise DataError("is a directory, not a data file", file)


def _check_unique(names: list[str], file: str, line: int | None, what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"duplicate column name '{name}' in {what}", file, line)
        seen.add(name)


@contextlib.contextmanager
def reading_errors(file: str, encoding: str):
    """Turn the errors of reading ``file`` (undecodable bytes, an unreadable file) into one
    DataError naming the file (and, for bad bytes, the line)."""
    try:
        yield
    except UnicodeDecodeError as error:
        raise _decode_error(file, encoding, error) from None
    except UnicodeError as error:  # e.g. UTF-16 without a byte-order mark
        raise DataError(f"cannot decode the file as {encoding}: {error}", file) from None
    except OSError as error:
        raise DataError(f"cannot read file: {error.strerror or error}", file) from None


def _decode_error(file: str, encoding: str, error: UnicodeDecodeError) -> DataError:
    """A DataError naming the line of the first undecodable bytes (found by decoding again)."""
    line, column = None, None
    try:
        with open(file, "rb") as handle:
            raw = handle.read()
        decoder = codecs.getincrementaldecoder(encoding)()
        newlines = 0
        for chunk in raw.splitlines(keepends=True):
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError:
                line = newlines + 1
                column = _bad_column(chunk, encoding, line == 1)
                break
            newlines += text.count("\n") + text.count("\r") - text.count("\r\n")
        else:
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:  # a multi-byte character cut off at the end of the file
                line = max(newlines, 1) if raw.endswith((b"\n", b"\r")) else newlines + 1
    except (OSError, LookupError):  # pragma: no cover - the file was readable a moment ago
        pass
    bad = error.object[error.start:error.end] if isinstance(error.object, bytes) else b""
    shown = " ".join(f"0x{b:02x}" for b in bad[:4])
    where = f" at column {column}" if column else ""
    return DataError(f"cannot decode bytes {shown}{where} as {encoding} ({error.reason}); "
                     f"set the reader's encoding", file, line)


def _bad_column(chunk: bytes, encoding: str, first_line: bool) -> int | None:
    """1-based column of the first undecodable character of one line (None when unknown)."""
    base = codecs.lookup(encoding).name
    if base == "utf-8-sig":
        base = "utf-8"
        if first_line and chunk.startswith(codecs.BOM_UTF8):
            chunk = chunk[len(codecs.BOM_UTF8):]
    elif base.startswith(("utf-16", "utf-32")):
        return None  # a line of bytes cannot be decoded on its own
    try:
        chunk.decode(base)
    except UnicodeDecodeError as error:
        return len(chunk[:error.start].decode(base, errors="replace")) + 1
    return None


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def _record(obj: Any, file: str, line: int, columns: list[str] | None, what: str) -> dict[str, str]:
    if not isinstance(obj, dict):
        raise DataError(f"{what} is a JSON {_json_type(obj)}, expected an object of fields", file, line)
    if columns is None:
        return {str(k): _to_str(v) for k, v in obj.items()}
    missing = [c for c in columns if c not in obj]
    if missing:
        raise DataError(f"{what} has no field '{missing[0]}' (its fields: {', '.join(map(str, obj)) or 'none'})",
                        file, line)
    return {c: _to_str(obj[c]) for c in columns}


def _json_type(obj: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "number", float: "number"}.get(type(obj), type(obj).__name__)


# ----------------------------------------------------------------------------------------------
# tsv / csv


class _Lines:
    """The file's lines for :mod:`csv`, counting them and dropping comment lines.

    ``start`` is the number of the first line handed out since it was last reset, which is the
    line where the row being parsed starts (a CSV-quoted field may span several lines).
    """

    __slots__ = ("_handle", "_comment", "number", "start")

    def __init__(self, handle, comment: str | None):
        self._handle, self._comment = handle, comment
        self.number = 0
        self.start = 0

    def __iter__(self) -> Iterator[str]:
        comment = self._comment
        for line in self._handle:
            self.number += 1
            if comment is not None and line.startswith(comment):
                continue
            if not self.start:
                self.start = self.number
            yield line


def _is_blank(fields: list[str]) -> bool:
    return not fields or (len(fields) == 1 and not fields[0].strip())


def _read_delimited(file: str, header: bool, columns: list[str] | None, quoting: str,
                    encoding: str, delimiter: str, skip_blank: bool, comment: str | None,
                    maxsplit: int | None = None, extra_columns: str = "error", text: str | None = None) -> Rows:
    _raise_field_size_limit()
    if quoting == "csv":
        options = dict(quoting=csv.QUOTE_MINIMAL, quotechar='"', doublequote=True, strict=True)
    else:
        options = dict(quoting=csv.QUOTE_NONE, quotechar=None)
    rows = Rows()
    ignored, first_ignored = 0, None  # rows whose extra trailing fields were dropped
    with _open_text(file, encoding, text, newline="") as handle:
        lines = _Lines(handle, comment)
        reader = csv.reader(iter(lines), delimiter=delimiter, skipinitialspace=False, **options)
        names: list[str] | None = None
        if not header and columns is not None:
            names = columns
        count = len(names) if names is not None else -1
        append = rows.append
        while True:
            lines.start = 0
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as error:
                message = str(error)
                if "unexpected end of data" in message:
                    message = "a quoted field is not closed before the end of the file"
                if quoting == "csv":
                    message += ("; if quote characters in this file are plain text, "
                                "set the reader's quoting to none")
                raise DataError(f"malformed row: {message}", file, lines.start or lines.number) from None
            line = lines.start
            if skip_blank and _is_blank(fields):
                continue
            if not fields:
                fields = [""]
            if maxsplit is not None and len(fields) > maxsplit + 1:
                fields = fields[:maxsplit] + [delimiter.join(fields[maxsplit:])]
            if names is None:
                if header:
                    if _is_blank(fields):
                        raise DataError("the header line is blank (expected column names)", file, line)
                    names = [name.strip() for name in fields]
                    if columns is not None:
                        if len(columns) != len(names):
                            raise DataError(f"columns gives {len(columns)} names ({', '.join(columns)}) "
                                            f"but the header has {len(names)} ({', '.join(names)})",
                                            file, line)
                        names = columns
                    _check_unique(names, file, line, "the header")
                    count = len(names)
                    continue
                names = [str(i) for i in range(len(fields))]
                count = len(names)
            if len(fields) > count and extra_columns == "ignore":
                fields = fields[:count]
                ignored += 1
                first_ignored = first_ignored or line
            if len(fields) != count:
                hint = "" if len(fields) < count else "; set the reader's extra_columns to ignore to drop the extra ones"
                raise DataError(f"expected {count} fields ({', '.join(names)}), found {len(fields)}{hint}",
                                file, line)
            append(Row(dict(zip(names, fields)), file, line))
    if ignored:
        rows.notes.append(f"{ignored:,} row(s) had more than {count} fields (first at line {first_ignored}); "
                          f"their extra trailing fields were ignored")
    return rows


# ----------------------------------------------------------------------------------------------
# jsonl


def _read_jsonl(file: str, columns: list[str] | None, encoding: str, skip_blank: bool,
                comment: str | None, text: str | None = None) -> list[Row]:
    rows: list[Row] = []
    loads = json.loads
    with _open_text(file, encoding, text) as handle:
        for number, text in enumerate(handle, 1):
            if comment is not None and text.startswith(comment):
                continue
            if not text.strip():
                if skip_blank:
                    continue
                raise DataError("blank line (expected a JSON object)", file, number)
            try:
                obj = loads(text)
            except json.JSONDecodeError as error:
                raise DataError(f"invalid JSON: {error.msg} (column {error.colno})", file, number) from None
            rows.append(Row(_record(obj, file, number, columns, "the line"), file, number))
    return rows


# ----------------------------------------------------------------------------------------------
# json

_WHITESPACE = re.compile(r"[ \t\n\r]*")


class _Position:
    """Line and column of offsets in a text, counting forward from the last offset asked."""

    def __init__(self, text: str):
        self.text = text
        self.offset = 0
        self.line = 1

    def line_of(self, offset: int) -> int:
        if offset >= self.offset:
            self.line += self.text.count("\n", self.offset, offset)
        else:
            self.line = self.text.count("\n", 0, offset) + 1
        self.offset = offset
        return self.line

    def column_of(self, offset: int) -> int:
        return offset - (self.text.rfind("\n", 0, offset) + 1) + 1


def _read_json(file: str, columns: list[str] | None, encoding: str, content: str | None = None) -> list[Row]:
    if content is not None:
        text = content.replace("\r\n", "\n").replace("\r", "\n")  # as universal newlines read a file
    else:
        with open(file, "r", encoding=encoding) as handle:
            text = handle.read()
    # universal newlines translated \r\n and \r to \n, so offsets map to lines by counting \n
    position = _Position(text)
    decoder = json.JSONDecoder()
    skip = _WHITESPACE.match

    def fail(message: str, offset: int) -> DataError:
        line = position.line_of(offset)
        return DataError(f"invalid JSON: {message} (column {position.column_of(offset)})", file, line)

    def decode(offset: int) -> tuple[Any, int]:
        try:
            return decoder.raw_decode(text, offset)
        except json.JSONDecodeError as error:
            raise fail(error.msg, error.pos) from None

    index = skip(text, 0).end()
    if index == len(text):
        return []
    rows: list[Row] = []
    opener = text[index]
    if opener not in "{[":
        value, _ = decode(index)
        raise DataError(f"the file holds a JSON {_json_type(value)}; expected an object keyed by "
                        f"id or an array of objects", file, position.line_of(index))
    closer = "}" if opener == "{" else "]"
    index = skip(text, index + 1).end()
    seen: set[str] = set()
    number = 0
    if text.startswith(closer, index):
        index += 1
    else:
        while True:
            start = index
            if opener == "{":
                if not text.startswith('"', index):
                    raise fail("Expecting property name enclosed in double quotes", index)
                key, index = decode(index)
                index = skip(text, index).end()
                if not text.startswith(":", index):
                    raise fail("Expecting ':' delimiter", index)
                index = skip(text, index + 1).end()
            else:
                key = str(number)
            value, index = decode(index)
            line = position.line_of(start)
            if key in seen:
                raise DataError(f"duplicate id '{key}'", file, line)
            seen.add(key)
            fields = _record(value, file, line, columns, f"record '{key}'")
            if "id" not in fields:
                fields["id"] = key
            rows.append(Row(fields, file, line))
            number += 1
            index = skip(text, index).end()
            if text.startswith(",", index):
                index = skip(text, index + 1).end()
                continue
            if text.startswith(closer, index):
                index += 1
                break
            raise fail(f"Expecting ',' delimiter or '{closer}'", index)
    index = skip(text, index).end()
    if index != len(text):
        raise fail("Extra data after the top-level value", index)
    return rows

"""Reading CoNLL-style column files: one token per line, a blank line between sentences.

Each sentence becomes one :class:`~blocks.data.readers.Row` whose ``fields`` map each column's
name to the list of that column's values, one string per token::

    EU NNP B-NP B-ORG            ->  Row({"tokens": ["EU", "rejects", ...],
    rejects VBZ B-VP O                    "pos": ["NNP", "VBZ", ...], ...}, file, line=1)

and whose ``line`` is the line of the sentence's first token; token ``i`` of the sentence is on
line ``line + i`` (unless a comment line sits inside the sentence), which is where an error about
one token's tag points. Options, not a CoNLL special case, so other tagging files read too: the
columns' names, the delimiter (any run of whitespace, or tab only so that a token may hold
spaces), the document separator lines (CoNLL's ``-DOCSTART-``, skipped with the blank line after
them), comment lines (CoNLL-U's ``#``).
"""
from __future__ import annotations

import codecs
import os

from blocks.errors import DataError

MAX_SENTENCE_TOKENS = 1000


def read_column_rows(path: str | os.PathLike, *, columns: list[str] | None = None,
                     delimiter: str | None = None, encoding: str = "utf-8-sig",
                     document_separator: str | None = "-DOCSTART-", comment: str | None = None,
                     max_sentence_tokens: int = MAX_SENTENCE_TOKENS):
    """Read a column file into one row per sentence.

    Args:
        path: the file.
        columns: the columns' names by position (every line must have that many columns);
            default ``"0"``, ``"1"``, ... for as many columns as the first token line has.
        delimiter: None splits a line at any run of whitespace; ``"\\t"`` (or another single
            character) splits at that character only, and strips the values of surrounding
            whitespace.
        encoding: text encoding; ``utf-8-sig`` reads UTF-8 and strips a byte-order mark.
        document_separator: lines starting with this text separate documents and are skipped
            (with the blank line after them); None: no such lines.
        comment: lines starting with this prefix are skipped; None: no comment lines.
        max_sentence_tokens: a longer "sentence" is an error (it usually means the file has no
            blank lines between sentences).

    Returns:
        The sentences in file order, each a Row of column name -> list of strings.

    Raises:
        DataError: naming the file and line: a line with a different number of columns than its
            sentence's first line (or than ``columns``), an empty column value, a sentence longer
            than ``max_sentence_tokens``, undecodable bytes; or naming the file: missing, a
            directory, no sentence at all.
    """
    from blocks.data.readers import Row, _check_readable, reading_errors

    file = str(path)
    _check_readable(file)
    if delimiter is not None and (len(delimiter) != 1 or delimiter in "\r\n"):
        raise DataError(f"the delimiter must be one character other than a line break, got {delimiter!r}", file)
    if columns is not None:
        columns = [str(c) for c in columns]
        if not columns:
            raise DataError("columns must name at least one column", file)
        if len(set(columns)) != len(columns):
            duplicate = next(c for c in columns if columns.count(c) > 1)
            raise DataError(f"duplicate column name '{duplicate}' in columns", file)
    if max_sentence_tokens < 1:
        raise DataError(f"max_sentence_tokens must be at least 1, got {max_sentence_tokens}", file)
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"unknown encoding '{encoding}'", file) from None
    document_separator = document_separator or None
    comment = comment or None
    with reading_errors(file, encoding), open(file, "r", encoding=encoding) as handle:
        sentences = _read_sentences(handle, file, delimiter, document_separator, comment,
                                    max_sentence_tokens, None if columns is None else len(columns))
    if not sentences:
        raise DataError("no sentences found (expected one token per line, with columns separated "
                        "by whitespace, and a blank line between sentences)", file)
    names = columns if columns is not None else [str(i) for i in range(len(sentences[0][1][0]))]
    rows = []
    for line, values in sentences:
        fields = {name: [token[i] for token in values] for i, name in enumerate(names)}
        rows.append(Row(fields, file, line))
    return rows


def _split(text: str, delimiter: str | None) -> list[str]:
    if delimiter is None:
        return text.split()
    return [value.strip() for value in text.split(delimiter)]


def _read_sentences(handle, file: str, delimiter: str | None, document_separator: str | None,
                    comment: str | None, max_tokens: int, count: int | None) -> list[tuple[int, list[list[str]]]]:
    """``(line of the first token, [[column values of a token], ...])`` per sentence."""
    sentences: list[tuple[int, list[list[str]]]] = []
    current: list[list[str]] = []
    first_line = 0
    count_line: int | None = None  # the line that set the column count (None: given by columns)
    for number, text in enumerate(handle, 1):
        text = text.rstrip("\r\n")
        if comment is not None and text.startswith(comment):
            continue
        if document_separator is not None and text.startswith(document_separator):
            if current:
                sentences.append((first_line, current))
                current = []
            continue
        if not text.strip():
            if current:
                sentences.append((first_line, current))
                current = []
            continue
        values = _split(text, delimiter)
        if not current:
            first_line = number
            if count is None:
                count, count_line = len(values), number
            expected, against = count, (f"the reader's columns name {count}" if count_line is None
                                        else f"the file's first token line ({count_line}) has {count}")
        else:
            expected, against = len(current[0]), f"the sentence's first line ({first_line}) has {len(current[0])}"
        if len(values) != expected:
            raise DataError(_column_count_message(text, values, expected, against, delimiter), file, number)
        for position, value in enumerate(values):
            if not value:
                raise DataError(f"column {position + 1} is empty", file, number)
        if len(current) == max_tokens:
            raise DataError(f"the sentence starting here has more than {max_tokens} tokens: no blank "
                            f"lines between sentences? (if sentences really are this long, raise "
                            f"max_sentence_tokens)", file, first_line)
        current.append(values)
    if current:
        sentences.append((first_line, current))
    return sentences


def _column_count_message(text: str, values: list[str], expected: int, against: str,
                          delimiter: str | None) -> str:
    message = f"{len(values)} column{'' if len(values) == 1 else 's'}, but {against}"
    if delimiter == "\t" and len(text.split()) == expected:
        message += ("; mixed tab/space columns? split at any whitespace this line has "
                    f"{expected}: set the reader's delimiter to null")
    elif delimiter is None and len(text.split("\t")) == expected:
        message += ("; mixed tab/space columns? split at tabs only this line has "
                    f"{expected} (a token with a space?): set the reader's delimiter to \"\\t\"")
    return message

"""Parallel corpora: aligned files, two fields of one file, the empty-side policy, bad input."""
from __future__ import annotations

import json

import pytest

from blocks.data.parallel_reader import read_parallel_files, read_parallel_fields
from blocks.errors import DataError


def write(path, text: str, encoding: str = "utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_aligned_files(tmp_path):
    source = write(tmp_path / "a.en", "A dog runs.\r\n  Two  men sit. \nA\u2028line\n")
    target = write(tmp_path / "a.de", "Ein Hund rennt.\r\nZwei Männer sitzen.\nEine\u2028Zeile")
    corpus = read_parallel_files(source, target)
    # \r\n ends a line; the inner \u2028 does not (it would shift the alignment); sides are stripped
    assert corpus.sources == ["A dog runs.", "Two  men sit.", "A\u2028line"]
    assert corpus.targets == ["Ein Hund rennt.", "Zwei Männer sitzen.", "Eine\u2028Zeile"]
    assert corpus.lines == [1, 2, 3]
    assert len(corpus) == 3 and corpus.skipped_empty == 0
    assert corpus.summary() == f"{source} / {target}: 3 sentence pairs"


def test_byte_order_mark_is_stripped(tmp_path):
    source = write(tmp_path / "a.en", "\ufeffHello\n")
    target = write(tmp_path / "a.de", "Hallo\n")
    assert read_parallel_files(source, target).sources == ["Hello"]


def test_line_count_mismatch_names_both_files_and_counts(tmp_path):
    source = write(tmp_path / "train.en", "one\ntwo\nthree\n")
    target = write(tmp_path / "train.de", "eins\nzwei\n")
    with pytest.raises(DataError) as error:
        read_parallel_files(source, target)
    message = str(error.value)
    assert f"{source} has 3 lines" in message and f"{target} has 2" in message


def test_empty_sides_are_skipped_and_counted(tmp_path):
    source = write(tmp_path / "a.en", "one\n\nthree\nfour\n")
    target = write(tmp_path / "a.de", "eins\nzwei\n   \nvier\n")
    corpus = read_parallel_files(source, target)
    assert corpus.sources == ["one", "four"] and corpus.targets == ["eins", "vier"]
    assert corpus.lines == [1, 4]
    assert corpus.skipped_empty == 2 and corpus.skipped_lines == [2, 3]
    assert corpus.summary().endswith("2 sentence pairs; 2 skipped with an empty side (lines 2, 3)")


def test_empty_side_error_policy_names_file_and_line(tmp_path):
    source = write(tmp_path / "a.en", "one\ntwo\n")
    target = write(tmp_path / "a.de", "eins\n\n")
    with pytest.raises(DataError, match=r"a\.de, line 2: empty target sentence"):
        read_parallel_files(source, target, empty="error")
    with pytest.raises(DataError, match="unknown empty-line policy 'drop'"):
        read_parallel_files(source, target, empty="drop")


def test_missing_and_undecodable_files(tmp_path):
    target = write(tmp_path / "a.de", "eins\n")
    with pytest.raises(DataError, match="missing.en: file not found"):
        read_parallel_files(tmp_path / "missing.en", target)
    latin = write(tmp_path / "a.en", "fine\nMänner\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"a\.en, line 2: cannot decode"):
        read_parallel_files(latin, target)


def test_two_fields_of_one_file(tmp_path):
    tsv = write(tmp_path / "pairs.tsv", "en\tde\nA dog.\tEin Hund.\n\tleer\nA cat.\tEine Katze.\n")
    corpus = read_parallel_fields(tsv, "en", "de")
    assert corpus.sources == ["A dog.", "A cat."] and corpus.targets == ["Ein Hund.", "Eine Katze."]
    assert corpus.lines == [2, 4] and corpus.skipped_empty == 1
    assert corpus.summary().startswith(f"{tsv}: 2 sentence pairs")
    jsonl = write(tmp_path / "pairs.jsonl", "\n".join(json.dumps(r) for r in [{"src": "Hi", "tgt": "Hallo"}]))
    assert read_parallel_fields(jsonl, "src", "tgt").targets == ["Hallo"]
    with pytest.raises(DataError, match=r"pairs\.jsonl, line 1: no field 'trg' \(the row has: src, tgt\)"):
        read_parallel_fields(jsonl, "src", "trg")


def test_multi30k(multi30k):
    train = read_parallel_files(multi30k / "train.en", multi30k / "train.de")
    assert len(train) == 29_000 and train.skipped_empty == 0
    assert train.sources[0] == "Two young, White males are outside near many bushes."
    assert train.targets[0] == "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche."
    assert len(read_parallel_files(multi30k / "val.en", multi30k / "val.de")) == 1_014
    assert len(read_parallel_files(multi30k / "test_2016_flickr.en", multi30k / "test_2016_flickr.de")) == 1_000

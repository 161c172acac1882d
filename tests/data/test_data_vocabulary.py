"""Vocabulary: building, lookups, files."""
from __future__ import annotations

from collections import Counter

import pytest

from blocks.data.vocabulary import Vocabulary
from blocks.errors import CheckpointError

COUNTS = Counter({"the": 5, "cat": 2, "sat": 2, "on": 3, "mat": 1, "a": 2})


def test_specials():
    vocab = Vocabulary()
    assert vocab.tokens == ["<pad>", "<unk>"]
    assert (vocab.pad_index, vocab.unk_index) == (0, 1)
    assert vocab.index("<pad>") == 0 and vocab.index("<unk>") == 1
    assert len(vocab) == 2


def test_build_order_count_then_alphabetical():
    vocab = Vocabulary.build(COUNTS)
    assert vocab.tokens == ["<pad>", "<unk>", "the", "on", "a", "cat", "sat", "mat"]
    # the insertion order of the counter does not matter
    assert Vocabulary.build(Counter(dict(reversed(list(COUNTS.items()))))) == vocab


def test_min_freq_and_max_size():
    assert Vocabulary.build(COUNTS, min_freq=2).tokens[2:] == ["the", "on", "a", "cat", "sat"]
    assert Vocabulary.build(COUNTS, min_freq=3).tokens[2:] == ["the", "on"]
    assert Vocabulary.build(COUNTS, max_size=3).tokens[2:] == ["the", "on", "a"]
    assert len(Vocabulary.build(COUNTS, max_size=3)) == 5  # max_size excludes the specials
    assert Vocabulary.build(COUNTS, max_size=0).tokens == ["<pad>", "<unk>"]
    assert Vocabulary.build(COUNTS, min_freq=2, max_size=100).tokens[2:] == ["the", "on", "a", "cat", "sat"]
    with pytest.raises(ValueError):
        Vocabulary.build(COUNTS, min_freq=0)
    with pytest.raises(ValueError):
        Vocabulary.build(COUNTS, max_size=-1)


def test_specials_in_counts_are_not_duplicated():
    vocab = Vocabulary.build(Counter({"<unk>": 10, "<pad>": 3, "x": 1}))
    assert vocab.tokens == ["<pad>", "<unk>", "x"]


def test_index_encode_decode():
    vocab = Vocabulary.build(COUNTS)
    assert vocab.index("the") == 2 and vocab.index("dog") == vocab.unk_index
    assert vocab.encode(["the", "dog", "sat"]) == [2, 1, 6]
    assert vocab.decode([2, 1, 6]) == ["the", "<unk>", "sat"]
    assert "cat" in vocab and "dog" not in vocab
    assert vocab.token(3) == "on"


def test_equality():
    assert Vocabulary(["a", "b"]) == Vocabulary(["a", "b", "a"])
    assert Vocabulary(["a", "b"]) != Vocabulary(["b", "a"])
    assert Vocabulary() != ["<pad>", "<unk>"]


def test_save_load_round_trip(tmp_path):
    odd = ["tab\there", "new\nline", "cr\rx", "back\\slash", "\\n", "", " ", "\u00e9t\u00e9", "\u2028sep", "x\x85y"]
    vocab = Vocabulary.build(Counter({**COUNTS, **{t: 1 for t in odd}}))
    path = tmp_path / "vocab.txt"
    vocab.save(path)
    text = path.read_text(encoding="utf-8")
    assert text.split("\n")[:4] == ["<pad>", "<unk>", "the", "on"]
    assert len(text.split("\n")) == len(vocab) + 1  # one line per token, then the final newline
    loaded = Vocabulary.load(path)
    assert loaded == vocab and loaded.tokens == vocab.tokens


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found") as info:
        Vocabulary.load(tmp_path / "missing.txt")
    assert info.value.file == str(tmp_path / "missing.txt")
    cases = {"no_specials.txt": b"a\nb\n", "truncated.txt": b"<pad>\n<unk>\na", "empty.txt": b"",
             "escape.txt": b"<pad>\n<unk>\nbad\\q\n", "dup.txt": b"<pad>\n<unk>\na\na\n",
             "binary.txt": b"<pad>\n<unk>\n\xff\xfe\n"}
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match="corrupt vocabulary file") as info:
            Vocabulary.load(path)
        assert name in str(info.value)
    with pytest.raises(CheckpointError):
        Vocabulary.load(tmp_path)

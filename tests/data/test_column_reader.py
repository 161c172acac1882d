"""read_column_rows: CoNLL-style column files, on the real CoNLL-2003 files and small synthetic ones."""
from __future__ import annotations

from pathlib import Path

import pytest

from blocks.data.column_reader import read_column_rows
from blocks.data.readers import read_rows
from blocks.errors import DataError

CONLL_COLUMNS = ["tokens", "pos", "chunk", "ner"]


def write(tmp_path: Path, text: str, name: str = "data.txt", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


SAMPLE = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC
"""


def test_sentences_fields_and_lines(tmp_path):
    rows = read_column_rows(write(tmp_path, SAMPLE), columns=CONLL_COLUMNS)
    assert [row.line for row in rows] == [3, 7, 11]
    assert rows[0].fields == {"tokens": ["EU", "rejects", "German"], "pos": ["NNP", "VBZ", "JJ"],
                              "chunk": ["B-NP", "B-VP", "B-NP"], "ner": ["B-ORG", "O", "B-MISC"]}
    assert rows[1].fields["ner"] == ["B-PER", "I-PER"]  # the separator right after it ends the sentence
    assert rows[2].fields["tokens"] == ["BRUSSELS"]
    assert all(row.file == str(tmp_path / "data.txt") for row in rows)


def test_default_column_names_and_no_separator(tmp_path):
    path = write(tmp_path, "a\tX\nb\tY\n\n\nc\tZ")  # several blank lines, no final newline
    rows = read_column_rows(path, document_separator=None)
    assert [row.fields for row in rows] == [{"0": ["a", "b"], "1": ["X", "Y"]}, {"0": ["c"], "1": ["Z"]}]
    assert [row.line for row in rows] == [1, 5]
    # without a separator option, a -DOCSTART- line is an ordinary token line
    path = write(tmp_path, "-DOCSTART- O\n\na B\n")
    assert read_column_rows(path, document_separator=None)[0].fields == {"0": ["-DOCSTART-"], "1": ["O"]}


def test_tab_delimiter_keeps_spaces_inside_tokens(tmp_path):
    path = write(tmp_path, "New York\tB-LOC\ncity \tO\n")
    rows = read_column_rows(path, columns=["tokens", "ner"], delimiter="\t")
    assert rows[0].fields == {"tokens": ["New York", "city"], "ner": ["B-LOC", "O"]}


def test_bom_crlf_and_comments(tmp_path):
    path = write(tmp_path, "\ufeff# sent_id = 1\r\nJohn PER\r\nran O\r\n\r\n# sent_id = 2\r\nhome O\r\n")
    rows = read_column_rows(path, columns=["tokens", "ner"], comment="#")
    assert [row.fields["tokens"] for row in rows] == [["John", "ran"], ["home"]]
    assert rows[0].fields["tokens"][0] == "John"  # no byte-order mark
    assert [row.line for row in rows] == [2, 6]
    assert "\r" not in rows[0].fields["ner"][-1]


def test_latin1_encoding_and_undecodable_bytes(tmp_path):
    path = write(tmp_path, "Müller PER\n", encoding="latin-1")
    assert read_column_rows(path, encoding="latin-1")[0].fields["0"] == ["Müller"]
    with pytest.raises(DataError, match="line 1: cannot decode bytes 0xfc"):
        read_column_rows(path)


def test_read_rows_dispatches_columns_format(tmp_path):
    path = write(tmp_path, SAMPLE)
    rows = read_rows(path, format="columns", columns=CONLL_COLUMNS)
    assert rows == read_column_rows(path, columns=CONLL_COLUMNS)
    no_separator = read_rows(path, format="columns", document_separator=None)
    assert no_separator[0].fields["0"] == ["-DOCSTART-"]


def test_reader_schema_accepts_the_columns_options():
    from blocks.config.schema import READER_SCHEMA

    assert "columns" in READER_SCHEMA["properties"]["format"]["enum"]
    assert READER_SCHEMA["properties"]["document_separator"]["default"] == "-DOCSTART-"


# ----------------------------------------------------------------------------------------------
# errors, each naming the file and the line


def test_column_count_differs_within_a_sentence(tmp_path):
    path = write(tmp_path, "a X\nb Y\nc\n")
    with pytest.raises(DataError, match=r"data.txt, line 3: 1 column, but the sentence's first line \(1\) has 2"):
        read_column_rows(path)


def test_column_count_differs_from_the_first_sentence(tmp_path):
    path = write(tmp_path, "a X\n\nb Y Z\n")
    with pytest.raises(DataError, match=r"line 3: 3 columns, but the file's first token line \(1\) has 2"):
        read_column_rows(path)


def test_column_count_differs_from_the_columns_option(tmp_path):
    path = write(tmp_path, "a X\n")
    with pytest.raises(DataError, match="line 1: 2 columns, but the reader's columns name 3"):
        read_column_rows(path, columns=["tokens", "pos", "ner"])


def test_mixed_tab_and_space_columns_are_named(tmp_path):
    path = write(tmp_path, "EU\tB-ORG\nrejects O\n")
    with pytest.raises(DataError, match=r"line 2: 1 column, .*mixed tab/space columns\?.*delimiter to null"):
        read_column_rows(path, delimiter="\t")
    path = write(tmp_path, "EU\tB-ORG\nNew York\tB-LOC\n")
    with pytest.raises(DataError, match=r"line 2: 3 columns.*mixed tab/space columns\?.*delimiter to \"\\t\""):
        read_column_rows(path)


def test_empty_column_value(tmp_path):
    path = write(tmp_path, "a\tX\nb\t\n")
    with pytest.raises(DataError, match="line 2: column 2 is empty"):
        read_column_rows(path, delimiter="\t")


def test_one_giant_sentence_says_no_blank_lines(tmp_path):
    path = write(tmp_path, "x O\n\n" + "".join(f"w{i} O\n" for i in range(12)))
    with pytest.raises(DataError, match=r"line 3: the sentence starting here has more than 10 tokens: "
                                        r"no blank lines between sentences\?"):
        read_column_rows(path, max_sentence_tokens=10)
    assert len(read_column_rows(path, max_sentence_tokens=12)[1].fields["0"]) == 12


@pytest.mark.parametrize("text", ["", "\n\n  \n", "-DOCSTART- -X- O\n\n", "# only a comment\n"])
def test_no_sentences(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(DataError, match="data.txt: no sentences found"):
        read_column_rows(path, comment="#")


def test_bad_options_and_files(tmp_path):
    path = write(tmp_path, "a X\n")
    with pytest.raises(DataError, match="file not found"):
        read_column_rows(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="is a directory"):
        read_column_rows(tmp_path)
    with pytest.raises(DataError, match="duplicate column name 'x'"):
        read_column_rows(path, columns=["x", "x"])
    with pytest.raises(DataError, match="the delimiter must be one character"):
        read_column_rows(path, delimiter="\t\t")
    with pytest.raises(DataError, match="unknown encoding 'utf-9'"):
        read_column_rows(path, encoding="utf-9")


# ----------------------------------------------------------------------------------------------
# the real CoNLL-2003 files


@pytest.mark.parametrize("split, sentences, tokens", [("train", 14_041, 203_621), ("valid", 3_250, 51_362),
                                                      ("test", 3_453, 46_435)])
def test_conll2003(data_dir, split, sentences, tokens):
    path = data_dir / "conll2003" / f"{split}.txt"
    if not path.is_file():
        pytest.skip(f"conll2003/{split}.txt not found in {data_dir}")
    rows = read_rows(path, format="columns", columns=CONLL_COLUMNS)
    assert len(rows) == sentences
    assert sum(len(row.fields["tokens"]) for row in rows) == tokens
    assert all(len(row.fields[c]) == len(row.fields["tokens"]) for row in rows for c in CONLL_COLUMNS)
    assert not any("-DOCSTART-" in row.fields["tokens"] for row in rows)
    labels = {tag for row in rows for tag in row.fields["ner"]}
    assert labels == {"O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"}
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    for row in rows[:50] + rows[-50:]:  # token i of a row is on line row.line + i
        assert [lines[row.line - 1 + i].split() for i in range(len(row.fields["tokens"]))] == \
            [list(values) for values in zip(*(row.fields[c] for c in CONLL_COLUMNS))]
        assert lines[row.line - 2].strip() == ""

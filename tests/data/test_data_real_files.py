"""read_rows on the real shared datasets (skipped when they are not present).

Each test pins the options a dataset needs; see shared/data/README.md for the quirks.
"""
from __future__ import annotations

import timeit
from pathlib import Path

import pytest

from blocks.data.readers import read_rows
from blocks.errors import DataError


def need(data_dir: Path, relative: str) -> Path:
    path = data_dir / relative
    if not path.is_file():
        pytest.skip(f"{relative} not found in {data_dir}")
    return path


def split_lines(path: Path) -> list:
    with open(path, encoding="utf-8", newline="") as handle:
        return [line.rstrip("\n").split("\t") for line in handle]


def test_sst2_train(data_dir):
    path = need(data_dir, "sst2/train.tsv")
    rows = read_rows(path)
    assert len(rows) == 67_349
    assert list(rows[0].fields) == ["sentence", "label"]
    assert {r.fields["label"] for r in rows} == {"0", "1"}
    assert rows[0].fields["sentence"] == "hide new secretions from the parental units "  # raw: trailing space kept
    assert rows[0].line == 2 and rows[-1].line == 67_350
    # speed as a ratio to a bare split of the same file in the same process (absolute times vary with the machine's load)
    reading = min(timeit.repeat(lambda: read_rows(path), number=1, repeat=3))
    splitting = min(timeit.repeat(lambda: split_lines(path), number=1, repeat=3))
    assert reading < 20 * splitting, f"read_rows took {reading:.3f}s, {reading / splitting:.1f}x a bare line split ({splitting:.3f}s)"


def test_sst2_dev_and_test(data_dir):
    assert len(read_rows(need(data_dir, "sst2/dev.tsv"))) == 872
    assert len(read_rows(need(data_dir, "sst2/test.tsv"))) == 1_821


def test_rte_train_is_csv_quoted(data_dir):
    path = need(data_dir, "glue/RTE/train.tsv")
    rows = read_rows(path, quoting="csv")
    assert len(rows) == 2_490
    assert list(rows[0].fields) == ["sentence1", "sentence2", "label", "idx"]
    assert {r.fields["label"] for r in rows} == {"0", "1"}
    assert [r.fields["idx"] for r in rows] == [str(i) for i in range(2_490)]
    quoted = rows[12]  # idx 12, line 14: '"... found ""extensive"" additional damage ..."'
    assert quoted.line == 14
    assert quoted.fields["sentence1"].startswith("Valero Energy Corp., on Monday")
    assert '"extensive"' in quoted.fields["sentence1"]
    # unquoted: no doubled quotes left (504 fields hold them when read without quoting)
    assert not any('""' in value for r in rows for value in r.fields.values())
    # without quoting the row count is the same but the quotes stay in the text
    raw = read_rows(path)
    assert len(raw) == 2_490
    assert raw[12].fields["sentence1"].startswith('"Valero') and '""extensive""' in raw[12].fields["sentence1"]


def test_mrpc_train_bom_and_literal_quotes(data_dir):
    path = need(data_dir, "glue/MRPC/train.tsv")
    rows = read_rows(path)
    assert len(rows) == 3_668
    assert list(rows[0].fields) == ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    assert {r.fields["Quality"] for r in rows} == {"0", "1"}
    # quote characters are text: some strings open a quote they never close
    assert any(r.fields["#2 String"].startswith('"') and r.fields["#2 String"].count('"') % 2
               for r in rows)
    with pytest.raises(DataError, match="quoting to none"):
        read_rows(path, quoting="csv")


def test_cola_train_without_header(data_dir):
    rows = read_rows(need(data_dir, "glue/CoLA/train.tsv"), header=False)
    assert len(rows) == 8_551
    assert list(rows[0].fields) == ["0", "1", "2", "3"]
    assert rows[0].line == 1
    assert {r.fields["1"] for r in rows} == {"0", "1"}
    # the third column is the original judgement mark: empty for acceptable sentences
    assert {r.fields["2"] for r in rows} <= {"", "*", "?*", "??", "*?"}
    named = read_rows(need(data_dir, "glue/CoLA/train.tsv"), header=False,
                      columns=["source", "label", "mark", "sentence"])
    assert named[0].fields["sentence"] == rows[0].fields["3"]


def test_wikiqa_train_crlf(data_dir):
    rows = read_rows(need(data_dir, "wikiqa/WikiQA-train.tsv"))
    assert len(rows) == 20_360
    assert list(rows[0].fields)[-1] == "Label"
    assert {r.fields["Label"] for r in rows} == {"0", "1"}
    assert not any("\r" in value for r in rows for value in r.fields.values())
    assert rows[-1].line == 20_361


def test_qnli_subset_json(data_dir):
    path = need(data_dir, "glue/QNLI/subset_train.json")
    rows = read_rows(path)
    assert len(rows) == 8_999
    assert {r.fields["label"] for r in rows} == {"entailment", "not_entailment"}
    assert set(rows[0].fields) == {"text_a", "text_b", "label", "id"}
    assert [r.fields["id"] for r in rows[:3]] == ["0", "1", "2"]
    lines = path.read_text(encoding="utf-8").split("\n")
    for row in (rows[0], rows[1234], rows[-1]):
        assert lines[row.line - 1].strip().startswith(f'"{row.fields["id"]}": {{')


def test_other_json_subsets(data_dir):
    for relative, labels in [("glue/MNLI/subset_dev.json", {"entailment", "neutral", "contradiction"}),
                             ("snli/subset_dev.json", {"entailment", "neutral", "contradiction"}),
                             ("glue/QQP/subset_dev.json", {"0", "1"})]:
        rows = read_rows(need(data_dir, relative))
        assert len(rows) == 1_000
        assert {r.fields["label"] for r in rows} == labels

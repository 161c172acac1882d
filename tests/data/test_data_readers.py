"""read_rows on small files written for each option and each error."""
from __future__ import annotations

import json

import pytest

from blocks.data.readers import Row, format_of, read_rows
from blocks.errors import DataError


def write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def values(rows: list[Row]) -> list[dict[str, str]]:
    return [row.fields for row in rows]


# -- tsv / csv -----------------------------------------------------------------------------------


def test_tsv_with_header(tmp_path):
    path = write(tmp_path, "a.tsv", "text\tlabel\nhello world\t1\nbye\t0\n")
    rows = read_rows(path)
    assert values(rows) == [{"text": "hello world", "label": "1"}, {"text": "bye", "label": "0"}]
    assert [r.line for r in rows] == [2, 3]
    assert rows[0].file == str(path)


def test_file_is_kept_as_given(tmp_path):
    path = write(tmp_path, "a.tsv", "x\n1\n")
    assert read_rows(str(path))[0].file == str(path)


def test_bom_is_stripped(tmp_path):
    path = write(tmp_path, "a.tsv", b"\xef\xbb\xbfQuality\ttext\n1\thi\n")
    rows = read_rows(path)
    assert list(rows[0].fields) == ["Quality", "text"]
    # with plain utf-8 the mark stays in the first column name
    assert list(read_rows(path, encoding="utf-8")[0].fields)[0] == "\ufeffQuality"


def test_crlf_leaves_no_carriage_return(tmp_path):
    path = write(tmp_path, "a.tsv", "a\tb\r\n1\tx\r\n2\ty\r\n")
    rows = read_rows(path)
    assert values(rows) == [{"a": "1", "b": "x"}, {"a": "2", "b": "y"}]
    assert [r.line for r in rows] == [2, 3]


def test_no_final_newline(tmp_path):
    path = write(tmp_path, "a.tsv", "a\tb\n1\tx")
    assert values(read_rows(path)) == [{"a": "1", "b": "x"}]


def test_no_header_columns_by_index(tmp_path):
    path = write(tmp_path, "a.tsv", "gj04\t1\t\tA sentence.\ngj04\t0\t*\tBad one.\n")
    rows = read_rows(path, header=False)
    assert values(rows)[1] == {"0": "gj04", "1": "0", "2": "*", "3": "Bad one."}
    assert [r.line for r in rows] == [1, 2]


def test_no_header_named_columns(tmp_path):
    path = write(tmp_path, "a.tsv", "x\t1\ny\t0\n")
    rows = read_rows(path, header=False, columns=["text", "label"])
    assert values(rows) == [{"text": "x", "label": "1"}, {"text": "y", "label": "0"}]


def test_columns_rename_header(tmp_path):
    path = write(tmp_path, "a.tsv", "s\tl\nx\t1\n")
    assert values(read_rows(path, columns=["text", "label"])) == [{"text": "x", "label": "1"}]
    with pytest.raises(DataError, match="columns gives 3 names") as info:
        read_rows(path, columns=["a", "b", "c"])
    assert info.value.line == 1


def test_duplicate_header_name(tmp_path):
    path = write(tmp_path, "a.tsv", "a\ta\n1\t2\n")
    with pytest.raises(DataError, match="duplicate column name 'a'"):
        read_rows(path)


def test_quoting_none_keeps_quotes(tmp_path):
    path = write(tmp_path, "a.tsv", 'text\tlabel\n"the witness", he said\t1\nit \'s "fine\t0\n')
    rows = read_rows(path)
    assert rows[0].fields["text"] == '"the witness", he said'
    assert rows[1].fields["text"] == 'it \'s "fine'


def test_quoting_csv_field_with_tab_and_doubled_quote(tmp_path):
    path = write(tmp_path, "a.tsv", 's1\ts2\tlabel\n"a\tb ""q"""\tplain\t0\nx\ty\t1\n')
    rows = read_rows(path, quoting="csv")
    assert values(rows) == [{"s1": 'a\tb "q"', "s2": "plain", "label": "0"},
                            {"s1": "x", "s2": "y", "label": "1"}]
    # the same file without quoting: the tab splits the field, so the count is wrong
    with pytest.raises(DataError, match=r"expected 3 fields \(s1, s2, label\), found 4"):
        read_rows(path)


def test_quoting_csv_multiline_field_line_numbers(tmp_path):
    path = write(tmp_path, "a.csv", 'a,b\n"one\ntwo",x\ny,z\n')
    rows = read_rows(path, quoting="csv")
    assert values(rows) == [{"a": "one\ntwo", "b": "x"}, {"a": "y", "b": "z"}]
    assert [r.line for r in rows] == [2, 4]


def test_quoting_csv_malformed(tmp_path):
    path = write(tmp_path, "a.tsv", 'a\tb\n1\t"quoted" then text\n')
    with pytest.raises(DataError, match="set the reader's quoting to none") as info:
        read_rows(path, quoting="csv")
    assert info.value.line == 2


def test_quoting_csv_unclosed_quote(tmp_path):
    path = write(tmp_path, "a.tsv", 'a\tb\n1\tx\n2\t"never closed\n3\ty\n')
    with pytest.raises(DataError, match="not closed") as info:
        read_rows(path, quoting="csv")
    assert info.value.line == 3


def test_csv_format_and_delimiter(tmp_path):
    path = write(tmp_path, "a.csv", 'a,b\n"x, y",1\n')
    assert values(read_rows(path, quoting="csv")) == [{"a": "x, y", "b": "1"}]
    path = write(tmp_path, "b.txt", "a|b\nx|1\n")
    assert values(read_rows(path, delimiter="|")) == [{"a": "x", "b": "1"}]
    with pytest.raises(DataError, match="one character"):
        read_rows(path, delimiter="||")


def test_wrong_field_count_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.tsv", "text\tlabel\nok\t1\nno label here\n")
    with pytest.raises(DataError) as info:
        read_rows(path)
    error = info.value
    assert error.line == 3 and error.file == str(path)
    assert "expected 2 fields (text, label), found 1" in str(error)
    assert str(path) in str(error) and "line 3" in str(error)


def test_no_header_field_count_from_first_row(tmp_path):
    path = write(tmp_path, "a.tsv", "a\tb\nc\td\te\n")
    with pytest.raises(DataError, match=r"expected 2 fields \(0, 1\), found 3") as info:
        read_rows(path, header=False)
    assert info.value.line == 2


def test_blank_lines(tmp_path):
    path = write(tmp_path, "a.tsv", "\na\tb\n\n1\tx\n   \n2\ty\n\n")
    rows = read_rows(path)
    assert values(rows) == [{"a": "1", "b": "x"}, {"a": "2", "b": "y"}]
    assert [r.line for r in rows] == [4, 6]
    with pytest.raises(DataError, match="header line is blank") as info:
        read_rows(path, skip_blank=False)
    assert info.value.line == 1
    with pytest.raises(DataError, match=r"expected 2 fields \(a, b\), found 1") as info:
        read_rows(write(tmp_path, "b.tsv", "a\tb\n\n1\tx\n"), skip_blank=False)
    assert info.value.line == 2


def test_blank_lines_kept_in_one_column_file(tmp_path):
    path = write(tmp_path, "a.txt", "text\nx\n\ny\n")
    assert values(read_rows(path, skip_blank=False)) == [{"text": "x"}, {"text": ""}, {"text": "y"}]


def test_comment_lines(tmp_path):
    path = write(tmp_path, "a.tsv", "# made by hand\na\tb\n# skip me\n1\tx\n")
    rows = read_rows(path, comment="#")
    assert values(rows) == [{"a": "1", "b": "x"}]
    assert rows[0].line == 4


def test_empty_files(tmp_path):
    assert read_rows(write(tmp_path, "empty.tsv", "")) == []
    assert read_rows(write(tmp_path, "header_only.tsv", "a\tb\n")) == []
    assert read_rows(write(tmp_path, "empty.jsonl", "")) == []
    assert read_rows(write(tmp_path, "empty.json", "{}")) == []
    assert read_rows(write(tmp_path, "blank.json", "  \n")) == []


def test_large_field(tmp_path):
    big = "x" * 300_000
    path = write(tmp_path, "a.tsv", f"a\tb\n{big}\t1\n")
    assert read_rows(path)[0].fields["a"] == big
    assert read_rows(path, quoting="csv")[0].fields["a"] == big


# -- errors about the file itself ----------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.tsv"
    with pytest.raises(DataError, match="file not found") as info:
        read_rows(path)
    assert info.value.file == str(path) and info.value.line is None


def test_directory(tmp_path):
    with pytest.raises(DataError, match="directory"):
        read_rows(tmp_path)


def test_unknown_extension(tmp_path):
    path = write(tmp_path, "a.dat", "x\n")
    with pytest.raises(DataError, match="cannot tell the format"):
        read_rows(path)
    assert values(read_rows(path, format="tsv")) == []


def test_format_of():
    assert [format_of(p) for p in ("a.tsv", "a.TXT", "a.csv", "a.jsonl", "a.json")] == \
        ["tsv", "tsv", "csv", "jsonl", "json"]
    assert format_of("a.json", "tsv") == "tsv"


def test_undecodable_bytes_name_the_line(tmp_path):
    path = write(tmp_path, "a.tsv", b"a\tb\nx\ty\r\nab\xffc\td\n")
    with pytest.raises(DataError) as info:
        read_rows(path)
    assert info.value.line == 3
    assert "0xff" in str(info.value) and "column 3" in str(info.value)


def test_undecodable_bytes_in_json(tmp_path):
    path = write(tmp_path, "a.jsonl", b'{"a": "x"}\n{"a": "\xe9t\xe9"}\n')
    with pytest.raises(DataError) as info:
        read_rows(path)
    assert info.value.line == 2
    assert read_rows(path, encoding="latin-1")[1].fields == {"a": "\u00e9t\u00e9"}


def test_unknown_encoding(tmp_path):
    with pytest.raises(DataError, match="unknown encoding"):
        read_rows(write(tmp_path, "a.tsv", "a\n"), encoding="utf-9")


def test_other_encoding(tmp_path):
    path = write(tmp_path, "a.tsv", "text\nd\u00e9j\u00e0 vu\n".encode("utf-16"))
    assert values(read_rows(path, encoding="utf-16")) == [{"text": "d\u00e9j\u00e0 vu"}]


# -- jsonl ---------------------------------------------------------------------------------------


def test_jsonl_values_become_strings(tmp_path):
    lines = ['{"text": "hi", "label": 1, "score": 0.5, "gold": true, "note": null}',
             "",
             '{"text": "yo", "label": 0, "score": 1e-07, "gold": false, "note": ["a", 1]}']
    path = write(tmp_path, "a.jsonl", "\r\n".join(lines) + "\r\n")
    rows = read_rows(path)
    assert values(rows) == [
        {"text": "hi", "label": "1", "score": "0.5", "gold": "true", "note": ""},
        {"text": "yo", "label": "0", "score": "1e-07", "gold": "false", "note": '["a", 1]'},
    ]
    assert [r.line for r in rows] == [1, 3]


def test_jsonl_malformed_line_and_column(tmp_path):
    path = write(tmp_path, "a.jsonl", '{"a": 1}\n{"a": 2,, }\n')
    with pytest.raises(DataError, match=r"invalid JSON: .*\(column 9\)") as info:
        read_rows(path)
    assert info.value.line == 2


def test_jsonl_not_an_object(tmp_path):
    with pytest.raises(DataError, match="JSON array, expected an object") as info:
        read_rows(write(tmp_path, "a.jsonl", '{"a": 1}\n[1, 2]\n'))
    assert info.value.line == 2


def test_jsonl_blank_line_without_skip(tmp_path):
    with pytest.raises(DataError, match="blank line") as info:
        read_rows(write(tmp_path, "a.jsonl", '{"a": 1}\n\n{"a": 2}\n'), skip_blank=False)
    assert info.value.line == 2


def test_jsonl_columns_select_and_require(tmp_path):
    path = write(tmp_path, "a.jsonl", '{"a": 1, "b": 2}\n{"b": 3}\n')
    with pytest.raises(DataError, match="has no field 'a'") as info:
        read_rows(path, columns=["a"])
    assert info.value.line == 2
    assert values(read_rows(path, columns=["b"])) == [{"b": "2"}, {"b": "3"}]


# -- json ----------------------------------------------------------------------------------------

RECORDS = {"0": {"text_a": "q one", "text_b": "s one", "label": "entailment"},
           "7": {"text_a": "q two", "text_b": "s \"two\"\n", "label": "not_entailment"}}


def test_json_object_keyed_by_id(tmp_path):
    path = write(tmp_path, "a.json", json.dumps(RECORDS, indent=4))
    rows = read_rows(path)
    assert values(rows) == [{**RECORDS["0"], "id": "0"}, {**RECORDS["7"], "id": "7"}]
    # indent=4: line 1 "{", line 2 '"0": {', 3-5 fields, 6 "},", 7 '"7": {'
    assert [r.line for r in rows] == [2, 7]
    assert all(r.file == str(path) for r in rows)


def test_json_compact_and_crlf(tmp_path):
    text = json.dumps(RECORDS, indent=2).replace("\n", "\r\n")
    rows = read_rows(write(tmp_path, "a.json", text))
    assert [r.line for r in rows] == [2, 7]
    rows = read_rows(write(tmp_path, "b.json", json.dumps(RECORDS)))
    assert [r.line for r in rows] == [1, 1] and rows[1].fields["id"] == "7"


def test_json_array_and_existing_id(tmp_path):
    data = [{"text": "a", "label": 1}, {"text": "b", "label": 0, "id": "x9"}]
    rows = read_rows(write(tmp_path, "a.json", "[\n" + ",\n".join(json.dumps(d) for d in data) + "\n]\n"))
    assert values(rows) == [{"text": "a", "label": "1", "id": "0"}, {"text": "b", "label": "0", "id": "x9"}]
    assert [r.line for r in rows] == [2, 3]


def test_json_syntax_error_line_and_column(tmp_path):
    path = write(tmp_path, "a.json", '{\n  "0": {"a": 1},\n  "1": {"a": 2\n  "2": {"a": 3}\n}\n')
    with pytest.raises(DataError, match=r"invalid JSON: .*\(column 3\)") as info:
        read_rows(path)
    assert info.value.line == 4


def test_json_trailing_comma_and_extra_data(tmp_path):
    with pytest.raises(DataError, match="invalid JSON") as info:
        read_rows(write(tmp_path, "a.json", '{"0": {"a": 1},\n}'))
    assert info.value.line == 2
    with pytest.raises(DataError, match="Extra data") as info:
        read_rows(write(tmp_path, "b.json", '{"0": {"a": 1}}\n{}'))
    assert info.value.line == 2


def test_json_bad_records(tmp_path):
    with pytest.raises(DataError, match="record '1' is a JSON string") as info:
        read_rows(write(tmp_path, "a.json", '{"0": {"a": 1},\n "1": "oops"}'))
    assert info.value.line == 2
    with pytest.raises(DataError, match="duplicate id '0'"):
        read_rows(write(tmp_path, "b.json", '{"0": {"a": 1}, "0": {"a": 2}}'))
    with pytest.raises(DataError, match="holds a JSON number"):
        read_rows(write(tmp_path, "c.json", "42"))


def test_json_with_bom(tmp_path):
    path = write(tmp_path, "a.json", b"\xef\xbb\xbf" + json.dumps(RECORDS).encode())
    assert len(read_rows(path)) == 2


def test_header_names_are_stripped(tmp_path):
    path = write(tmp_path, "a.tsv", " text \tlabel\nx\t1\n")
    assert values(read_rows(path)) == [{"text": "x", "label": "1"}]


# -- maxsplit, extra_columns, text ---------------------------------------------------------------


def test_maxsplit_reads_label_space_text_lines(tmp_path):
    path = write(tmp_path, "trec.txt", "DESC:manner How did serfdom develop ?\nNUM:date When was it , then ?\n")
    rows = read_rows(path, header=False, columns=["label", "text"], delimiter=" ", maxsplit=1)
    assert values(rows) == [{"label": "DESC:manner", "text": "How did serfdom develop ?"},
                            {"label": "NUM:date", "text": "When was it , then ?"}]
    with pytest.raises(DataError, match=r"line 1: expected 2 fields \(label, text\), found 6"):
        read_rows(path, header=False, columns=["label", "text"], delimiter=" ")


def test_maxsplit_applies_to_the_header_and_keeps_short_rows_short(tmp_path):
    path = write(tmp_path, "a.tsv", "id\tlabel\ttext\n1\tpos\ta\tb\tc\n2\tneg\n")
    with pytest.raises(DataError, match=r"line 3: expected 3 fields"):
        read_rows(path, maxsplit=2)
    rows = read_rows(write(tmp_path, "b.tsv", "id\tlabel\ttext\n1\tpos\ta\tb\tc\n"), maxsplit=2)
    assert values(rows) == [{"id": "1", "label": "pos", "text": "a\tb\tc"}]


def test_maxsplit_needs_unquoted_delimited_files(tmp_path):
    path = write(tmp_path, "a.csv", "a,b\n1,2\n")
    with pytest.raises(DataError, match="maxsplit 1: needs a tsv or csv file without CSV quoting"):
        read_rows(path, quoting="csv", maxsplit=1)
    with pytest.raises(DataError, match="maxsplit 0"):
        read_rows(path, maxsplit=0)


def test_extra_trailing_columns_are_an_error_or_ignored_and_counted(tmp_path):
    path = write(tmp_path, "sts.tsv", "score\ta\tb\n4.2\tx\ty\tsource1\textra\n1.0\tu\tv\n3\tp\tq\tsource2\n")
    with pytest.raises(DataError, match=r"line 2: expected 3 fields .*found 5; set the reader's extra_columns"):
        read_rows(path)
    rows = read_rows(path, extra_columns="ignore")
    assert values(rows) == [{"score": "4.2", "a": "x", "b": "y"}, {"score": "1.0", "a": "u", "b": "v"},
                            {"score": "3", "a": "p", "b": "q"}]
    assert rows.notes == ["2 row(s) had more than 3 fields (first at line 2); their extra trailing fields were ignored"]
    assert read_rows(write(tmp_path, "ok.tsv", "a\n1\n"), extra_columns="ignore").notes == []
    short = write(tmp_path, "short.tsv", "a\tb\n1\n")
    with pytest.raises(DataError, match=r"line 2: expected 2 fields \(a, b\), found 1$"):
        read_rows(short, extra_columns="ignore")


def test_text_is_read_instead_of_the_file(tmp_path):
    name = str(tmp_path / "stdin.tsv")  # never created
    rows = read_rows(name, text="text\tlabel\r\nhi there\t1\n")
    assert values(rows) == [{"text": "hi there", "label": "1"}] and rows[0].file == name and rows[0].line == 2
    assert values(read_rows("in.jsonl", text='{"text": "a"}\n\n{"text": "b"}\n')) == [{"text": "a"}, {"text": "b"}]
    assert values(read_rows("in.json", text='[{"text": "a"},\r\n {"text": "b"}]')) == [
        {"text": "a", "id": "0"}, {"text": "b", "id": "1"}]
    with pytest.raises(DataError, match=r"in.jsonl, line 2: invalid JSON"):
        read_rows("in.jsonl", text='{"text": "a"}\n{oops\n')


def test_config_reader_options_reach_the_reader_and_the_log(project):
    from blocks.experiment import Experiment

    data = project.root / "data"
    lines = [f"{label} {text}" for text, label in
             [("good great film", 1), ("bad awful plot", 0), ("a great good cast", 1), ("dull bad", 0)] * 5]
    (data / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (data / "dev.txt").write_text("1 good\n0 bad plot\n", encoding="utf-8")
    values = project.single_stage()
    reader = {"delimiter": " ", "header": False, "columns": ["label", "text"]}
    values["data"].update(train="train.txt", dev={"path": "dev.txt", "reader": {**reader, "extra_columns": "ignore"}},
                          test=None, fields={}, reader={**reader, "maxsplit": 1})
    log = []
    experiment = Experiment.prepare(project.load(values), log=log.append)
    assert len(experiment.splits["train"]) == 20 and experiment.task.labels == ["0", "1"]
    assert any(line.startswith("dev: 2 examples") and "1 row(s) had more than 2 fields (first at line 2)" in line
               for line in log)

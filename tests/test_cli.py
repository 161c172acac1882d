"""The ``blocks`` command: list, schema, validate, test, predict; a custom block through ``imports``."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from blocks.cli import main
from blocks.engine.checkpoint import load_checkpoint

REPOSITORY = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


# -- list and schema ------------------------------------------------------------------------------


def test_list_shows_every_kind_with_parameters(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    for heading in ("blocks:", "losses:", "tokenizers:", "metrics:"):
        assert heading in out.splitlines()
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  BiLSTM — "))
    assert "LSTM encoder" in lines[start]
    assert lines[start + 1].strip() == "hidden (int, default 128)"
    assert "  KD — Soft-label distillation" in out
    assert "      temperature (float, default 2.0)" in out


def test_list_one_entry_shows_its_docs(capsys):
    code, out, _ = run_cli(capsys, "list", "BiLSTM")
    assert code == 0
    assert out.startswith("  BiLSTM — LSTM encoder (bidirectional by default)")
    assert "      hidden (int, default 128): hidden size of each direction." in out
    assert "bidirectional (bool, default true): also run a right-to-left LSTM" in out
    assert "BiGRU" not in out


def test_list_kind_filter_and_unknown_name(capsys):
    code, out, _ = run_cli(capsys, "list", "--kind", "loss")
    assert code == 0
    assert out.splitlines()[0] == "losses:" and "BiLSTM" not in out and "  CrossEntropy — " in out
    code, _, err = run_cli(capsys, "list", "BiLSMT")
    assert code == 2
    assert err.startswith("error: unknown block 'BiLSMT'; did you mean 'BiLSTM'?")


def test_schema_file_lists_the_blocks_and_accepts_the_demo(tmp_path, capsys):
    target = tmp_path / "schema.json"
    code, out, _ = run_cli(capsys, "schema", "-o", target)
    assert code == 0 and out.strip() == f"wrote {target}"
    schema = json.loads(target.read_text())
    node_blocks = {option["properties"]["block"]["const"] for option in schema["$defs"]["node"]["anyOf"]
                   if "block" in option["properties"]}
    assert {"BiLSTM", "Embedding", "Linear", "Pooling", "TextCNN", "Combine"} <= node_blocks
    bilstm = next(o for o in schema["$defs"]["node"]["anyOf"] if o["properties"].get("block", {}).get("const") == "BiLSTM")
    assert bilstm["properties"]["hidden"] == {"type": "integer", "description": "hidden size of each direction.",
                                             "default": 128}
    loss_names = {option["properties"]["block"]["const"] for option in schema["$defs"]["loss"]["anyOf"]}
    assert {"KD", "CrossEntropy", "LogitMSE"} <= loss_names
    validator = jsonschema.Draft202012Validator(schema)
    demo = json.loads((REPOSITORY / "model_zoo" / "demo" / "demo.json").read_text())
    assert list(validator.iter_errors(demo)) == []
    demo["models"]["teacher"]["graph"][2]["hiden"] = 4
    assert list(validator.iter_errors(demo))


def test_schema_to_stdout(capsys):
    code, out, _ = run_cli(capsys, "schema")
    assert code == 0
    assert json.loads(out)["title"] == "DistilBlocks config"


def test_python_dash_m(tmp_path):
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "blocks", "list", "--kind", "block"], capture_output=True,
                            text=True, cwd=tmp_path, env=environment, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "  BiLSTM — " in result.stdout and "hidden (int, default 128)" in result.stdout


# -- validate -------------------------------------------------------------------------------------


def test_validate_prints_widths_parameters_and_valid(project, capsys):
    path = project.write(project.config())
    code, out, _ = run_cli(capsys, "validate", path)
    assert code == 0
    assert "task: classification (2 labels: 0, 1); vocabularies: words " in out
    assert "model 'teacher':" in out and "model 'student':" in out
    assert "train: 120 examples from" in out and "dev: 40 examples from" in out
    # teacher: embedding (V x 8) + BiLSTM hidden 8 on 8 + Linear 16 -> 2
    assert "encoder  BiLSTM     embed    sequence[16]  1,152" in out
    assert "logits   Linear     pool     vector[2]     34" in out
    assert "stage 'distill': train 'student' taught by teacher; loss = 0.7·KD + 0.3·CrossEntropy" in out
    assert out.rstrip().endswith(f"{path}: valid")
    assert not (project.root / "runs").exists()  # validate trains and writes nothing


# -- test and predict (on the shared finished run) ------------------------------------------------


def test_test_command_prints_metrics_json(finished_run, capsys):
    code, out, _ = run_cli(capsys, "test", finished_run)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("teacher: accuracy ") and lines[1].startswith("student: accuracy ")
    result = json.loads(lines[-1])
    assert result["examples"] == 40
    assert result["data"].endswith(os.path.join("data", "test.tsv"))
    summary = json.loads((finished_run / "summary.json").read_text())
    for model in ("teacher", "student"):
        assert result["results"][model] == pytest.approx(summary["models"][model]["test"])


def test_test_command_on_another_file(finished_run, project, capsys):
    other = project.write_tsv(project.root / "other.tsv", project.sentences(10, 9))
    code, out, _ = run_cli(capsys, "test", finished_run, "--data", other, "--model", "student")
    assert code == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert result["data"] == str(other) and result["examples"] == 10
    assert list(result["results"]) == ["student"]
    assert set(result["results"]["student"]) == {"accuracy", "f1"}


def test_test_command_unknown_model(finished_run, capsys):
    code, _, err = run_cli(capsys, "test", finished_run, "--model", "studnet")
    assert code == 2
    assert "model 'studnet' has not finished training" in err


def parse_tsv(text: str) -> tuple[list[str], list[list[str]]]:
    lines = text.strip("\n").split("\n")
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def check_rows(rows, count):
    assert len(rows) == count
    for label, p0, p1 in rows:
        assert label in ("0", "1")
        assert abs(float(p0) + float(p1) - 1) < 1e-5
        assert label == ("1" if float(p1) > float(p0) else "0")


def test_predict_tsv(finished_run, project, capsys):
    data = project.write_tsv(project.root / "new.tsv", [("good great movie",), ("awful bad plot",), ("fine",)],
                     header=("sentence",))
    code, out, _ = run_cli(capsys, "predict", finished_run, "--input", data)
    assert code == 0
    header, rows = parse_tsv(out)
    assert header == ["label", "p_0", "p_1"]
    check_rows(rows, 3)
    assert [row[0] for row in rows[:2]] == ["1", "0"]


def test_predict_jsonl_to_a_file(finished_run, project, tmp_path, capsys):
    data = project.write_tsv(project.root / "new.tsv", project.sentences(6, 11))  # a label column is ignored
    target = tmp_path / "out.jsonl"
    code, out, _ = run_cli(capsys, "predict", finished_run, "--input", data, "--format", "jsonl",
                           "--output", target, "--model", "teacher")
    assert code == 0 and out == ""
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(records) == 6
    for record in records:
        assert set(record) == {"label", "probabilities"}
        assert set(record["probabilities"]) == {"0", "1"}
        assert abs(sum(record["probabilities"].values()) - 1) < 1e-5


def test_predict_from_standard_input(finished_run, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("sentence\ngood great film\nbad awful movie\n"))
    code, out, err = run_cli(capsys, "predict", finished_run, "--input", "-")
    assert code == 0, err
    header, rows = parse_tsv(out)
    assert header == ["label", "p_0", "p_1"]
    check_rows(rows, 2)
    assert [row[0] for row in rows] == ["1", "0"]


def test_predict_lines_from_a_file_and_from_standard_input(finished_run, tmp_path, capsys, monkeypatch):
    texts = tmp_path / "texts.txt"
    texts.write_text("good great film\n\nbad awful movie\nsuperb lovely\n")
    code, out, err = run_cli(capsys, "predict", finished_run, "--input", texts, "--lines")
    assert code == 0, err
    header, rows = parse_tsv(out)
    assert header == ["label", "p_0", "p_1"]
    check_rows(rows, 3)  # the blank line is skipped
    assert [row[0] for row in rows] == ["1", "0", "1"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("terrible dull\ngood\n"))
    code, out, err = run_cli(capsys, "predict", finished_run, "--input", "-", "--lines", "--format", "jsonl")
    assert code == 0, err
    assert [json.loads(line)["label"] for line in out.splitlines()] == ["0", "1"]


def test_predict_bad_input_file(finished_run, tmp_path, capsys):
    data = tmp_path / "bad.tsv"
    data.write_text("text\ngood\n")
    code, _, err = run_cli(capsys, "predict", finished_run, "--input", data)
    assert code == 2
    assert f"error: {data}, line 2: no column 'sentence' (for field 'text')" in err


# -- a custom block -------------------------------------------------------------------------------

CUSTOM_BLOCK = '''
import torch
from torch import nn

from blocks import SEQUENCE, Block, Sequence, Spec, expect_inputs, register_block


@register_block("LearnedScale")
class LearnedScale(Block):
    """Multiply a sequence by one learned factor.

    Args:
        init: the factor's starting value.
    """

    def __init__(self, inputs: list[Spec], init: float = 1.0):
        super().__init__()
        expect_inputs(inputs, 1, (SEQUENCE,))
        self.factor = nn.Parameter(torch.tensor(float(init)))
        self.output_spec = Spec(SEQUENCE, inputs[0].width)

    def forward(self, sequence: Sequence) -> Sequence:
        return Sequence(sequence.values * self.factor, sequence.mask)
'''


def test_custom_block_through_imports_builds_and_trains(project, capsys):
    (project.root / "custom_blocks.py").write_text(CUSTOM_BLOCK)
    values = project.config()
    values["imports"] = ["custom_blocks.py"]
    values["models"]["student"]["graph"].insert(
        1, {"name": "scaled", "block": "LearnedScale", "init": 0.5})
    values["stages"] = [{"name": "only", "train": "student", "epochs": 1, "batch_size": 16,
                         "optimizer": {"type": "adam", "lr": 0.05}}]
    path = project.write(values)
    code, out, _ = run_cli(capsys, "validate", path)
    assert code == 0
    assert "scaled  LearnedScale  embed   sequence[8]" in out
    values["models"]["student"]["graph"][1]["inti"] = 1
    code, _, err = run_cli(capsys, "validate", project.write(values, "typo.json"))
    assert code == 2 and "block 'LearnedScale' has no parameter 'inti'; did you mean 'init'?" in err
    run_dir = project.root / "custom_run"
    code, _, err = run_cli(capsys, "train", path, "--run-dir", run_dir, "--no-progress")
    assert code == 0, err
    tensors, _ = load_checkpoint(run_dir / "models" / "student.safetensors")
    assert tensors["blocks.scaled.factor"].shape == ()
    assert tensors["blocks.scaled.factor"].item() != 0.5  # it was trained
    # a run directory's code runs only when asked: it may come from someone else
    code, _, err = run_cli(capsys, "test", run_dir)
    assert code == 2
    assert f"the run's config imports code that would run on this machine ({project.root / 'custom_blocks.py'}); " \
           f"if you trust where the run comes from, pass --trust-imports" in err
    code, out, _ = run_cli(capsys, "test", run_dir, "--trust-imports")  # a run with a custom block can be reloaded
    assert code == 0 and json.loads(out.splitlines()[-1])["examples"] == 40


def test_list_with_import(project, capsys, monkeypatch):
    (project.root / "listed_blocks.py").write_text(CUSTOM_BLOCK)
    monkeypatch.syspath_prepend(str(project.root))
    code, out, _ = run_cli(capsys, "list", "LearnedScale", "--import", "listed_blocks")
    assert code == 0
    assert "LearnedScale — Multiply a sequence by one learned factor." in out
    assert "init (float, default 1.0): the factor's starting value." in out
    code, _, err = run_cli(capsys, "list", "--import", "no_such_module_here")
    assert code == 2 and "--import no_such_module_here failed: ModuleNotFoundError" in err


def test_list_imports_a_python_file(project, capsys):
    (project.root / "my_blocks.py").write_text(CUSTOM_BLOCK.replace("LearnedScale", "FileScale"))
    code, out, err = run_cli(capsys, "list", "FileScale", "--import", "my_blocks.py")  # relative to the current folder
    assert code == 0, err
    assert "FileScale — Multiply a sequence by one learned factor." in out
    code, _, err = run_cli(capsys, "list", "--import", "missing_blocks.py")
    assert code == 2
    assert f"--import missing_blocks.py failed: module file not found: {project.root / 'missing_blocks.py'}" in err


FORGETFUL_BLOCK = '''
from blocks import Block, register_block


@register_block("Forgetful")
class Forgetful(Block):
    """Returns its input; forgets to say what it returns."""

    def __init__(self, inputs):
        super().__init__()

    def forward(self, x):
        return x
'''


def test_a_custom_block_without_output_spec_is_a_config_error(project, capsys):
    (project.root / "forgetful.py").write_text(FORGETFUL_BLOCK)
    values = project.config()
    values["imports"] = ["forgetful.py"]
    values["models"]["student"]["graph"].insert(1, {"name": "same", "block": "Forgetful"})
    path = project.write(values)
    code, _, err = run_cli(capsys, "validate", path)
    assert code == 2
    assert err.startswith(f"error: {path}: /models/student/graph/1: Forgetful 'same': the block did not set "
                          f"self.output_spec in its constructor")


def test_validate_names_a_regression_task_once(project, capsys):
    values = project.single_stage()
    values["task"] = {"type": "regression"}
    values["stages"][0]["losses"] = [{"block": "MSE"}]
    code, out, err = run_cli(capsys, "validate", project.write(values))
    assert code == 0, err
    task_line = next(line for line in out.splitlines() if line.startswith("task: "))
    assert task_line.startswith("task: regression (one score per example); vocabularies: ")
    assert "regression (regression)" not in out

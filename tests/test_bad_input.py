"""Bad configs, bad data and broken runs, each through the command line: exit status 2 and one
message naming the file and the place (JSON path or data line), never a traceback."""
from __future__ import annotations

import json
import os

import pytest
import torch

from blocks.cli import main
from blocks.engine.checkpoint import load_checkpoint


def command(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    return code, captured.err


def validate(project, capsys, values, name="config.json", file=None) -> tuple[int, str, str]:
    """Run ``blocks validate``; the message must start with ``file`` (default: the config file)."""
    path = project.write(values, name)
    code, err = command(capsys, "validate", path)
    assert code == 2, err
    assert err.startswith(f"error: {file or path}")  # then ": " or ", line N: "
    assert len(err.strip().splitlines()) == 1
    return code, err, str(path)


def student_graph(values, *nodes):
    values["models"]["student"]["graph"] = [
        {"name": "embed", "block": "Embedding", "input": "tokens", "dim": 8}, *nodes]
    return values


# -- the config ---------------------------------------------------------------------------------


def test_valid_config_passes(project, capsys):
    code, _ = command(capsys, "validate", project.write(project.config()))
    assert code == 0


def test_unknown_block_suggests_the_close_one(project, capsys):
    values = project.config()
    values["models"]["student"]["graph"][1] = {"name": "enc", "block": "BiLSMT", "hidden": 4}
    _, err, path = validate(project, capsys, values)
    assert f"{path}: /models/student/graph/1/block: unknown block 'BiLSMT'; did you mean 'BiLSTM'?" in err


def test_misspelled_parameter(project, capsys):
    values = project.config()
    values["models"]["teacher"]["graph"][1] = {"name": "encoder", "block": "BiLSTM", "hiden": 8}
    _, err, path = validate(project, capsys, values)
    assert f"{path}: /models/teacher/graph/1/hiden: block 'BiLSTM' has no parameter 'hiden'; " \
           f"did you mean 'hidden'?" in err


def test_mistyped_parameter(project, capsys):
    values = project.config()
    values["models"]["teacher"]["graph"][1]["hidden"] = "big"
    _, err, path = validate(project, capsys, values)
    assert f"{path}: /models/teacher/graph/1/hidden: block 'BiLSTM': 'big' is not of type 'integer'" in err


def test_reference_to_a_missing_node(project, capsys):
    values = student_graph(project.config(), {"name": "pool", "block": "Pooling", "input": "embd"},
                           {"name": "logits", "block": "Linear"})
    _, err, path = validate(project, capsys, values)
    assert f"{path}: /models/student/graph/1/input: 'embd' is neither a node nor an input of model " \
           f"'student'; did you mean 'embed'?" in err


def test_graph_cycle(project, capsys):
    values = student_graph(project.config(),
                           {"name": "a", "block": "LayerNorm", "input": "b"},
                           {"name": "b", "block": "LayerNorm", "input": "a"},
                           {"name": "pool", "block": "Pooling", "input": "b"},
                           {"name": "logits", "block": "Linear"})
    _, err, path = validate(project, capsys, values)
    assert f"{path}: /models/student/graph/1: the graph has a cycle: a -> b -> a" in err


def test_combine_of_unequal_widths(project, capsys):
    values = student_graph(project.config(),
                           {"name": "enc_a", "block": "BiLSTM", "input": "embed", "hidden": 5},
                           {"name": "enc_b", "block": "BiLSTM", "input": "embed", "hidden": 6},
                           {"name": "pool_a", "block": "Pooling", "input": "enc_a"},
                           {"name": "pool_b", "block": "Pooling", "input": "enc_b"},
                           {"name": "both", "block": "Combine", "input": ["pool_a", "pool_b"]},
                           {"name": "logits", "block": "Linear"})
    _, err, path = validate(project, capsys, values)
    assert f"{path}: /models/student/graph/5: Combine 'both' inputs must have equal widths, got 10 and 12 " \
           f"(inputs: pool_a: vector[10], pool_b: vector[12])" in err


def test_attention_heads_that_do_not_divide_the_width(project, capsys):
    values = student_graph(project.config(),
                           {"name": "attend", "block": "MultiHeadSelfAttention", "heads": 3},
                           {"name": "pool", "block": "Pooling"},
                           {"name": "logits", "block": "Linear"})
    _, err, path = validate(project, capsys, values)
    assert f"{path}: /models/student/graph/1: MultiHeadSelfAttention 'attend' input width 8 does not divide " \
           f"into 3 heads" in err


def test_json_syntax_error(project, capsys):
    text = json.dumps(project.config(), indent=2).replace('"seed": 3,', '"seed": 3,,')
    path = project.write(text)
    code, err = command(capsys, "validate", path)
    assert code == 2
    line = text.splitlines().index('  "seed": 3,,') + 1
    assert f"error: {path}: JSON syntax error at line {line}, column 13: " in err


def test_unknown_top_level_key(project, capsys):
    values = project.config()
    values["stagse"] = values.pop("stages")
    _, err, path = validate(project, capsys, values)
    assert f"{path}: /stagse: unknown key 'stagse'; did you mean 'stages'?" in err


def test_stage_naming_an_undefined_model(project, capsys):
    values = project.config()
    values["stages"][1]["train"] = "studnet"
    _, err, path = validate(project, capsys, values)
    assert f"{path}: /stages/1/train: model 'studnet' is not defined; did you mean 'student'?" in err


def test_teacher_not_trained_earlier(project, capsys):
    values = project.config()
    values["stages"] = values["stages"][1:]
    _, err, path = validate(project, capsys, values)
    assert f"{path}: /stages/0/teachers/0: teacher 'teacher' is not trained by an earlier stage" in err


def test_unknown_metric(project, capsys):
    values = project.config()
    values["task"]["metrics"] = ["acuracy"]
    _, err, path = validate(project, capsys, values)
    assert f"{path}: /task/metrics/0: unknown metric 'acuracy'; did you mean 'accuracy'?" in err


# -- the data -------------------------------------------------------------------------------------


def test_missing_data_file(project, capsys):
    values = project.config()
    values["data"]["dev"] = "missing.tsv"
    _, err, _ = validate(project, capsys, values, file=project.data / "missing.tsv")
    assert f"{project.root / 'data' / 'missing.tsv'}: file not found" in err


def test_malformed_row_names_file_and_line(project, capsys):
    train = project.data / "train.tsv"
    lines = train.read_text().splitlines()
    lines[6] += "\textra"  # line 7 of the file
    train.write_text("\n".join(lines) + "\n")
    _, err, _ = validate(project, capsys, project.config(), file=train)
    assert f"{train}, line 7: expected 2 fields (sentence, label), found 3" in err


def test_dev_label_unseen_in_training(project, capsys):
    dev = project.data / "dev.tsv"
    lines = dev.read_text().splitlines()
    lines[11] = "good movie\tpositive"  # line 12
    dev.write_text("\n".join(lines) + "\n")
    _, err, _ = validate(project, capsys, project.config(), file=dev)
    assert f"{dev}, line 12: label 'positive' was not seen in the training data (labels: 0, 1)" in err


def test_missing_column(project, capsys):
    values = project.config()
    values["data"]["fields"] = {"text": "sentense"}
    _, err, path = validate(project, capsys, values, file=project.data / "train.tsv")
    assert f"{project.data / 'train.tsv'}, line 2: no column 'sentense' (for field 'text'); " \
           f"columns: sentence, label (the field is asked for at {path}: /data/fields/text)" in err


@pytest.mark.parametrize("change, place", [
    (lambda v: v["data"].update(label="labl"), "/data/label"),
    (lambda v: (v["data"].pop("fields"), v["models"]["student"]["inputs"]["tokens"].update(field="sentense")),
     "/models/student/inputs/tokens/field"),
])
def test_a_missing_field_names_the_config_path_that_asks_for_it(project, capsys, change, place):
    values = project.config()
    values["models"]["teacher"]["inputs"]["tokens"]["field"] = "sentence"
    change(values)
    _, err, path = validate(project, capsys, values, file=project.data / "train.tsv")
    assert f"(the field is asked for at {path}: {place})" in err


@pytest.mark.parametrize("content", ["sentence\tlabel\n", ""])
def test_empty_training_file(project, capsys, content):
    (project.data / "train.tsv").write_text(content)
    _, err, _ = validate(project, capsys, project.config(), file=project.data / "train.tsv")
    assert f"{project.data / 'train.tsv'}: the training file holds no examples" in err


def test_single_label_training_file(project, capsys):
    train = project.data / "train.tsv"
    train.write_text("sentence\tlabel\ngood movie\t1\ngreat film\t1\n")
    _, err, _ = validate(project, capsys, project.config(), file=train)
    assert f"{train}: classification needs at least two labels; found ['1']" in err


# -- training and runs ---------------------------------------------------------------------------

NAN_LOSS = '''
import torch
from blocks import register_loss
from blocks.distill.losses import Loss


@register_loss("NaNAfterThree")
class NaNAfterThree(Loss):
    """Cross-entropy that turns NaN after three calls."""

    def __init__(self, stage):
        super().__init__(stage)
        self.calls = 0

    def forward(self, outputs, batch):
        self.calls += 1
        logits = self.student_value(outputs)
        loss = torch.nn.functional.cross_entropy(logits, batch.labels)
        return loss * float("nan") if self.calls > 3 else loss
'''


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(project, capsys):
    (project.root / "nan_loss.py").write_text(NAN_LOSS)
    values = project.single_stage()
    values["imports"] = ["nan_loss.py"]
    values["stages"][0].update(eval_every=2, losses=[{"block": "NaNAfterThree"}])
    run_dir = project.root / "nan_run"
    code, err = command(capsys, "train", project.write(values), "--run-dir", run_dir, "--no-progress")
    assert code == 2
    last = run_dir / "stages" / "teacher" / "last.safetensors"
    assert "stage 'teacher': the loss became NaN or infinite before step 4" in err
    assert f"the last good checkpoint is kept at {last}" in err
    tensors, state = load_checkpoint(last)
    assert state["position"]["step"] == 2
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model/"))
    assert not (run_dir / "models" / "teacher.safetensors").exists()
    assert not (run_dir / "summary.json").exists()


def test_huge_learning_rate_is_reported(project, capsys):
    values = project.config()
    values["stages"] = [{"name": "only", "train": "student", "epochs": 1, "batch_size": 16, "log_every": 1,
                         "optimizer": {"type": "adam", "lr": 1e30}}]
    code, err = command(capsys, "train", project.write(values), "--run-dir", project.root / "huge", "--no-progress")
    assert code == 2
    assert "the loss became NaN or infinite" in err and "no checkpoint had been written yet" in err


def test_corrupt_model_weights(run_copy, capsys):
    weights = run_copy / "models" / "student.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 10])
    code, err = command(capsys, "test", run_copy)
    assert code == 2
    assert err.startswith(f"error: {weights}: the checkpoint is truncated or corrupt")


def test_missing_run_directory(project, capsys):
    code, err = command(capsys, "test", project.root / "no_run")
    assert code == 2
    assert f"error: {project.root / 'no_run'}: run directory not found" in err


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_non_empty_run_directory_without_resume(project, capsys):
    run_dir = project.root / "busy"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    before = snapshot(run_dir)
    path = project.write(project.config())
    code, err = command(capsys, "train", path, "--run-dir", run_dir, "--no-progress")
    assert code == 2
    assert f"error: {path}: /run_dir: the run directory {run_dir} is not empty; continue that run with --resume" in err
    assert snapshot(run_dir) == before


def test_finished_run_directory_without_resume(run_copy, capsys):
    before = snapshot(run_copy)
    code, err = command(capsys, "train", run_copy / "config.json", "--run-dir", run_copy)
    assert code == 2
    assert "is not empty; continue that run with --resume" in err
    assert snapshot(run_copy) == before


def test_resume_with_another_config(run_copy, capsys):
    code, err = command(capsys, "train", run_copy / "config.json", "--run-dir", run_copy, "--resume",
                        "--set", "seed=4")
    assert code == 2
    assert f"error: {run_copy / 'config.json'}: /seed: the config differs from the one the run" in err


def test_failing_user_import(project, capsys):
    (project.root / "broken_module.py").write_text("raise RuntimeError('boom')\n")
    values = project.config()
    values["imports"] = ["broken_module.py"]
    _, err, path = validate(project, capsys, values)
    assert f"{path}: /imports/0: importing '{project.root / 'broken_module.py'}' failed: RuntimeError: boom" in err
    assert os.path.exists(project.root / "broken_module.py")


# -- values the schema bounds, keys JSON would silently drop -------------------------------------------


@pytest.mark.parametrize("place, value, message", [
    (("models", "teacher", "graph", 0, "dim"), -5, "-5 is less than the minimum of 0"),
    (("models", "teacher", "graph", 1, "hidden"), 10 ** 12, "1000000000000 is greater than the maximum of 1048576"),
    (("models", "teacher", "graph", 3, "out"), 5_000_000, "5000000 is greater than the maximum of 1048576"),
    (("stages", 0, "epochs"), 1e300, "1e+300 is greater than the maximum of 1000000"),
    (("stages", 0, "batch_size"), 2 ** 40, "1099511627776 is greater than the maximum of 1048576"),
])
def test_absurd_sizes_are_refused_before_anything_is_built(project, capsys, place, value, message):
    values = project.config()
    target = values
    for key in place[:-1]:
        target = target[key]
    target[place[-1]] = value
    _, err, path = validate(project, capsys, values)
    assert f"{path}: /{'/'.join(map(str, place))}: {message}" in err


def test_a_key_given_twice_is_refused_with_its_path(project, capsys):
    text = json.dumps(project.config(), indent=2).replace('"dim": 8', '"dim": 8, "dim": 16', 1)
    path = project.write(text)
    code, err = command(capsys, "validate", path)
    assert code == 2
    assert f"error: {path}: /models/teacher/graph/0/dim: the key 'dim' appears twice in one object" in err


@pytest.mark.parametrize("how", ["file", "--set"])
def test_a_nan_learning_rate_names_the_file_and_path(project, capsys, how):
    values = project.config()
    if how == "file":
        text = json.dumps(values, indent=2).replace('"lr": 0.05', '"lr": NaN')
        path, extra = project.write(text), []
    else:
        path, extra = project.write(values), ["--set", "stages.1.optimizer.lr=NaN"]
    code, err = command(capsys, "validate", path, *extra)
    assert code == 2
    assert f"error: {path}: /stages/1/optimizer/lr: nan is not a number a config can hold" in err


# -- predict and export: bad input and output paths ---------------------------------------------------


def standard_input(monkeypatch, data: bytes) -> None:
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_predict_input_that_is_not_utf8(finished_run, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"sentence\tlabel\ngood \xff movie\t1\n")
    code, err = command(capsys, "predict", finished_run, "--input", bad)
    assert code == 2 and err.startswith(f"error: {bad}, line 2: cannot decode bytes 0xff")
    standard_input(monkeypatch, b"sentence\tlabel\nfine\t1\ngood \xff movie\t1\n")
    code, err = command(capsys, "predict", finished_run, "--input", "-")
    assert code == 2
    assert err.startswith("error: <standard input>, line 3: byte 0xff is not UTF-8 (invalid start byte)")


@pytest.mark.parametrize("data, message", [
    (b"", "<standard input>: the input holds no examples"),
    (b"sentence\tlabel\na\tb\tc\n", "<standard input>, line 2: expected 2 fields (sentence, label), found 3"),
])
def test_predict_blank_or_malformed_standard_input_is_named(finished_run, capsys, monkeypatch, data, message):
    standard_input(monkeypatch, data)
    code, err = command(capsys, "predict", finished_run, "--input", "-")
    assert code == 2 and err.startswith(f"error: {message}")
    assert "tmp" not in err.split(":")[1]  # no temporary file's name


def test_predict_and_export_output_paths(finished_run, project, tmp_path, capsys):
    made = tmp_path / "new" / "folder" / "predictions.tsv"
    code, _ = command(capsys, "predict", finished_run, "--input", project.data / "dev.tsv", "--output", made)
    assert code == 0 and len(made.read_text().splitlines()) == 41  # the folder is made, like export's
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, err = command(capsys, "predict", finished_run, "--input", project.data / "dev.tsv",
                        "--output", blocker / "predictions.tsv")
    assert code == 2
    assert err.startswith(f"error: {blocker / 'predictions.tsv'}: cannot write the predictions: {blocker} is a file")
    code, err = command(capsys, "export", finished_run, "--format", "torchscript", "--output", blocker / "m.pt")
    assert code == 2 and err.startswith(f"error: {blocker / 'm.pt'}: cannot be written: {blocker} is a file")

"""Predictor: a run's model labelling examples from Python, and ``blocks predict`` on a sentence-pair model."""
from __future__ import annotations

import io
import json
import sys
import tempfile

import pytest
import torch

from blocks.cli import main
from blocks.errors import CheckpointError, DataError
from blocks.predictor import Predictor
from tests.conftest import quiet, sentences


def test_predictor_labels_texts_and_rows(finished_run):
    predictor = Predictor(finished_run)
    assert predictor.model == "student" and predictor.fields == ["text"]
    predictions = predictor.predict(["good great film", "bad awful movie"])
    assert [p["label"] for p in predictions] == ["1", "0"]
    for p in predictions:
        assert set(p["probabilities"]) == {"0", "1"} and sum(p["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert predictor.predict([{"text": "good great film"}]) == predictions[:1]
    assert Predictor(finished_run, model="teacher").predict(["superb lovely"])[0]["label"] == "1"


def test_predictor_says_what_an_example_lacks(finished_run):
    predictor = Predictor(finished_run)
    with pytest.raises(DataError, match=r"<examples>, line 2: model 'student' reads one text field \(text\); "
                                        r"the example gives 2 text\(s\)"):
        predictor.predict(["fine", ("a", "b")])
    with pytest.raises(DataError, match=r"line 1: the example has no field 'text'"):
        predictor.predict([{"sentence": "fine"}])
    with pytest.raises(CheckpointError, match="model 'nobody' has not finished training"):
        Predictor(finished_run, model="nobody")


def test_predict_writes_no_temporary_file(finished_run, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("predict wrote a temporary file")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(sys, "stdin", io.StringIO("sentence\ngood great film\n"))
    assert main(["predict", str(finished_run), "--input", "-"]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("bad awful\n"))
    assert main(["predict", str(finished_run), "--input", "-", "--lines", "--format", "jsonl"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("1\t") and json.loads(out[2])["label"] == "0"


# -- a sentence-pair model -------------------------------------------------------------------------

PAIR_MODEL = {
    "inputs": {"a": {"field": "first", "tokenizer": "whitespace"}, "b": {"field": "second", "tokenizer": "whitespace"}},
    "graph": [
        {"name": "embed_a", "block": "Embedding", "input": "a", "dim": 8},
        {"name": "embed_b", "share": "embed_a", "input": "b"},
        {"name": "pool_a", "block": "Pooling", "input": "embed_a"},
        {"name": "pool_b", "block": "Pooling", "input": "embed_b"},
        {"name": "both", "block": "Combine", "input": ["pool_a", "pool_b"]},
        {"name": "logits", "block": "Linear"},
    ],
}


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory):
    """A finished run of a model reading two text fields: the label is the second text's sentiment."""
    from blocks.config.loader import load_config
    from blocks.engine.run import train
    from tests.conftest import Project

    root = tmp_path_factory.mktemp("pair")
    project = Project(root)
    for name, count, seed in (("train", 160, 5), ("dev", 20, 6)):
        firsts, seconds = sentences(count, seed), sentences(count, seed + 10)
        project.write_tsv(root / "data" / f"{name}_pairs.tsv", [(a, b, label) for (a, _), (b, label) in zip(firsts, seconds)],
                          header=("first", "second", "label"))
    values = project.single_stage()
    values["data"] = {"root": "data", "train": "train_pairs.tsv", "dev": "dev_pairs.tsv"}
    values["models"] = {"teacher": PAIR_MODEL}
    values["stages"][0]["epochs"] = 3
    run_dir = root / "run"
    train(load_config(project.write(values), environ={}), run_dir=run_dir, progress=False, log=quiet)
    return run_dir


def test_predict_lines_on_a_pair_model_takes_two_tab_separated_texts(pair_run, tmp_path, capsys):
    texts = tmp_path / "pairs.txt"
    texts.write_text("the movie\tgood great film\n\nplot\tbad awful story\n", encoding="utf-8")
    assert main(["predict", str(pair_run), "--input", str(texts), "--lines"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "label\tp_0\tp_1" and [line.split("\t")[0] for line in lines[1:]] == ["1", "0"]
    assert Predictor(pair_run).predict([("the movie", "good great film")])[0]["label"] == "1"

    texts.write_text("good\tgreat\nonly one text here\n", encoding="utf-8")
    assert main(["predict", str(pair_run), "--input", str(texts), "--lines"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {texts}, line 2: model 'teacher' reads 2 text fields (first, second): give them "
                          f"on one line, separated by a tab; the line has 1 text(s)")
    assert "Traceback" not in err and "tmp" not in err.split(str(texts))[1]


def test_a_run_trained_on_cuda_is_used_on_the_cpu_where_there_is_no_cuda(run_copy, monkeypatch, capsys):
    """A run directory made on a GPU server ("device": "cuda") tests and predicts on a laptop."""

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = json.loads((run_copy / "config.json").read_text())
    config["device"] = "cuda"
    (run_copy / "config.json").write_text(json.dumps(config, indent=2))

    notes = []
    predictor = Predictor(run_copy, note=notes.append)
    assert predictor.device == torch.device("cpu")
    assert notes == ["the run was trained on 'cuda'; there is no CUDA device here, so it runs on the CPU"]
    assert [p["label"] for p in predictor.predict(["good great film", "bad awful movie"])] == ["1", "0"]

    capsys.readouterr()
    assert main(["test", str(run_copy), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "note: the run was trained on 'cuda'" in captured.err and "student: accuracy" in captured.out
    # asked for explicitly, CUDA is an error, not a silent fallback
    assert main(["test", str(run_copy), "--device", "cuda", "--no-progress"]) == 2
    assert "device 'cuda' was asked for but CUDA is not available" in capsys.readouterr().err
    assert main(["test", str(run_copy), "--greedy", "--no-progress"]) == 2  # for models that generate
    assert "--greedy: a classification model does not generate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", str(run_copy), "--input", "-", "--device", "gpu"])
    assert "expected auto, cpu, cuda or cuda:N, got 'gpu'" in capsys.readouterr().err

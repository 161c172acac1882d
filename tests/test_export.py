"""`blocks export`: TorchScript and ONNX files that give PyTorch's outputs on other batch shapes."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from blocks import errors as blocks_errors
from blocks.cli import main
from blocks.engine.run import load_run
from blocks.export import TOLERANCE, ExportWrapper, export_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")


def quiet(*args, **kwargs) -> None:
    """A ``log`` function that says nothing."""


def variable_batch(experiment, model: str, size: int = 9, length: int = 11, seed: int = 0) -> tuple:
    """Random ids with rows of different lengths (and an empty row), shapes unlike the trace example."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (size,), generator=generator)
    lengths[0], lengths[-1] = length, 0  # the longest row fills the batch; the last row is all padding
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    tensors = []
    for name in experiment.models[model].input_names:
        vocab = len(experiment.vocabularies[experiment.fields[experiment.model_inputs[model][name]].vocab])
        ids = torch.randint(2, vocab, (size, length), generator=generator).masked_fill(~mask, 0)
        tensors += [ids, mask]
    return tuple(tensors)


def pytorch_outputs(run_dir, model: str, batches: list[tuple]) -> tuple:
    _, experiment, _ = load_run(run_dir, log=quiet)
    wrapper = ExportWrapper(experiment.models[model].eval()).eval()
    with torch.no_grad():
        return experiment, [wrapper(*batch) for batch in batches]


def packed_copy(finished_run, tmp_path):
    """A copy of the finished run whose teacher's BiLSTM runs on torch's packed-sequence path."""
    import shutil

    target = tmp_path / "packed_run"
    shutil.copytree(finished_run, target)
    config = json.loads((target / "config.json").read_text(encoding="utf-8"))
    recurrent = [node for node in config["models"]["teacher"]["graph"] if node["block"] == "BiLSTM"]
    assert recurrent
    for node in recurrent:
        node["packed"] = True
    (target / "config.json").write_text(json.dumps(config), encoding="utf-8")
    _, experiment, _ = load_run(target, log=quiet)
    assert any(getattr(module, "packed", False) for module in experiment.models["teacher"].modules())
    return target


# teacher: a BiLSTM on its padded path; packed: the same on torch's packed-sequence path
@pytest.mark.parametrize("model", ["student", "teacher", "packed"])
def test_torchscript_matches_pytorch_on_other_shapes(finished_run, tmp_path, model, capsys):
    if model == "packed":
        finished_run, model = packed_copy(finished_run, tmp_path), "teacher"
    target = tmp_path / f"{model}.pt"
    code = main(["export", str(finished_run), "--format", "torchscript", "--model", model, "--output", str(target)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "max abs diff" in out and "tolerance 0.0001" in out
    _, experiment, _ = load_run(finished_run, log=quiet)
    batches = [variable_batch(experiment, model, 9, 11, 0), variable_batch(experiment, model, 1, 3, 1),
               variable_batch(experiment, model, 33, 6, 2)]
    _, expected = pytorch_outputs(finished_run, model, batches)
    loaded = torch.jit.load(str(target))
    with torch.no_grad():
        for batch, want in zip(batches, expected):
            got = loaded(*batch)
            assert got.shape == want.shape
            assert (got - want).abs().max().item() < 1e-4


@pytest.mark.parametrize("model", ["student", "teacher", "packed"])
def test_onnx_matches_pytorch_on_other_shapes(finished_run, tmp_path, model, capsys):
    if model == "packed":
        finished_run, model = packed_copy(finished_run, tmp_path), "teacher"
    pytest.importorskip("onnx", reason="ONNX export needs: pip install distilblocks[export]")
    onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX export needs: pip install distilblocks[export]")
    target = tmp_path / f"{model}.onnx"
    code = main(["export", str(finished_run), "--format", "onnx", "--model", model, "--output", str(target)])
    out = capsys.readouterr().out
    assert code == 0, out
    record = json.loads((tmp_path / f"{model}.onnx.json").read_text(encoding="utf-8"))
    assert record["check"]["max_abs_diff"] < TOLERANCE
    _, experiment, _ = load_run(finished_run, log=quiet)
    batches = [variable_batch(experiment, model, 9, 11, 3), variable_batch(experiment, model, 1, 4, 4)]
    _, expected = pytorch_outputs(finished_run, model, batches)
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == ["tokens_ids", "tokens_mask"]
    for batch, want in zip(batches, expected):
        got = torch.from_numpy(session.run(None, dict(zip(names, (t.numpy() for t in batch))))[0])
        assert got.shape == want.shape
        assert (got - want).abs().max().item() < 1e-4


def test_default_output_and_sidecar(run_copy, capsys):
    assert main(["export", str(run_copy), "--format", "torchscript"]) == 0
    out = capsys.readouterr().out
    folder = run_copy / "export"
    assert (folder / "student.pt").is_file() and str(folder / "student.pt") in out
    record = json.loads((folder / "student.pt.json").read_text(encoding="utf-8"))
    assert record["model"] == "student" and record["format"] == "torchscript" and record["file"] == "student.pt"
    assert record["labels"] == ["0", "1"] and record["task"] == "classification"
    ids, mask = record["inputs"]
    assert (ids["name"], ids["dtype"], ids["shape"]) == ("tokens_ids", "int64", ["batch", "length"])
    assert (mask["name"], mask["dtype"], mask["shape"]) == ("tokens_mask", "bool", ["batch", "length"])
    assert ids["definition"]["field"] == "text" and ids["definition"]["lowercase"] is True
    assert (ids["pad_id"], ids["unk_id"]) == (0, 1)
    assert (folder / ids["vocab_file"]).read_text(encoding="utf-8") == \
        (run_copy / "vocab" / "words.txt").read_text(encoding="utf-8")
    assert record["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 2],
                                  "meaning": record["outputs"][0]["meaning"]}]
    check = record["check"]
    assert check["tolerance"] == TOLERANCE and check["max_abs_diff"] < TOLERANCE
    assert "dev split" in check["examples"]
    trace_shape = record["trace_example_shapes"][0]
    assert any(shape != trace_shape for shape in check["batch_shapes"])


def test_unfinished_student_is_a_clear_error(run_copy, capsys):
    progress = run_copy / "progress.json"
    state = json.loads(progress.read_text(encoding="utf-8"))
    del state["models"]["student"]
    state["completed_stages"].remove("distill")
    progress.write_text(json.dumps(state), encoding="utf-8")
    assert main(["export", str(run_copy), "--format", "torchscript"]) == 2
    err = capsys.readouterr().err
    assert str(progress) in err and "'student' has not finished training" in err and "finished: teacher" in err
    assert not (run_copy / "export").exists()


def test_missing_onnx_packages_name_the_extra(finished_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    assert main(["export", str(finished_run), "--format", "onnx", "--output", str(tmp_path / "x.onnx")]) == 2
    assert "pip install distilblocks[export]" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_an_unfaithful_export_fails_and_is_removed(finished_run, tmp_path, monkeypatch):
    import blocks.export

    monkeypatch.setattr(blocks.export, "verify", lambda *args: 0.5)
    with pytest.raises(blocks_errors.DistilBlocksError, match="differ from PyTorch's by up to 0.5"):
        export_model(finished_run, "torchscript", output=tmp_path / "s.pt", log=quiet)
    assert not list(tmp_path.iterdir())


def test_a_trace_that_bakes_in_a_value_is_caught(finished_run, tmp_path, monkeypatch):
    """A block turning a tensor into a Python number traces it as a constant: the check must fail."""
    from blocks.layers.masking import masked_mean
    from blocks.layers.pooling import Pooling

    def baked(self, sequence):
        values, mask = sequence
        share = float(mask.float().mean())  # 1.0 on the trace example, a constant in the traced graph
        return masked_mean(values, mask) * share

    monkeypatch.setattr(Pooling, "forward", baked)
    with pytest.raises(blocks_errors.DistilBlocksError, match="more than the tolerance 0.0001"):
        export_model(finished_run, "torchscript", output=tmp_path / "s.pt", log=quiet)
    assert not (tmp_path / "s.pt").exists()


def test_chars_input_exports_with_dynamic_word_width(project, tmp_path):
    """A CharCNN model: ids [batch, length, chars], every axis dynamic."""
    from blocks.engine.run import train

    values = project.single_stage()
    values["models"]["teacher"] = {
        "inputs": {"chars": {"field": "text", "type": "chars", "vocab": "chars"}},
        "graph": [{"name": "cnn", "block": "CharCNN", "input": "chars", "char_dim": 4, "filters": 4, "windows": [2]},
                  {"name": "encoder", "block": "BiGRU", "hidden": 4},
                  {"name": "pool", "block": "Pooling", "mode": "max"},
                  {"name": "logits", "block": "Linear"}]}
    values["stages"][0]["epochs"] = 1
    run_dir = tmp_path / "chars_run"
    train(project.load(values), run_dir=run_dir, progress=False, log=quiet)
    formats = ["torchscript"]
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        formats.append("onnx")
    except ImportError:
        pass
    for fmt in formats:
        record = export_model(run_dir, fmt, log=quiet)
        assert record["inputs"][0]["shape"] == ["batch", "length", "chars"]
        assert record["check"]["max_abs_diff"] < TOLERANCE
        assert {tuple(s) for s in record["check"]["batch_shapes"]} != {tuple(record["trace_example_shapes"][0])}


def test_onnx_falls_back_to_the_torch_export_exporter(project, tmp_path):
    """A TransformerEncoder traces to a fused operator the TorchScript-based ONNX exporter lacks;
    the torch.export-based exporter (needs onnxscript) takes over and the result is still checked."""
    pytest.importorskip("onnxruntime", reason="ONNX export needs: pip install distilblocks[export]")
    pytest.importorskip("onnxscript", reason="the torch.export-based ONNX exporter needs onnxscript")
    from blocks.engine.run import train

    values = project.single_stage()
    values["models"]["teacher"]["graph"][1] = {"name": "encoder", "block": "TransformerEncoder", "layers": 1,
                                               "heads": 2, "max_length": 32}
    values["stages"][0]["epochs"] = 1
    run_dir = tmp_path / "transformer_run"
    train(project.load(values), run_dir=run_dir, progress=False, log=quiet)
    notes = []
    record = export_model(run_dir, "onnx", log=notes.append)
    assert "torch.export-based" in record["exported_with"]
    assert any("TorchScript-based ONNX exporter failed" in note for note in notes)
    assert record["check"]["max_abs_diff"] < TOLERANCE

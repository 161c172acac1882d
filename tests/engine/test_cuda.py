"""The engine on a CUDA device: the same runs as on the CPU, bf16 autocast, the teacher cache's
tensors, generation and the CRF. Every test here needs a CUDA device and skips without one; the
rest of the suite runs on CUDA too with ``DISTILBLOCKS_TEST_DEVICE=cuda`` (see tests/conftest.py).

What these compare: CPU and CUDA kernels sum in different orders, so weights agree to a tolerance,
not bit for bit; decisions (argmax, Viterbi paths, greedy and beam outputs) of well-separated
scores agree exactly.
"""
from __future__ import annotations

import json
import random

import pytest
import torch

from blocks.config.loader import load_config
from blocks.engine.checkpoint import load_checkpoint
from blocks.engine.run import train
from blocks.layers.crf import crf_log_partition, crf_viterbi
from blocks.values import TagScores

from tests.tasks import test_seq2seq

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def quiet(*args, **kwargs):
    pass


def run(project, values: dict, name: str, log=quiet) -> dict:
    return train(load_config(project.write(values, f"{name}.json"), environ={}), run_dir=project.root / name,
                 progress=False, log=log)


def max_weight_difference(a_path, b_path) -> float:
    a, _ = load_checkpoint(a_path)
    b, _ = load_checkpoint(b_path)
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_a_two_stage_distillation_run_on_cuda_ends_where_the_cpu_run_does(project):
    values = project.config()
    values["device"] = "cpu"
    cpu = run(project, values, "on_cpu")
    values["device"] = "cuda"
    lines = []
    cuda = run(project, values, "on_gpu", log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert any("device: cuda" in line for line in lines), lines[:5]
    environment = json.loads((project.root / "on_gpu" / "environment.json").read_text())
    assert environment["device"].startswith("cuda")
    for model in ("teacher", "student"):
        assert abs(cuda["models"][model]["dev"]["accuracy"] - cpu["models"][model]["dev"]["accuracy"]) <= 0.05
        # checkpoints are written from CPU copies, so a CUDA run's files load anywhere
        difference = max_weight_difference(project.root / "on_cpu" / "models" / f"{model}.safetensors",
                                           project.root / "on_gpu" / "models" / f"{model}.safetensors")
        assert difference < 5e-3, (model, difference)


def test_the_teacher_cache_on_cuda_teaches_as_the_teacher_in_the_loop_does(project):
    values = project.config()
    values["device"] = "cuda"
    values["stages"][1]["cache_teachers"] = False
    values["stages"][1]["cache_dtype"] = "float32"
    in_loop = run(project, values, "loop")
    values["stages"][1]["cache_teachers"] = True
    lines = []
    cached = run(project, values, "cached", log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert any("building teacher cache" in line for line in lines), lines
    assert cached["models"]["student"]["dev"] == pytest.approx(in_loop["models"]["student"]["dev"], abs=0.03)
    difference = max_weight_difference(project.root / "loop" / "models" / "student.safetensors",
                                       project.root / "cached" / "models" / "student.safetensors")
    assert difference < 1e-3, difference


def test_bf16_autocast_trains_and_writes_fp32_weights(project):
    values = project.config()
    values["device"] = "cuda"
    values["precision"] = "bf16"
    summary = run(project, values, "bf16")
    for model in ("teacher", "student"):
        assert summary["models"][model]["dev"]["accuracy"] > 0.8, summary["models"][model]
        tensors, _ = load_checkpoint(project.root / "bf16" / "models" / f"{model}.safetensors")
        assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float32}
        assert all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


def test_crf_viterbi_and_partition_on_cuda_match_the_cpu():
    torch.manual_seed(0)
    lengths = [random.Random(i).randint(1, 30) for i in range(64)]
    length, tags = max(lengths), 9
    emissions = torch.randn(len(lengths), length, tags) * 3
    mask = torch.arange(length).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    cpu = TagScores(emissions, mask, torch.randn(tags, tags), torch.randn(tags), torch.randn(tags))
    cuda = TagScores(*(t.cuda() for t in cpu))
    cpu_paths, cpu_best = crf_viterbi(cpu)
    cuda_paths, cuda_best = crf_viterbi(cuda)
    assert torch.equal(cpu_paths, cuda_paths.cpu())
    assert torch.allclose(cpu_best, cuda_best.cpu(), atol=1e-4)
    assert torch.allclose(crf_log_partition(cpu), crf_log_partition(cuda).cpu(), atol=1e-4)


def test_a_translator_trained_on_cuda_translates_as_on_the_cpu(tmp_path, monkeypatch):
    from blocks.predictor import Predictor

    monkeypatch.delenv("DISTILBLOCKS_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    for name, count, seed in (("train", 400, 1), ("dev", 40, 2), ("test", 40, 3)):
        test_seq2seq.write_pairs(data, name, count, seed)
    values = test_seq2seq.seq2seq_config()
    values["device"] = "auto"  # a run directory that the CPU can load too
    summary = train(load_config(test_seq2seq.write_config(tmp_path, values), environ={}), run_dir=tmp_path / "run",
                    progress=False, log=quiet)
    assert summary["models"]["model"]["test"]["bleu"] > 60, summary["models"]["model"]
    sources = (data / "test.en").read_text().splitlines()
    on_cuda = Predictor(tmp_path / "run")
    assert on_cuda.device.type == "cuda"
    translations = [p["translation"] for p in on_cuda.predict(sources)]
    on_cpu = Predictor(tmp_path / "run")
    on_cpu.device = torch.device("cpu")
    on_cpu.experiment.models[on_cpu.model].to("cpu")
    assert [p["translation"] for p in on_cpu.predict(sources)] == translations  # beam search, both devices


"""Smoke tests of the benchmark scripts in tools/, on a tiny synthetic dataset and tiny models."""
from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest
import torch

from blocks.config.loader import load_config
from blocks.engine.run import train

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"distilblocks_tool_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def write_rows(path: Path, count: int, rng: random.Random) -> None:
    positive, negative = "good great fine nice fun".split(), "bad awful dull poor boring".split()
    filler = "the a movie film plot it was is very and".split()
    lines = ["sentence\tlabel"]
    for i in range(count):
        label = i % 2
        words = [rng.choice(filler) for _ in range(rng.randint(2, 9))] + [rng.choice(positive if label else negative)]
        rng.shuffle(words)
        lines.append(" ".join(words) + f"\t{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    """A teacher BiLSTM (CrossEntropy stage) and a TextCNN student distilled from it."""
    folder = tmp_path_factory.mktemp("bench")
    rng = random.Random(0)
    write_rows(folder / "train.tsv", 80, rng)
    write_rows(folder / "dev.tsv", 24, rng)
    tokens = {"tokens": {"field": "text", "tokenizer": "whitespace"}}
    config = {
        "seed": 3,
        "data": {"root": ".", "train": "train.tsv", "dev": "dev.tsv", "fields": {"text": "sentence"},
                 "label": "label"},
        "task": {"metrics": ["accuracy"]},
        "models": {
            "teacher": {"inputs": tokens, "graph": [
                {"name": "embed", "block": "Embedding", "input": "tokens", "dim": 8},
                {"name": "drop", "block": "Dropout", "p": 0.2},
                {"name": "encoder", "block": "BiLSTM", "hidden": 8},
                {"name": "pool", "block": "AttentionPooling", "hidden": 8},
                {"name": "logits", "block": "MLP", "hidden": [8], "dropout": 0.2}]},
            "student": {"inputs": tokens, "graph": [
                {"name": "embed", "block": "Embedding", "input": "tokens", "dim": 8},
                {"name": "conv", "block": "TextCNN", "filters": 4, "windows": [2, 3]},
                {"name": "logits", "block": "Linear"}]},
        },
        "stages": [
            {"name": "teacher", "train": "teacher", "losses": [{"block": "CrossEntropy"}], "epochs": 1,
             "batch_size": 8, "grad_clip": 5.0, "log_every": 2},
            {"name": "distill", "train": "student", "teachers": ["teacher"], "epochs": 1, "batch_size": 8,
             "losses": [{"block": "KD", "temperature": 2.0, "weight": 0.5}, {"block": "CrossEntropy", "weight": 0.5}]},
        ],
    }
    path = folder / "tiny.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_engine_overhead_reports_ratio_and_identical_weights(tiny_config, tmp_path, capsys):
    bench = load_tool("bench_engine_overhead")
    code = bench.main(["--config", str(tiny_config), "--max-batches", "3", "--repeats", "1", "--threads", "1",
                       "--warmup-batches", "1", "--check", "--run-root", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "engine (training loop only) / hand loop:" in out
    assert "engine (full run)           / hand loop:" in out
    assert "timed: the first 3 batches" in out
    assert "final weights engine vs hand: bitwise identical" in out
    assert "loss trajectories identical over 3 steps" in out
    assert "| recipe | batches | threads | hand loop (s) |" in out
    row = out.strip().splitlines()[-1]
    assert row.startswith("| tiny | 3 (partial epoch) | 1 |") and "≤ 1.10" in row
    assert not list(tmp_path.iterdir())  # the engine's temporary run directories are removed


def test_engine_overhead_refuses_a_distillation_stage(tiny_config):
    bench = load_tool("bench_engine_overhead")
    with pytest.raises(SystemExit, match="cannot be reproduced by the hand loop"):
        bench.main(["--config", str(tiny_config), "--stage", "1", "--max-batches", "2", "--threads", "1"])


def test_inference_table(tiny_config, tmp_path, capsys):
    run_dir = tmp_path / "tinyrun"
    train(load_config(tiny_config), run_dir=run_dir, progress=False, log=lambda *a: None)
    capsys.readouterr()
    bench = load_tool("bench_inference")
    code = bench.main([str(run_dir), "--examples", "20", "--repeats", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "batch 1: 20 examples in 20 batches, batch 64: 20 examples in 1 batch" in out
    assert "student vs teacher:" in out and "fewer parameters" in out
    header = "| run | model (role) | parameters | batch 1 ex/s | batch 1 ms/ex | batch 1 speedup | batch 64 ex/s |"
    assert header in out
    rows = [line for line in out.splitlines() if line.startswith("| tinyrun |")]
    assert len(rows) == 2 and "teacher (teacher)" in rows[0] and "student (student)" in rows[1]


def student_recipe_with_a_finished_teacher(tiny_config, tmp_path) -> Path:
    """The tiny distillation stage as a recipe whose teacher comes from a finished run directory."""
    values = json.loads(tiny_config.read_text())
    teacher_only = {**values, "stages": values["stages"][:1], "data": {**values["data"], "root": str(tiny_config.parent)}}
    (tmp_path / "teacher.json").write_text(json.dumps(teacher_only))
    train(load_config(tmp_path / "teacher.json", environ={}), run_dir=tmp_path / "teacher_run", progress=False,
          log=lambda *a: None)
    student = {**teacher_only, "models": {"teacher": {"run": "teacher_run"}, "student": values["models"]["student"]},
               "stages": values["stages"][1:]}
    (tmp_path / "student.json").write_text(json.dumps(student))
    return tmp_path / "student.json"


def test_teacher_cache_benchmark_with_a_teacher_from_a_finished_run(tiny_config, tmp_path, capsys):
    """The recipe takes its teacher from a run directory: no --run-dir or --untrained-teacher needed."""
    student_recipe_with_a_finished_teacher(tiny_config, tmp_path)
    tool = load_tool("bench_teacher_cache")
    code = tool.main(["--config", str(tmp_path / "student.json"), "--threads", "1", "--target", "0.01",
                      "--run-root", str(tmp_path)])
    out = capsys.readouterr().out
    assert f"teacher ({'from ' + str(tmp_path / 'teacher_run')})" in out
    assert "-> same" in out and code == 0
    assert "teacher outputs: cached vs computed live" in out and "-> same (tolerance" in out
    with pytest.raises(SystemExit, match="trained by the recipe itself"):
        tool.main(["--config", str(tiny_config), "--threads", "1"])


def test_optimizer_benchmark_times_both_kernels_on_the_same_steps(tiny_config, tmp_path, capsys):
    recipe = student_recipe_with_a_finished_teacher(tiny_config, tmp_path)
    tool = load_tool("bench_optimizer")
    code = tool.main(["--config", str(recipe), "--threads", "1", "--steps", "4", "--repeats", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("fused  : 4 steps") == 2 and out.count("foreach: 4 steps") == 2
    assert "speedup loop / fused:" in out and "final student weights, fused vs loop: equal" in out
    assert "teachers: teacher (outputs from the teacher cache)" in out
    with pytest.raises(SystemExit, match="trained by the recipe itself"):
        tool.main(["--config", str(tiny_config), "--threads", "1", "--steps", "2"])
    with pytest.raises(SystemExit, match="the recipe has 2 stage"):
        tool.main(["--config", str(tiny_config), "--stage", "5"])


def test_host_memory_benchmark_runs_each_allocator_in_its_own_process(tiny_config, tmp_path, capsys):
    recipe = student_recipe_with_a_finished_teacher(tiny_config, tmp_path)
    tool = load_tool("bench_host_memory")
    code = tool.main(["--config", str(recipe), "--threads", "1", "--steps", "4", "--repeats", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "repeat 1, system: " in out and "(system default (DISTILBLOCKS_MALLOC=system))" in out
    assert "repeat 1, keep  : " in out
    assert "speedup system / keep:" in out and "students at the end: bitwise identical" in out
    with pytest.raises(SystemExit, match="the 'system' side failed"):
        tool.main(["--config", str(tiny_config), "--threads", "1", "--steps", "2", "--repeats", "1"])
    assert "trained by the recipe itself" in capsys.readouterr().err


def test_recurrent_benchmark_times_both_paths_in_training_and_inference(tiny_config, tmp_path, capsys):
    run_dir = tmp_path / "tinyrun"
    train(load_config(tiny_config), run_dir=run_dir, progress=False, log=lambda *a: None)
    capsys.readouterr()
    tool = load_tool("bench_recurrent")
    code = tool.main(["--config", str(tiny_config), "--stage", "0", "--steps", "3", "--repeats", "2",
                      "--run", str(run_dir), "--examples", "20", "--batch1-examples", "5", "--repeats", "1",
                      "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("padded: 3 steps") == 1 and out.count("packed: 3 steps") == 1
    assert "speedup packed / padded:" in out and "final student weights, padded vs packed:" in out
    assert "gradient" in out and "-> same (tolerance 0.0001)" in out
    assert "teacher (teacher), padded" in out and "teacher (teacher), packed" in out
    assert "student (student)" not in out  # the TextCNN student has no recurrent block
    difference = float(out.split("largest |output difference| ")[1].split()[0])
    assert difference < 1e-5
    recipe = student_recipe_with_a_finished_teacher(tiny_config, tmp_path)
    with pytest.raises(SystemExit, match="'student' trained by stage 0 has no BiLSTM/BiGRU block"):
        tool.main(["--config", str(recipe), "--threads", "1"])


def test_gpu_benchmark_runs_both_parts_on_cpu(tiny_config, tmp_path, capsys):
    """On CPU both precisions run fp32 (autocast is CUDA-only) and no utilisation is sampled; the
    tokens counted are the real tokens of the batches trained."""
    recipe = student_recipe_with_a_finished_teacher(tiny_config, tmp_path)
    tool = load_tool("bench_gpu")
    code = tool.main(["--config", str(tiny_config), "--stage", "0", "--device", "cpu", "--threads", "1",
                      "--steps", "3", "--repeats", "2", "--warmup-steps", "1", "--distill", str(recipe)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "CPU: autocast is CUDA-only" in out
    assert out.count("fp32: 3 steps") == 2 and out.count("bf16: 3 steps") == 2
    rows = [line for line in out.splitlines() if line.startswith(("| fp32 |", "| bf16 |"))]
    assert len(rows) == 2 and all("| accuracy " in row for row in rows)
    assert "bf16 / fp32 tokens/s:" in out
    assert "| teacher cache |" in out and "| teacher in the loop |" in out
    assert out.count("not sampled (no CUDA device") == 2

    # the tokens counted are the real tokens of the batches collated
    from blocks.experiment import Experiment

    experiment = Experiment.prepare(load_config(tiny_config, ["device=cpu"], environ={}), splits=("train",),
                                    log=lambda *a: None)
    split = experiment.splits["train"]
    trainer = type("Trainer", (), {"model_name": "teacher", "train_split": split})()
    counted = tool.count_tokens(trainer, experiment)
    assert counted == [0]
    batch = split.collate(torch.arange(8))
    assert counted[0] == int(next(iter(batch.inputs.values())).mask.sum()) > 8
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="CUDA is not available"):
            tool.main(["--config", str(tiny_config)])  # the default device is cuda


def test_profile_nodes_times_every_node_of_the_model(finished_run, capsys):
    """tools/profile_nodes.py: a positive best time for each block of the profiled model."""
    from blocks.engine.run import load_run

    profile_nodes = load_tool("profile_nodes")
    best = profile_nodes.profile(str(finished_run), "student", batch_size=8, examples=16, repeats=1)
    _, experiment, _ = load_run(finished_run, log=lambda *a: None)
    assert set(best) == set(experiment.models["student"].blocks)
    assert all(seconds > 0 for seconds in best.values())
    assert "model 'student', 16 examples at batch 8" in capsys.readouterr().out

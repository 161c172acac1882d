"""`blocks bench`: teacher and student timed side by side, batch-1 latency and the speedup."""
from __future__ import annotations

import json

import pytest
import torch

from blocks.cli import main


@pytest.fixture(autouse=True)
def keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    assert torch.get_num_threads() == threads  # bench restores the thread count it changed
    torch.set_num_threads(threads)


def test_bench_table_has_both_models_latency_and_speedup(finished_run, capsys):
    code = main(["bench", str(finished_run), "--examples", "16", "--repeats", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "batch 1: 16 examples in 16 batches, batch 64: 16 examples in 1 batch" in out
    header = next(line for line in out.splitlines() if "model (role)" in line)
    assert "batch 1 ms/ex" in header and "batch 64 ex/s" in header
    rows = [line for line in out.splitlines() if line.strip().startswith(("teacher (teacher)", "student (student)"))]
    assert len(rows) == 2 and "1,362" in rows[0] and "194" in rows[1]
    assert "student vs teacher: batch 1 " in out and "x faster, batch 64 " in out and "x fewer parameters" in out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["threads"] == 1 and result["examples"] == {"batch1": 16, "batch64": 16}
    teacher, student = result["models"]["teacher"], result["models"]["student"]
    assert (teacher["role"], student["role"]) == ("teacher", "student")
    assert teacher["parameters"] == 1362 and student["parameters"] == 194
    for entry in (teacher, student):
        assert entry["batch1_ms_per_example"] > 0 and entry["batch64_examples_per_second"] > 0
        assert entry["batch1_ms_per_example"] == pytest.approx(1000 / entry["batch1_examples_per_second"], rel=1e-3)
    (compared,) = result["student_vs_teacher"]
    assert compared["student"] == "student" and compared["teacher"] == "teacher"
    assert set(compared["speedup"]) == {"batch1", "batch64"} and compared["compression"] == pytest.approx(1362 / 194, abs=0.01)


def test_bench_of_a_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "nowhere")]) == 2
    assert "run directory not found" in capsys.readouterr().err


def test_bench_rejects_bad_counts(finished_run, capsys):
    assert main(["bench", str(finished_run), "--repeats", "0"]) == 2
    assert "must be >= 1" in capsys.readouterr().err

"""The CPU threads PyTorch computes with: the default, the ``threads`` key and ``--threads``."""
from __future__ import annotations

import json

import pytest
import torch

from blocks import threads
from blocks.cli import main
from blocks.errors import ConfigError


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 1), (3, 1), (8, 4)])
def test_default_is_half_the_usable_cores(monkeypatch, cores, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: cores)
    assert threads.default_threads() == expected


def test_omp_num_threads_is_an_explicit_choice(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    assert threads.default_threads() == 4


def test_use_threads_sets_torch(restore_threads, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    assert threads.use_threads(None) == 2 and torch.get_num_threads() == 2
    assert threads.use_threads(1) == 1 and torch.get_num_threads() == 1


def test_config_key_is_validated(project):
    values = project.single_stage()
    values["threads"] = 0
    with pytest.raises(ConfigError) as caught:
        project.load(values)
    assert caught.value.path == "/threads"
    values["threads"] = 2
    assert project.load(values)["threads"] == 2
    assert project.load(project.single_stage())["threads"] is None


@pytest.mark.parametrize("command", ["train", "test", "predict", "bench"])
def test_threads_option_must_be_positive(command, capsys):
    with pytest.raises(SystemExit) as caught:
        main([command, "somewhere", "--threads", "0"] + (["--input", "-"] if command == "predict" else []))
    assert caught.value.code == 2
    assert "--threads: must be at least 1, got 0" in capsys.readouterr().err


def test_train_threads_option_is_kept_in_the_run_config(project, restore_threads, capsys):
    values = project.single_stage()
    values["stages"][0]["epochs"] = 1
    run_dir = project.root / "run"
    assert main(["train", str(project.write(values)), "--run-dir", str(run_dir), "--threads", "1",
                 "--no-progress"]) == 0
    assert torch.get_num_threads() == 1
    assert json.loads((run_dir / "config.json").read_text())["threads"] == 1
    capsys.readouterr()
    torch.set_num_threads(2)
    assert main(["test", str(run_dir), "--no-progress"]) == 0  # the run's config chose 1 thread
    assert torch.get_num_threads() == 1


def test_bench_says_what_its_numbers_depend_on(finished_run, restore_threads):
    from blocks.engine.benchmark import bench_run

    lines = []
    result = bench_run(finished_run, examples=16, repeats=1, threads=1, batch1_examples=4, out=lines.append)
    assert result["threads"] == 1
    assert ("the speeds depend on the threads (--threads), the device and the machine's load; the speedups "
            "compare models timed side by side here") in lines

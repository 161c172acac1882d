"""Interruptions, damaged run directories and concurrent use: what a run survives, on the tiny data.

Every test trains the two-stage tiny config (about a second a run) and compares against an
uninterrupted run: same weights, and the same metrics log line for line (times aside).
"""
from __future__ import annotations

import errno
import json
import os

import pytest
import torch

from blocks.cli import main
from blocks.config.loader import load_config
from blocks.engine import checkpoint
from blocks.engine.checkpoint import load_checkpoint
from blocks.engine.run import train
from blocks.engine.run_dir import RunDir
from blocks.engine.trainer import StageTrainer
from blocks.errors import CheckpointError, ConfigError
from tests.conftest import Project, quiet


def tiny(project) -> dict:
    values = project.config()
    for stage in values["stages"]:
        stage.update(eval_every=3, log_every=1)
    return values


def run(project, values, run_dir, resume=False, overrides=(), log=quiet):
    config = load_config(project.write(values), overrides, environ={})
    return train(config, run_dir=project.root / run_dir, resume=resume, progress=False, log=log)


def events(root) -> list[dict]:
    lines = (root / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]


def model_weights(root) -> dict:
    return {m: {k: v.clone() for k, v in load_checkpoint(root / "models" / f"{m}.safetensors")[0].items()}
            for m in ("teacher", "student")}


def assert_same_run(root, reference):
    assert events(root) == events(reference)
    ours, theirs = model_weights(root), model_weights(reference)
    for model in ours:
        assert ours[model].keys() == theirs[model].keys()
        assert all(torch.equal(ours[model][k], theirs[model][k]) for k in ours[model]), model


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the tiny config (in a project of its own: the logs and weights do
    not depend on where the data is)."""
    other = Project(tmp_path_factory.mktemp("reference"))
    run(other, tiny(other), "ref")
    return other.root / "ref"


class Interrupt(BaseException):
    """Stands for a kill: nothing after it runs (tests raise it where a signal could land)."""


def interrupt_metrics(monkeypatch, when):
    """Raise Interrupt instead of appending the first metrics record for which ``when(record)``."""
    original = RunDir.append_metrics
    fired = {"done": False}

    def append(self, record):
        if not fired["done"] and when(record):
            fired["done"] = True
            raise Interrupt
        return original(self, record)

    monkeypatch.setattr(RunDir, "append_metrics", append)
    return lambda: monkeypatch.setattr(RunDir, "append_metrics", original)


# -- resume reproduces the log ---------------------------------------------------------------------


@pytest.mark.parametrize("when", [
    lambda r: r["stage"] == "distill" and r["step"] == 2,  # before the stage's first checkpoint (at 3)
    lambda r: r["stage"] == "distill" and r["step"] == 5,  # between two checkpoints
    lambda r: r["stage"] == "teacher" and r["event"] == "eval" and r["step"] == 6,  # before the checkpoint of an eval
], ids=["before-first-checkpoint", "mid-stage", "at-an-evaluation"])
def test_every_interruption_point_gives_the_same_log_and_weights(project, reference, monkeypatch, when):
    restore = interrupt_metrics(monkeypatch, when)
    with pytest.raises(Interrupt):
        run(project, tiny(project), "b")
    restore()
    run(project, tiny(project), "b", resume=True)
    assert_same_run(project.root / "b", reference)


def test_killed_twice(project, reference, monkeypatch):
    restore = interrupt_metrics(monkeypatch, lambda r: r["stage"] == "teacher" and r["step"] == 4)
    with pytest.raises(Interrupt):
        run(project, tiny(project), "b")
    restore()
    restore = interrupt_metrics(monkeypatch, lambda r: r["stage"] == "distill" and r["step"] == 2)
    with pytest.raises(Interrupt):
        run(project, tiny(project), "b", resume=True)
    restore()
    run(project, tiny(project), "b", resume=True)
    assert_same_run(project.root / "b", reference)


def test_killed_while_a_checkpoint_is_written_leaves_nothing_behind(project, reference, monkeypatch):
    """A kill between a checkpoint's temporary file and its rename: the old checkpoint counts, and
    the temporary file (like an unfinished teacher-cache folder) is deleted on resume."""
    original = os.replace
    calls = {"n": 0}

    def replace(source, target):
        if str(target).endswith(os.path.join("distill", "last.safetensors")):
            calls["n"] += 1
            if calls["n"] == 2:
                raise Interrupt  # the temporary file stays: atomic_write_bytes's clean-up never runs
        return original(source, target)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    monkeypatch.setattr(checkpoint.os, "unlink", lambda path: None)
    with pytest.raises(Interrupt):
        run(project, tiny(project), "b")
    monkeypatch.undo()
    root = project.root / "b"
    leftovers = list((root / "stages" / "distill").glob(".last.safetensors.*.tmp"))
    assert len(leftovers) == 1
    building = root / "cache" / ".building-0123abcd-999999999"  # pid 999999999 does not exist
    building.mkdir(parents=True)
    messages = []
    run(project, tiny(project), "b", resume=True, log=messages.append)
    assert not leftovers[0].exists() and not building.exists()
    assert any(m.startswith("removed 2 unfinished file(s)") for m in messages)
    assert_same_run(root, reference)


def test_full_disk_names_the_run_directory_and_the_resumed_run_is_the_same(project, reference, monkeypatch,
                                                                           capsys):
    original = checkpoint.atomic_write_bytes
    calls = {"n": 0}

    def full(path, data):
        calls["n"] += 1
        if calls["n"] == 12:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full)
    path = project.write(tiny(project))
    root = project.root / "b"
    assert main(["train", str(path), "--run-dir", str(root), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {root}: the disk is full (") and "--resume" in err and "Traceback" not in err
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", original)
    assert main(["train", str(path), "--run-dir", str(root), "--no-progress", "--resume"]) == 0
    assert_same_run(root, reference)


def test_killed_during_set_up_is_finished_on_resume(project, reference, monkeypatch):
    from blocks.experiment import Experiment

    def killed(self, folder):
        raise Interrupt

    monkeypatch.setattr(Experiment, "save_vocabularies", killed)
    with pytest.raises(Interrupt):
        run(project, tiny(project), "b")
    monkeypatch.undo()
    root = project.root / "b"
    assert (root / "config.json").is_file() and not (root / "vocab").exists() and not (root / "setup.json").exists()
    run(project, tiny(project), "b", resume=True)
    assert (root / "vocab" / "words.txt").is_file()
    assert_same_run(root, reference)


# -- validation before anything is written ----------------------------------------------------------


def test_a_later_stage_is_validated_before_the_first_trains(project, monkeypatch):
    trained = []
    monkeypatch.setattr(StageTrainer, "run", lambda self, resume: trained.append(self.stage_index))
    values = tiny(project)
    values["stages"][1]["teachers"] = []  # KD without a teacher
    with pytest.raises(ConfigError) as caught:
        run(project, values, "b")
    assert caught.value.file == str(project.root / "config.json")
    assert caught.value.path.startswith("/stages/1/losses/0")
    assert trained == [] and not (project.root / "b").exists()


def test_a_config_fixed_after_a_failing_stage_continues_from_the_finished_ones(project, reference, monkeypatch):
    values = tiny(project)
    values["stages"][1]["optimizer"]["lr"] = 1e30  # valid, but the loss becomes NaN
    with pytest.raises(Exception, match="the loss became NaN"):
        run(project, values, "b")
    teacher_runs = []
    original = StageTrainer.run
    monkeypatch.setattr(StageTrainer, "run", lambda self, resume: (teacher_runs.append(self.stage["name"]),
                                                                   original(self, resume))[1])
    messages = []
    run(project, tiny(project), "b", resume=True, log=messages.append)
    assert teacher_runs == ["distill"]
    assert any("continuing after teacher; starting over: distill" in m for m in messages)
    assert_same_run(project.root / "b", reference)
    saved = json.loads((project.root / "b" / "config.json").read_text())
    assert saved["stages"][1]["optimizer"]["lr"] == 0.05


def test_a_finished_stage_must_not_change_on_resume(project, monkeypatch):
    values = tiny(project)
    restore = interrupt_metrics(monkeypatch, lambda r: r["stage"] == "distill")
    with pytest.raises(Interrupt):
        run(project, values, "b")
    restore()
    with pytest.raises(ConfigError) as caught:
        run(project, values, "b", resume=True, overrides=["stages.0.batch_size=8"])
    assert caught.value.path == "/stages/0/batch_size"
    with pytest.raises(ConfigError) as caught:
        run(project, values, "b", resume=True, overrides=["models.teacher.graph.0.dim=4"])
    assert caught.value.path == "/models/teacher/graph/0/dim"


@pytest.mark.parametrize("kind", ["file", "under-a-file"])
def test_run_dir_that_is_a_file_or_under_one(project, capsys, kind):
    target = project.root / "taken"
    target.write_text("not a folder")
    run_dir = target if kind == "file" else target / "run"
    path = project.write(tiny(project))
    assert main(["train", str(path), "--run-dir", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: /run_dir: the run directory {run_dir} ")
    assert ("is a file" if kind == "file" else f"is inside {target}, which is a file") in err


# -- one process per run ---------------------------------------------------------------------------


def test_a_second_process_is_refused_with_the_holder_named_and_a_dead_holder_is_taken_over(project):
    values = tiny(project)
    values["stages"] = values["stages"][:1]
    run(project, values, "b")
    directory = RunDir(project.root / "b")
    with directory.lock():  # as another process would hold it (an flock per open file)
        with pytest.raises(CheckpointError) as caught:
            run(project, values, "b", resume=True)
        assert f"the run is in use by process {os.getpid()} on " in caught.value.message
        assert caught.value.file == str(directory.root)
    # what a killed holder leaves: its line in .lock, but no flock
    directory.lock_file.write_text("process 999999999 on elsewhere since 2020-01-01 00:00:00\n")
    run(project, values, "b", resume=True)
    assert directory.lock_file.read_text().startswith(f"process {os.getpid()} on ")


def test_clean_skips_a_run_in_use_and_deletes_partial_files(project, capsys):
    values = tiny(project)
    values["stages"] = values["stages"][:1]
    run(project, values, "b")
    directory = RunDir(project.root / "b")
    temporary = directory.root / "models" / ".teacher.safetensors.x1y2.tmp"
    temporary.write_bytes(b"partial")
    with directory.lock():
        assert main(["clean", str(directory.root)]) == 0
        assert f"skipped {directory.root}: the run is in use by process {os.getpid()}" in capsys.readouterr().out
        assert temporary.exists()
    assert main(["clean", str(directory.root), "--dry-run"]) == 0
    assert f"delete {temporary}" in capsys.readouterr().out and temporary.exists()
    assert main(["clean", str(directory.root)]) == 0
    assert not temporary.exists()


# -- damaged run directories -----------------------------------------------------------------------


def command(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err


def test_truncated_vocabulary_is_named(run_copy, capsys):
    vocab = run_copy / "vocab" / "words.txt"
    vocab.write_text("\n".join(vocab.read_text().splitlines()[:5]) + "\n")
    code, err = command(capsys, "test", run_copy)
    assert code == 2
    assert err.startswith(f"error: {vocab}: the vocabulary file is truncated or was changed since the run wrote it")


def test_missing_or_corrupt_task_file(run_copy, capsys):
    task = run_copy / "task.json"
    task.write_text('{"type": "classification", "labels": ["0", "1"')
    code, err = command(capsys, "test", run_copy)
    assert code == 2 and err.startswith(f"error: {task}: the file is truncated or was changed")
    task.unlink()
    code, err = command(capsys, "predict", run_copy, "--input", "-")
    assert code == 2 and err.startswith(f"error: {task}: missing from the run directory")


@pytest.mark.parametrize("content, message", [
    ("{not json", "is corrupt (line 1, column 2"),
    ("[]", "is corrupt: a list instead of an object"),
    ('{"completed_stages": "teacher", "models": {}}', "is corrupt: \"completed_stages\" is not a list"),
    ('{"completed_stages": [], "models": ["teacher"]}', "is corrupt: \"models\" is not an object"),
])
def test_corrupt_or_wrong_typed_progress_file(run_copy, capsys, content, message):
    progress = run_copy / "progress.json"
    progress.write_text(content)
    code, err = command(capsys, "test", run_copy)
    assert code == 2 and err.startswith(f"error: {progress}: {message}")
    config = run_copy / "config.json"
    code, err = command(capsys, "train", config, "--run-dir", run_copy, "--resume", "--no-progress")
    assert code == 2 and err.startswith(f"error: {progress}: {message}")


def test_a_flipped_byte_in_a_checkpoint_is_refused_on_resume(project, monkeypatch, capsys):
    values = tiny(project)
    restore = interrupt_metrics(monkeypatch, lambda r: r["stage"] == "teacher" and r["step"] == 5)
    with pytest.raises(Interrupt):
        run(project, values, "b")
    restore()
    last = project.root / "b" / "stages" / "teacher" / "last.safetensors"
    data = bytearray(last.read_bytes())
    data[-3] ^= 0x10
    last.write_bytes(bytes(data))
    code, err = command(capsys, "train", project.root / "config.json", "--run-dir", project.root / "b", "--resume",
                        "--no-progress")
    assert code == 2 and err.startswith(f"error: {last}: the checkpoint is corrupt: its contents do not match")


# -- nothing in a run directory is executed or unpickled ---------------------------------------------


class Marker:
    """Unpickling this object creates a file: proof that a pickle was loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickled_file_in_place_of_a_checkpoint_is_refused_unread(run_copy, tmp_path, capsys):
    marker = tmp_path / "unpickled"
    weights = run_copy / "models" / "student.safetensors"
    torch.save({"model": Marker(str(marker))}, weights)  # what torch.save writes: a zip of pickles
    code, err = command(capsys, "test", run_copy)
    assert code == 2 and err.startswith(f"error: {weights}: the checkpoint is truncated or corrupt")
    assert not marker.exists()


def test_test_and_predict_never_unpickle(run_copy, project, capsys, monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    code, _ = command(capsys, "test", run_copy)
    assert code == 0
    code, _ = command(capsys, "predict", run_copy, "--input", project.data / "dev.tsv")
    assert code == 0


# -- a real kill -9 ------------------------------------------------------------------------------------

KILLED_RUN = '''
import os, signal, sys
from blocks.engine import checkpoint

replace = os.replace
calls = []


def die_before_rename(source, target):  # the second checkpoint of the distillation stage
    if str(target).endswith(os.path.join("distill", "last.safetensors")):
        calls.append(target)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return replace(source, target)


checkpoint.os.replace = die_before_rename
from blocks.cli import main
sys.exit(main(["train", sys.argv[1], "--run-dir", sys.argv[2], "--no-progress"]))
'''


def test_a_run_killed_by_sigkill_resumes_to_the_same_result(project, reference):
    """A real kill -9 between a checkpoint's temporary file and its rename (so also after log
    lines the checkpoint had not seen, with the lock still on file)."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    script = project.root / "killed_run.py"
    script.write_text(KILLED_RUN)
    root = project.root / "b"
    repository = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "PYTHONPATH": str(repository), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), str(project.write(tiny(project))), str(root)],
                          env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert (root / ".lock").is_file() and not (root / "summary.json").exists()
    assert list((root / "stages" / "distill").glob(".last.safetensors.*.tmp"))
    run(project, tiny(project), "b", resume=True)  # the dead process's lock is taken over
    assert not list(root.rglob("*.tmp"))
    assert_same_run(root, reference)


def test_the_guarantees_page_names_only_tests_that_exist():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent
    page = (root.parent / "docs" / "guarantees.md").read_text(encoding="utf-8")
    named = re.findall(r"`([\w/]+\.py)::(test_\w+)`", page)
    assert len(named) >= 20
    for file, test in named:
        assert re.search(rf"^def {test}\(", (root / file).read_text(encoding="utf-8"), re.M), f"{file}::{test}"


def test_a_fixed_unfinished_model_may_read_a_new_vocabulary(project, capsys):
    values = tiny(project)
    values["stages"][1]["optimizer"]["lr"] = 1e30
    with pytest.raises(Exception, match="the loss became NaN"):
        run(project, values, "b")
    fixed = ["models.student.inputs.tokens.vocab=student_words", "models.student.graph.0.dim=6"]
    run(project, tiny(project), "b", resume=True, overrides=fixed)
    root = project.root / "b"
    assert (root / "vocab" / "student_words.txt").is_file()
    assert "vocab/student_words.txt" in json.loads((root / "setup.json").read_text())["files"]
    assert main(["test", str(root)]) == 0
    assert '"student"' in capsys.readouterr().out

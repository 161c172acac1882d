"""Multi-process training (torchrun, DistributedDataParallel on gloo) and its batch arithmetic."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from blocks.config.loader import load_config
from blocks.engine.checkpoint import load_checkpoint
from blocks.engine.distributed import Distributed, batches_per_epoch, epoch_slices
from blocks.engine.run import train
from blocks.engine.run_dir import RunDir
from blocks.engine.trainer import StageTrainer
from blocks.errors import CheckpointError, TrainingError


def quiet(*args, **kwargs):
    pass


def gloo_missing() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_gloo_available())


# -- the share of each rank -------------------------------------------------------------------
def test_every_rank_takes_an_equal_slice_of_each_global_batch():
    batches = [torch.arange(0, 8), torch.arange(8, 16), torch.arange(16, 21)]  # the last one is ragged
    shares = [epoch_slices(batches, Distributed(rank=r, world_size=2)) for r in range(2)]
    assert [b.tolist() for b in shares[0]] == [[0, 1, 2, 3], [8, 9, 10, 11], [16, 17]]
    assert [b.tolist() for b in shares[1]] == [[4, 5, 6, 7], [12, 13, 14, 15], [18, 19]]  # 20 left out
    three = [epoch_slices([torch.arange(2)], Distributed(rank=r, world_size=3)) for r in range(3)]
    assert three == [[], [], []]  # fewer examples than ranks: the batch is skipped on every rank
    assert epoch_slices(batches, Distributed()) is batches
    assert batches_per_epoch(120, 8, 2) == 8 and batches_per_epoch(114, 8, 2) == 8
    assert batches_per_epoch(113, 8, 2) == 7 and batches_per_epoch(113, 16, 1) == 8


class OtherRankSawNaN(Distributed):
    """A two-rank group in which the other rank's loss became NaN (no process group needed)."""

    def all_sum(self, tensor):
        tensor[0] += 1.0
        tensor[1] += 1.0
        return tensor


def test_a_nan_on_any_rank_stops_every_rank_and_resume_needs_the_same_process_count(project):
    experiment = project.prepare(project.single_stage())
    trainer = StageTrainer(experiment, 0, RunDir(project.root / "run"), torch.device("cpu"), log=quiet,
                           progress=False, dist=OtherRankSawNaN(rank=1, world_size=2))
    running = torch.tensor(2.0)
    with pytest.raises(TrainingError, match="the loss became NaN or infinite"):
        trainer._check_finite(running, 1, torch.tensor(False))

    single = StageTrainer(experiment, 0, RunDir(project.root / "run"), torch.device("cpu"), log=quiet,
                          progress=False)
    single._prepare()
    single.save()
    trainer.optimizer, trainer.schedule, trainer.scaler = single.optimizer, single.schedule, None
    with pytest.raises(CheckpointError, match="was written by a run of 1 process"):
        trainer.restore()


def test_sparse_embeddings_are_refused_under_several_processes(project):
    values = project.single_stage()
    values["models"]["teacher"]["graph"][0]["sparse"] = True
    experiment = project.prepare(values)
    trainer = StageTrainer(experiment, 0, RunDir(project.root / "run"), torch.device("cpu"), log=quiet,
                           progress=False, dist=Distributed(rank=0, world_size=2))
    with pytest.raises(TrainingError, match="/stages/0: model 'teacher' has an Embedding with 'sparse': true"):
        trainer._prepare()


# -- two processes ----------------------------------------------------------------------------
# Runs `blocks train ARGS` in each process as `torchrun ... -m blocks train ARGS` does, with every
# rank stopping (KeyboardInterrupt) at its INTERRUPT_AT-th evaluation, then `blocks train ARGS
# --resume` in the same processes (the process group is set up and torn down by each `train`).
# Records every file a process opens for writing, creates, renames or removes in the run directory.
LAUNCHER = textwrap.dedent('''
    import atexit, builtins, io, json, os, sys
    rank = int(os.environ["RANK"])
    run_dir = os.path.realpath(sys.argv[sys.argv.index("--run-dir") + 1])
    writes = []

    def inside(path):
        try:
            return os.path.realpath(os.fspath(path)).startswith(run_dir)
        except TypeError:
            return False

    def watch(name, module, is_write, target=0):
        original = getattr(module, name)
        def wrapper(*args, **kwargs):
            if len(args) > target and inside(args[target]) and is_write(*args, **kwargs):
                writes.append([name, os.path.relpath(os.path.realpath(os.fspath(args[target])), run_dir)])
            return original(*args, **kwargs)
        setattr(module, name, wrapper)

    def write_mode(path, mode="r", *args, **kwargs):
        return any(c in mode for c in "wax+")

    def write_flags(path, flags, *args, **kwargs):
        return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))

    always = lambda *args, **kwargs: True
    watch("open", builtins, write_mode)
    watch("open", io, write_mode)
    watch("open", os, write_flags)
    for name in ("replace", "rename"):
        watch(name, os, always, target=1)
    for name in ("mkdir", "makedirs", "remove", "unlink", "rmdir"):
        watch(name, os, always)
    atexit.register(lambda: open(os.environ["WRITES"] + f"-rank{rank}.json", "w").write(json.dumps(writes)))

    from blocks.cli import main
    from blocks.engine.trainer import StageTrainer

    original = StageTrainer._evaluate_and_save
    calls = {"n": 0}
    def interrupting(self, bar):
        calls["n"] += 1
        if calls["n"] == int(os.environ["INTERRUPT_AT"]):
            raise KeyboardInterrupt
        return original(self, bar)
    StageTrainer._evaluate_and_save = interrupting
    assert main(sys.argv[1:]) == 130
    StageTrainer._evaluate_and_save = original
    print("-- resuming --", flush=True)
    sys.exit(main(sys.argv[1:] + ["--resume"]))
''')


def events(root):
    lines = (root / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("time", "loss", "metrics")} for line in lines]


@pytest.mark.skipif(gloo_missing(), reason="torch.distributed with the gloo backend is not available")
def test_two_processes_match_one_with_twice_the_batch_through_an_interrupt_and_resume(project):
    """torchrun, 2 ranks x batch 8, interrupted in the distillation stage and resumed, ends where
    1 process x batch 16 does, up to float reduction order; only rank 0 writes.

    Observed on CPU (torch 2.13, gloo): dev and test metrics identical, weights within 3e-7 of the
    one-process run; the test allows 1e-4.
    """
    values = project.config()
    values["device"] = "cpu"  # gloo; CUDA runs one process per GPU
    for stage in values["stages"]:
        stage["batch_size"] = 16
    reference = train(load_config(project.write(values, "one.json"), environ={}), run_dir=project.root / "one",
                      progress=False, log=quiet)
    for stage in values["stages"]:
        stage["batch_size"] = 8
    config = project.write(values, "two.json")
    launcher = project.root / "launch.py"
    launcher.write_text(LAUNCHER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path),
           "INTERRUPT_AT": "4",  # the second evaluation of 'distill' (the teacher stage has two)
           "WRITES": str(project.root / "writes")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(launcher), "train", str(config), "--run-dir", "two", "--no-progress"]
    try:
        done = subprocess.run(command, cwd=project.root, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as late:
        pytest.fail(f"torchrun did not finish in {late.timeout} s:\n{late.stdout}\n{late.stderr}")
    assert done.returncode == 0, done.stdout + done.stderr

    first, second = done.stdout.split("-- resuming --\n")[0], done.stdout.split("-- resuming --\n")[-1]
    assert done.stderr.count("interrupted; continue with `blocks train CONFIG --resume`") == 2, done.stderr
    assert first.count("run directory: two  device: cpu  processes: 2 (gloo)") == 1, first  # rank 0 logs
    assert first.count("building teacher cache of teacher.logits") == 1, first
    assert second.count("stage 'distill': training 'student' with teacher(s) teacher, 16 steps, resuming at "
                        "step 8, 2 processes") == 1, second
    assert "teacher cache: reusing" in second and "results (cpu)" in second

    rank0 = {path for _, path in json.loads((project.root / "writes-rank0.json").read_text())}
    assert {"config.json", "vocab/words.txt", "metrics.jsonl", "models/teacher.safetensors", "summary.json",
            "stages/distill/last.safetensors", "models/student.safetensors"} <= rank0
    assert any(path.startswith("cache/") for path in rank0)
    assert json.loads((project.root / "writes-rank1.json").read_text()) == []  # rank 1 wrote nothing

    root = project.root / "two"
    summary = json.loads((root / "summary.json").read_text())
    for model in ("teacher", "student"):
        assert summary["models"][model]["dev"] == reference["models"][model]["dev"]
        assert summary["models"][model]["test"] == reference["models"][model]["test"]
        a, _ = load_checkpoint(project.root / "one" / "models" / f"{model}.safetensors")
        b, _ = load_checkpoint(root / "models" / f"{model}.safetensors")
        difference = max((a[k] - b[k]).abs().max().item() for k in a)
        assert difference < 1e-4, (model, difference)
    assert summary["stages"]["distill"]["processes"] == 2
    assert events(root) == events(project.root / "one")  # each step and evaluation logged once
    state = json.loads((root / "stages" / "distill" / "state.json").read_text())
    assert state["world_size"] == 2 and state["position"]["step"] == 16

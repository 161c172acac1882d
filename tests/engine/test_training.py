"""Whole runs on a tiny dataset: the run directory, frozen teachers, early stopping, resume, accumulation."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from blocks.cli import main
from blocks.config.loader import load_config
from blocks.engine.checkpoint import load_checkpoint
from blocks.engine.run import train
from blocks.engine.trainer import StageTrainer
from blocks.errors import CheckpointError, ConfigError
from tests.conftest import TEST_DEVICE, interrupt_on_call


def quiet(*args, **kwargs):
    pass


def run(project, values, run_dir="run", resume=False, name="config.json", log=quiet):
    config = load_config(project.write(values, name), environ={})
    return train(config, run_dir=project.root / run_dir, resume=resume, progress=False, log=log)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def weights(path):
    tensors, _ = load_checkpoint(path)
    return {k: v.clone() for k, v in tensors.items()}


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_two_stage_run_writes_everything_and_keeps_the_teacher_frozen(project, monkeypatch):
    snapshots = {}
    original = StageTrainer.run

    def watched(self, resume):
        if self.stage_index == 1:
            teacher = self.experiment.models["teacher"]
            snapshots["before"] = {k: v.clone() for k, v in teacher.state_dict().items()}
            result = original(self, resume)
            snapshots["after"] = {k: v.clone() for k, v in teacher.state_dict().items()}
            snapshots["requires_grad"] = [p.requires_grad for p in teacher.parameters()]
            snapshots["training"] = teacher.training
            return result
        return original(self, resume)

    monkeypatch.setattr(StageTrainer, "run", watched)
    summary = run(project, project.config())
    root = project.root / "run"

    for name in ("config.json", "task.json", "environment.json", "progress.json", "metrics.jsonl",
                 "summary.json", "vocab/words.txt", "models/teacher.safetensors", "models/student.safetensors",
                 "stages/teacher/state.json", "stages/distill/state.json"):
        assert (root / name).is_file(), name
    # a completed stage's resumable state is deleted once its best weights are in models/
    assert not list((root / "stages").rglob("*.safetensors"))

    environment = json.loads((root / "environment.json").read_text())
    assert environment["device"] == TEST_DEVICE and environment["host_memory"]  # what the allocator does
    saved = json.loads((root / "config.json").read_text())
    assert saved["run_dir"] == str(root)
    assert saved["stages"][0]["eval_batch_size"] == 256  # the resolved config, defaults filled
    assert saved["data"]["root"] == str(project.root / "data")
    assert json.loads((root / "task.json").read_text()) == {"type": "classification", "labels": ["0", "1"],
                                                            "positive": 1}
    words = (root / "vocab" / "words.txt").read_text().split("\n")
    assert {"good", "bad", "movie"} <= set(words)
    assert json.loads((root / "progress.json").read_text())["completed_stages"] == ["teacher", "distill"]

    events = read_jsonl(root / "metrics.jsonl")
    evals = [e for e in events if e["event"] == "eval"]
    assert {e["stage"] for e in evals} == {"teacher", "distill"}
    assert all(set(e["metrics"]) == {"accuracy", "f1"} and e["split"] == "dev" for e in evals)
    # eval_every 0: once per epoch, 8 steps an epoch (120 examples, batch 16)
    assert [e["step"] for e in evals if e["stage"] == "teacher"] == [8, 16]

    assert json.loads((root / "summary.json").read_text()) == summary
    models = summary["models"]
    assert models["teacher"]["role"] == "teacher" and models["student"]["role"] == "student"
    assert models["teacher"]["parameters"] > models["student"]["parameters"] > 0
    for entry in models.values():
        assert set(entry["dev"]) == {"accuracy", "f1"} and set(entry["test"]) == {"accuracy", "f1"}
        assert entry["dev"]["accuracy"] >= 0.8  # the words separate the classes
        assert entry["examples_per_second_batch64"] > 0
    assert "speedup_vs_teacher" in models["student"] and "compression_vs_teacher" in models["student"]
    assert summary["stages"]["teacher"]["steps"] == 16 and summary["stages"]["distill"]["steps"] == 16

    # the teacher did not change while it taught, and took no gradients
    assert_same_tensors(snapshots["before"], snapshots["after"])
    assert snapshots["requires_grad"] and not any(snapshots["requires_grad"])
    assert snapshots["training"] is False
    assert_same_tensors(weights(root / "models" / "teacher.safetensors"), snapshots["after"])


def test_keep_checkpoints_keeps_each_stage_state_and_models_hold_the_best_checkpoint(project):
    values = project.config()
    values["keep_checkpoints"] = True
    run(project, values)
    root = project.root / "run"
    for stage in ("teacher", "distill"):
        for name in ("last.safetensors", "best.safetensors", "state.json"):
            assert (root / "stages" / stage / name).is_file(), (stage, name)
    # the published student weights are the best checkpoint's
    best, state = load_checkpoint(root / "stages" / "distill" / "best.safetensors")
    student = weights(root / "models" / "student.safetensors")
    assert_same_tensors(student, {k[len("model/"):]: v for k, v in best.items() if k.startswith("model/")})
    assert state["step"] == json.loads((root / "summary.json").read_text())["stages"]["distill"]["best_step"]


def test_early_stopping_stops_before_the_last_epoch(project):
    values = project.single_stage()
    values["stages"][0].update(epochs=10, early_stopping=1, optimizer={"type": "adam", "lr": 1e-9})
    summary = run(project, values)
    state = json.loads((project.root / "run" / "stages" / "teacher" / "state.json").read_text())
    history = state["position"]["history"]
    assert len(history) == 2 < 10
    assert history[0]["accuracy"] == history[1]["accuracy"]
    assert state["position"]["finished"] is True
    assert summary["stages"]["teacher"]["steps"] == 16
    assert summary["stages"]["teacher"]["best_step"] == 8


def test_max_steps_limits_training(project):
    values = project.single_stage()
    values["stages"][0].update(max_steps=5, eval_every=2)
    summary = run(project, values)
    evals = [e for e in read_jsonl(project.root / "run" / "metrics.jsonl") if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [2, 4, 5]
    assert summary["stages"]["teacher"]["steps"] == 5


@pytest.mark.parametrize("epochs, steps, eval_steps", [(0.5, 4, [4]), (1.5, 12, [8, 12]), (0.01, 1, [1])])
def test_fractional_epochs_stop_partway_through_the_last_pass(project, epochs, steps, eval_steps):
    values = project.single_stage()
    values["stages"][0].update(epochs=epochs, eval_every=0)  # 8 batches of 16 per epoch
    summary = run(project, values)
    evals = [e for e in read_jsonl(project.root / "run" / "metrics.jsonl") if e["event"] == "eval"]
    assert [e["step"] for e in evals] == eval_steps  # each finished epoch, then where the stage stops
    assert summary["stages"]["teacher"]["steps"] == steps


def test_gradient_accumulation(project):
    values = project.single_stage()
    values["stages"][0].update(epochs=1, accumulate=2, log_every=1)
    summary = run(project, values)
    train_events = [e for e in read_jsonl(project.root / "run" / "metrics.jsonl") if e["event"] == "train"]
    # 8 batches of 16, two per optimizer step
    assert [e["step"] for e in train_events] == [1, 2, 3, 4]
    assert all(math.isfinite(e["loss"]) for e in train_events)
    assert summary["stages"]["teacher"]["steps"] == 4
    assert summary["models"]["teacher"]["dev"]["accuracy"] > 0.5


@pytest.mark.parametrize("eval_every, call, resumed, sparse", [
    (3, 2, "stage 'teacher': training 'teacher', 16 steps, resuming at step 3", False),  # in the middle of epoch 1
    (4, 3, "stage 'teacher': training 'teacher', 16 steps, resuming at step 8", False),  # at the end of epoch 1
    # in the distillation stage: the teacher comes back from models/teacher.safetensors
    (3, 9, "stage 'distill': training 'student' with teacher(s) teacher, 16 steps, resuming at step 6", False),
    # sparse embeddings: Adam + SparseAdam, their two states in the checkpoint, clipping sparse gradients
    (3, 9, "stage 'distill': training 'student' with teacher(s) teacher, 16 steps, resuming at step 6", True),
], ids=["teacher-mid-epoch", "teacher-epoch-end", "distill", "distill-sparse-embeddings"])
def test_resume_after_an_interrupt_gives_the_same_result(project, monkeypatch, eval_every, call, resumed, sparse):
    values = project.config()
    values["keep_checkpoints"] = True  # to compare the final optimizer states below
    for stage in values["stages"]:
        stage["eval_every"] = eval_every
        stage["log_every"] = 1
        if sparse:
            stage["grad_clip"] = 0.5
    if sparse:
        for model in values["models"].values():
            model["graph"][0]["sparse"] = True
    values["stages"][0]["optimizer"]["lr"] = 0.01
    summary_a = run(project, values, run_dir="a")

    original = interrupt_on_call(monkeypatch, call)
    with pytest.raises(KeyboardInterrupt):
        run(project, values, run_dir="b")
    root_b = project.root / "b"
    assert not (root_b / "summary.json").exists()
    monkeypatch.setattr(StageTrainer, "_evaluate_and_save", original)
    steps = {"n": 0}
    step = StageTrainer._optimizer_step

    def counting(self):
        steps["n"] += 1
        return step(self)

    monkeypatch.setattr(StageTrainer, "_optimizer_step", counting)
    messages = []
    summary_b = run(project, values, run_dir="b", resume=True, log=messages.append)
    assert resumed in messages
    # the resumed run took only the steps after the checkpoint (two stages of 16 steps in all)
    done_before = int(resumed.rsplit(" ", 1)[1]) + (16 if "distill" in resumed else 0)
    assert steps["n"] == 32 - done_before
    if "distill" in resumed:
        assert not any(m.startswith("stage 'teacher': training") for m in messages)

    for model in ("teacher", "student"):
        assert summary_b["models"][model]["dev"] == summary_a["models"][model]["dev"]
        assert_same_tensors(weights(project.root / "a" / "models" / f"{model}.safetensors"),
                            weights(root_b / "models" / f"{model}.safetensors"))
    # the metrics log reads as if the run had never stopped: no step logged twice, same losses
    def events(root):
        lines = (root / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]

    assert events(root_b) == events(project.root / "a")
    for stage in ("teacher", "distill"):
        state_a = json.loads((project.root / "a" / "stages" / stage / "state.json").read_text())
        state_b = json.loads((root_b / "stages" / stage / "state.json").read_text())
        assert state_a["position"]["history"] == state_b["position"]["history"]
        assert state_a["position"]["step"] == state_b["position"]["step"]
        a_last, _ = load_checkpoint(project.root / "a" / "stages" / stage / "last.safetensors")
        b_last, _ = load_checkpoint(root_b / "stages" / stage / "last.safetensors")
        assert_same_tensors({k: v for k, v in a_last.items() if not k.startswith("rng/")},
                            {k: v for k, v in b_last.items() if not k.startswith("rng/")})
        # with sparse embeddings the checkpoint holds SparseAdam's moments next to Adam's
        assert any("sparse.state" in k for k in a_last) == sparse, sorted(a_last)[:8]


def test_resume_of_a_finished_run_trains_nothing(run_copy):
    before = weights(run_copy / "models" / "student.safetensors")
    config = load_config(run_copy / "config.json", environ={})
    summary = train(config, run_dir=run_copy, resume=True, progress=False, log=quiet)
    assert set(summary["models"]) == {"teacher", "student"}
    assert_same_tensors(before, weights(run_copy / "models" / "student.safetensors"))


def test_resume_with_a_changed_config_is_refused(run_copy):
    with pytest.raises(ConfigError) as caught:
        config = load_config(run_copy / "config.json", ["stages.1.epochs=3"], environ={})
        train(config, run_dir=run_copy, resume=True, progress=False, log=quiet)
    assert caught.value.path == "/stages/1/epochs"
    assert "the config differs from the one the run" in caught.value.message


def test_resume_without_a_run_is_refused(project):
    with pytest.raises(CheckpointError, match="there is no run here to resume"):
        run(project, project.config(), run_dir="nothing", resume=True)


def test_set_in_train_command(project, capsys):
    path = project.write(project.single_stage())
    code = main(["train", str(path), "--run-dir", str(project.root / "cli_run"), "--no-progress",
                 "--set", "stages.0.epochs=1", "--set", "/stages/0/batch_size=40"])
    assert code == 0
    root = project.root / "cli_run"
    saved = json.loads((root / "config.json").read_text())
    assert saved["stages"][0]["epochs"] == 1 and saved["stages"][0]["batch_size"] == 40
    summary = json.loads((root / "summary.json").read_text())
    assert summary["stages"]["teacher"]["steps"] == 3  # 120 examples / 40
    out = capsys.readouterr().out
    assert "stage 'teacher' done" in out and f"results ({TEST_DEVICE})" in out


def test_interrupt_and_resume_through_the_command_line(project, capsys, monkeypatch):
    import shutil

    values = project.single_stage()
    values["stages"][0].update(eval_every=4, epochs=1)
    path = project.write(values)
    run_dir = project.root / "cli_run"
    original = interrupt_on_call(monkeypatch, 2)
    assert main(["train", str(path), "--run-dir", str(run_dir), "--no-progress"]) == 130
    assert "interrupted; continue with `blocks train CONFIG --resume`" in capsys.readouterr().err
    monkeypatch.setattr(StageTrainer, "_evaluate_and_save", original)

    assert main(["test", str(run_dir)]) == 2
    assert f"error: {run_dir}: no model has finished training in this run" in capsys.readouterr().err

    broken = project.root / "broken_run"
    shutil.copytree(run_dir, broken)
    last = broken / "stages" / "teacher" / "last.safetensors"
    last.write_bytes(last.read_bytes()[:100])
    assert main(["train", str(path), "--run-dir", str(broken), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {last}: the checkpoint is truncated or corrupt") and "Traceback" not in err

    assert main(["train", str(path), "--run-dir", str(run_dir), "--resume", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resuming at step 4" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stages"]["teacher"]["steps"] == 8


def test_default_run_directories_never_overwrite_and_resume_takes_the_newest(project):
    from blocks.engine.run import default_run_dir

    config = project.load(project.single_stage())
    first = default_run_dir(config, resume=False)
    assert first == Path("runs") / "config"
    train(config, progress=False, log=quiet)
    assert (project.root / "runs" / "config" / "summary.json").is_file()
    second = default_run_dir(config, resume=False)
    assert second == Path("runs") / "config-2"
    train(config, progress=False, log=quiet)
    assert (project.root / "runs" / "config-2" / "summary.json").is_file()
    assert default_run_dir(config, resume=True) == Path("runs") / "config-2"
    assert default_run_dir(config, resume=False) == Path("runs") / "config-3"


def test_selection_metric_outside_the_task_metrics_is_evaluated_too(project):
    values = project.single_stage()
    values["task"]["metrics"] = ["accuracy"]
    values["stages"][0]["select"] = "macro_f1"
    summary = run(project, values)
    history = json.loads((project.root / "run" / "stages" / "teacher" / "state.json").read_text())["position"]["history"]
    assert all({"accuracy", "macro_f1"} <= set(entry) for entry in history)
    assert summary["stages"]["teacher"]["select"] == "macro_f1"


def test_selection_by_an_unknown_metric_is_a_config_error(project, capsys):
    values = project.single_stage()
    values["stages"][0]["select"] = "loss"
    assert main(["validate", str(project.write(values))]) == 2
    assert "/stages/0/select" in capsys.readouterr().err


def test_regression_task_trains_with_mse_and_reports_correlations(project, capsys):
    values = project.single_stage()
    values["task"] = {"type": "regression"}
    values["stages"][0]["losses"] = [{"block": "MSE"}]
    values["stages"][0]["epochs"] = 4
    summary = run(project, values)
    dev = summary["models"]["teacher"]["dev"]
    assert set(dev) == {"pearson", "spearman", "mse"}
    assert dev["pearson"] > 0.8  # the tiny data is separable
    assert json.loads((project.root / "run" / "task.json").read_text())["type"] == "regression"

    values["task"]["metrics"] = ["pearson", "accuracy"]
    assert main(["validate", str(project.write(values, "bad.json"))]) == 2
    err = capsys.readouterr().err
    assert "/task/metrics/1" in err and "needs a classification task" in err

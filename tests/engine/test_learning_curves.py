"""Learning curves: the TensorBoard events and the plots a run writes from its metrics records."""
import json

import pytest

from blocks.engine import tensorboard as tensorboard_module
from blocks.engine.plots import panels_figure, read_records, stage_panels, write_stage_plots
from blocks.engine.tensorboard import TensorBoardLog, record_scalars
from tests.conftest import interrupt_on_call, quiet

TRAIN = {"event": "train", "stage": "distill", "step": 10, "epoch": 0, "loss": 0.5, "lr": 1e-3, "time": 1.0}
EVAL = {"event": "eval", "stage": "distill", "model": "student", "split": "dev", "step": 20, "epoch": 1,
        "metrics": {"accuracy": 0.75, "f1": 0.7}, "teacher_weights": {"t1": 0.25, "t2": 0.75},
        "annealing_temperature": 3.0, "time": 2.0}


def test_every_number_of_a_record_gets_a_tag():
    assert record_scalars(TRAIN) == {"train/loss": 0.5, "train/lr": 1e-3}
    assert record_scalars(EVAL) == {"dev/accuracy": 0.75, "dev/f1": 0.7, "teacher_weights/t1": 0.25,
                                    "teacher_weights/t2": 0.75, "annealing_temperature": 3.0}
    assert record_scalars({"event": "other", "stage": "x", "step": 1, "loss": 1.0}) == {}


def scalars_in(folder) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard itself reads from the event files of ``folder`` (after its purges)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: [(event.step, round(event.value, 4)) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def test_tensorboard_events_and_resume(tmp_path):
    pytest.importorskip("tensorboard")
    log = TensorBoardLog(tmp_path / "tb")
    for step in (1, 2, 3, 4):
        log.write({**TRAIN, "step": step, "loss": float(step)})
    log.write(EVAL)
    log.close()
    read = scalars_in(tmp_path / "tb" / "distill")
    assert read["train/loss"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]
    assert read["teacher_weights/t2"] == [(20, 0.75)] and read["dev/accuracy"] == [(20, 0.75)]
    # resumed from the checkpoint at step 2: steps 3 and 4 are written again, with other values
    log = TensorBoardLog(tmp_path / "tb")
    log.forget_after("distill", 2)
    for step in (3, 4):
        log.write({**TRAIN, "step": step, "loss": 10.0 * step})
    log.close()
    assert scalars_in(tmp_path / "tb" / "distill")["train/loss"] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_without_tensorboard_nothing_is_written_and_nothing_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(tensorboard_module, "tensorboard_installed", lambda: False)
    log = TensorBoardLog(tmp_path / "tb")
    log.write(TRAIN)
    log.forget_after("distill", 5)
    log.close()
    assert not (tmp_path / "tb").exists()


def test_a_tensorboard_that_cannot_be_imported_warns_once_and_does_not_fail(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def failing(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise ImportError("TensorBoard logging requires TensorBoard version 1.15 or above")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(tensorboard_module, "tensorboard_installed", lambda: True)
    monkeypatch.setattr(builtins, "__import__", failing)
    log = TensorBoardLog(tmp_path / "tb")
    with pytest.warns(UserWarning, match="TensorBoard events are not written"):
        log.write(TRAIN)
    log.write(EVAL)  # no second warning, no error
    assert not log.enabled and not (tmp_path / "tb").exists()


def test_panels_and_plots_from_a_metrics_file(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    records = [{**TRAIN, "step": s, "loss": 1.0 / s} for s in (10, 20)] + [EVAL, {**EVAL, "step": 40}]
    other_stage = {**TRAIN, "stage": "teacher"}
    metrics.write_text("".join(json.dumps(r) + "\n" for r in [other_stage, *records]) + '{"cut short', "utf-8")
    panels = stage_panels(read_records(metrics, "distill"))
    assert set(panels) == {"train/loss", "train/lr", "dev", "teacher_weights", "annealing_temperature"}
    assert panels["train/loss"] == {"loss": [(10, 0.1), (20, 0.05)]}
    assert panels["dev"]["f1"] == [(20, 0.7), (40, 0.7)]
    figure = panels_figure({k: v for k, v in panels.items() if k != "teacher_weights"}, "distill")
    drawn = {ax.get_title(): sorted(line.get_label() for line in ax.get_lines()) for ax in figure.axes if ax.get_visible()}
    assert drawn == {"training loss": ["loss"], "learning rate": ["lr"], "dev metrics": ["accuracy", "f1"],
                     "annealing temperature": ["annealing_temperature"]}
    written = write_stage_plots(metrics, "distill", tmp_path / "plots")
    assert [p.name for p in written] == ["distill-learning-curves.png", "distill-teacher-weights.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)
    assert write_stage_plots(metrics, "missing", tmp_path / "plots") == []


def test_a_run_writes_its_curves_as_events_and_plots_and_resume_rewrites_them(project, monkeypatch):
    pytest.importorskip("tensorboard")
    from blocks.engine.run import train

    values = project.config()
    values["stages"][0]["log_every"] = 2
    config = project.load(values)
    original = interrupt_on_call(monkeypatch, 2)  # stop at the teacher's second evaluation
    with pytest.raises(KeyboardInterrupt):
        train(config, run_dir=project.root / "run", progress=False, log=quiet)
    monkeypatch.setattr("blocks.engine.trainer.StageTrainer._evaluate_and_save", original)
    train(config, run_dir=project.root / "run", resume=True, progress=False, log=quiet)
    run = project.root / "run"
    for stage in ("teacher", "distill"):
        logged = {}
        for record in read_records(run / "metrics.jsonl", stage):
            for tag, value in record_scalars(record).items():
                logged.setdefault(tag, []).append((record["step"], round(value, 4)))
        assert logged and scalars_in(run / "tensorboard" / stage) == logged  # the replayed steps once
        assert (run / "plots" / f"{stage}-learning-curves.png").read_bytes().startswith(b"\x89PNG")

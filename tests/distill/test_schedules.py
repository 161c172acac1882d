"""Weight/temperature schedules: values at given steps, validation, and KD's temperature schedule."""
from __future__ import annotations

import pytest
import torch

from blocks.catalog import load_builtin_entries
from blocks.distill.losses import KnowledgeDistillation, LossContext
from blocks.distill.schedules import make_schedule
from blocks.errors import ConfigError

load_builtin_entries()

CONTEXT = LossContext(student="student", teachers=["teacher"], output_of={"student": "logits", "teacher": "out"})


def test_constant():
    schedule = make_schedule({"type": "constant", "start": 3.0})
    assert [schedule(s) for s in (0, 5, 1000)] == [3.0, 3.0, 3.0]


def test_linear_then_stays_at_end():
    schedule = make_schedule({"type": "linear", "start": 4.0, "end": 1.0, "steps": 6})
    assert schedule(0) == pytest.approx(4.0)
    assert schedule(2) == pytest.approx(3.0)
    assert schedule(3) == pytest.approx(2.5)
    assert schedule(6) == pytest.approx(1.0)
    assert schedule(100) == pytest.approx(1.0)


def test_step():
    schedule = make_schedule({"type": "step", "start": 8.0, "every": 10, "factor": 0.5})
    assert [schedule(s) for s in (0, 9, 10, 19, 20, 35)] == [8.0, 8.0, 4.0, 4.0, 2.0, 1.0]
    floored = make_schedule({"type": "step", "start": 8.0, "every": 1, "factor": 0.5, "end": 3.0})
    assert floored(5) == 3.0


def test_a_linear_schedule_can_begin_later():
    ramp = make_schedule({"type": "linear", "start": 0.0, "end": 1.0, "begin": 100, "steps": 300})
    assert [ramp(s) for s in (0, 100, 200, 300, 1000)] == [0.0, 0.0, 0.5, 1.0, 1.0]


@pytest.mark.parametrize("schedule, message", [
    ({"type": "linear", "start": 1.0, "end": 0.5, "steps": 0}, "a linear schedule needs steps > begin"),
    ({"type": "linear", "start": 1.0, "end": 0.5, "steps": -3}, r"schedule ends \(step -3\) before it starts"),
    ({"type": "linear", "start": 0.0, "end": 1.0, "begin": 800, "steps": 500},
     r"ends \(step 500\) before it starts \(step 800\)"),
    ({"type": "lineer", "start": 1.0}, "did you mean 'linear'"),
    ({"start": 1.0}, "needs a 'type'"),
    ({"type": "linear", "start": 1.0, "steps": 5}, "needs 'end'"),
    ({"type": "constant"}, "needs 'start'"),
    ({"type": "step", "start": 1.0, "every": 0, "factor": 0.5}, "every > 0"),
    ({"type": "step", "start": 1.0, "every": 2}, "needs 'factor'"),
    ({"type": "constant", "start": 1.0, "stepz": 3}, "has no key 'stepz'"),
    ({"type": "linear", "start": "a", "end": 1.0, "steps": 2}, "must be a number"),
    ({"type": "linear", "start": 1.0, "end": 1.0, "steps": 2.5}, "must be an integer"),
    ("linear", "must be an object"),
])
def test_invalid_schedules(schedule, message):
    with pytest.raises(ValueError, match=message):
        make_schedule(schedule)


def hand_kd(student, teacher, t):
    log_p_t = torch.log_softmax(teacher / t, dim=-1)
    log_p_s = torch.log_softmax(student / t, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum() / student.shape[0] * t * t


def test_kd_follows_a_linear_temperature_schedule():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 3, generator=generator), torch.randn(4, 3, generator=generator) * 3
    outputs = {"student": {"logits": student}, "teacher": {"out": teacher}}
    loss = KnowledgeDistillation(CONTEXT, temperature=9.0,
                                 temperature_schedule={"type": "linear", "start": 4.0, "end": 1.0, "steps": 3})
    for step, t in ((0, 4.0), (1, 3.0), (2, 2.0), (3, 1.0), (50, 1.0)):
        loss.set_step(step)
        assert loss.temperature == pytest.approx(t)
        assert torch.allclose(loss(outputs, None), hand_kd(student, teacher, t), atol=1e-6)


def test_kd_without_schedule_is_unchanged():
    loss = KnowledgeDistillation(CONTEXT, temperature=3.0)
    loss.set_step(100)
    assert loss.temperature == 3.0


@pytest.mark.parametrize("schedule, message", [
    ({"type": "linear", "start": 2.0, "end": 0.0, "steps": 5}, "stay > 0"),
    ({"type": "linear", "start": 2.0, "end": 1.0, "steps": 0}, "temperature_schedule: a linear schedule needs steps > begin"),
])
def test_kd_rejects_bad_temperature_schedules(schedule, message):
    with pytest.raises(ValueError, match=message):
        KnowledgeDistillation(CONTEXT, temperature_schedule=schedule)


def test_bad_schedule_in_config_names_the_loss(project):
    from blocks.experiment import Experiment
    from blocks.config.loader import load_config

    values = project.config()
    values["stages"][1]["losses"][0]["temperature_schedule"] = {"type": "linear", "start": 2.0, "end": 1.0,
                                                                "steps": -1}
    try:
        experiment = Experiment.prepare(load_config(project.write(values), environ={}), log=lambda *a: None)
        experiment.build_losses(1)
    except ConfigError as error:
        assert "/stages/1/losses/0" in str(error)
        assert "schedule ends (step -1) before it starts" in str(error)
    else:  # pragma: no cover
        pytest.fail("expected a ConfigError")


def test_training_with_a_temperature_schedule(project, tmp_path, monkeypatch):
    """The trainer advances the schedule: every training step's KD loss uses the temperature of
    that step (4 for steps 0-2, 2 for steps 3-5, ...), in a real run."""
    from blocks.config.loader import load_config
    from blocks.engine.run import train

    used = []
    forward = KnowledgeDistillation.forward

    def recording(self, *args, **kwargs):
        if self.training:
            used.append(self.temperature)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(KnowledgeDistillation, "forward", recording)
    values = project.config()
    values["stages"][1]["losses"][0]["temperature_schedule"] = {"type": "step", "start": 4.0, "every": 3,
                                                                "factor": 0.5}
    train(load_config(project.write(values), environ={}), run_dir=tmp_path / "run", progress=False,
          log=lambda *a: None)
    assert len(used) == 16  # 120 examples in batches of 16 (8 steps), two epochs
    assert used == [4.0 * 0.5 ** (step // 3) for step in range(16)]

"""Loss blocks: numerics against hand computations, and a stage's weighted sum."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from blocks.catalog import load_builtin_entries
from blocks.distill.losses import CrossEntropy, KnowledgeDistillation, LogitMeanSquaredError, LossContext
from blocks.errors import ConfigError
from blocks.registry import LOSSES

load_builtin_entries()

CONTEXT = LossContext(student="student", teachers=["teacher"], output_of={"student": "logits", "teacher": "out"})


def fabricated(seed: int = 0, batch: int = 5, classes: int = 3):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, classes, generator=generator) * 2
    teacher = torch.randn(batch, classes, generator=generator) * 3
    labels = torch.randint(0, classes, (batch,), generator=generator)
    outputs = {"student": {"logits": student, "hidden": student * 0.5},
               "teacher": {"out": teacher, "other": teacher + 1}}
    return outputs, SimpleNamespace(labels=labels), student, teacher, labels


def log_softmax(z: torch.Tensor) -> torch.Tensor:
    return z - torch.logsumexp(z, dim=-1, keepdim=True)


def hand_kd(student: torch.Tensor, teacher: torch.Tensor, t: float, scale: bool = True) -> torch.Tensor:
    log_p_t = log_softmax(teacher / t)
    log_p_s = log_softmax(student / t)
    p_t = torch.exp(log_p_t)
    kl = (p_t * (log_p_t - log_p_s)).sum() / student.shape[0]
    return kl * t * t if scale else kl


def hand_cross_entropy(student: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    log_p = log_softmax(student)
    return -log_p[torch.arange(len(labels)), labels].mean()


def test_kd_matches_hand_computation_at_t2():
    outputs, batch, student, teacher, _ = fabricated()
    loss = KnowledgeDistillation(CONTEXT, temperature=2.0)
    expected = hand_kd(student, teacher, 2.0)
    assert torch.allclose(loss(outputs, batch), expected, atol=1e-6)
    # written out once more with the T² factor visible
    p_t = torch.softmax(teacher / 2, dim=-1)
    by_hand = 4.0 * (p_t * (torch.log(p_t) - torch.log_softmax(student / 2, dim=-1))).sum() / 5
    assert torch.allclose(loss(outputs, batch), by_hand, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_without_scale_omits_the_t_squared_factor(temperature):
    outputs, batch, student, teacher, _ = fabricated(1)
    scaled = KnowledgeDistillation(CONTEXT, temperature=temperature)(outputs, batch)
    unscaled = KnowledgeDistillation(CONTEXT, temperature=temperature, scale=False)(outputs, batch)
    assert torch.allclose(unscaled, hand_kd(student, teacher, temperature, scale=False), atol=1e-6)
    assert torch.allclose(scaled, unscaled * temperature ** 2, atol=1e-6)


def test_kd_is_zero_when_student_equals_teacher_and_has_a_gradient():
    outputs, batch, student, teacher, _ = fabricated(2)
    outputs["student"]["logits"] = teacher.clone()
    assert KnowledgeDistillation(CONTEXT)(outputs, batch).abs().item() < 1e-6
    student = student.clone().requires_grad_(True)
    outputs["student"]["logits"] = student
    KnowledgeDistillation(CONTEXT)(outputs, batch).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_kd_reads_named_outputs():
    outputs, batch, student, teacher, _ = fabricated(3)
    loss = KnowledgeDistillation(CONTEXT, output="hidden", teacher_output="other", temperature=3.0)
    expected = hand_kd(student * 0.5, teacher + 1, 3.0)
    assert torch.allclose(loss(outputs, batch), expected, atol=1e-6)


def test_logit_mse_matches_hand_computation():
    outputs, batch, student, teacher, _ = fabricated(4)
    expected = ((student - teacher) ** 2).sum() / student.numel()
    assert torch.allclose(LogitMeanSquaredError(CONTEXT)(outputs, batch), expected, atol=1e-6)


def test_cross_entropy_matches_hand_computation():
    outputs, batch, student, _, labels = fabricated(5)
    assert torch.allclose(CrossEntropy(CONTEXT)(outputs, batch), hand_cross_entropy(student, labels), atol=1e-6)
    smoothed = CrossEntropy(CONTEXT, label_smoothing=0.1)(outputs, batch)
    uniform = -log_softmax(student).mean(dim=-1).mean()
    assert torch.allclose(smoothed, 0.9 * hand_cross_entropy(student, labels) + 0.1 * uniform, atol=1e-6)


def test_teacher_loss_checks():
    no_teacher = LossContext(student="student", teachers=[], output_of={"student": "logits"})
    with pytest.raises(ValueError, match="'teacher' must be named when a stage has other than one teacher"):
        KnowledgeDistillation(no_teacher)
    with pytest.raises(ValueError, match="teacher 'x' is not among the stage's teachers"):
        KnowledgeDistillation(CONTEXT, teacher="x")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        KnowledgeDistillation(CONTEXT, temperature=0)
    outputs, batch, *_ = fabricated()
    outputs["teacher"]["out"] = torch.zeros(5, 4)
    with pytest.raises(ValueError, match=r"student 'logits' has shape \(5, 3\) but teacher 'out' has \(5, 4\)"):
        LogitMeanSquaredError(CONTEXT)(outputs, batch)


def loss_config(project):
    values = project.config()
    values["stages"][1]["losses"] = [
        {"block": "KD", "temperature": 2.0, "weight": 0.7},
        {"block": "CrossEntropy", "weight": 0.3},
        {"block": "LogitMSE", "weight": 0.25},
    ]
    return values


def test_stage_losses_weighted_sum_equals_manual_sum(project):
    experiment = project.prepare(loss_config(project))
    assert [(w, type(l).registered_name) for w, l in experiment.build_losses(0)] == [(1.0, "CrossEntropy")]
    losses = experiment.build_losses(1)
    assert [(w, type(l).registered_name) for w, l in losses] == [(0.7, "KD"), (0.3, "CrossEntropy"),
                                                                (0.25, "LogitMSE")]
    kd = losses[0][1]
    assert kd.model == "student" and kd.teacher == "teacher"
    assert kd.output == "logits" and kd.teacher_output == "logits"
    outputs, batch, student, teacher, labels = fabricated(6, classes=2)
    outputs = {"student": {"logits": student}, "teacher": {"logits": teacher}}
    total = sum(weight * loss(outputs, batch) for weight, loss in losses)
    manual = (0.7 * hand_kd(student, teacher, 2.0) + 0.3 * hand_cross_entropy(student, labels)
              + 0.25 * ((student - teacher) ** 2).mean())
    assert torch.allclose(total, manual, atol=1e-6)


def test_trainer_loss_is_the_weighted_sum_on_a_real_batch(project, tmp_path):
    from blocks.engine.run_dir import RunDir
    from blocks.engine.trainer import StageTrainer

    experiment = project.prepare(loss_config(project))
    trainer = StageTrainer(experiment, 1, RunDir(tmp_path / "unused"), torch.device("cpu"),
                           log=lambda *a: None, progress=False)
    batch = experiment.splits["train"].collate(torch.arange(8))
    total = trainer._loss(batch)
    with torch.no_grad():
        student = experiment.model_values("student", batch)["logits"]
        teacher = experiment.model_values("teacher", batch)["logits"]
    manual = (0.7 * hand_kd(student, teacher, 2.0) + 0.3 * hand_cross_entropy(student, batch.labels)
              + 0.25 * ((student - teacher) ** 2).mean())
    assert torch.allclose(total, manual, atol=1e-6)
    assert total.requires_grad
    assert not (tmp_path / "unused").exists()


def test_loss_parameter_errors_name_the_loss(project):
    values = project.config()
    values["stages"][1]["losses"] = [{"block": "KD", "temprature": 2.0}]
    with pytest.raises(ConfigError) as caught:
        project.prepare(values)
    assert caught.value.path == "/stages/1/losses/0/temprature"
    assert "loss 'KD' has no parameter 'temprature'; did you mean 'temperature'?" in caught.value.message
    values["stages"][1]["losses"] = [{"block": "KD", "temperature": -1}]
    with pytest.raises(ConfigError) as caught:
        project.prepare(values).build_losses(1)
    assert caught.value.path == "/stages/1/losses/0"
    assert "KD: temperature must be > 0" in caught.value.message
    values["stages"][1]["losses"] = [{"block": "KDD"}]
    with pytest.raises(ConfigError, match="unknown loss 'KDD'; did you mean 'KD'?"):
        project.prepare(values)


def test_registered_losses():
    assert {"CrossEntropy", "KD", "LogitMSE", "MSE"} <= set(LOSSES.names())

"""Loss blocks: what a stage minimises, wired to named outputs of the student and its teachers.

A stage's ``losses`` list is a weighted sum: each entry names a registered loss and its
``weight``. A loss reads the outputs of the model being trained (``output``, default: that
model's output node) and, for distillation losses, of a teacher (``teacher``, default: the
stage's only teacher; ``teacher_output``, default: that teacher's output node).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from blocks.data.dataset import UNLABELLED
from blocks.distill.schedules import make_schedule
from blocks.errors import did_you_mean
from blocks.graph import OUTPUT_SEPARATOR, missing_output_message
from blocks.registry import register_loss
from blocks.values import SEQUENCE, VECTOR, Sequence, Spec


@dataclass
class LossContext:
    """What a loss block learns about its stage when it is built."""

    student: str  # the model this stage trains
    teachers: list[str]
    output_of: dict[str, str]  # model name -> its output node
    task: str = "classification"
    num_outputs: int = 2
    output_specs: dict[str, Any] = field(default_factory=dict)
    node_specs: dict[str, dict[str, Spec]] = field(default_factory=dict)  # model -> node -> Spec


class Loss(nn.Module):
    """Base of loss blocks: ``forward(outputs, batch)`` returns a scalar tensor.

    ``outputs`` maps each model name to the dict of its node values.

    ``label_only``: the loss learns from gold labels alone (no teacher), so it has nothing to
    learn from the unlabelled examples of a transfer set; a stage whose losses are all
    ``label_only`` cannot use unlabelled examples.
    """

    label_only = False

    def __init__(self, stage: LossContext, output: str | None = None):
        super().__init__()
        self.model = stage.student
        self.output = output or stage.output_of[stage.student]

    def student_value(self, outputs: dict) -> torch.Tensor:
        return _logits(outputs[self.model][self.output])

    def set_step(self, step: int) -> None:
        """Told the current optimizer step before each call; a scheduled loss updates itself here."""

    def teacher_nodes(self) -> list[tuple[str, str]]:
        """The (teacher, node) pairs this loss reads from ``outputs``.

        The trainer computes exactly these teacher values (once, into the teacher cache, when the
        stage caches its teachers), so a custom loss that reads a teacher must list what it reads.
        """
        return []


class TeacherLoss(Loss):
    """A loss comparing the student with one teacher."""

    def __init__(self, stage: LossContext, teacher: str | None = None, output: str | None = None,
                 teacher_output: str | None = None):
        super().__init__(stage, output)
        if teacher is None:
            if len(stage.teachers) != 1:
                listed = ", ".join(stage.teachers) or "none"
                raise ValueError(f"'teacher' must be named when a stage has other than one teacher (teachers: {listed})")
            teacher = stage.teachers[0]
        if teacher not in stage.teachers:
            raise ValueError(f"teacher '{teacher}' is not among the stage's teachers "
                             f"({', '.join(stage.teachers) or 'none'})")
        self.teacher = teacher
        self.teacher_output = teacher_output or stage.output_of[teacher]

    def teacher_nodes(self) -> list[tuple[str, str]]:
        return [(self.teacher, self.teacher_output)]

    def teacher_value(self, outputs: dict) -> torch.Tensor:
        return _logits(outputs[self.teacher][self.teacher_output])

    def pair(self, outputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        student, teacher = self.student_value(outputs), self.teacher_value(outputs)
        if student.shape != teacher.shape:
            raise ValueError(f"{type(self).__name__}: student '{self.output}' has shape {tuple(student.shape)} "
                             f"but teacher '{self.teacher_output}' has {tuple(teacher.shape)}")
        return student.float(), teacher.float()


def _check_positive(spec: dict, schedule, name: str) -> None:
    """A temperature schedule must stay > 0 (its extremes are at step 0 and where it ends)."""
    probes = [0, int(spec.get("steps", 0) or 0)]  # a step schedule's factor > 0 keeps it positive
    if any(schedule(step) <= 0 for step in probes) or spec.get("end", 1.0) <= 0:
        raise ValueError(f"{name}: values must stay > 0")


def labelled_mean(per_example: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """The mean of ``per_example`` over the labelled examples; 0 (still part of the graph, so
    backward works) when a batch has none."""
    weights = labelled.to(per_example.dtype)
    return (per_example * weights).sum() / weights.sum().clamp(min=1.0)


def _logits(value: Any) -> torch.Tensor:
    """Vector outputs are logits; a sequence output (per-token logits) is not supported here."""
    if isinstance(value, torch.Tensor):
        return value
    raise ValueError("this loss needs a vector output ([batch, classes]); got a sequence")


@register_loss("CrossEntropy")
class CrossEntropy(Loss):
    """Cross-entropy between the model's logits and the gold labels.

    Args:
        output: node holding the logits (default: the model's output).
        label_smoothing: amount of label smoothing in [0, 1).

    In a transfer set with unlabelled examples, averaged over the labelled examples only.
    """

    label_only = True

    def __init__(self, stage: LossContext, output: str | None = None, label_smoothing: float = 0.0):
        super().__init__(stage, output)
        if stage.task != "classification":
            raise ValueError("CrossEntropy needs a classification task; use MSE for regression")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError("label_smoothing must be in [0, 1)")
        self.label_smoothing = label_smoothing

    def forward(self, outputs: dict, batch) -> torch.Tensor:
        labelled = getattr(batch, "labelled", None)
        if labelled is not None:  # a transfer set: unlabelled examples (label UNLABELLED) do not count
            return labelled_mean(F.cross_entropy(self.student_value(outputs).float(), batch.labels,
                                                 reduction="none", ignore_index=UNLABELLED,
                                                 label_smoothing=self.label_smoothing), labelled)
        return F.cross_entropy(self.student_value(outputs).float(), batch.labels,
                               label_smoothing=self.label_smoothing)


@register_loss("MSE")
class MeanSquaredError(Loss):
    """Mean squared error between the model's prediction and the gold score (regression).

    Args:
        output: node holding the prediction, [batch, 1] or [batch] (default: the model's output).

    In a transfer set with unlabelled examples, averaged over the labelled examples only.
    """

    label_only = True

    def __init__(self, stage: LossContext, output: str | None = None):
        super().__init__(stage, output)
        if stage.task != "regression":
            raise ValueError("MSE against gold labels needs a regression task; use LogitMSE to match a teacher")

    def forward(self, outputs: dict, batch) -> torch.Tensor:
        prediction = self.student_value(outputs).float().reshape(-1)
        labelled = getattr(batch, "labelled", None)
        if labelled is not None:  # a transfer set: unlabelled examples (label NaN) do not count
            target = torch.where(labelled, batch.labels.float(), torch.zeros_like(prediction))
            return labelled_mean((prediction - target).pow(2), labelled)
        return F.mse_loss(prediction, batch.labels.float())


@register_loss("KD")
class KnowledgeDistillation(TeacherLoss):
    """Soft-label distillation (Hinton et al. 2015): T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)).

    Averaged over the batch. The T² factor keeps the gradient scale independent of T.

    Args:
        teacher: teacher model (default: the stage's only teacher).
        temperature: softening temperature T > 0.
        output: student node holding the logits (default: the student's output).
        teacher_output: teacher node holding the logits (default: the teacher's output).
        scale: multiply by T² (the standard form; false reproduces toolkits that omit it).
        temperature_schedule: a schedule of T over optimizer steps, overriding temperature, e.g.
            {"type": "linear", "start": 4.0, "end": 1.0, "steps": 1000}.
    """

    def __init__(self, stage: LossContext, teacher: str | None = None, temperature: float = 2.0,
                 output: str | None = None, teacher_output: str | None = None, scale: bool = True,
                 temperature_schedule: dict | None = None):
        super().__init__(stage, teacher, output, teacher_output)
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.temperature = temperature
        self.scale = scale
        self.schedule = None
        if temperature_schedule is not None:
            try:
                self.schedule = make_schedule(temperature_schedule)
            except ValueError as error:
                raise ValueError(f"temperature_schedule: {error}") from None
            _check_positive(temperature_schedule, self.schedule, "temperature_schedule")
            self.temperature = self.schedule(0)

    def set_step(self, step: int) -> None:
        if self.schedule is not None:
            self.temperature = self.schedule(step)

    def forward(self, outputs: dict, batch) -> torch.Tensor:
        student, teacher = self.pair(outputs)
        t = self.temperature
        loss = F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                        reduction="batchmean", log_target=True)
        return loss * (t * t) if self.scale else loss


@register_loss("LogitMSE")
class LogitMeanSquaredError(TeacherLoss):
    """Mean squared error between student and teacher logits (Tang et al. 2019).

    Averaged over batch and classes.

    Args:
        teacher: teacher model (default: the stage's only teacher).
        output: student node holding the logits (default: the student's output).
        teacher_output: teacher node holding the logits (default: the teacher's output).
    """

    def forward(self, outputs: dict, batch) -> torch.Tensor:
        student, teacher = self.pair(outputs)
        return F.mse_loss(student, teacher)


@register_loss("LogitL1")
class LogitL1(TeacherLoss):
    """Mean absolute difference between student and teacher logits.

    Averaged over batch and classes.

    Args:
        teacher: teacher model (default: the stage's only teacher).
        output: student node holding the logits (default: the student's output).
        teacher_output: teacher node holding the logits (default: the teacher's output).
    """

    def forward(self, outputs: dict, batch) -> torch.Tensor:
        student, teacher = self.pair(outputs)
        return F.l1_loss(student, teacher)


@register_loss("RepresentationMatch")
class RepresentationMatch(TeacherLoss):
    """Match a student hidden state to a teacher hidden state (MSE, L1 or cosine).

    Both nodes must be vectors, or both sequences (averaged over the student's real positions).
    When their widths differ, a learned linear projection (trained with the student) maps the
    student's width to the teacher's; its widths are inferred from the two nodes.

    Args:
        output: student node to match (a vector or sequence node).
        teacher_output: teacher node to match (of the same kind).
        teacher: teacher model (default: the stage's only teacher).
        distance: "mse" (mean squared error), "l1" (mean absolute error) or "cosine" (mean of 1 − cos).
        projection: learn a projection when the widths differ (false: the widths must be equal).
    """

    def __init__(self, stage: LossContext, output: str, teacher_output: str, teacher: str | None = None,
                 distance: Literal["mse", "l1", "cosine"] = "mse", projection: bool = True):
        super().__init__(stage, teacher, output, teacher_output)
        if distance not in ("mse", "l1", "cosine"):
            raise ValueError(f"unknown distance {distance!r}{did_you_mean(str(distance), ('mse', 'l1', 'cosine'))}"
                             " (known: mse, l1, cosine)")
        self.distance = distance
        student_spec = _node_spec(stage, self.model, self.output)
        teacher_spec = _node_spec(stage, self.teacher, self.teacher_output)
        if (student_spec.kind not in (SEQUENCE, VECTOR) or teacher_spec.kind not in (SEQUENCE, VECTOR)
                or student_spec.kind != teacher_spec.kind):
            raise ValueError(f"a representation match needs two vectors or two sequences; "
                             f"student '{self.output}' is a {student_spec.describe()}, "
                             f"teacher '{self.teacher_output}' is a {teacher_spec.describe()}")
        self.kind = student_spec.kind
        self.student_width, self.teacher_width = student_spec.width, teacher_spec.width
        self.projection: nn.Module | None = None
        if self.student_width != self.teacher_width:
            if not projection:
                raise ValueError(f"student '{self.output}' is {student_spec.describe()} but teacher "
                                 f"'{self.teacher_output}' is {teacher_spec.describe()}; widths differ, "
                                 f"so set \"projection\": true")
            self.projection = nn.Linear(self.student_width, self.teacher_width)

    def forward(self, outputs: dict, batch) -> torch.Tensor:
        student = outputs[self.model][self.output]
        teacher = outputs[self.teacher][self.teacher_output]
        if self.kind == VECTOR:
            if isinstance(student, Sequence) or isinstance(teacher, Sequence):
                raise ValueError(f"RepresentationMatch: expected vectors at '{self.output}' and '{self.teacher_output}'")
            return self._distance(self._project(student), teacher.float()).mean()
        if not isinstance(student, Sequence) or not isinstance(teacher, Sequence):
            raise ValueError(f"RepresentationMatch: expected sequences at '{self.output}' and '{self.teacher_output}'")
        s_values, t_values, mask = student.values, teacher.values, student.mask
        s_len, t_len = s_values.shape[1], t_values.shape[1]
        if s_len != t_len:
            # Padding may differ (a cached teacher keeps positions up to its last real one only).
            shorter = min(s_len, t_len)
            if bool(mask[:, shorter:].any()) or bool(teacher.mask[:, shorter:].any()):
                raise ValueError(f"RepresentationMatch: student '{self.output}' has {s_len} positions but "
                                 f"teacher '{self.teacher_output}' has {t_len}; a sequence match needs "
                                 f"the same positions (the same tokenization)")
            s_values, t_values, mask = s_values[:, :shorter], t_values[:, :shorter], mask[:, :shorter]
        per_position = self._distance(self._project(s_values), t_values.float())  # [B, L]
        weights = mask.to(per_position.dtype)
        return (per_position * weights).sum() / weights.sum().clamp(min=1.0)

    def _project(self, value: torch.Tensor) -> torch.Tensor:
        value = value.float()
        if self.projection is not None:
            value = self.projection(value)
        return value

    def _distance(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Per-example (per-position) distance, averaged over the feature width."""
        if student.shape != teacher.shape:
            raise ValueError(f"RepresentationMatch: student '{self.output}' gives shape {tuple(student.shape)} "
                             f"but teacher '{self.teacher_output}' gives {tuple(teacher.shape)}")
        if self.distance == "mse":
            return (student - teacher).pow(2).mean(dim=-1)
        if self.distance == "l1":
            return (student - teacher).abs().mean(dim=-1)
        return 1.0 - F.cosine_similarity(student, teacher, dim=-1)


def _node_spec(stage: LossContext, model: str, node: str) -> Spec:
    specs = stage.node_specs.get(model)
    if specs is None:
        if node == stage.output_of.get(model) and model in stage.output_specs:
            return stage.output_specs[model]
        raise ValueError(f"the widths of model '{model}' are unknown (no node specs in the loss context)")
    if node not in specs:
        base = node.split(OUTPUT_SEPARATOR, 1)[0]
        if base != node and base in specs:
            raise ValueError(missing_output_message(model, node, specs))
        raise ValueError(f"model '{model}' has no node '{node}'{did_you_mean(node, specs)}")
    return specs[node]

"""Loss blocks: what a stage minimises, wired to named outputs of the student and its teachers.

A stage's ``losses`` list is a weighted sum: each entry names a registered loss and its
``weight``. A loss reads the outputs of the model being trained (``output``, default: that
model's output node) and, for distillation losses, of a teacher (``teacher``, default: the
stage's only teacher; ``teacher_output``, default: that teacher's output node).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from blocks.tasks.base import UNLABELLED
from blocks.distill.schedules import make_schedule
from blocks.errors import did_you_mean
from blocks.graph import OUTPUT_SEPARATOR, missing_output_message
from blocks.registry import register_loss
from blocks.values import SEQUENCE, TAG_SCORES, VECTOR, Sequence, Spec, TopKLogProbs


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
    task_type: Any = None  # the blocks.tasks.TaskType (None in unit tests that build losses by hand)


@dataclass
class BatchContext:
    """What :meth:`Loss.prepare_batch` may use: the experiment (models, task, input fields), the
    name of the model the stage trains, the device and the optimizer step about to be taken."""

    experiment: Any
    model: str
    device: torch.device
    step: int


class Loss(nn.Module):
    """Base of loss blocks: ``forward(outputs, batch)`` returns a scalar tensor.

    ``outputs`` maps each model name to the dict of its node values.

    ``label_only``: the loss learns from gold labels alone (no teacher), so it has nothing to
    learn from the unlabelled examples of a transfer set; a stage whose losses are all
    ``label_only`` cannot use unlabelled examples.

    What a loss applies to is declared, and checked when the stage's losses are built (by
    ``blocks validate`` and before training): ``task_types`` (None: any task) and
    ``output_kinds``, the edge kinds the student node it reads may have (``vector`` logits of
    an example, ``sequence`` logits per word, ``tag_scores`` of a CRF; None: any).

    Hooks the trainer calls, all no-ops here: :meth:`set_step` before every loss computation,
    :meth:`start` when the stage starts, :meth:`after_step` after every optimizer step,
    :meth:`after_evaluation` after every dev evaluation, :meth:`log_values` for the evaluation
    log. ``student_parameters`` returns what the stage's optimizer trains of the loss block.
    A loss with ``prepares_batch`` true changes the training
    batch before the models see it (:meth:`prepare_batch`: student rollouts as decoder prefixes);
    a stage may have one such loss.
    """

    label_only = False
    task_types: ClassVar[tuple[str, ...] | None] = None
    output_kinds: ClassVar[tuple[str, ...] | None] = (VECTOR,)
    #: the dev metric drives this loss (after_evaluation); a stage without a dev split refuses it
    needs_dev = False
    #: the student node holds logits (or a score), whose kind must fit the task: a vector per
    #: example, a sequence of one vector per word for a tagging task
    reads_logits = True
    #: the trainer calls :meth:`prepare_batch` before the forward pass (one such loss per stage)
    prepares_batch = False

    def __init__(self, stage: LossContext, output: str | None = None):
        super().__init__()
        self.model = stage.student
        self.output = output or stage.output_of[stage.student]
        name = type(self).__name__
        if self.task_types is not None and stage.task not in self.task_types:
            raise ValueError(f"{name} does not apply to a {stage.task} task (it applies to "
                             f"{', '.join(self.task_types)}){_TASK_HINTS.get((name, stage.task), '')}")
        spec = _known_spec(stage, self.model, self.output)
        if spec is not None and self.output_kinds is not None and spec.kind not in self.output_kinds:
            raise ValueError(f"{name} reads a {' or '.join(self.output_kinds)} from node '{self.output}' of model "
                             f"'{self.model}', which is a {spec.describe()}{_kind_hint(spec.kind, self.output_kinds)}")
        self.output_kind = spec.kind if spec is not None else None
        if self.reads_logits and spec is not None and spec.kind in (VECTOR, SEQUENCE):
            per_word = stage.task_type.per_token if stage.task_type is not None else stage.task == "tagging"
            wanted = SEQUENCE if per_word else VECTOR
            if spec.kind != wanted:
                what = "per-word logits (a sequence)" if per_word else "one vector of logits per example"
                raise ValueError(f"{name} on a {stage.task} task reads {what} from node '{self.output}' of model "
                                 f"'{self.model}', which is a {spec.describe()}{_kind_hint(spec.kind, (wanted,))}")

    def student_value(self, outputs: dict) -> torch.Tensor | Sequence:
        return _logits(outputs[self.model][self.output], self.output_kinds)

    def set_step(self, step: int) -> None:
        """Told the current optimizer step before each call; a scheduled loss updates itself here."""

    def prepare_batch(self, batch, context: BatchContext):
        """The batch the student and the teachers see at this training step (called before the
        forward pass when ``prepares_batch`` is true; the batch unchanged here). Teachers then run
        in the loop on the returned batch: a loss that changes it must not let the stage cache
        its teachers (``teacher_nodes`` None, with an ``uncached_reason``)."""
        return batch

    def start(self, total_steps: int) -> None:
        """Told the stage's number of optimizer steps when it starts (AnnealingKD spreads its
        temperatures over them)."""

    def after_step(self, batch, student_outputs) -> None:
        """After each optimizer step; ``student_outputs()`` runs the updated student on the batch
        (the RL teacher selector learns from it)."""

    def after_evaluation(self, value: float) -> None:
        """After each dev evaluation, with the selection metric (larger is better)."""

    def log_values(self) -> dict:
        """What the loss reports at an evaluation (mean teacher weights, a temperature)."""
        return {}

    def student_parameters(self):
        """The loss block's parameters the stage's optimizer trains with the student."""
        return self.parameters()

    def teacher_nodes(self) -> list[tuple[str, str]]:
        """The (teacher, node) pairs this loss reads from ``outputs``.

        The trainer computes exactly these teacher values (once, into the teacher cache, when the
        stage caches its teachers), so a custom loss that reads a teacher must list what it reads.
        """
        return []


def resolve_teacher(stage: LossContext, teacher: str | None, teacher_output: str | None) -> tuple[str, str]:
    """The teacher a loss reads (default: the stage's only one) and its node (default: its
    output); a ValueError when the stage has no such teacher."""
    if teacher is None:
        if len(stage.teachers) != 1:
            listed = ", ".join(stage.teachers) or "none"
            raise ValueError(f"'teacher' must be named when a stage has other than one teacher (teachers: {listed})")
        teacher = stage.teachers[0]
    if teacher not in stage.teachers:
        raise ValueError(f"teacher '{teacher}' is not among the stage's teachers "
                         f"({', '.join(stage.teachers) or 'none'})")
    return teacher, teacher_output or stage.output_of[teacher]


class TeacherLoss(Loss):
    """A loss comparing the student with one teacher."""

    def __init__(self, stage: LossContext, teacher: str | None = None, output: str | None = None,
                 teacher_output: str | None = None):
        super().__init__(stage, output)
        self.teacher, self.teacher_output = resolve_teacher(stage, teacher, teacher_output)

    def teacher_nodes(self) -> list[tuple[str, str]]:
        return [(self.teacher, self.teacher_output)]

    def teacher_value(self, outputs: dict) -> torch.Tensor | Sequence:
        return _logits(outputs[self.teacher][self.teacher_output], self.output_kinds)

    def pair(self, outputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Student and teacher logits as float tensors of one shape: ``[batch, classes]``, or for
        sequences ``[words, classes]`` over the words real in both (see :func:`aligned_words`)."""
        student, teacher = self.student_value(outputs), self.teacher_value(outputs)
        if isinstance(student, Sequence) or isinstance(teacher, Sequence):
            student, teacher = aligned_words(student, teacher, self.output, self.teacher_output)
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


def _logits(value: Any, kinds: tuple[str, ...] | None = (VECTOR,)) -> torch.Tensor | Sequence:
    """A node's logits: a ``[batch, classes]`` tensor, or (where the loss reads sequences) a
    :class:`Sequence` of per-word logits."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Sequence) and (kinds is None or SEQUENCE in kinds):
        return value
    raise ValueError(f"this loss needs a {' or '.join(kinds or (VECTOR,))} output; got a {type(value).__name__}")


def aligned_words(student: Any, teacher: Any, student_node: str, teacher_node: str
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-word logits of student and teacher, ``[words, classes]`` each, over the words real in
    both (a cached teacher may keep fewer padded positions, a truncated input fewer words)."""
    if not (isinstance(student, Sequence) and isinstance(teacher, Sequence)):
        raise ValueError(f"student '{student_node}' and teacher '{teacher_node}' must both be sequences "
                         f"(per-word logits) or both vectors")
    length = min(student.values.shape[1], teacher.values.shape[1])
    mask = student.mask[:, :length] & teacher.mask[:, :length]
    return student.values[:, :length][mask], teacher.values[:, :length][mask]


def word_labels(labels: torch.Tensor, length: int) -> torch.Tensor:
    """A batch's ``[batch, words]`` tag ids cut or padded (with UNLABELLED) to ``length`` positions."""
    if labels.shape[1] >= length:
        return labels[:, :length]
    padding = labels.new_full((labels.shape[0], length - labels.shape[1]), UNLABELLED)
    return torch.cat([labels, padding], dim=1)


def _known_spec(stage: LossContext, model: str, node: str) -> Spec | None:
    """The Spec of a model's node when the context knows it (None in hand-built contexts)."""
    specs = stage.node_specs.get(model)
    if specs is not None:
        return specs.get(node)
    if node == stage.output_of.get(model):
        return stage.output_specs.get(model)
    return None


_TASK_HINTS = {
    ("KnowledgeDistillation", "regression"): ": a regression output is one score, whose softmax is always 1, so "
                                             "KL would be 0; match the teacher's score with LogitMSE",
    ("CrossEntropy", "regression"): "; use MSE for regression",
    ("MeanSquaredError", "classification"): "; use LogitMSE to match a teacher's logits",
    ("MeanSquaredError", "tagging"): "; use LogitMSE to match a teacher's per-word logits",
}


def _kind_hint(kind: str, wanted: tuple[str, ...]) -> str:
    if kind == SEQUENCE and VECTOR in wanted:
        return "; add a pooling node (Pooling, AttentionPooling) to turn the sequence into a vector"
    if kind == TAG_SCORES:
        return ("; a CRF node's scores are read by CRFLoss, CRFPosteriorKD and ViterbiKD — point this loss at the "
                "emission node before the CRF with \"output\"")
    if kind == VECTOR and SEQUENCE in wanted:
        return "; a tagging model keeps one value per word: remove the pooling node"
    return ""


@register_loss("CrossEntropy")
class CrossEntropy(Loss):
    """Cross-entropy between the model's logits and the gold labels: one vector of logits per
    example, or per position (a tagger's words, a seq2seq decoder's target tokens), padded
    positions left out.

    Args:
        output: node holding the logits (default: the model's output).
        label_smoothing: amount of label smoothing in [0, 1).

    In a transfer set with unlabelled examples, averaged over the labelled examples only.
    """

    label_only = True
    task_types = ("classification", "tagging", "seq2seq")
    output_kinds = (VECTOR, SEQUENCE)

    def __init__(self, stage: LossContext, output: str | None = None, label_smoothing: float = 0.0):
        super().__init__(stage, output)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError("label_smoothing must be in [0, 1)")
        self.label_smoothing = label_smoothing

    def forward(self, outputs: dict, batch) -> torch.Tensor:
        value = self.student_value(outputs)
        if isinstance(value, Sequence):  # per-word logits: the mean over the batch's tagged words
            # positions the output masks out (a word whose pieces a max_length cut off) learn nothing
            labels = word_labels(batch.labels, value.values.shape[1]).masked_fill(~value.mask, UNLABELLED)
            return F.cross_entropy(value.values.float().flatten(0, 1), labels.flatten(), ignore_index=UNLABELLED,
                                   label_smoothing=self.label_smoothing) if bool((labels != UNLABELLED).any()) \
                else value.values.sum() * 0.0
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
    task_types = ("regression",)

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

    Averaged over the batch — or, for per-word logits (a tagging task, a seq2seq decoder's target
    positions), over the positions real in both student and teacher (token-level KD). The T²
    factor keeps the gradient scale independent of T. A regression output (one score) has nothing
    to distil this way: use LogitMSE.

    A seq2seq teacher read from the teacher cache gives its top-k next-token log-probabilities
    per position (:class:`blocks.values.TopKLogProbs`), not its logits: the teacher's target is
    then renormalised over the k kept tokens, ``log_softmax(log_probs / T)``, and compared with
    the student's full-softmax log-probabilities at those tokens (see
    :mod:`blocks.engine.teacher_cache`).

    Args:
        teacher: teacher model (default: the stage's only teacher).
        temperature: softening temperature T > 0.
        output: student node holding the logits (default: the student's output).
        teacher_output: teacher node holding the logits (default: the teacher's output).
        scale: multiply by T² (the standard form; false reproduces toolkits that omit it).
        temperature_schedule: a schedule of T over optimizer steps, overriding temperature, e.g.
            {"type": "linear", "start": 4.0, "end": 1.0, "steps": 1000}.
    """

    task_types = ("classification", "tagging", "seq2seq")
    output_kinds = (VECTOR, SEQUENCE)

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
        if isinstance(outputs[self.teacher][self.teacher_output], TopKLogProbs):
            return self._top_k(outputs)
        student, teacher = self.pair(outputs)
        t = self.temperature
        if student.shape[0] == 0:  # no word real in both
            return student.sum() * 0.0
        loss = F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                        reduction="batchmean", log_target=True)
        return loss * (t * t) if self.scale else loss

    def _top_k(self, outputs: dict) -> torch.Tensor:
        """KD against a cached teacher's top-k log-probabilities, renormalised over the k kept
        tokens, per position real in both (the mean over those positions)."""
        student, teacher = self.student_value(outputs), outputs[self.teacher][self.teacher_output]
        if not isinstance(student, Sequence):
            raise ValueError(f"student '{self.output}' must give per-position logits (a sequence) to match the "
                             f"teacher's top-k log-probabilities at '{self.teacher_output}'")
        length = min(student.values.shape[1], teacher.indices.shape[1])
        mask = student.mask[:, :length] & teacher.mask[:, :length]
        logits = student.values[:, :length][mask].float()  # [positions, V]
        if logits.shape[0] == 0:
            return logits.sum() * 0.0
        t = self.temperature
        target = F.log_softmax(teacher.log_probs[:, :length][mask].float() / t, dim=-1)  # [positions, k]
        predicted = F.log_softmax(logits / t, dim=-1).gather(1, teacher.indices[:, :length][mask].long())
        loss = (target.exp() * (target - predicted)).sum(dim=-1).mean()
        return loss * (t * t) if self.scale else loss


@register_loss("LogitMSE")
class LogitMeanSquaredError(TeacherLoss):
    """Mean squared error between student and teacher logits (Tang et al. 2019).

    Averaged over batch (or words) and classes; a regression student matches the teacher's score.

    Args:
        teacher: teacher model (default: the stage's only teacher).
        output: student node holding the logits (default: the student's output).
        teacher_output: teacher node holding the logits (default: the teacher's output).
    """

    output_kinds = (VECTOR, SEQUENCE)

    def forward(self, outputs: dict, batch) -> torch.Tensor:
        student, teacher = self.pair(outputs)
        return F.mse_loss(student, teacher) if student.numel() else student.sum() * 0.0


@register_loss("LogitL1")
class LogitL1(TeacherLoss):
    """Mean absolute difference between student and teacher logits.

    Averaged over batch (or words) and classes.

    Args:
        teacher: teacher model (default: the stage's only teacher).
        output: student node holding the logits (default: the student's output).
        teacher_output: teacher node holding the logits (default: the teacher's output).
    """

    output_kinds = (VECTOR, SEQUENCE)

    def forward(self, outputs: dict, batch) -> torch.Tensor:
        student, teacher = self.pair(outputs)
        return F.l1_loss(student, teacher) if student.numel() else student.sum() * 0.0


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

    output_kinds = None  # checked below: two vectors or two sequences
    reads_logits = False

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

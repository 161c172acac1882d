"""Every loss block against every task type and output kind.

A combination either is refused when the stage's losses are built (a ValueError, which
``Experiment.build_losses`` turns into a ConfigError with the JSON path, so ``blocks validate``
reports it), or it trains: its forward gives a finite scalar with a gradient. What must never
happen is what users met: a combination accepted at validation that dies in training, or one
that trains on a loss that is always 0 (KD on a regression output)."""
from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch

from blocks.catalog import load_builtin_entries
from blocks.distill.losses import LossContext
from blocks.registry import LOSSES
from blocks.tasks.classification import Classification
from blocks.tasks.regression import Regression
from blocks.tasks.tagging import Tagging
from blocks.values import SEQUENCE, TAG_SCORES, VECTOR, Sequence, Spec, TagScores

load_builtin_entries()
BATCH, LENGTH = 4, 5
TASKS = {"classification": Classification(["a", "b", "c"]), "regression": Regression(),
         "tagging": Tagging(["O", "B-X", "I-X", "B-Y"], "IOB2")}
KINDS = (VECTOR, SEQUENCE, TAG_SCORES)
TEACHERS = ["t1", "t2"]
# parameters a loss needs to be built at all (the rest keep their defaults)
PARAMS = {"RepresentationMatch": {"output": "out", "teacher_output": "out", "teacher": "t1"},
          "ReinforcedTeacherSelector": {"state_output": "state"}}
SKIP = {"AttentionMatch"}  # reads attention maps: covered by tests/distill/test_attention_match.py


def value_of(kind: str, width: int, requires_grad: bool) -> object:
    torch.manual_seed(width + len(kind) + (0 if requires_grad else 100))  # teachers differ from the student
    mask = torch.ones(BATCH, LENGTH, dtype=torch.bool)
    mask[1, 3:] = False
    if kind == VECTOR:
        return torch.randn(BATCH, width, requires_grad=requires_grad)
    emissions = torch.randn(BATCH, LENGTH, width, requires_grad=requires_grad)
    if kind == SEQUENCE:
        return Sequence(emissions, mask)
    transitions = torch.randn(width, width, requires_grad=requires_grad)
    return TagScores(emissions, mask, transitions, torch.zeros(width), torch.zeros(width))


def labels_for(task_name: str) -> torch.Tensor:
    if task_name == "classification":
        return torch.tensor([0, 1, 2, 1])
    if task_name == "regression":
        return torch.tensor([0.5, 1.0, 2.0, 3.5])
    labels = torch.randint(0, 4, (BATCH, LENGTH))
    labels[1, 3:] = -100
    return labels


def context(task_name: str, kind: str) -> LossContext:
    task = TASKS[task_name]
    width = task.num_outputs
    spec = Spec(kind, width)
    specs = {"out": spec, "state": Spec(VECTOR, 6)}
    return LossContext(student="student", teachers=list(TEACHERS),
                       output_of={"student": "out", "t1": "out", "t2": "out"}, task=task_name,
                       num_outputs=width, output_specs={m: spec for m in ["student", *TEACHERS]},
                       node_specs={m: dict(specs) for m in ["student", *TEACHERS]}, task_type=task)


COMBINATIONS = [(name, task, kind) for name in sorted(set(LOSSES.names()) - SKIP)
                for task, kind in itertools.product(TASKS, KINDS)]


@pytest.mark.parametrize("name, task_name, kind", COMBINATIONS)
def test_each_loss_is_refused_at_build_time_or_trains(name, task_name, kind):
    stage = context(task_name, kind)
    params = dict(PARAMS.get(name, {}))
    if "teacher" in [p.name for p in LOSSES.parameters(name)] and "teacher" not in params:
        params["teacher"] = "t1"
    try:
        loss = LOSSES.build(name, stage, params=params)
    except ValueError as error:
        assert str(error), "a refusal must say why"
        return
    width = TASKS[task_name].num_outputs
    outputs = {"student": {"out": value_of(kind, width, True), "state": torch.randn(BATCH, 6)}}
    for teacher in TEACHERS:
        outputs[teacher] = {"out": value_of(kind, width, False)}
    batch = SimpleNamespace(labels=labels_for(task_name), labelled=None, index=torch.arange(BATCH))
    if hasattr(loss, "start"):
        loss.start(100)
    value = loss(outputs, batch)
    assert value.dim() == 0 and torch.isfinite(value), f"{name} on {task_name}/{kind} gave {value}"
    student = outputs["student"]["out"]
    tensor = student if kind == VECTOR else (student.values if kind == SEQUENCE else student.emissions)
    value.backward()
    assert tensor.grad is not None and tensor.grad.abs().sum() > 0, \
        f"{name} on {task_name}/{kind} gives the student no gradient (a loss that is always 0?)"


@pytest.mark.parametrize("name", ["KD", "CrossEntropy", "MultiTeacherKD"])
def test_class_distribution_losses_are_refused_on_regression_with_advice(name):
    with pytest.raises(ValueError) as caught:
        LOSSES.build(name, context("regression", VECTOR), params={"teacher": "t1"} if name == "KD" else {})
    assert "LogitMSE" in str(caught.value) or "MSE" in str(caught.value) or "mse" in str(caught.value)


def test_a_sequence_where_logits_of_an_example_are_needed_says_to_pool():
    with pytest.raises(ValueError) as caught:
        LOSSES.build("CrossEntropy", context("classification", SEQUENCE), params={})
    assert "pooling node" in str(caught.value)


def test_kd_on_regression_is_a_validate_error(project, capsys):
    from blocks.cli import main

    values = project.config()
    values["task"] = {"type": "regression"}
    for row in ("train", "dev", "test"):
        path = project.root / "data" / f"{row}.tsv"
        path.write_text(path.read_text().replace("\t0\n", "\t0.5\n").replace("\t1\n", "\t2.5\n"))
    values["stages"][0]["losses"] = [{"block": "MSE"}]
    values["stages"][1]["losses"] = [{"block": "KD"}]
    path = project.write(values)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "/stages/1/losses/0" in err and "LogitMSE" in err


@pytest.mark.parametrize("weighting", ["equal", "entropy", "gold_ce"])
def test_multi_teacher_kd_weights_every_word_of_a_tagger(weighting):
    """Per word, MultiTeacherKD with two copies of one teacher is KD on the words real in both."""
    stage = context("tagging", SEQUENCE)
    multi = LOSSES.build("MultiTeacherKD", stage, params={"weighting": weighting, "temperature": 2.0})
    single = LOSSES.build("KD", stage, params={"teacher": "t1", "temperature": 2.0})
    width = TASKS["tagging"].num_outputs
    teacher = value_of(SEQUENCE, width, False)
    outputs = {"student": {"out": value_of(SEQUENCE, width, True)}, "t1": {"out": teacher}, "t2": {"out": teacher}}
    batch = SimpleNamespace(labels=labels_for("tagging"), labelled=None, index=torch.arange(BATCH))
    assert torch.allclose(multi(outputs, batch), single(outputs, batch), atol=1e-6)
    weights = multi.log_values()["teacher_weights"]
    assert weights == pytest.approx({"t1": 0.5, "t2": 0.5})

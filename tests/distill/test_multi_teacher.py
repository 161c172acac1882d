"""Multi-teacher KD (equal / fixed / confidence weights, averaged targets, per-teacher heads), the
RL teacher selector, Annealing-KD and weight schedules: numerics against hand computations, bad
input, and whole runs on the tiny dataset."""
from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from blocks.config.loader import load_config
from blocks.distill.annealing import AnnealingKD
from blocks.distill.losses import LossContext
from blocks.distill.multi_teacher import MultiTeacherKD, ReinforcedTeacherSelector
from blocks.engine.run import train
from blocks.errors import ConfigError
from blocks.values import VECTOR, Spec

TEACHERS = ["t1", "t2", "t3"]


def context(teachers=TEACHERS, task="classification", classes=3):
    specs = {"student": {"logits": Spec(VECTOR, classes), "head_a": Spec(VECTOR, classes),
                         "head_b": Spec(VECTOR, classes), "head_c": Spec(VECTOR, classes),
                         "pool": Spec(VECTOR, 5)}}
    specs.update({t: {"logits": Spec(VECTOR, classes)} for t in teachers})
    return LossContext(student="student", teachers=list(teachers),
                       output_of={"student": "logits", **{t: "logits" for t in teachers}},
                       task=task, num_outputs=classes, node_specs=specs)


def outputs(batch=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    values = {"student": {n: torch.randn(batch, classes, generator=g) for n in ("logits", "head_a", "head_b",
                                                                              "head_c")}}
    values["student"]["pool"] = torch.randn(batch, 5, generator=g)
    values.update({t: {"logits": 3 * torch.randn(batch, classes, generator=g)} for t in TEACHERS})
    return values


def kd(student, teacher, t):
    return (t * t * (F.softmax(teacher / t, -1) * (F.log_softmax(teacher / t, -1) - F.log_softmax(student / t, -1)))
            .sum(-1))


BATCH = SimpleNamespace(labels=torch.tensor([0, 1, 2, 1]))


def test_equal_weights_average_the_single_teacher_kd_losses():
    values = outputs()
    loss = MultiTeacherKD(context(), temperature=2.0)(values, BATCH)
    expected = sum(kd(values["student"]["logits"], values[t]["logits"], 2.0).mean() for t in TEACHERS) / 3
    assert torch.allclose(loss, expected)


def test_fixed_weights_are_normalised():
    values = outputs()
    loss = MultiTeacherKD(context(), weighting="fixed", weights=[2, 1, 1], distance="mse")(values, BATCH)
    s = values["student"]["logits"]
    expected = sum(w * (s - values[t]["logits"]).pow(2).mean() for w, t in zip([0.5, 0.25, 0.25], TEACHERS))
    assert torch.allclose(loss, expected)


def test_averaged_targets_form():
    values = outputs()
    loss = MultiTeacherKD(context(), combine="targets", temperature=3.0)(values, BATCH)
    target = sum(F.softmax(values[t]["logits"] / 3.0, -1) for t in TEACHERS) / 3
    s = F.log_softmax(values["student"]["logits"] / 3.0, -1)
    expected = 9.0 * (target * (target.log() - s)).sum(-1).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    mse = MultiTeacherKD(context(), combine="targets", distance="mse")(values, BATCH)
    mean_logits = sum(values[t]["logits"] for t in TEACHERS) / 3
    assert torch.allclose(mse, (values["student"]["logits"] - mean_logits).pow(2).mean())


def test_confidence_weights_favour_the_confident_and_the_correct_teacher():
    loss = MultiTeacherKD(context(teachers=["t1", "t2"], classes=2), weighting="entropy")
    sure, unsure = torch.tensor([[8.0, -8.0]]), torch.tensor([[0.1, 0.0]])
    weights = loss.teacher_weights(torch.stack([unsure, sure], dim=1), None)
    assert weights[0, 1] > 0.6 and torch.allclose(weights.sum(-1), torch.ones(1))
    gold = MultiTeacherKD(context(teachers=["t1", "t2"], classes=2), weighting="gold_ce", sharpness=0.5)
    right, wrong = torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 4.0]])
    weights = gold.teacher_weights(torch.stack([wrong, right], dim=1), torch.tensor([0]))
    assert weights[0, 1] > 0.99
    # an unlabelled example (label -100) falls back to equal weights
    weights = gold.teacher_weights(torch.stack([wrong, right], dim=1), torch.tensor([-100]))
    assert torch.allclose(weights, torch.tensor([[0.5, 0.5]]))


def test_per_teacher_heads_compare_each_teacher_with_its_head():
    values = outputs()
    loss = MultiTeacherKD(context(), heads=["head_a", "head_b", "head_c"], distance="mse")(values, BATCH)
    expected = sum((values["student"][h] - values[t]["logits"]).pow(2).mean()
                   for h, t in zip(["head_a", "head_b", "head_c"], TEACHERS)) / 3
    assert torch.allclose(loss, expected)


def test_mean_teacher_weights_are_logged_and_reset():
    loss = MultiTeacherKD(context(), weighting="fixed", weights=[1, 1, 2])
    loss(outputs(), BATCH)
    assert loss.log_values() == {"teacher_weights": {"t1": 0.25, "t2": 0.25, "t3": 0.5}}
    assert loss.log_values() == {}


@pytest.mark.parametrize("params, message", [
    ({"teachers": ["t1", "t9"]}, "teacher 't9' is not among the stage's teachers"),
    ({"weighting": "fixed"}, "needs 'weights', one per teacher"),
    ({"weighting": "fixed", "weights": [1, 2]}, "one per teacher"),
    ({"weights": [1, 2, 3]}, "only read with weighting \"fixed\""),
    ({"weighting": "confidence"}, "unknown weighting"),
    ({"heads": ["head_a", "head_b"]}, "names 2 student nodes for 3 teachers"),
    ({"heads": ["head_a", "head_b", "head_c"], "combine": "targets"}, "per-teacher heads"),
    ({"output": "pool"}, "width 5"),
])
def test_multi_teacher_bad_input(params, message):
    with pytest.raises(ValueError, match=message):
        MultiTeacherKD(context(), **params)


def test_a_selector_needs_two_teachers():
    with pytest.raises(ValueError, match="needs at least 2 teachers; the stage gives 1"):
        ReinforcedTeacherSelector(context(teachers=["t1"]))


def test_selector_samples_actions_and_learns_from_the_reward():
    torch.manual_seed(0)
    selector = ReinforcedTeacherSelector(context(), state_output="pool", policy_lr=0.05)
    values = outputs()
    loss = selector(values, BATCH)
    state, actions, _ = selector._pending
    assert state.shape == (4, 5 + 3 * 3 + 3) and set(actions.unique().tolist()) <= {0.0, 1.0}
    s = values["student"]["logits"]
    expected = torch.stack([kd(s, values[t]["logits"], 2.0) for t in TEACHERS], 1)
    assert torch.allclose(loss, (actions * expected).mean())
    before = [p.detach().clone() for p in selector.policy.parameters()]
    selector.after_step(BATCH, lambda: values["student"])
    assert selector._pending is None
    # the first reward sets the baseline, so the first advantage is R - mean(R): the policy moves
    assert any(not torch.equal(a, b) for a, b in zip(before, selector.policy.parameters()))
    assert selector.student_parameters() == []
    logged = selector.log_values()
    assert set(logged) == {"teacher_weights", "selection_probability"}
    assert logged["selection_probability"] == {"t1": 0.5, "t2": 0.5, "t3": 0.5}


def test_selector_prefers_the_teacher_that_helps():
    """A bandit check of the REINFORCE update: reward 1 when teacher 0 is chosen, 0 otherwise."""
    torch.manual_seed(0)
    selector = ReinforcedTeacherSelector(context(teachers=["t1", "t2"], classes=2), policy_lr=0.1)
    labels = torch.zeros(32, dtype=torch.long)
    for _ in range(60):
        logits = {"student": {"logits": torch.zeros(32, 2)}, "t1": {"logits": torch.zeros(32, 2)},
                  "t2": {"logits": torch.zeros(32, 2)}}
        selector(logits, SimpleNamespace(labels=labels))
        _, actions, _ = selector._pending
        good = actions[:, 0] * 5.0  # the student "does better" (lower CE) when teacher 0 was chosen
        selector.after_step(SimpleNamespace(labels=labels),
                            lambda: {"logits": torch.stack([good, torch.zeros(32)], dim=1)})
    probabilities = selector.log_values()["selection_probability"]
    assert probabilities["t1"] > 0.8


def test_dev_reward_learns_once_per_episode_from_the_metric_change():
    """Reward "dev": steps only collect the episode; each evaluation after the first is one update
    with R = the metric change for every instance of the episode."""
    torch.manual_seed(0)
    selector = ReinforcedTeacherSelector(context(teachers=["t1", "t2"], classes=2), reward="dev", policy_lr=0.1)
    labels = torch.zeros(16, dtype=torch.long)
    zeros = {"student": {"logits": torch.zeros(16, 2)}, "t1": {"logits": torch.zeros(16, 2)},
             "t2": {"logits": torch.zeros(16, 2)}}
    before = [p.detach().clone() for p in selector.policy.parameters()]
    selector(zeros, SimpleNamespace(labels=labels))
    selector.after_step(SimpleNamespace(labels=labels), lambda: zeros["student"])
    assert selector._pending is None and len(selector._episode) == 1
    assert all(torch.equal(a, b) for a, b in zip(before, selector.policy.parameters()))  # no update per step
    selector.after_evaluation(0.70)  # the first evaluation sets the reference only
    assert selector._episode == [] and float(selector.reference) == pytest.approx(0.70)
    assert all(torch.equal(a, b) for a, b in zip(before, selector.policy.parameters()))
    # a bandit over episodes: the metric rises with the share of teacher-1 choices in the episode
    value = 0.70
    for _ in range(40):
        selector(zeros, SimpleNamespace(labels=labels))
        share = selector._episode[-1][1][:, 0].mean().item()
        value += share - 0.5
        selector.after_evaluation(value)
    assert selector.log_values()["selection_probability"]["t1"] > 0.7


def test_dev_reward_needs_a_dev_split(project):
    values = three_teachers(project)
    del values["data"]["dev"]
    distill = values["stages"][2]
    distill["losses"] = [{"block": "ReinforcedTeacherSelector", "reward": "dev", "weight": 0.5},
                         {"block": "CrossEntropy", "weight": 0.5}]
    for stage in values["stages"]:
        stage.pop("select", None)
    with pytest.raises(Exception, match=r"/stages/2/losses/0: ReinforcedTeacherSelector with reward 'dev'.*no dev split"):
        run(project, values)


def test_annealing_kd_steps_the_temperature_down_to_one():
    loss = AnnealingKD(context(teachers=["t1"]), max_temperature=4)
    loss.start(total_steps=100)
    assert [loss.temperature_at(s) for s in (0, 24, 25, 50, 75, 99, 500)] == [4, 4, 3, 2, 1, 1, 1]
    values = outputs()
    loss.set_step(0)
    s, t = values["student"]["logits"], values["t1"]["logits"]
    assert torch.allclose(loss(values, BATCH), (s - 0.25 * t).pow(2).mean())
    loss.set_step(99)
    assert loss.factor() == 1.0 and torch.allclose(loss(values, BATCH), (s - t).pow(2).mean())
    with pytest.raises(ValueError, match="max_temperature"):
        AnnealingKD(context(teachers=["t1"]), max_temperature=0)


# -- whole runs on the tiny dataset ---------------------------------------------------------------

def quiet(*args, **kwargs):
    pass


def three_teachers(project) -> dict:
    values = project.config()
    teacher = values["models"]["teacher"]
    values["models"] = {"t1": teacher, "t2": copy.deepcopy(teacher), "student": values["models"]["student"]}
    values["models"]["t2"]["graph"][1]["hidden"] = 4
    first = values["stages"][0]
    values["stages"] = [{**first, "name": "t1", "train": "t1"}, {**first, "name": "t2", "train": "t2"},
                        {**values["stages"][1], "teachers": ["t1", "t2"]}]
    return values


def run(project, values, name="run"):
    config = load_config(project.write(values), environ={})
    return train(config, run_dir=project.root / name, progress=False, log=quiet)


@pytest.mark.parametrize("loss", [
    {"block": "MultiTeacherKD", "weighting": "equal"},
    {"block": "MultiTeacherKD", "weighting": "gold_ce", "combine": "targets"},
])
def test_multi_teacher_run_logs_and_plots_the_teacher_weights(project, loss):
    values = three_teachers(project)
    values["stages"][2]["losses"] = [{**loss, "weight": 0.5}, {"block": "CrossEntropy", "weight": 0.5}]
    run(project, values)
    records = [json.loads(line) for line in (project.root / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval" and r["stage"] == "distill"]
    assert evals and all(set(r["teacher_weights"]) == {"t1", "t2"} for r in evals)
    assert all(abs(sum(r["teacher_weights"].values()) - 1) < 1e-6 for r in evals)
    from blocks.engine.plots import read_records, stage_panels

    plots = project.root / "run" / "plots"
    assert (plots / "distill-teacher-weights.png").read_bytes().startswith(b"\x89PNG")
    assert (plots / "distill-learning-curves.png").read_bytes().startswith(b"\x89PNG")
    drawn = stage_panels(read_records(project.root / "run" / "metrics.jsonl", "distill"))["teacher_weights"]
    assert set(drawn) == {"t1", "t2"} and all(len(points) == len(evals) for points in drawn.values())


@pytest.mark.parametrize("reward", ["ce_kd", "dev"])
def test_rl_selector_run_after_an_equal_weight_warm_up(project, reward):
    values = three_teachers(project)
    distill = values["stages"][2]
    distill["losses"] = [{"block": "MultiTeacherKD", "weight": 0.5}, {"block": "CrossEntropy", "weight": 0.5}]
    values["stages"].append({**distill, "name": "select", "losses": [
        {"block": "ReinforcedTeacherSelector", "state_output": "pool", "reward": reward, "weight": 0.5},
        {"block": "CrossEntropy", "weight": 0.5}]})
    summary = run(project, values)
    assert summary["models"]["student"]["dev"]["accuracy"] >= 0.9
    records = [json.loads(line) for line in (project.root / "run" / "metrics.jsonl").read_text().splitlines()]
    selected = [r for r in records if r["event"] == "eval" and r["stage"] == "select"]
    assert selected and all("selection_probability" in r for r in selected)
    assert (project.root / "run" / "plots" / "select-teacher-weights.png").is_file()


def test_annealing_then_cross_entropy_from_the_best_phase_one_model(project):
    values = project.config()
    distill = values["stages"][1]
    distill["losses"] = [{"block": "AnnealingKD", "max_temperature": 3}]
    values["stages"].append({"name": "finetune", "train": "student", "epochs": 1, "batch_size": 16,
                             "losses": [{"block": "CrossEntropy"}]})
    run(project, values)
    records = [json.loads(line) for line in (project.root / "run" / "metrics.jsonl").read_text().splitlines()]
    temperatures = [r["annealing_temperature"] for r in records if r["event"] == "eval" and r["stage"] == "distill"]
    assert temperatures == sorted(temperatures, reverse=True) and temperatures[-1] < 3


def test_a_loss_weight_can_follow_a_schedule(project):
    values = project.config()
    values["stages"][1]["losses"][1]["weight"] = {"type": "linear", "start": 0.0, "end": 1.0, "steps": 10}
    run(project, values)
    values["stages"][1]["losses"][1]["weight"] = {"type": "linear", "start": 0.0, "end": 1.0, "begin": 9,
                                                  "steps": 3}
    with pytest.raises(ConfigError, match="ends \\(step 3\\) before it starts \\(step 9\\)") as error:
        run(project, values, "bad")
    assert error.value.path == "/stages/1/losses/1/weight"


def test_a_selector_with_one_teacher_names_the_config_path(project):
    values = project.config()
    values["stages"][1]["losses"] = [{"block": "ReinforcedTeacherSelector"}]
    with pytest.raises(ConfigError, match="at least 2 teachers") as error:
        run(project, values)
    assert error.value.path == "/stages/1/losses/0"

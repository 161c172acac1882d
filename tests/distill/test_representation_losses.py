"""LogitL1 and RepresentationMatch: values by hand, inferred widths, errors, and training end to end."""
from __future__ import annotations

import pytest
import torch

from blocks.catalog import load_builtin_entries
from blocks.distill.losses import LogitL1, LossContext, RepresentationMatch
from blocks.errors import ConfigError
from blocks.registry import LOSSES
from blocks.values import Sequence, Spec

load_builtin_entries()


def context(student: dict, teacher: dict) -> LossContext:
    return LossContext(student="student", teachers=["teacher"],
                       output_of={"student": "logits", "teacher": "logits"},
                       node_specs={"student": {"logits": Spec("vector", 2), **student},
                                   "teacher": {"logits": Spec("vector", 2), **teacher}})


VECTORS = context({"h": Spec("vector", 4)}, {"h": Spec("vector", 4), "wide": Spec("vector", 6)})


def test_logit_l1_by_hand():
    student, teacher = torch.tensor([[1.0, -2.0], [0.5, 3.0]]), torch.tensor([[0.0, 0.0], [1.5, 1.0]])
    loss = LogitL1(VECTORS)
    value = loss({"student": {"logits": student}, "teacher": {"logits": teacher}}, None)
    assert value.item() == pytest.approx((1 + 2 + 1 + 2) / 4)
    assert loss.teacher_nodes() == [("teacher", "logits")]


@pytest.mark.parametrize("distance", ["mse", "l1", "cosine"])
def test_vector_distances_by_hand(distance):
    generator = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, 4, generator=generator), torch.randn(3, 4, generator=generator)
    loss = RepresentationMatch(VECTORS, output="h", teacher_output="h", distance=distance)
    assert loss.projection is None  # equal widths: identity
    value = loss({"student": {"h": s}, "teacher": {"h": t}}, None)
    if distance == "mse":
        expected = ((s - t) ** 2).mean()
    elif distance == "l1":
        expected = (s - t).abs().mean()
    else:
        cos = (s * t).sum(-1) / (s.norm(dim=-1) * t.norm(dim=-1))
        expected = (1 - cos).mean()
    assert value.item() == pytest.approx(expected.item(), abs=1e-6)
    assert loss.teacher_nodes() == [("teacher", "h")]


def test_projection_width_is_inferred():
    loss = RepresentationMatch(VECTORS, output="h", teacher_output="wide")
    assert isinstance(loss.projection, torch.nn.Linear)
    assert tuple(loss.projection.weight.shape) == (6, 4)  # student 4 -> teacher 6
    s, t = torch.randn(2, 4), torch.randn(2, 6)
    expected = ((loss.projection(s) - t) ** 2).mean()
    assert loss({"student": {"h": s}, "teacher": {"wide": t}}, None).item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="widths differ"):
        RepresentationMatch(VECTORS, output="h", teacher_output="wide", projection=False)


SEQUENCES = context({"seq": Spec("sequence", 3), "h": Spec("vector", 3)},
                    {"seq": Spec("sequence", 3), "tok": Spec("tokens")})


def test_sequence_average_over_real_positions():
    s = torch.randn(2, 3, 3)
    t = torch.randn(2, 3, 3)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    loss = RepresentationMatch(SEQUENCES, output="seq", teacher_output="seq", distance="l1")
    value = loss({"student": {"seq": Sequence(s, mask)}, "teacher": {"seq": Sequence(t, mask)}}, None)
    per_position = (s - t).abs().mean(-1)
    expected = (per_position[0, 0] + per_position[0, 1] + per_position[1, 0]) / 3
    assert value.item() == pytest.approx(expected.item(), abs=1e-6)


def test_sequence_length_mismatch_is_a_clear_error():
    loss = RepresentationMatch(SEQUENCES, output="seq", teacher_output="seq")
    student = Sequence(torch.randn(1, 3, 3), torch.tensor([[True, True, True]]))
    teacher = Sequence(torch.randn(1, 2, 3), torch.tensor([[True, True]]))
    with pytest.raises(ValueError, match="has 3 positions but teacher 'seq' has 2"):
        loss({"student": {"seq": student}, "teacher": {"seq": teacher}}, None)
    # extra padding alone is fine (a cached teacher keeps positions up to its last real one)
    padded = Sequence(torch.randn(1, 3, 3), torch.tensor([[True, True, False]]))
    assert torch.isfinite(loss({"student": {"seq": padded}, "teacher": {"seq": teacher}}, None))


def test_kind_mismatch_and_non_feature_nodes():
    with pytest.raises(ValueError, match=r"two vectors or two sequences; student 'h' is a vector\[3\], "
                                         r"teacher 'seq' is a sequence\[3\]"):
        RepresentationMatch(SEQUENCES, output="h", teacher_output="seq")
    with pytest.raises(ValueError, match="teacher 'tok' is a tokens"):
        RepresentationMatch(SEQUENCES, output="seq", teacher_output="tok")
    with pytest.raises(ValueError, match="has no node 'sek'; did you mean 'seq'"):
        RepresentationMatch(SEQUENCES, output="sek", teacher_output="seq")
    with pytest.raises(ValueError, match="unknown distance"):
        RepresentationMatch(SEQUENCES, output="seq", teacher_output="seq", distance="cos")


def test_output_and_teacher_output_are_required():
    names = {p.name: p for p in LOSSES.parameters("RepresentationMatch")}
    assert names["output"].required and names["teacher_output"].required
    assert all(p.doc for p in names.values())


def distill_config(project, loss: dict) -> dict:
    values = project.config()
    values["stages"][1]["losses"] = [loss, {"block": "CrossEntropy", "weight": 0.5}]
    return values


def test_kind_mismatch_through_build_losses(project):
    values = distill_config(project, {"block": "RepresentationMatch", "output": "pool", "teacher_output": "encoder"})
    experiment = project.prepare(values)
    with pytest.raises(ConfigError) as caught:
        experiment.build_losses(1)
    assert caught.value.path == "/stages/1/losses/0"
    assert "student 'pool' is a vector[8], teacher 'encoder' is a sequence[16]" in str(caught.value)


def test_widths_inferred_from_the_graphs(project):
    values = distill_config(project, {"block": "RepresentationMatch", "output": "pool", "teacher_output": "pool"})
    (_, loss), _ = project.prepare(values).build_losses(1)
    assert tuple(loss.projection.weight.shape) == (16, 8)


def test_missing_required_output_is_a_config_error(project):
    values = distill_config(project, {"block": "RepresentationMatch", "teacher_output": "pool"})
    with pytest.raises(ConfigError, match="output"):
        project.prepare(values).build_losses(1)


@pytest.mark.parametrize("cache", [True, False])
def test_training_end_to_end_moves_the_projection(project, tmp_path, monkeypatch, cache):
    from blocks.config.loader import load_config
    from blocks.engine import run as run_module
    from blocks.engine.run import train
    from blocks.experiment import Experiment

    values = distill_config(project, {"block": "RepresentationMatch", "output": "pool", "teacher_output": "pool",
                                      "distance": "cosine", "weight": 1.0})
    values["stages"][1]["cache_teachers"] = cache
    seen = {}
    original = Experiment.build_losses

    def spy(self, stage_index):
        losses = original(self, stage_index)
        for _, loss in losses:
            if isinstance(loss, RepresentationMatch):
                seen["loss"], seen["initial"] = loss, loss.projection.weight.detach().clone()
        return losses

    monkeypatch.setattr(Experiment, "build_losses", spy)
    train(load_config(project.write(values), environ={}), run_dir=tmp_path / "run", progress=False,
          log=lambda *a: None)
    assert "loss" in seen
    final = seen["loss"].projection.weight.detach().cpu()
    assert not torch.allclose(final, seen["initial"].cpu())


def test_training_with_a_sequence_match_and_cached_teacher(project, tmp_path):
    from blocks.config.loader import load_config
    from blocks.engine.run import train

    values = distill_config(project, {"block": "RepresentationMatch", "output": "embed", "teacher_output": "embed"})
    values["stages"][1]["cache_teachers"] = True
    train(load_config(project.write(values), environ={}), run_dir=tmp_path / "run", progress=False,
          log=lambda *a: None)
    assert (tmp_path / "run").is_dir()

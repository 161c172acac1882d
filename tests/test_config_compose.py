"""Composing configs: lists merged by name, null deletes, stage defaults, method fragments."""
from __future__ import annotations

import pytest

from blocks.config.loader import deep_merge, load_merged
from blocks.errors import ConfigError


def stage_names(values: dict) -> list[str]:
    return [stage["name"] for stage in values["stages"]]


def test_stages_given_as_an_object_merge_by_name(project):
    project.write(project.config(), "base.json")
    child = {"extends": "base.json",
             "stages": {"distill": {"epochs": 5, "losses": [{"block": "CrossEntropy"}]},
                        "finetune": {"train": "student", "epochs": 1}}}
    values = project.load(child, name="child.json").values
    assert stage_names(values) == ["teacher", "distill", "finetune"]  # a new name is appended
    distill = values["stages"][1]
    assert distill["epochs"] == 5
    assert distill["losses"] == [{"block": "CrossEntropy", "weight": 1.0}]  # a list inside is replaced
    assert distill["teachers"] == ["teacher"] and distill["optimizer"]["lr"] == 0.05  # the rest inherited
    assert values["stages"][0] == project.load(name="base.json").values["stages"][0]


def test_a_list_still_replaces_the_inherited_list(project):
    project.write(project.config(), "base.json")
    values = project.load({"extends": "base.json", "stages": [{"name": "only", "train": "teacher"}]},
                          name="child.json").values
    assert stage_names(values) == ["only"]


def test_graph_nodes_merge_by_name(project):
    project.write(project.config(), "base.json")
    child = {"extends": "base.json",
             "models": {"student": {"graph": {"pool": {"mode": "max"}, "embed": {"dim": 16}}}}}
    graph = project.load(child, name="child.json").values["models"]["student"]["graph"]
    assert [node["name"] for node in graph] == ["embed", "pool", "logits"]
    assert graph[0] == {"name": "embed", "block": "Embedding", "input": "tokens", "dim": 16}
    assert graph[1]["mode"] == "max"


def test_null_deletes_an_inherited_model_stage_and_setting(project):
    base = project.config()
    base["models"]["unused"] = base["models"]["student"]
    base["stages"][1]["grad_clip"] = 1.0
    project.write(base, "base.json")
    child = {"extends": "base.json", "models": {"unused": None},
             "stages": {"teacher": None, "distill": {"teachers": [], "losses": [{"block": "CrossEntropy"}],
                                                     "grad_clip": None}}}
    values = project.load(child, name="child.json").values
    assert set(values["models"]) == {"teacher", "student"}
    assert stage_names(values) == ["distill"]
    assert values["stages"][0]["grad_clip"] is None  # deleted, so the schema default (none) applies


def test_set_null_deletes_a_model(project):
    values = project.config()
    values["models"]["unused"] = values["models"]["student"]
    config = project.load(values, overrides=["models.unused=null"])
    assert "unused" not in config["models"]


def test_deleting_a_stage_that_is_not_there_names_the_path(project):
    project.write(project.config(), "base.json")
    with pytest.raises(ConfigError, match="there is no 'distil'.*did you mean 'distill'") as caught:
        project.load({"extends": "base.json", "stages": {"distil": None}}, name="child.json")
    assert caught.value.path == "/stages/distil"
    assert caught.value.file.endswith("child.json")


def test_merging_by_name_into_a_list_with_duplicate_names_is_ambiguous(project):
    base = project.config()
    base["stages"][1]["name"] = "teacher"
    project.write(base, "base.json")
    with pytest.raises(ConfigError, match="entries 0 and 1 are both named 'teacher'") as caught:
        project.load({"extends": "base.json", "stages": {"teacher": {"epochs": 1}}}, name="child.json")
    assert caught.value.path == "/stages"


def test_merging_by_name_into_a_list_without_names_is_an_error(project):
    base = project.config()
    base["task"]["metrics"] = ["accuracy"]
    project.write(base, "base.json")
    with pytest.raises(ConfigError, match="entry 0 has no \"name\"") as caught:
        project.load({"extends": "base.json", "task": {"metrics": {"f1": {}}}}, name="child.json")
    assert caught.value.path == "/task/metrics"


def test_an_entry_keyed_by_one_name_cannot_carry_another(project):
    project.write(project.config(), "base.json")
    with pytest.raises(ConfigError, match="keyed 'distill' is named 'other'") as caught:
        project.load({"extends": "base.json", "stages": {"distill": {"name": "other"}}}, name="child.json")
    assert caught.value.path == "/stages/distill/name"


def test_stages_as_an_object_in_a_file_that_extends_nothing(project):
    values = project.config()
    values["stages"] = {"teacher": {"train": "teacher"}, "distill": {"train": "student", "teachers": ["teacher"]}}
    assert stage_names(project.load(values).values) == ["teacher", "distill"]


def test_stage_defaults_fill_what_a_stage_does_not_state(project):
    values = project.config()
    values["stage_defaults"] = {"epochs": 7, "batch_size": 4, "optimizer": {"type": "sgd"}, "grad_clip": 2.0}
    values["stages"][1]["grad_clip"] = None  # null deletes a default as it deletes an inherited key
    config = project.load(values)
    teacher, distill = config["stages"]
    assert (teacher["epochs"], teacher["batch_size"]) == (2, 16)  # stated: kept
    assert teacher["optimizer"] == {"type": "adam", "lr": 0.02}  # objects merge: the stage's type wins
    assert distill["optimizer"]["type"] == "adam"
    assert teacher["grad_clip"] == 2.0 and distill["grad_clip"] is None
    assert "stage_defaults" not in config.values  # the resolved config lists every stage in full


def test_stage_defaults_from_a_fragment_and_set(project):
    project.write({"stage_defaults": {"epochs": 4, "eval_every": 10}}, "defaults.json")
    project.write(project.config(), "base.json")
    child = {"extends": ["base.json", "defaults.json"], "stages": {"teacher": {"epochs": None}}}
    config = project.load(child, overrides=["stage_defaults.eval_every=20"], name="child.json")
    assert [s["epochs"] for s in config["stages"]] == [4, 2]
    assert [s["eval_every"] for s in config["stages"]] == [20, 20]


def test_stage_defaults_reject_an_unknown_setting(project):
    values = project.config()
    values["stage_defaults"] = {"epoch": 3}
    with pytest.raises(ConfigError, match="unknown stage setting 'epoch'.*did you mean 'epochs'") as caught:
        project.load(values)
    assert caught.value.path == "/stage_defaults/epoch"


def test_load_merged_applies_stage_defaults(project):
    values = project.config()
    values["stage_defaults"] = {"eval_every": 5}
    merged = load_merged(project.write(values))
    assert [s["eval_every"] for s in merged["stages"]] == [5, 5]
    assert "stage_defaults" not in merged


def test_deep_merge_keeps_null_where_nothing_is_inherited():
    assert deep_merge({}, {"a": None, "b": {"c": None}}) == {"a": None, "b": {"c": None}}
    assert deep_merge({"a": 1, "b": {"c": 2, "d": 3}}, {"a": None, "b": {"c": None}}) == {"b": {"d": 3}}


def test_set_names_a_stage_or_node_by_name(project):
    config = project.load(overrides=["stages.distill.epochs=1", "models.student.graph.pool.mode=max"])
    assert [s["epochs"] for s in config["stages"]] == [2, 1]
    assert config["models"]["student"]["graph"][1]["mode"] == "max"
    config = project.load(overrides=["stages.1=null"])
    assert [s["name"] for s in config["stages"]] == ["teacher"]


def test_set_with_an_unknown_name_lists_the_names(project):
    with pytest.raises(ConfigError, match=r"/stages/distil is not an index or the name of an entry of a list of 2 "
                                          r"items; did you mean 'distill'\? \(names: teacher, distill\)"):
        project.load(overrides=["stages.distil.epochs=1"])
    with pytest.raises(ConfigError, match=r"/task/metrics/5 is not an index of an entry of a list of 2 items$"):
        project.load(overrides=["task.metrics.5=f1"])

"""Reading config files: JSON errors, extends, --set overrides, the data root, validation, defaults."""
from __future__ import annotations

import json
import os

import pytest

from blocks.config.loader import deep_merge, load_config, parse_override
from blocks.errors import ConfigError


def test_json_syntax_error_names_file_line_and_column(project):
    text = '{\n  "data": {"train": "train.tsv"},\n  "models": {,}\n}\n'
    path = project.write(text, "broken.json")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    error = caught.value
    assert error.file == str(path)
    assert "JSON syntax error at line 3, column 14" in error.message
    assert str(error).startswith(f"{path}: ")


def test_missing_config_file(project):
    with pytest.raises(ConfigError, match="file not found") as caught:
        load_config(project.root / "nope.json", environ={})
    assert caught.value.file.endswith("nope.json")


def test_extends_merges_objects_and_replaces_lists(project):
    base = project.config()
    base["task"] = {"metrics": ["accuracy", "f1"], "positive_label": "1"}
    project.write(base, "base.json")
    child = {"extends": "base.json",
             "task": {"metrics": ["f1"]},  # a list: replaced, not appended
             "stages": [{"name": "only", "train": "student"}],  # replaced entirely
             "models": {"student": {"graph": [{"name": "embed", "block": "Embedding", "input": "tokens", "dim": 4},
                                              {"name": "pool", "block": "Pooling"},
                                              {"name": "logits", "block": "Linear"}]}}}
    config = load_config(project.write(child, "child.json"), environ={})
    values = config.values
    assert values["task"]["metrics"] == ["f1"]
    assert values["task"]["positive_label"] == "1"  # merged from the parent
    assert [s["name"] for s in values["stages"]] == ["only"]
    # objects merge key by key: the student keeps its parent's inputs, gets the child's graph
    assert values["models"]["student"]["inputs"]["tokens"]["field"] == "text"
    assert values["models"]["student"]["graph"][0]["dim"] == 4
    assert "teacher" in values["models"]
    assert "extends" not in values
    # the parent's relative data root is resolved against the parent's folder
    assert values["data"]["root"] == str(project.root / "data")


def test_extends_from_another_folder_resolves_data_root_there(project):
    (project.root / "sub").mkdir()
    project.write(project.config(), "base.json")
    child = {"extends": "../base.json", "seed": 99}
    config = load_config(project.write(child, "sub/child.json"), environ={})
    assert config["seed"] == 99
    assert config["data"]["root"] == str(project.root / "data")


def test_extends_cycle_is_an_error(project):
    project.write({"extends": "b.json", "seed": 1}, "a.json")
    project.write({"extends": "a.json", "seed": 2}, "b.json")
    with pytest.raises(ConfigError, match="'extends' forms a cycle") as caught:
        load_config(project.root / "a.json", environ={})
    assert caught.value.path == "/extends"
    assert "a.json -> " in caught.value.message and "b.json" in caught.value.message


def test_extends_missing_parent(project):
    path = project.write({"extends": ["missing.json"]}, "child.json")
    with pytest.raises(ConfigError, match="extended file not found") as caught:
        load_config(path, environ={})
    assert caught.value.path == "/extends/0"


def test_deep_merge_does_not_modify_its_arguments():
    base = {"a": {"b": [1, 2], "c": 1}}
    merged = deep_merge(base, {"a": {"b": [3]}})
    assert merged == {"a": {"b": [3], "c": 1}}
    assert base == {"a": {"b": [1, 2], "c": 1}}


def test_parse_override_dotted_slash_and_json_values():
    assert parse_override("stages.0.epochs=3") == (["stages", "0", "epochs"], 3)
    assert parse_override("/stages/0/epochs=3") == (["stages", "0", "epochs"], 3)
    assert parse_override("task.metrics=[\"f1\"]") == (["task", "metrics"], ["f1"])
    assert parse_override("seed=null") == (["seed"], None)
    assert parse_override("name=hello world") == (["name"], "hello world")
    assert parse_override("stages.0.optimizer={\"type\": \"sgd\", \"lr\": 0.1}")[1] == {"type": "sgd", "lr": 0.1}
    with pytest.raises(ConfigError, match="--set expects path=value"):
        parse_override("stages.0.epochs")


def test_set_overrides_are_applied(project):
    config = project.load(overrides=["stages.0.epochs=5", "/stages/1/batch_size=8", "seed=21",
                                     "task.metrics=[\"f1\"]", "models.student.graph.0.dim=4",
                                     "stages.1.optimizer={\"type\": \"sgd\", \"lr\": 0.5}"])
    assert config["stages"][0]["epochs"] == 5
    assert config["stages"][1]["batch_size"] == 8
    assert config["seed"] == 21
    assert config["task"]["metrics"] == ["f1"]
    assert config["models"]["student"]["graph"][0]["dim"] == 4
    assert config["stages"][1]["optimizer"] == {"type": "sgd", "lr": 0.5}


def test_set_list_index_out_of_range(project):
    with pytest.raises(ConfigError) as caught:
        project.load(overrides=["stages.5.epochs=2"])
    assert "--set stages.5.epochs=2: /stages/5 is not an index or the name of an entry of a list of 2 items" in str(caught.value)
    with pytest.raises(ConfigError, match="/stages/x is not an index"):
        project.load(overrides=["stages.x.epochs=2"])


def test_set_through_a_scalar_is_an_error(project):
    with pytest.raises(ConfigError, match="/seed/x is inside a int"):
        project.load(overrides=["seed.x=1"])


def test_set_value_is_validated(project):
    with pytest.raises(ConfigError) as caught:
        project.load(overrides=["stages.0.epochs=0"])
    assert caught.value.path == "/stages/0/epochs"
    assert "less than or equal to the minimum of 0" in caught.value.message


def test_data_root_environment_variable_and_set(project, tmp_path):
    path = project.write(project.config())
    default = load_config(path, environ={})
    assert default["data"]["root"] == str(project.root / "data")
    other = tmp_path / "elsewhere"
    from_env = load_config(path, environ={"DISTILBLOCKS_DATA": str(other)})
    assert from_env["data"]["root"] == str(other)
    both = load_config(path, ["data.root=/srv/data"], environ={"DISTILBLOCKS_DATA": str(other)})
    assert both["data"]["root"] == "/srv/data"
    # a relative --set data.root is relative to the working directory (the project fixture's cwd)
    relative = load_config(path, ["data.root=mine"], environ={"DISTILBLOCKS_DATA": str(other)})
    assert relative["data"]["root"] == os.path.join(os.getcwd(), "mine")


def test_environment_variable_is_read_from_os_environ(project, monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILBLOCKS_DATA", str(tmp_path / "env_data"))
    config = load_config(project.write(project.config()))
    assert config["data"]["root"] == str(tmp_path / "env_data")


def test_unknown_top_level_key_suggests_the_known_one(project):
    values = project.config()
    values["stagse"] = values.pop("stages")
    with pytest.raises(ConfigError) as caught:
        project.load(values)
    error = caught.value
    # 'stages' is now missing too; the unknown key is the more useful message
    assert error.path == "/stagse"
    assert "unknown key 'stagse'; did you mean 'stages'?" in error.message


def test_unknown_stage_key_suggests(project):
    values = project.config()
    values["stages"][0]["epcohs"] = 2
    with pytest.raises(ConfigError) as caught:
        project.load(values)
    assert caught.value.path == "/stages/0/epcohs"
    assert "did you mean 'epochs'?" in caught.value.message


def test_defaults_are_filled(project):
    values = project.config()
    values["stages"] = [{"name": "s", "train": "student"}]
    del values["task"]
    config = project.load(values)
    stage = config["stages"][0]
    assert stage["epochs"] == 3
    assert stage["batch_size"] == 32
    assert stage["eval_batch_size"] == 256
    assert stage["losses"] == [{"block": "CrossEntropy", "weight": 1.0}]
    assert stage["teachers"] == []
    assert stage["optimizer"] == {"type": "adam", "lr": 0.001}
    assert stage["accumulate"] == 1 and stage["eval_every"] == 0 and stage["log_every"] == 50
    assert stage["early_stopping"] is None and stage["max_steps"] is None
    assert config["task"] == {"type": "classification", "labels": None, "positive_label": None,
                              "metrics": ["accuracy"]}
    assert config["imports"] == []
    assert config["run_dir"] is None and config["precision"] == "fp32"
    assert config["data"]["group"] is None
    student_input = config["models"]["student"]["inputs"]["tokens"]
    assert student_input["tokenizer"] == "treebank" and student_input["vocab"] == "words"
    # explicit values are kept
    assert project.load()["seed"] == 3


def test_resolved_config_is_json_and_imports_are_absolute(project):
    values = project.config()
    values["imports"] = ["my_blocks.py", "some.module"]
    config = project.load(values)
    assert config["imports"] == [str(project.root / "my_blocks.py"), "some.module"]
    assert json.loads(json.dumps(config.values)) == config.values
    assert config.base_dir == project.root


def test_run_directories_in_overrides_are_relative_to_where_the_command_runs(project, tmp_path, monkeypatch):
    """Whether the override names the run path itself or a whole model object holding it."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    values = project.config()
    values["data"]["root"] = str(project.root / "data")
    path = folder / "config.json"
    path.write_text(json.dumps(values), encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    teachers = 'stages.1.teachers=["teacher","extra"]'
    for override in ('models.extra={"run": "runs/t"}', 'models.extra.run=runs/t'):
        extra = [] if override.startswith('models.extra={') else ['models.extra={"run": "x"}']
        with pytest.raises(ConfigError, match="run directory not found") as error:
            load_config(path, [*extra, override, teachers], environ={})
        assert str(elsewhere / "runs" / "t") in str(error.value)
        assert error.value.path == "/models/extra/run"

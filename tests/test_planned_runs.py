"""A teacher from a run that does not exist yet: ``{"run": ..., "recipe": ...}`` validates through
the recipe that makes the run, and training says how to make it."""
from __future__ import annotations

import pytest

from blocks.cli import main
from blocks.config.loader import load_config
from blocks.config.run_models import PlannedRun
from blocks.errors import ConfigError


def write_recipes(project, teacher_vocab=None) -> tuple:
    """teacher.json (trains the teacher) and student.json (distils it, taken from runs/teacher)."""
    teacher = project.single_stage()
    if teacher_vocab:
        teacher["vocabularies"] = {"words": teacher_vocab}
    project.write(teacher, "teacher.json")
    student = project.config()
    student["models"]["teacher"] = {"run": "runs/teacher", "recipe": "teacher.json"}
    student["stages"] = student["stages"][1:]
    return teacher, student


def test_a_planned_run_takes_its_graph_from_the_recipe(project):
    teacher, student = write_recipes(project, teacher_vocab={"min_freq": 2})
    config = load_config(project.write(student, "student.json"), environ={}, planned_runs=True)
    assert config.planned_runs == [PlannedRun(str(project.root / "runs" / "teacher"), str(project.root / "teacher.json"))]
    model = config["models"]["teacher"]
    assert model["graph"] == teacher["models"]["teacher"]["graph"]
    assert model["model"] == "teacher" and model["run"] == str(project.root / "runs" / "teacher")
    assert model["inputs"]["tokens"]["vocab"] == "teacher.words"
    assert config["vocabularies"]["teacher.words"] == {"min_freq": 2, "max_size": None}  # the recipe's options
    assert "recipe" not in model


def test_validate_checks_the_shapes_and_names_the_runs_still_needed(project, capsys):
    _, student = write_recipes(project)
    assert main(["validate", str(project.write(student, "student.json"))]) == 0
    out = capsys.readouterr().out
    assert "model 'teacher'" in out and "valid" in out
    assert "runs still needed" in out
    assert f"blocks train {project.root / 'teacher.json'}" in out or "blocks train" in out
    assert "--run-dir" in out and "teacher" in out


def test_a_shape_error_in_the_planned_teacher_is_reported(project, capsys):
    teacher, student = write_recipes(project)
    teacher["models"]["teacher"]["graph"][1]["hiden"] = 8
    project.write(teacher, "teacher.json")
    assert main(["validate", str(project.write(student, "student.json"))]) == 2
    assert "hiden" in capsys.readouterr().err


def test_training_refuses_a_missing_run_with_the_command_that_makes_it(project):
    _, student = write_recipes(project)
    with pytest.raises(ConfigError, match=r"run directory not found: .*runs/teacher; blocks train .*teacher.json "
                                          r"--run-dir .*runs/teacher makes it") as caught:
        load_config(project.write(student, "student.json"), environ={})
    assert caught.value.path == "/models/teacher/run"


def test_runs_needed_by_the_recipe_itself_are_listed(project):
    _, student = write_recipes(project)
    project.write(student, "student.json")
    third = project.config()
    third["models"]["teacher"] = {"run": "runs/student", "recipe": "student.json", "model": "student"}
    third["stages"] = third["stages"][1:]
    config = load_config(project.write(third, "third.json"), environ={}, planned_runs=True)
    assert [run.recipe for run in config.planned_runs] == [str(project.root / "student.json"),
                                                         str(project.root / "teacher.json")]
    assert config["models"]["teacher"]["graph"] == student["models"]["student"]["graph"]


def test_recipe_needs_run_and_must_exist(project):
    values = project.config()
    values["models"]["teacher"]["recipe"] = "teacher.json"
    with pytest.raises(ConfigError, match="give it beside \"run\"") as caught:
        project.load(values)
    assert caught.value.path == "/models/teacher/recipe"
    _, student = write_recipes(project)
    student["models"]["teacher"]["recipe"] = "missing.json"
    with pytest.raises(ConfigError, match="recipe not found: .*missing.json") as caught:
        load_config(project.write(student, "student.json"), environ={}, planned_runs=True)
    assert caught.value.path == "/models/teacher/recipe"


def test_recipes_that_need_each_other_are_a_cycle(project):
    _, student = write_recipes(project)
    student["models"]["teacher"] = {"run": "runs/a", "recipe": "student.json", "model": "student"}
    with pytest.raises(ConfigError, match="form a cycle"):
        load_config(project.write(student, "student.json"), environ={}, planned_runs=True)


def test_the_command_for_a_seeded_run_sets_the_seed():
    command = PlannedRun("/r/runs/mrpc/minilm_teacher-seed2", "/r/model_zoo/mrpc/minilm_teacher.json").command()
    assert command.startswith("blocks train ") and "minilm_teacher-seed2 --set seed=2" in command
    assert "--set seed" not in PlannedRun("/r/runs/teacher", "/r/teacher.json").command()

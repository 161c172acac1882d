"""Models taken from finished run directories: ``{"run": ..., "model": ...}`` as teachers."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from blocks.config.loader import load_config
from blocks.engine.checkpoint import load_checkpoint
from blocks.engine.teacher_cache import cache_folders
from blocks.engine import run as run_module
from blocks.engine.run import format_summary, load_run, train
from blocks.errors import ConfigError


def quiet(*args, **kwargs):
    pass


def run(project, values, run_dir, name="config.json"):
    config = load_config(project.write(values, name), environ={})
    return train(config, run_dir=project.root / run_dir, progress=False, log=quiet)


@pytest.fixture
def teacher_run(project):
    values = project.single_stage()
    values["vocabularies"] = {"words": {"min_freq": 2}}  # differs from the student's: must be read from the run
    run(project, values, "teacher_run", "teacher.json")
    return project.root / "teacher_run"


def student_config(project, **teacher):
    values = project.config()
    values["models"]["teacher"] = {"run": "teacher_run", **teacher}
    values["stages"] = values["stages"][1:]
    return values


def test_a_teacher_from_a_finished_run_teaches_with_its_own_weights_and_vocabulary(project, teacher_run):
    summary = run(project, student_config(project), "student_run")
    teacher_weights, _ = load_checkpoint(teacher_run / "models" / "teacher.safetensors")
    copied, _ = load_checkpoint(project.root / "student_run" / "models" / "teacher.safetensors")
    assert teacher_weights.keys() == copied.keys()
    assert all(torch.equal(teacher_weights[k], copied[k]) for k in teacher_weights)
    # on one file system the "copy" is a hard link: the weights are on disk once
    assert os.path.samefile(teacher_run / "models" / "teacher.safetensors",
                            project.root / "student_run" / "models" / "teacher.safetensors")
    # The teacher scores in the new run exactly as it did in its own run.
    own = json.loads((teacher_run / "summary.json").read_text())["models"]["teacher"]
    assert summary["models"]["teacher"]["dev"] == own["dev"]
    assert summary["models"]["teacher"]["role"] == "teacher"
    assert (project.root / "student_run" / "vocab" / "teacher.words.txt").read_text() == \
        (teacher_run / "vocab" / "words.txt").read_text()
    # The new run is self-contained: it still loads with the teacher's run deleted.
    shutil.rmtree(teacher_run)
    _, experiment, _ = load_run(project.root / "student_run", log=quiet)
    assert set(experiment.models) == {"teacher", "student"}


def test_the_model_key_chooses_a_model_of_the_run(project):
    run(project, project.config(), "both")
    values = project.config()
    values["models"] = {"old_student": {"run": "both", "model": "student"}, "student": values["models"]["student"]}
    values["stages"] = [{**values["stages"][1], "teachers": ["old_student"]}]
    config = load_config(project.write(values), environ={})
    assert config["models"]["old_student"]["graph"] == project.config()["models"]["student"]["graph"]


@pytest.mark.parametrize("teacher, message, where", [
    ({"run": "nowhere"}, "run directory not found", "/models/teacher/run"),
    ({"run": "teacher_run", "model": "studnt"}, "has no model 'studnt'", "/models/teacher/model"),
    ({"model": "teacher"}, "'run' is a dependency of 'model'", "/models/teacher"),
])
def test_bad_run_references_name_the_config_path(project, teacher_run, teacher, message, where):
    values = project.config()
    values["models"]["teacher"] = teacher
    values["stages"] = values["stages"][1:]
    with pytest.raises(ConfigError) as error:
        load_config(project.write(values), environ={})
    assert message in str(error.value) and error.value.path == where


def test_run_models_no_stage_names_are_left_out_and_need_not_exist(project, teacher_run):
    """A base config lists every teacher of a comparison; a recipe using one runs without the others."""
    values = student_config(project)
    values["models"]["spare"] = {"run": "nowhere"}  # no stage names it
    values["models"]["unfinished"] = {"run": "teacher_run", "model": "studnt"}
    config = load_config(project.write(values), environ={})
    assert set(config["models"]) == {"teacher", "student"}
    # named anywhere in a stage (here as a teacher), it is loaded and checked as before
    values["stages"][0]["teachers"] = ["teacher", "spare"]
    with pytest.raises(ConfigError, match="run directory not found") as error:
        load_config(project.write(values), environ={})
    assert error.value.path == "/models/spare/run"


def test_an_unfinished_run_is_refused(project, teacher_run):
    progress = json.loads((teacher_run / "progress.json").read_text())
    (teacher_run / "progress.json").write_text(json.dumps({**progress, "models": {}}))
    with pytest.raises(ConfigError, match="has not finished training"):
        load_config(project.write(student_config(project)), environ={})


def test_a_teacher_with_other_labels_is_refused(project, teacher_run):
    values = student_config(project)
    values["task"]["labels"] = ["1", "0"]
    with pytest.raises(ConfigError, match="predicts the labels") as error:
        run(project, values, "student_run")
    assert error.value.path == "/models/teacher/run"
    assert not (project.root / "student_run").exists()


def test_runs_sharing_a_cache_folder_compute_the_teacher_once(project, teacher_run):
    from blocks.engine import teacher_cache

    builds = []
    original = teacher_cache._build

    def counting(*args, **kwargs):
        builds.append(args[1])
        return original(*args, **kwargs)

    teacher_cache._build = counting
    try:
        values = student_config(project)
        values["cache_dir"] = "shared_cache"
        for seed in (1, 2):
            run(project, {**values, "seed": seed}, f"seed{seed}")
    finally:
        teacher_cache._build = original
    assert len(builds) == 1  # the second seed reused the first one's teacher outputs
    assert len(cache_folders(project.root / "shared_cache")) == 1
    assert not (project.root / "seed2" / "cache").exists()


def test_a_teacher_from_a_run_on_the_same_data_keeps_its_scores(project, teacher_run, monkeypatch):
    timed = []
    original = run_module.throughput

    def counting(experiment, name, *args, **kwargs):
        timed.append(name)
        return original(experiment, name, *args, **kwargs)

    monkeypatch.setattr(run_module, "throughput", counting)
    summary = run(project, student_config(project), "student_run")
    own = json.loads((teacher_run / "summary.json").read_text())["models"]["teacher"]
    entry = summary["models"]["teacher"]
    assert entry["scores_from"] == str(teacher_run / "summary.json")
    assert entry["dev"] == own["dev"] and entry["test"] == own["test"]
    # the speedup is a ratio of speeds timed in one process: the teacher is timed again here
    assert sorted(timed) == ["student", "teacher"] and "examples_per_second_batch64_from" not in entry
    student = summary["models"]["student"]
    assert student["speedup_vs_teacher"] == round(
        student["examples_per_second_batch64"] / entry["examples_per_second_batch64"], 2)
    # on other data the teacher is evaluated afresh
    values = student_config(project)
    values["data"]["test"] = "dev.tsv"
    summary = run(project, values, "other_data")
    assert "scores_from" not in summary["models"]["teacher"]
    assert summary["models"]["teacher"]["test"] == summary["models"]["teacher"]["dev"]


def test_only_the_first_teacher_is_timed_again_the_others_keep_their_runs_speed(project, teacher_run):
    values = student_config(project)
    values["models"]["second"] = {"run": "teacher_run"}
    values["stages"][0]["teachers"] = ["teacher", "second"]
    values["stages"][0]["losses"][0] = {"block": "MultiTeacherKD", "weighting": "equal", "weight": 0.7}
    summary = run(project, values, "two_teachers")
    own = json.loads((teacher_run / "summary.json").read_text())["models"]["teacher"]
    second = summary["models"]["second"]
    assert second["examples_per_second_batch64"] == own["examples_per_second_batch64"]
    assert second["examples_per_second_batch64_from"] == str(teacher_run / "summary.json")
    assert "examples_per_second_batch64_from" not in summary["models"]["teacher"]
    assert "speedup_vs_teacher" in summary["models"]["student"]
    assert "(timed in its own run)" in format_summary(summary).splitlines()[3]

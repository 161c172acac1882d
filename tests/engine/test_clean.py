"""Disk space: completed stages drop their resumable state; ``blocks clean`` tidies older runs."""
from __future__ import annotations

import json
import os

import pytest
import torch

from blocks.cli import main
from blocks.config.loader import load_config
from blocks.engine.checkpoint import load_checkpoint, save_checkpoint
from blocks.engine.clean import clean_runs
from blocks.engine.run import train


def quiet(*args, **kwargs):
    pass


def run(project, values, run_dir, name="config.json", resume=False):
    config = load_config(project.write(values, name), environ={})
    return train(config, run_dir=project.root / run_dir, resume=resume, progress=False, log=quiet)


def checkpoints(root):
    return sorted(str(p.relative_to(root)) for p in (root / "stages").rglob("*.safetensors"))


def weights(path):
    return load_checkpoint(path)[0]


@pytest.fixture
def kept_run(project):
    values = project.config()
    values["keep_checkpoints"] = True
    summary = run(project, values, "kept")
    return project.root / "kept", values, summary


def test_clean_deletes_completed_stages_state_and_the_run_still_tests_and_resumes(project, kept_run, capsys):
    root, values, summary = kept_run
    assert checkpoints(root) == ["stages/distill/best.safetensors", "stages/distill/last.safetensors",
                                 "stages/teacher/best.safetensors", "stages/teacher/last.safetensors"]
    size = sum((root / c).stat().st_size for c in checkpoints(root))

    assert main(["clean", str(root), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"delete {root / 'stages/teacher/last.safetensors'}" in out and "would free" in out
    assert len(checkpoints(root)) == 4  # a dry run changes nothing

    before = weights(root / "models" / "student.safetensors")
    report = clean_runs([project.root])  # a folder holding runs
    assert report.runs == 1 and report.freed == size and checkpoints(root) == []
    assert (root / "stages" / "teacher" / "state.json").is_file()
    # test and resume work on the cleaned run: resume trains nothing, the weights are the same
    assert main(["test", str(root)]) == 0
    tested = capsys.readouterr().out
    assert "student" in tested
    again = run(project, values, "kept", resume=True)
    assert again["models"]["student"]["dev"] == summary["models"]["student"]["dev"]
    after = weights(root / "models" / "student.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    # a second clean has nothing left to do
    assert clean_runs([root]).freed == 0


def test_clean_keeps_an_unfinished_stage_resumable(project, kept_run):
    root, _, _ = kept_run
    progress = json.loads((root / "progress.json").read_text())
    progress["completed_stages"] = ["teacher"]  # as if the run had stopped during distillation
    (root / "progress.json").write_text(json.dumps(progress))
    clean_runs([root])
    assert checkpoints(root) == ["stages/distill/best.safetensors", "stages/distill/last.safetensors"]


def test_clean_turns_a_teacher_copy_into_a_link_only_when_the_weights_are_equal(project):
    teacher = project.single_stage()
    run(project, teacher, "teacher_run", "teacher.json")
    student = project.config()
    student["models"]["teacher"] = {"run": "teacher_run"}
    student["stages"] = student["stages"][1:]
    run(project, student, "student_run", "student.json")
    source = project.root / "teacher_run" / "models" / "teacher.safetensors"
    copy = project.root / "student_run" / "models" / "teacher.safetensors"
    assert os.path.samefile(source, copy)  # the engine links

    # a copy written by an older version: a file of its own with the same weights
    tensors, _ = load_checkpoint(source)
    copy.unlink()
    save_checkpoint(copy, tensors, {"from_run": "teacher_run", "model": "teacher"})
    assert not os.path.samefile(source, copy)
    report = clean_runs([project.root / "student_run"])
    assert report.linked == 1 and os.path.samefile(source, copy)

    # the source re-trained since: the copy holds the only weights the student run was taught with
    copy.unlink()
    save_checkpoint(copy, tensors, {})
    changed = {k: v + 1 if v.is_floating_point() else v for k, v in tensors.items()}
    source.unlink()
    save_checkpoint(source, changed, {})
    assert clean_runs([project.root / "student_run"]).linked == 0
    assert not os.path.samefile(source, copy)
    assert all(torch.equal(tensors[k], weights(copy)[k]) for k in tensors)


def test_clean_cache_deletes_the_teacher_cache(project, kept_run):
    root, _, _ = kept_run
    cached = sum(f.stat().st_size for f in (root / "cache").rglob("*") if f.is_file())
    assert cached > 0  # the distill stage cached its teacher's outputs
    assert clean_runs([root]).freed > 0 and (root / "cache").is_dir()
    assert clean_runs([root], cache=True).freed == cached and not (root / "cache").exists()


def test_clean_of_a_missing_path_names_it(project, capsys):
    assert main(["clean", str(project.root / "nowhere")]) == 2
    assert f"{project.root / 'nowhere'}: no such file or directory" in capsys.readouterr().err


def test_share_weights_copies_where_hard_links_fail(tmp_path, monkeypatch):
    from blocks.engine import clean

    source = tmp_path / "a" / "teacher.safetensors"
    source.parent.mkdir()
    tensors = {"w": torch.arange(6.0).reshape(2, 3)}
    save_checkpoint(source, tensors, {"model": "teacher"})
    assert clean.share_weights(source, tmp_path / "b" / "linked.safetensors", tensors, {})
    assert os.path.samefile(source, tmp_path / "b" / "linked.safetensors")

    def no_links(*args):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(clean.os, "link", no_links)
    target = tmp_path / "c" / "copied.safetensors"
    assert not clean.share_weights(source, target, tensors, {"from_run": "a"})
    assert not os.path.samefile(source, target)
    copied, state = load_checkpoint(target)
    assert torch.equal(copied["w"], tensors["w"]) and state == {"from_run": "a"}
    assert not list(target.parent.glob("*.link"))  # no partial file left behind

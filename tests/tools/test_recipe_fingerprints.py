"""The recipes resolve to the configs they resolved to before they were composed from fragments.

tests/recipe_fingerprints.json was recorded from the 123 recipes as they were written out in full
(every stage, loss and setting in each file); each recipe now extends a models fragment and a
method fragment and states only what differs, and must resolve (``load_merged``) to exactly the
same config.
"""
from __future__ import annotations

import json

from tests.tools.test_benchmarks import load_tool

fingerprints = load_tool("recipe_fingerprints")


def test_every_recorded_recipe_resolves_as_it_did():
    assert len(fingerprints.recorded()) >= 123
    assert fingerprints.differences() == []


def test_a_changed_recipe_is_reported(tmp_path, monkeypatch):
    recipe = fingerprints.ROOT / "benchmarks" / "mrpc" / "student_kd_best.json"
    changed = json.loads(recipe.read_text(encoding="utf-8"))
    changed["extends"] = [str(recipe.parent / parent) for parent in changed["extends"]]
    copy = tmp_path / "student_kd_best.json"
    copy.write_text(json.dumps(changed), encoding="utf-8")
    table = {"model_zoo/mrpc/student_kd_best.json": {"path": str(copy), "sha256": fingerprints.fingerprint(recipe)}}
    monkeypatch.setattr(fingerprints, "FINGERPRINTS", tmp_path / "fingerprints.json")
    (tmp_path / "fingerprints.json").write_text(json.dumps(table))
    assert fingerprints.differences() == []  # the same config from another folder
    copy.write_text(json.dumps({**changed, "stages": {"distill": {"epochs": 7}}}), encoding="utf-8")
    assert fingerprints.differences() == [
        f"model_zoo/mrpc/student_kd_best.json: {copy} resolves to a different config than it did"]
    copy.unlink()
    assert fingerprints.differences() == [f"model_zoo/mrpc/student_kd_best.json: {copy} is missing"]


def test_fingerprints_do_not_depend_on_the_checkout_folder():
    text = fingerprints.canonical(fingerprints.ROOT / "benchmarks" / "mrpc" / "student_kd_best.json")
    assert str(fingerprints.ROOT) not in text and "<parent>/shared/data" in text

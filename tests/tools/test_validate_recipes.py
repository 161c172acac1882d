"""tools/validate_recipes.py: blocks validate over many recipes, summarised."""
from __future__ import annotations

from tests.tools.test_benchmarks import load_tool


def test_validate_recipes_summarises_valid_planned_and_failing_recipes(project, capsys):
    tool = load_tool("validate_recipes")
    teacher = project.single_stage()
    project.write(teacher, "teacher.json")
    student = project.config()
    student["models"]["teacher"] = {"run": "runs/teacher", "recipe": "teacher.json"}
    student["stages"] = student["stages"][1:]
    broken = project.config()
    broken["stages"][0]["losses"] = [{"block": "KD", "temprature": 2}]
    paths = [project.root / "teacher.json", project.write(student, "student.json"), project.write(broken, "broken.json")]
    assert tool.main([str(p) for p in paths]) == 1
    out = capsys.readouterr().out
    assert "teacher.json | valid |" in out
    assert "student.json | valid once its runs are made |" in out
    assert "broken.json | error: " in out and "temprature" in out
    assert "2 of 3 recipes valid (1 failed); 1 runs still needed:" in out
    assert "blocks train teacher.json --run-dir runs/teacher" in out

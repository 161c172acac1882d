"""tools/stream_report.py: the table of stream runs and the share of the gap a recipe closes."""
from __future__ import annotations

import json
from pathlib import Path

from tools.stream_report import main, read_runs, table


def write_run(folder: Path, name: str, finals: list[float]) -> None:
    orders = {f"order{i + 1}": {"order": ["a", "b"] if i == 0 else ["b", "a"], "final_average": value,
                                "forgetting": 0.1, "backward_transfer": -0.1} for i, value in enumerate(finals)}
    (folder / name).mkdir(parents=True)
    (folder / name / "summary.json").write_text(json.dumps({"orders": orders}))


def test_table_and_gap(tmp_path, capsys):
    write_run(tmp_path, "replay-seed1", [0.60, 0.62])
    write_run(tmp_path, "replay-seed2", [0.62, 0.64])
    write_run(tmp_path, "l2kd-seed1", [0.66, 0.68])
    (tmp_path / "multitask-seed1").mkdir()
    (tmp_path / "multitask-seed1" / "summary.json").write_text(json.dumps(
        {"order": ["a", "b"], "measures": {"final_average": 0.71, "forgetting": None, "backward_transfer": None}}))
    runs = read_runs(tmp_path)
    assert sorted(runs) == ["l2kd", "multitask", "replay"] and sorted(runs["replay"]) == [1, 2]
    text, overall = table(runs)
    assert overall["replay"][0] == 0.62 and overall["replay"][2] == 4
    assert "| replay | 1, 2 | 61.00 ± 1.41 (n=2) | 63.00 ± 1.41 (n=2) |" in text
    assert main([str(tmp_path), "--gap", "replay", "l2kd", "multitask", "--gap", "replay", "l2kd", "absent"]) == 0
    out = capsys.readouterr().out
    assert "l2kd closes 56% of the gap between replay (62.00) and multitask (71.00)" in out
    assert "gap: not every one of replay, l2kd, absent has runs" in out  # each --gap its own line


def test_no_runs_is_an_error(tmp_path):
    assert main([str(tmp_path)]) == 1


def test_task_table_averages_each_tasks_final_score(tmp_path):
    from tools.stream_report import task_table

    for seed, final in ((1, [0.7, 0.5]), (2, [0.8, 0.6])):
        folder = tmp_path / f"replay-seed{seed}" / "order1"
        folder.mkdir(parents=True)
        (folder / "scores.json").write_text(json.dumps({"tasks": ["a", "b"], "matrix": [[0.9, None], final]}))
    text = task_table(tmp_path)
    assert "| recipe | a | b |" in text and "| replay | 75.00 ± 7.07 (n=2) | 55.00 ± 7.07 (n=2) |" in text


def test_no_gap_when_the_upper_bound_is_not_above(tmp_path, capsys):
    write_run(tmp_path, "replay-seed1", [0.62, 0.62])
    write_run(tmp_path, "l2kd-seed1", [0.64, 0.64])
    write_run(tmp_path, "multitask-seed1", [0.60, 0.60])
    assert main([str(tmp_path), "--gap", "replay", "l2kd", "multitask"]) == 0
    assert "no gap to close: multitask is not above replay here" in capsys.readouterr().out


def test_paired_differences(tmp_path, capsys):
    write_run(tmp_path, "replay-seed1", [0.60, 0.62])
    write_run(tmp_path, "l2kd-seed1", [0.61, 0.65])
    assert main([str(tmp_path), "--paired", "l2kd", "replay"]) == 0
    assert "l2kd - replay, paired by seed and order: +2.00 ± 1.41 (n=2, 2 positive)" in capsys.readouterr().out

"""tools/methods_table.py on hand-made run summaries: the rows, the means and the claim verdicts."""
from __future__ import annotations

import json
import sys

from tests.tools.test_benchmarks import load_tool


def write(out, recipe, seed, dev, test=None):
    """A run summary with a teacher and a student; without ``test`` the runs have dev scores only."""
    folder = out / f"{recipe}-seed{seed}"
    folder.mkdir(parents=True)
    student = {"role": "student", "dev": {"accuracy": dev}}
    if test is not None:
        student["test"] = {"accuracy": test}
    models = {"teacher": {"role": "teacher", "dev": {"accuracy": 0.9}, "test": {"accuracy": 0.9}}, "student": student}
    (folder / "summary.json").write_text(json.dumps({"models": models}))


def test_rows_and_claims(tmp_path, capsys, monkeypatch):
    for seed, (a, b) in enumerate([(0.70, 0.80), (0.72, 0.78), (0.71, 0.79)], 1):
        write(tmp_path, "student_nokd", seed, a, a)
        write(tmp_path, "student_kd_best", seed, b, b)
    monkeypatch.setattr(sys, "argv", ["methods_table.py", str(tmp_path)])
    load_tool("methods_table").main()
    out = capsys.readouterr().out
    assert "| no KD | `student_nokd` | 3 | accuracy 0.7100 ± 0.0100 |" in out
    assert "| RL teacher selector | `student_rl_selector` | 0 | not run | not run |" in out
    assert "| every KD row ≥ no KD | `student_kd_best` vs `student_nokd` | 0.7900 vs 0.7100 | +0.0800 | yes |" in out

    monkeypatch.setattr(sys, "argv", ["methods_table.py", str(tmp_path), "--measured-only"])
    load_tool("methods_table").main()
    out = capsys.readouterr().out
    assert "not run" not in out and "| no KD | `student_nokd` | 3 |" in out
    assert out.rstrip().endswith("--measured-only")


def test_runs_without_test_scores_compare_dev(tmp_path, capsys, monkeypatch):
    """RTE's test file is unlabelled: the runs hold dev scores only, and the claims use them."""
    for seed, (a, b) in enumerate([(0.60, 0.62), (0.61, 0.64)], 1):
        write(tmp_path, "student_nokd", seed, a)
        write(tmp_path, "student_annealing", seed, b)
    monkeypatch.setattr(sys, "argv", ["methods_table.py", str(tmp_path)])
    load_tool("methods_table").main()
    out = capsys.readouterr().out
    assert "the claims compare dev scores" in out
    assert "| Annealing-KD | `student_annealing` | 2 | accuracy 0.6300 ± 0.0141 | — |" in out
    assert "| every KD row ≥ no KD | `student_annealing` vs `student_nokd` | 0.6300 vs 0.6050 | +0.0250 | yes |" in out
    assert "--split dev" in out


def test_equal_means_are_a_tie_that_holds(tmp_path, capsys, monkeypatch):
    for seed, (a, b) in enumerate([(0.5379, 0.5487), (0.5487, 0.5343), (0.5343, 0.5379)], 1):
        write(tmp_path, "student_nokd", seed, a)
        write(tmp_path, "student_augmented", seed, b)
    monkeypatch.setattr(sys, "argv", ["methods_table.py", str(tmp_path)])
    load_tool("methods_table").main()
    assert "| +0.0000 | yes (within the seeds' std) |" in capsys.readouterr().out


def test_across_tasks_one_column_per_task(tmp_path, capsys, monkeypatch):
    """Each task uses its own split (test where its runs have it); claims not run there say so."""
    mrpc, rte = tmp_path / "mrpc", tmp_path / "rte"
    for seed, (a, b, c) in enumerate([(0.70, 0.80, 0.60), (0.72, 0.78, 0.62)], 1):
        write(mrpc, "student_nokd", seed, a, a + 0.01)
        write(mrpc, "student_kd_best", seed, b, b - 0.2)  # better on dev, worse on test: test decides
        write(rte, "student_nokd", seed, a)
        write(rte, "student_kd_best", seed, b)
        write(rte, "student_annealing", seed, c)
    monkeypatch.setattr(sys, "argv", ["methods_table.py", str(mrpc), str(rte), "--across"])
    load_tool("methods_table").main()
    out = capsys.readouterr().out
    assert "| claim | rows | mrpc (test) | rte (dev) | holds on |" in out
    assert "| every KD row ≥ no KD | `kd_best` vs `nokd` | -0.1300 no | +0.0800 yes | 1 of 2 |" in out
    assert "| annealing ≥ classic KD | `annealing` vs `kd_best` | not run | -0.1800 no | 0 of 1 |" in out
    assert "- rte (dev accuracy): classic KD, best single teacher 0.7900, Annealing-KD 0.6100; no KD 0.7100" in out


def test_control_rows_only_where_they_ran_and_never_a_kd_row(tmp_path, capsys, monkeypatch):
    """The matched-steps control is listed and compared only when measured, and not as a KD row."""
    for seed, (a, b, c) in enumerate([(0.70, 0.72, 0.75), (0.70, 0.74, 0.77)], 1):
        write(tmp_path, "student3_nokd", seed, a, a)
        write(tmp_path, "student3_augmented", seed, c, c)
    monkeypatch.setattr(sys, "argv", ["methods_table.py", str(tmp_path), "--prefix", "student3_"])
    load_tool("methods_table").main()
    out = capsys.readouterr().out
    assert "nokd_steps" not in out and "control:" not in out

    for seed, b in enumerate([0.72, 0.74], 1):
        write(tmp_path, "student3_nokd_steps", seed, b, b)
    load_tool("methods_table").main()
    out = capsys.readouterr().out
    assert "| control: no KD, as many steps as the augmented row | `student3_nokd_steps` | 2 |" in out
    assert "| control: more steps alone ≥ no KD | `student3_nokd_steps` vs `student3_nokd` | 0.7300 vs 0.7000 | " \
           "+0.0300 | yes |" in out
    assert "| control: augmented ≥ no KD with as many steps | `student3_augmented` vs `student3_nokd_steps` | " \
           "0.7600 vs 0.7300 | +0.0300 | yes |" in out
    assert "every KD row ≥ no KD | `student3_nokd_steps`" not in out

    # the RL recipe's two stages with equal weights: compared with one stage and with the selector
    for seed, (equal, staged, rl) in enumerate([(0.70, 0.68, 0.69), (0.72, 0.70, 0.71)], 1):
        write(tmp_path, "student3_mt_equal", seed, equal, equal)
        write(tmp_path, "student3_mt_equal_staged", seed, staged, staged)
        write(tmp_path, "student3_rl_selector", seed, rl, rl)
    load_tool("methods_table").main()
    out = capsys.readouterr().out
    assert "| control: equal weights in the RL recipe's two stages | `student3_mt_equal_staged` | 2 |" in out
    assert "| control: equal weights in two stages ≥ in one | `student3_mt_equal_staged` vs `student3_mt_equal` | " \
           "0.6900 vs 0.7100 | -0.0200 | no |" in out
    assert "| control: RL selector ≥ equal weights in the same two stages | `student3_rl_selector` vs " \
           "`student3_mt_equal_staged` | 0.7000 vs 0.6900 | +0.0100 | yes (within the seeds' std) |" in out
    assert "every KD row ≥ no KD | `student3_mt_equal_staged`" not in out

    monkeypatch.setattr(sys, "argv", ["methods_table.py", str(tmp_path), "--across", "--prefix", "student3_"])
    load_tool("methods_table").main()
    best = [line for line in capsys.readouterr().out.splitlines() if line.startswith("- ")]
    assert best == [f"- {tmp_path.name} (test accuracy): augmented transfer set 0.7600, multi-teacher, equal weights "
                    f"0.7100, RL teacher selector 0.7000; no KD 0.7000"]  # controls are never a best row


def test_output_writes_the_same_table_marked_as_generated(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    for seed, (a, b) in enumerate([(0.70, 0.80), (0.72, 0.78)], 1):
        write(runs, "student_nokd", seed, a, a)
        write(runs, "student_kd_best", seed, b, b)
    monkeypatch.setattr(sys, "argv", ["methods_table.py", str(runs)])
    load_tool("methods_table").main()
    printed = capsys.readouterr().out
    page = tmp_path / "results" / "mrpc.md"
    monkeypatch.setattr(sys, "argv", ["methods_table.py", str(runs), "--output", str(page)])
    load_tool("methods_table").main()
    assert capsys.readouterr().out == f"wrote {page}\n"
    note, _, table = page.read_text(encoding="utf-8").partition("\n\n")
    assert note.startswith("<!-- generated by tools/methods_table.py from run summaries") and str(runs) in note
    assert table == printed
    assert not list(page.parent.glob("*.partial"))

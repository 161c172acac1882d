"""The distillation-method comparison: one row per recipe (the student's scores over seeds) and the
literature's claims checked against them.

Usage:
    python tools/methods_table.py runs/mrpc [--metric accuracy] [--split dev|test]

Reads OUT/<recipe>-seed<S>/summary.json as written by ``tools/zoo_measure.py --out OUT`` for the
recipes named ``<prefix><row>`` (``student_*``: the BiLSTM rows of docs/methods.md; ``student3_*``:
the 3-layer transformer student's), prints a Markdown table of the
student's dev and test metrics (mean ± sample std over the seeds), then each claim of
../shared/docs/methods.md with the two means it compares and whether it holds on this data. A claim
"A ≥ B" holds when mean(A) ≥ mean(B); the gap is given next to the seeds' spread, because with three
seeds a gap smaller than the std is not evidence either way.
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

ROWS = [  # (recipe without the prefix, row name)
    ("nokd", "no KD"),
    ("kd_best", "classic KD, best single teacher"),
    ("mt_equal", "multi-teacher, equal weights"),
    ("mt_confidence", "multi-teacher, confidence (gold CE) weights"),
    ("rl_selector", "RL teacher selector"),
    ("rl_dev", "RL teacher selector, dev-metric reward per episode"),
    ("tmkd_avg", "TMKD, averaged targets"),
    ("tmkd_heads", "TMKD, one head per teacher"),
    ("mt_mse_nostage1", "multi-teacher without stage 1 (TMKD stage 2 only)"),
    ("annealing", "Annealing-KD"),
    ("augmented", "augmented transfer set"),
]

CLAIMS = [  # (better, worse, claim)
    *[(recipe, "nokd", "every KD row ≥ no KD") for recipe, _ in ROWS[1:]],
    ("annealing", "kd_best", "annealing ≥ classic KD"),
    ("mt_equal", "kd_best", "equal-weight multi-teacher ≥ best single teacher"),
    ("rl_selector", "mt_equal", "RL selector ≥ equal weights"),
    ("rl_dev", "mt_equal", "RL selector (dev reward) ≥ equal weights"),
    ("tmkd_avg", "mt_mse_nostage1", "TMKD (averaged) ≥ multi-teacher without stage 1"),
    ("tmkd_heads", "mt_mse_nostage1", "TMKD (heads) ≥ multi-teacher without stage 1"),
]


def student_scores(out: Path, prefix: str = "student_") -> dict[str, dict[int, dict]]:
    """recipe without the prefix -> seed -> the student's summary entry (the model the run delivers)."""
    found: dict[str, dict[int, dict]] = defaultdict(dict)
    for summary_file in sorted(out.glob(f"{prefix}*-seed*/summary.json")):
        recipe, seed = summary_file.parent.name.rsplit("-seed", 1)
        summary = json.loads(summary_file.read_text())
        student = next(entry for entry in summary["models"].values() if entry["role"] in ("student", "model"))
        found[recipe[len(prefix):]][int(seed)] = student
    return found


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the --out folder of tools/zoo_measure.py")
    parser.add_argument("--prefix", default="student_",
                        help="recipe name prefix of the rows (default: student_, the BiLSTM student; student3_: "
                             "the 3-layer transformer student)")
    parser.add_argument("--metric", default="accuracy", help="metric the claims compare (default: accuracy)")
    parser.add_argument("--split", choices=["dev", "test"],
                        help="split the claims compare (default: test where every run has it, else dev; "
                             "dev chose the checkpoints)")
    args = parser.parse_args()
    scores = student_scores(args.out, args.prefix)
    if args.split is None:
        every_run = [entry for seeds in scores.values() for entry in seeds.values()]
        args.split = "dev" if any("test" not in entry for entry in every_run) else "test"
        if args.split == "dev":
            print("(no test scores in these runs: the claims compare dev scores, the split that also chose "
                  "each run's checkpoint)\n")
    lines = []
    for recipe, name in ROWS:
        seeds = scores.get(recipe)
        if not seeds:
            lines.append(f"| {name} | `{args.prefix}{recipe}` | 0 | not run | not run |")
            continue
        entries = [seeds[s] for s in sorted(seeds)]
        cells = []
        for split in ("dev", "test"):
            if split not in entries[0]:
                cells.append("—")
                continue
            cells.append("<br>".join(f"{m} {fmt([e[split][m] for e in entries])}" for m in entries[0][split]))
        lines.append(f"| {name} | `{args.prefix}{recipe}` | {len(entries)} | {cells[0]} | {cells[1]} |")
    print("| row | recipe | seeds | dev (student) | test (student) |")
    print("|---|---|---|---|---|")
    print("\n".join(lines))
    print()
    print(f"Claims, on {args.split} {args.metric} (mean over seeds):")
    print()
    print("| claim | rows | means | gap | holds? |")
    print("|---|---|---|---|---|")
    for better, worse, claim in CLAIMS:
        if better not in scores or worse not in scores:
            continue
        a = [e[args.split][args.metric] for e in scores[better].values() if args.split in e]
        b = [e[args.split][args.metric] for e in scores[worse].values() if args.split in e]
        if not a or not b:
            continue
        gap = statistics.mean(a) - statistics.mean(b)
        if abs(gap) < 1e-9:  # the same scores: a tie, which "≥" accepts
            gap = 0.0
        spread = max(statistics.stdev(a) if len(a) > 1 else 0.0, statistics.stdev(b) if len(b) > 1 else 0.0)
        verdict = "yes" if gap >= 0 else "no"
        if abs(gap) < spread:
            verdict += " (within the seeds' std)"
        print(f"| {claim} | `{args.prefix}{better}` vs `{args.prefix}{worse}` | {statistics.mean(a):.4f} vs {statistics.mean(b):.4f} | "
              f"{gap:+.4f} | {verdict} |")
    print()
    print(f"command: python tools/methods_table.py {args.out} --prefix {args.prefix} --metric {args.metric} "
          f"--split {args.split}")


if __name__ == "__main__":
    main()

"""The distillation-method comparison: one row per recipe (the student's scores over seeds) and the
literature's claims checked against them.

Usage:
    python tools/methods_table.py runs/mrpc [--metric accuracy] [--split dev|test] [--output FILE]
    python tools/methods_table.py runs/mrpc runs/rte runs/snli runs/sst2 --across

Reads OUT/<recipe>-seed<S>/summary.json as written by ``tools/zoo_measure.py --out OUT`` for the
recipes of ``benchmarks/<task>/`` named ``<prefix><row>`` (``student_*``: the BiLSTM student's rows;
``student3_*``: the 3-layer transformer student's), prints a Markdown table of the
student's dev and test metrics (mean ± sample std over the seeds), then each claim of
../shared/docs/methods.md with the two means it compares and whether it holds on this data. A claim
"A ≥ B" holds when mean(A) ≥ mean(B); the gap is given next to the seeds' spread, because with three
seeds a gap smaller than the std is not evidence either way. Control recipes (``CONTROL_ROWS``, e.g.
``<prefix>nokd_steps``: no KD for as many steps as the augmented row; ``<prefix>mt_equal_staged``: equal
weights in the RL recipe's two stages) are listed with their
comparisons only where they ran, and are never counted as a KD row or a best row. With ``--across`` and several folders
(one per task), one table gives each claim's gap and verdict per task and how many tasks it holds
on, and the three best rows of each task. ``--output FILE`` writes the same Markdown to FILE (atomically),
marked as generated, for a results page that is regenerated rather than edited.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
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

# controls: recipes that are not methods but separate a method's gain into its causes; listed only
# where they ran, and never counted as KD rows
CONTROL_ROWS = [
    ("nokd_steps", "control: no KD, as many steps as the augmented row"),
    ("mt_equal_staged", "control: equal weights in the RL recipe's two stages"),
]
CONTROL_CLAIMS = [
    ("nokd_steps", "nokd", "control: more steps alone ≥ no KD"),
    ("augmented", "nokd_steps", "control: augmented ≥ no KD with as many steps"),
    ("mt_equal_staged", "mt_equal", "control: equal weights in two stages ≥ in one"),
    ("rl_selector", "mt_equal_staged", "control: RL selector ≥ equal weights in the same two stages"),
    ("rl_dev", "mt_equal_staged", "control: RL selector (dev reward) ≥ equal weights in the same two stages"),
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


def default_split(scores: dict) -> str:
    """test where every run has test scores, else dev."""
    every_run = [entry for seeds in scores.values() for entry in seeds.values()]
    return "dev" if any("test" not in entry for entry in every_run) else "test"


def claim_results(scores: dict, split: str, metric: str) -> list[dict]:
    """Each claim both of whose rows ran: the two means, the gap, and whether "≥" holds."""
    results = []
    for better, worse, claim in CLAIMS + CONTROL_CLAIMS:
        if better not in scores or worse not in scores:
            continue
        a = [e[split][metric] for e in scores[better].values() if split in e]
        b = [e[split][metric] for e in scores[worse].values() if split in e]
        if not a or not b:
            continue
        gap = statistics.mean(a) - statistics.mean(b)
        if abs(gap) < 1e-9:  # the same scores: a tie, which "≥" accepts
            gap = 0.0
        spread = max(statistics.stdev(a) if len(a) > 1 else 0.0, statistics.stdev(b) if len(b) > 1 else 0.0)
        results.append({"better": better, "worse": worse, "claim": claim,
                        "means": (statistics.mean(a), statistics.mean(b)),
                        "gap": gap, "holds": gap >= 0, "within_std": abs(gap) < spread})
    return results


def verdict(result: dict) -> str:
    return ("yes" if result["holds"] else "no") + (" (within the seeds' std)" if result["within_std"] else "")


def table(out: Path, prefix: str, metric: str, split: str | None, measured_only: bool = False) -> None:
    scores = student_scores(out, prefix)
    if split is None:
        split = default_split(scores)
        if split == "dev":
            print("(no test scores in these runs: the claims compare dev scores, the split that also chose "
                  "each run's checkpoint)\n")
    lines = []
    for recipe, name in ROWS + CONTROL_ROWS:
        seeds = scores.get(recipe)
        if not seeds:
            if not measured_only and (recipe, name) in ROWS:
                lines.append(f"| {name} | `{prefix}{recipe}` | 0 | not run | not run |")
            continue
        entries = [seeds[s] for s in sorted(seeds)]
        cells = []
        for part in ("dev", "test"):
            if part not in entries[0]:
                cells.append("—")
                continue
            cells.append("<br>".join(f"{m} {fmt([e[part][m] for e in entries])}" for m in entries[0][part]))
        lines.append(f"| {name} | `{prefix}{recipe}` | {len(entries)} | {cells[0]} | {cells[1]} |")
    print("| row | recipe | seeds | dev (student) | test (student) |")
    print("|---|---|---|---|---|")
    print("\n".join(lines))
    print()
    print(f"Claims, on {split} {metric} (mean over seeds):")
    print()
    print("| claim | rows | means | gap | holds? |")
    print("|---|---|---|---|---|")
    for r in claim_results(scores, split, metric):
        print(f"| {r['claim']} | `{prefix}{r['better']}` vs `{prefix}{r['worse']}` | {r['means'][0]:.4f} vs "
              f"{r['means'][1]:.4f} | {r['gap']:+.4f} | {verdict(r)} |")
    print()
    print(f"command: python tools/methods_table.py {out} --prefix {prefix} --metric {metric} --split {split}"
          + (" --measured-only" if measured_only else ""))


def across(outs: list[Path], prefix: str, metric: str) -> None:
    """One column per task: each claim's gap and verdict, and the row that scored best."""
    tasks = {out: student_scores(out, prefix) for out in outs}
    splits = {out: default_split(scores) for out, scores in tasks.items()}
    results = {out: {(r["better"], r["worse"]): r for r in claim_results(scores, splits[out], metric)}
               for out, scores in tasks.items()}
    names = dict(ROWS)
    print(f"Claims across tasks, on {metric} (test where the runs have it, else dev; mean over seeds; the gap "
          f"is the first row's mean minus the second's; ~ marks a gap smaller than the seeds' std):")
    print()
    print("| claim | rows | " + " | ".join(f"{out.name} ({splits[out]})" for out in outs) + " | holds on |")
    print("|---|---|" + "---|" * len(outs) + "---|")
    for better, worse, claim in CLAIMS:
        cells, held, measured = [], 0, 0
        for out in outs:
            r = results[out].get((better, worse))
            if r is None:
                cells.append("not run")
                continue
            measured += 1
            held += r["holds"]
            cells.append(f"{r['gap']:+.4f} {'yes' if r['holds'] else 'no'}{' ~' if r['within_std'] else ''}")
        print(f"| {claim} | `{better}` vs `{worse}` | " + " | ".join(cells) + f" | {held} of {measured} |")
    print()
    print("Best row per task (highest mean; methods only, not controls):")
    print()
    for out, scores in tasks.items():
        means = {recipe: statistics.mean(e[splits[out]][metric] for e in seeds.values() if splits[out] in e)
                 for recipe, seeds in scores.items()
                 if recipe in names and any(splits[out] in e for e in seeds.values())}
        ranked = sorted((r for r in means if r != "nokd"), key=means.get, reverse=True)  # no KD: the baseline
        if ranked:
            best = ", ".join(f"{names[recipe]} {means[recipe]:.4f}" for recipe in ranked[:3])
            baseline = f"; no KD {means['nokd']:.4f}" if "nokd" in means else ""
            print(f"- {out.name} ({splits[out]} {metric}): {best}{baseline}")
    print()
    print("command: python tools/methods_table.py " + " ".join(str(out) for out in outs)
          + f" --across --prefix {prefix} --metric {metric}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, nargs="+", help="the --out folder(s) of tools/zoo_measure.py")
    parser.add_argument("--prefix", default="student_",
                        help="recipe name prefix of the rows (default: student_, the BiLSTM student; student3_: "
                             "the 3-layer transformer student)")
    parser.add_argument("--metric", default="accuracy", help="metric the claims compare (default: accuracy)")
    parser.add_argument("--split", choices=["dev", "test"],
                        help="split the claims compare (default: test where every run has it, else dev; "
                             "dev chose the checkpoints)")
    parser.add_argument("--across", action="store_true",
                        help="several --out folders (tasks): one table of the claims with a column per task")
    parser.add_argument("--measured-only", action="store_true",
                        help="leave out the rows with no finished run (e.g. a student measured on a few rows)")
    parser.add_argument("--output", type=Path,
                        help="write the Markdown to this file (marked as generated) instead of standard output")
    args = parser.parse_args()
    if not args.across and len(args.out) != 1:
        parser.error("give one --out folder, or several with --across")
    if args.across and args.split:
        parser.error("--across picks each task's split itself (test where the runs have it, else dev)")
    if args.output is None:
        report(args)
        return
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        report(args)
    write_generated(args.output, text.getvalue(), " ".join(sys.argv[1:]))
    print(f"wrote {args.output}")


def report(args) -> None:
    if args.across:
        across(args.out, args.prefix, args.metric)
    else:
        table(args.out[0], args.prefix, args.metric, args.split, args.measured_only)


def write_generated(path: Path, markdown: str, arguments: str) -> None:
    """``markdown`` into ``path`` under a note that it is generated, written atomically."""
    note = (f"<!-- generated by tools/methods_table.py from run summaries ({arguments}); "
            f"regenerate it instead of editing -->\n\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(note + markdown, encoding="utf-8")
    os.replace(partial, path)


if __name__ == "__main__":
    main()

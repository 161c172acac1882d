"""Tabulate task-stream runs: final average, forgetting and backward transfer per recipe.

Reads ``<folder>/<recipe>-seed<N>/summary.json`` as ``blocks train`` writes them for a stream
config (one ``orderK`` entry per task order, or one order for a multi-task recipe) and prints a
Markdown table: per recipe, the final average of each order and over every order and seed
(mean ± std over the runs), forgetting and backward transfer. With ``--gap LOW MID HIGH`` it
also says which share of the gap between recipes LOW and HIGH recipe MID closes (the L2KD
claim: replay + KD closes at least half of the gap between replay and multi-task training).

    python tools/stream_report.py runs/glue_stream --gap replay l2kd multitask
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

RUN_NAME = re.compile(r"^(?P<recipe>.+)-seed(?P<seed>\d+)$")
MEASURES = ("final_average", "forgetting", "backward_transfer")


def read_runs(folder: Path) -> dict[str, dict[int, dict]]:
    """recipe -> seed -> {order name -> {order, final_average, forgetting, backward_transfer}}"""
    runs: dict[str, dict[int, dict]] = {}
    for summary_file in sorted(folder.glob("*/summary.json")):
        match = RUN_NAME.match(summary_file.parent.name)
        if not match:
            continue
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        if "orders" in summary:
            orders = summary["orders"]
        elif "measures" in summary:  # a run of one order
            orders = {"order1": {"order": summary["order"], **summary["measures"]}}
        else:
            continue
        runs.setdefault(match["recipe"], {})[int(match["seed"])] = orders
    return runs


def _stats(values: list[float]) -> tuple[float, float, int] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


def _show(stat, scale: float = 100.0) -> str:
    if stat is None:
        return "—"
    mean, std, count = stat
    return f"{mean * scale:.2f} ± {std * scale:.2f} (n={count})"


def table(runs: dict[str, dict[int, dict]]) -> tuple[str, dict[str, tuple]]:
    order_names = sorted({name for seeds in runs.values() for orders in seeds.values() for name in orders})
    header = ["recipe", "seeds"] + [f"final avg, {name}" for name in order_names] + \
             ["final avg, all runs", "forgetting", "backward transfer"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    overall = {}
    for recipe, seeds in sorted(runs.items()):
        cells = [recipe, ", ".join(str(s) for s in sorted(seeds))]
        for name in order_names:
            cells.append(_show(_stats([orders[name]["final_average"] for orders in seeds.values() if name in orders])))
        every = [order for orders in seeds.values() for order in orders.values()]
        overall[recipe] = _stats([o["final_average"] for o in every])
        cells += [_show(overall[recipe]), _show(_stats([o["forgetting"] for o in every])),
                  _show(_stats([o["backward_transfer"] for o in every]))]
        lines.append("| " + " | ".join(cells) + " |")
    orders_seen = {name: next(orders[name]["order"] for seeds in runs.values() for orders in seeds.values()
                              if name in orders) for name in order_names}
    legend = "; ".join(f"{name}: {' → '.join(order)}" for name, order in orders_seen.items())
    return "\n".join(lines) + f"\n\nScores are dev metrics × 100 (each task's first metric). Orders: {legend}.", overall


def task_table(folder: Path) -> str:
    """Each task's final score per recipe (mean ± std over every order and seed): where the final
    average comes from."""
    finals: dict[str, dict[str, list[float]]] = {}
    tasks: list[str] = []
    for scores_file in sorted(folder.glob("*/**/scores.json")):
        run = next((p for p in scores_file.parents if RUN_NAME.match(p.name)), None)
        if run is None:
            continue
        scores = json.loads(scores_file.read_text(encoding="utf-8"))
        recipe = RUN_NAME.match(run.name)["recipe"]
        for task, value in zip(scores["tasks"], scores["matrix"][-1] if scores["matrix"] else []):
            if value is not None:
                finals.setdefault(recipe, {}).setdefault(task, []).append(value)
                if task not in tasks:
                    tasks.append(task)
    lines = ["| recipe | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
    for recipe, per_task in sorted(finals.items()):
        lines.append(f"| {recipe} | " + " | ".join(_show(_stats(per_task.get(task, []))) for task in tasks) + " |")
    return "\n".join(lines)


def paired_line(runs: dict[str, dict[int, dict]], first: str, second: str) -> str:
    """Recipe ``first`` minus recipe ``second``, final average × 100, over the (seed, order) pairs
    both have: mean ± std of the differences and how many are positive."""
    others = runs.get(second, {})
    differences = [(orders[name]["final_average"] - others[seed][name]["final_average"]) * 100
                   for seed, orders in runs.get(first, {}).items() if seed in others
                   for name in orders if name in others[seed]]
    if not differences:
        return f"{first} - {second}: no (seed, order) pair in common"
    std = statistics.stdev(differences) if len(differences) > 1 else 0.0
    return (f"{first} - {second}, paired by seed and order: {statistics.mean(differences):+.2f} ± {std:.2f} "
            f"(n={len(differences)}, {sum(d > 0 for d in differences)} positive)")


def gap_line(overall: dict[str, tuple], low_name: str, mid_name: str, high_name: str) -> str:
    """Which share of the gap between recipes ``low_name`` and ``high_name`` (final averages over
    every run) recipe ``mid_name`` closes."""
    low, mid, high = (overall.get(name) for name in (low_name, mid_name, high_name))
    if None in (low, mid, high):
        return f"gap: not every one of {low_name}, {mid_name}, {high_name} has runs"
    gap = high[0] - low[0]
    names = f"{low_name} ({low[0] * 100:.2f}) and {high_name} ({high[0] * 100:.2f})"
    if gap <= 0:
        return f"no gap to close: {high_name} is not above {low_name} here ({names}); {mid_name}: {mid[0] * 100:.2f}"
    return f"{mid_name} closes {(mid[0] - low[0]) / gap:.0%} of the gap between {names}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--paired", nargs=2, action="append", metavar=("A", "B"), default=[],
                        help="the difference A - B of final averages, paired by seed and order")
    parser.add_argument("--gap", nargs=3, action="append", metavar=("LOW", "MID", "HIGH"), default=[],
                        help="report the share of the LOW -> HIGH gap that MID closes (repeatable)")
    args = parser.parse_args(argv)
    runs = read_runs(args.folder)
    if not runs:
        print(f"no stream runs (<recipe>-seed<N>/summary.json) under {args.folder}", file=sys.stderr)
        return 1
    text, overall = table(runs)
    print(text)
    print("\nEach task's final dev score:\n")
    print(task_table(args.folder))
    for first, second in args.paired:
        print("\n" + paired_line(runs, first, second))
    for names in args.gap:
        print("\n" + gap_line(overall, *names))
    return 0


if __name__ == "__main__":
    sys.exit(main())

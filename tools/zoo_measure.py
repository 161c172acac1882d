"""Train model zoo recipes with several seeds and report mean ± std of every model's scores.

Usage:
    python tools/zoo_measure.py model_zoo/sst2/textcnn.json [more recipes] --seeds 1 2 3 \
        [--jobs 2] [--out runs/zoo] [--set key=value ...]
    python tools/zoo_measure.py --report runs/zoo     # only aggregate finished runs

Each (recipe, seed) trains into OUT/<recipe>-seed<S> with `blocks train --set seed=S` in its own
process (one torch thread each when --jobs > 1, so parallel jobs do not fight over cores).
A ``{seed}`` in a --set value is replaced by the seed, e.g. to give each student the teacher
trained with its seed: ``--set models.teacher.run=runs/zoo/minilm_teacher-seed{seed}``.
Finished runs are skipped, so the script can be re-run after an interruption. The report is a
Markdown table: one row per recipe and model with dev/test metrics as mean ± std over the seeds,
parameters, and inference throughput at batch 64 (from each run's summary.json).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_one(recipe: Path, seed: int, out: Path, overrides: list[str], threads: int) -> tuple[str, float, int]:
    run_dir = out / f"{recipe.stem}-seed{seed}"
    if (run_dir / "summary.json").is_file():
        return str(run_dir), 0.0, 0
    resume = ["--resume"] if (run_dir / "config.json").is_file() else []
    command = [sys.executable, "-m", "blocks", "train", str(recipe), "--run-dir", str(run_dir), "--no-progress",
               "--set", f"seed={seed}",
               *[a for o in overrides for a in ("--set", o.replace("{seed}", str(seed)))], *resume]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    log = out / f"{recipe.stem}-seed{seed}.log"
    with open(log, "a", encoding="utf-8") as handle:
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return str(run_dir), time.perf_counter() - started, code


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def report(out: Path) -> str:
    by_recipe: dict[str, list[dict]] = defaultdict(list)
    for summary_file in sorted(out.glob("*-seed*/summary.json")):
        recipe = summary_file.parent.name.rsplit("-seed", 1)[0]
        by_recipe[recipe].append(json.loads(summary_file.read_text()))
    lines = ["| recipe | model (role) | seeds | dev | test | parameters | examples/s (batch 64) |",
             "|---|---|---|---|---|---|---|"]
    for recipe, summaries in by_recipe.items():
        models = summaries[0]["models"]
        for name, first in models.items():
            cells = []
            for split in ("dev", "test"):
                metrics = first.get(split, {})
                cells.append("<br>".join(
                    f"{metric} {mean_std([s['models'][name][split][metric] for s in summaries])}"
                    for metric in metrics) or "—")
            speed = statistics.mean(s["models"][name]["examples_per_second_batch64"] for s in summaries)
            role = first["role"] if len(models) > 1 else "model"  # one model: no teacher or student
            lines.append(f"| {recipe} | {name} ({role}) | {len(summaries)} | {cells[0]} | {cells[1]} | "
                         f"{first['parameters']:,} | {speed:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*", type=Path)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "zoo")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per job (default: 1 with --jobs > 1, else every core)")
    parser.add_argument("--report", type=Path, help="only print the table for the runs in this folder")
    args = parser.parse_args()
    if args.report:
        print(report(args.report))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    threads = args.threads or (1 if args.jobs > 1 else (os.cpu_count() or 1))
    jobs = [(recipe.resolve(), seed) for recipe in args.recipes for seed in args.seeds]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, recipe, seed, args.out, args.overrides, threads) for recipe, seed in jobs]
        for (recipe, seed), future in zip(jobs, futures):
            run_dir, seconds, code = future.result()
            status = "ok" if code == 0 else f"FAILED (exit {code}; see {run_dir}.log)"
            print(f"{recipe.name} seed {seed}: {status}, {seconds:.0f} s", flush=True)
    print()
    print(f"command: python tools/zoo_measure.py {' '.join(str(r) for r in args.recipes)} "
          f"--seeds {' '.join(map(str, args.seeds))} --jobs {args.jobs}"
          + (f" --threads {args.threads}" if args.threads else "")
          + (f" --out {args.out}" if args.out != ROOT / "runs" / "zoo" else "")
          + "".join(f" --set {o}" for o in args.overrides))
    print(report(args.out))


if __name__ == "__main__":
    main()

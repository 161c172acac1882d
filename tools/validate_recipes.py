"""Run ``blocks validate`` on every recipe of the model zoo and the benchmarks (or the ones named)
in one process, and summarise: which are valid, which only once their teachers' runs are made, and
which fail (with the error). Validation reads each recipe's data, so the data sets must be present.

Usage:
    python tools/validate_recipes.py                          # model_zoo/ and benchmarks/
    python tools/validate_recipes.py benchmarks/mrpc/*.json --threads 1

Exit status 1 when any recipe fails. The runs still needed are listed once each, with the command
that makes them.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blocks.cli import main as blocks_main  # noqa: E402

RECIPE_FOLDERS = ("model_zoo", "benchmarks")
NEEDED_HEADER = "runs still needed"


def every_recipe() -> list[Path]:
    return sorted(p for folder in RECIPE_FOLDERS for p in (ROOT / folder).rglob("*.json"))


def validate(recipe: Path) -> tuple[str, list[str], float]:
    """("valid" | "valid once its runs are made" | "error: ...", commands of the runs it needs, seconds)."""
    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = blocks_main(["validate", str(recipe)])
    seconds = time.perf_counter() - started
    lines = out.getvalue().splitlines()
    needed = []
    if any(line.startswith(NEEDED_HEADER) for line in lines):
        start = next(i for i, line in enumerate(lines) if line.startswith(NEEDED_HEADER)) + 1
        needed = [line.strip() for line in lines[start:] if line.startswith("  ")]
    if code != 0:
        message = err.getvalue().strip().splitlines()
        return "error: " + (message[-1] if message else f"exit status {code}"), needed, seconds
    return ("valid once its runs are made" if needed else "valid"), needed, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*", type=Path, help="recipes (default: every one in model_zoo/ and benchmarks/)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    recipes = args.recipes or every_recipe()
    failed, needed = 0, []
    print("| recipe | result | seconds |\n|---|---|---|")
    for recipe in recipes:
        result, commands, seconds = validate(recipe)
        failed += result.startswith("error")
        needed += [c for c in commands if c not in needed]
        shown = recipe.resolve().relative_to(ROOT) if recipe.resolve().is_relative_to(ROOT) else recipe
        print(f"| {shown} | {result.replace('|', '/')} | {seconds:.1f} |", flush=True)
    print(f"\n{len(recipes) - failed} of {len(recipes)} recipes valid ({failed} failed); "
          f"{len(needed)} runs still needed:")
    print("\n".join(f"  {command}" for command in needed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""CPU inference throughput of the trained models of one or more runs, side by side.

For every model that finished training in each RUN_DIR (teacher and student alike) the script
measures examples per second at batch size 1 and at batch size 64, in one process, on the same
examples: the run's dev split, read with the run's own config (or --data FILE).

* Batches are collated beforehand; only the forward passes are timed, under
  ``torch.inference_mode()`` with every model in ``eval()`` mode, on the CPU.
* Batch 64 uses the first N examples (--examples, default 1000); batch 1 the first min(N, 300)
  (--batch1-examples). Batches are sorted by length (as ``blocks`` evaluation and summary.json
  do) unless --order original.
* Repeats are interleaved (every model at batch 1, every model at batch 64, again ...) and the
  best of --repeats is kept, after one untimed warm-up pass per model.
* Speedup = a model's examples/s over the slowest model's at the same batch size; each run with
  a teacher also gets a student-vs-teacher line (speedup and parameter compression).

Usage:
    python tools/bench_inference.py runs/demo
    python tools/bench_inference.py runs/zoo/a-seed1 runs/zoo/b-seed1 --threads 1 --repeats 5
    python tools/bench_inference.py runs/demo --examples 500 --batch-sizes 1 16 64 --data other_dev.tsv

Output: a plain-text table and the same numbers as a Markdown table ready to paste into docs.
Run it on an otherwise idle machine (the load average is printed before and after).
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

from blocks.engine.benchmark import (Entry, available_cores, batch_indexes, busy, comparison_line,  # noqa: F401
                                     comparisons, cpu_name, describe_sizes, examples_split, format_table,
                                     load_average, markdown_table, measure, run_entries, speed_table)
from blocks.errors import DistilBlocksError

# The measuring core (batches, interleaved best-of timing, tables) lives in
# blocks/engine/benchmark.py, shared with `blocks bench`; this script adds several runs and options.


def run_labels(run_dirs: list[str]) -> list[str]:
    names = [Path(r).resolve().name for r in run_dirs]
    return [name if names.count(name) == 1 else str(Path(r)) for name, r in zip(names, run_dirs)]


# -- command line -----------------------------------------------------------------------------
def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_inference.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by `blocks train`")
    parser.add_argument("--examples", type=int, default=1000,
                        help="examples timed at batch sizes > 1 (default 1000; fewer if the split is smaller)")
    parser.add_argument("--batch1-examples", type=int, default=300,
                        help="at most this many of them are timed at batch size 1 (default 300)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64], help="default: 1 64")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed passes; best kept (default 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch threads (default: every usable core, here {available_cores()})")
    parser.add_argument("--split", default="dev", help="config split to read (default dev)")
    parser.add_argument("--data", default=None, help="a file to read instead (the run's reader options)")
    parser.add_argument("--order", choices=["sorted", "original"], default="sorted",
                        help="batch examples sorted by length, as evaluation does (default), or in file order")
    parser.add_argument("--greedy", action="store_true",
                        help="translation models decode greedily (default: the task's beam search)")
    parser.add_argument("--model", action="append", default=None,
                        help="only this model (repeatable; default: every trained model)")
    args = parser.parse_args(argv)
    if args.examples < 1 or args.batch1_examples < 1 or args.repeats < 1:
        parser.error("--examples, --batch1-examples and --repeats must be >= 1")
    if any(b < 1 for b in args.batch_sizes):
        parser.error("--batch-sizes must be >= 1")
    args.batch_sizes = sorted(set(args.batch_sizes))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = args.threads or available_cores()
    torch.set_num_threads(threads)
    shown_argv = sys.argv[1:] if argv is None else list(argv)
    print("DistilBlocks inference benchmark: CPU examples/s of each trained model, forward passes only")
    print("command: " + shlex.join([sys.executable, "tools/bench_inference.py", *shown_argv]))
    print(f"machine: {platform.platform()}; CPU: {cpu_name()}; {os.cpu_count()} logical CPUs "
          f"({available_cores()} usable by this process)")
    print(f"software: Python {platform.python_version()}, torch {torch.__version__}; device cpu; torch threads "
          f"{torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    print(f"load average before (1, 5, 15 min): {load_average()}")
    if busy():
        print("WARNING: other processes are using the CPU; the timings are noisy. Measure on an idle machine.")
    print(f"method: batches pre-collated, torch.inference_mode(), model.eval(); best of {args.repeats} interleaved "
          f"repeat(s) after a warm-up pass; batches {args.order}"
          + (" by length" if args.order == "sorted" else " (file order)"))

    device = torch.device("cpu")
    entries: list[Entry] = []
    try:
        for run_dir, label in zip(args.run_dirs, run_labels(args.run_dirs)):
            found, about = run_entries(run_dir, label, args.batch_sizes, args.examples, args.batch1_examples,
                                       split_name=args.split, data=args.data, order=args.order,
                                       models=args.model, device=device)
            print(f"run {label}: models {', '.join(about['models'])}; {about['split_size']:,} examples from "
                  f"{about['source']}; {describe_sizes(about['batches'], about['examples'])}")
            for entry in found:
                entry.final = not args.greedy
            entries += found
    except DistilBlocksError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    measure(entries, args.batch_sizes, args.repeats)

    print()
    print("results (examples/s, best of repeats; speedup = vs the slowest model at that batch size; "
          "ms/ex at batch 1 = latency of one example)")
    headers, rows, left = speed_table(entries, args.batch_sizes)
    for line in format_table(headers, rows, left):
        print(line)
    for found in comparisons(entries, args.batch_sizes):
        print(f"  {found['run']}: {comparison_line(found)}")
    print(f"load average after (1, 5, 15 min): {load_average()}")

    print()
    print(f"Markdown (paste into docs; CPU, {threads} thread(s), torch {torch.__version__}):")
    for line in markdown_table(headers, rows, left):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from blocks.data.batching import sorted_batches
from blocks.data.dataset import EncodedSplit, encode_rows, read_split, split_sources
from blocks.engine.run import load_run, roles
from blocks.errors import DistilBlocksError


# -- machine ----------------------------------------------------------------------------------
def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"


# -- what is measured -------------------------------------------------------------------------
@dataclass
class Entry:
    run: str
    model: str
    role: str
    parameters: int
    experiment: object
    batches: dict  # batch size -> pre-collated batches (shared by the models of one run)
    examples: dict  # batch size -> number of examples in those batches
    best: dict = field(default_factory=dict)  # batch size -> best seconds

    @property
    def label(self) -> str:
        return f"{self.model} ({self.role})"

    def forward(self, batches) -> None:
        for batch in batches:
            self.experiment.model_values(self.model, batch)

    def speed(self, batch_size: int) -> float:
        return self.examples[batch_size] / self.best[batch_size]


def examples_split(experiment, run_dir: str, split_name: str, data: str | None) -> tuple[EncodedSplit, str]:
    """The examples to run the models on: --data FILE, or the config's split read as ``blocks test`` does."""
    if data:
        return experiment.encode_file(data, with_labels=False), data
    config = experiment.config
    sources = split_sources(config["data"])
    if split_name not in sources:
        raise DistilBlocksError(f"the config of {run_dir} has no {split_name} split "
                                f"(it has {', '.join(sources)}); choose one with --split or a file with --data")
    source = sources[split_name]
    rows = read_split(source)
    if not rows:
        raise DistilBlocksError(f"the {split_name} file holds no examples: {source.path}")
    split = encode_rows(split_name, rows, experiment.fields, experiment.vocabularies, experiment.task,
                        None, None, source.fields, source.path)
    return split, source.path


def batch_indexes(lengths: torch.Tensor, batch_size: int, order: str) -> list[torch.Tensor]:
    if order == "sorted":
        return sorted_batches(lengths, batch_size)
    return list(torch.split(torch.arange(len(lengths)), batch_size))


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
    try:
        if os.getloadavg()[0] >= 0.75:
            print("WARNING: other processes are using the CPU; the timings are noisy. Measure on an idle machine.")
    except (AttributeError, OSError):
        pass
    print(f"method: batches pre-collated, torch.inference_mode(), model.eval(); best of {args.repeats} interleaved "
          f"repeat(s) after a warm-up pass; batches {args.order}"
          + (" by length" if args.order == "sorted" else " (file order)"))

    device = torch.device("cpu")
    entries: list[Entry] = []
    try:
        for run_dir, label in zip(args.run_dirs, run_labels(args.run_dirs)):
            directory, experiment, state = load_run(run_dir, log=lambda *a: None)
            split, source = examples_split(experiment, run_dir, args.split, args.data)
            count = min(len(split), args.examples)
            batches, examples = {}, {}
            for size in args.batch_sizes:
                n = min(count, args.batch1_examples) if size == 1 else count
                indexes = batch_indexes(split.lengths[:n], size, args.order)
                batches[size] = [split.collate(index).to(device) for index in indexes]
                examples[size] = n
            role_of = roles(experiment.config)
            models = [m for m in role_of if m in state["models"]]
            if args.model:
                missing = [m for m in args.model if m not in state["models"]]
                if len(missing) == len(args.model):
                    raise DistilBlocksError(f"none of {', '.join(args.model)} finished training in {run_dir} "
                                            f"(finished: {', '.join(state['models'])})")
                models = [m for m in models if m in args.model]
            sizes = ", ".join(f"batch {s}: {examples[s]:,} examples in {len(batches[s]):,} batch"
                              + ("es" if len(batches[s]) != 1 else "")
                              for s in args.batch_sizes)
            print(f"run {label}: models {', '.join(models)}; {len(split):,} examples from {source}; {sizes}")
            for name in models:
                model = experiment.models[name].to(device)
                model.eval()
                entries.append(Entry(label, name, role_of[name], model.parameter_count(), experiment,
                                     batches, examples))
    except DistilBlocksError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    with torch.inference_mode():
        for entry in entries:  # warm-up: one untimed pass (few batches) at every size
            for size in args.batch_sizes:
                entry.forward(entry.batches[size][:20])
        for _ in range(args.repeats):
            for size in args.batch_sizes:
                for entry in entries:
                    start = time.perf_counter()
                    entry.forward(entry.batches[size])
                    elapsed = time.perf_counter() - start
                    entry.best[size] = min(entry.best.get(size, float("inf")), elapsed)

    slowest = {size: min(e.speed(size) for e in entries) for size in args.batch_sizes}
    print()
    print("results (examples/s, best of repeats; speedup = vs the slowest model at that batch size; "
          "ms/ex at batch 1 = latency of one example)")
    headers = ["run", "model (role)", "parameters"]
    for size in args.batch_sizes:
        headers += [f"batch {size} ex/s"] + (["batch 1 ms/ex"] if size == 1 else []) + [f"batch {size} speedup"]
    rows = []
    for e in entries:
        row = [e.run, e.label, f"{e.parameters:,}"]
        for size in args.batch_sizes:
            speed = e.speed(size)
            row += [f"{speed:,.1f}"] + ([f"{1000 / speed:.2f}"] if size == 1 else []) + [f"{speed / slowest[size]:.2f}x"]
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    left = {0, 1}
    for row in [headers] + rows:
        print("  " + "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))

    for run in dict.fromkeys(e.run for e in entries):
        members = [e for e in entries if e.run == run]
        teachers = [e for e in members if e.role == "teacher"]
        students = [e for e in members if e.role == "student"]
        for student in students:
            for teacher in teachers:
                parts = [f"batch {s} {student.speed(s) / teacher.speed(s):.2f}x faster" for s in args.batch_sizes]
                print(f"  {run}: {student.model} vs {teacher.model}: " + ", ".join(parts)
                      + f"; {teacher.parameters / student.parameters:.2f}x fewer parameters")
    print(f"load average after (1, 5, 15 min): {load_average()}")

    print()
    print(f"Markdown (paste into docs; CPU, {threads} thread(s), torch {torch.__version__}):")
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" if i in left else "---:" for i in range(len(headers))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

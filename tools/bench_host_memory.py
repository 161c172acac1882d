"""CPU training steps with glibc's default allocator vs freed memory kept for reuse (what ``blocks train`` does).

``blocks train`` on CPU calls :func:`blocks.engine.host_memory.keep_freed_memory` (glibc: no
``mmap`` per large allocation, no trimming of the heap), so the big tensors each step allocates
(e.g. the dense gradient of a 30,522 x 384 embedding, 47 MB) reuse memory the process already has
instead of faulting in fresh zero pages. The setting is per process and cannot be undone in it, so
each side runs in a child process of its own: ``system`` with ``DISTILBLOCKS_MALLOC=system`` in its
environment, ``keep`` without. The sides alternate (system, keep, system, keep, ...) ``--repeats``
times so that a change of machine load hits both.

Each child runs ``StageTrainer(...).run`` (what ``blocks train`` runs) for the first ``--steps``
steps of the recipe's stage, from the same weights and the same batch order; teachers come from
their run directories and, by default, their outputs from the recipe's shared teacher cache (built
by the first child if missing, not timed); ``--teacher loop`` runs the teacher in every step
instead. Reported: ms per step of each side (end-of-run evaluation and checkpoints subtracted), the
speedup system / keep, the minor page faults of the stage's run per step (setup and the end-of-run
evaluation included), each child's peak resident memory (what keeping freed memory costs), and
whether the students end bitwise identical (they must: only where tensors live changes).

Example (the SST-2 BiLSTM student over MiniLM word pieces)::

    python tools/bench_host_memory.py --config model_zoo/sst2/minilm_kd_bilstm.json \\
        --set models.teacher.run=runs/zoo/minilm_teacher-seed1 --threads 1 --steps 100 --repeats 3
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile

import torch

from blocks.engine.host_memory import ENVIRONMENT, keep_freed_memory

MODES = ("system", "keep")


def parse_args(argv) -> argparse.Namespace:
    from blocks.engine.benchmark import available_cores

    parser = argparse.ArgumentParser(prog="bench_host_memory.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe whose stage is timed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="config override as for `blocks train --set` (repeatable)")
    parser.add_argument("--stage", type=int, default=None, help="stage index (default: the last stage)")
    parser.add_argument("--teacher", choices=("cache", "loop"), default="cache",
                        help="teacher outputs from the shared cache (default) or the teacher run in every step")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per side and repeat (default 100)")
    parser.add_argument("--repeats", type=int, default=3, help="alternations of the two sides (default 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch threads (default: every usable core, here {available_cores()})")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1")
    return args


def child(args: argparse.Namespace) -> int:
    """One side: apply (or not) the setting first, then time the steps; one JSON line on stdout."""
    allocator = keep_freed_memory()  # DISTILBLOCKS_MALLOC=system in the environment makes it a no-op
    from blocks.engine.benchmark import available_cores
    from blocks.engine.training_benchmark import first_steps_of_stage, time_stage
    from blocks.engine.run_dir import RunDir
    from blocks.engine.trainer import StageTrainer
    from blocks.errors import DistilBlocksError

    torch.set_num_threads(args.threads or available_cores())  # as the parent's header says
    try:
        experiment, index = first_steps_of_stage(args.config, args.overrides, args.stage, args.steps,
                                                 cache_teachers=args.teacher == "cache", device_name="cpu")
    except DistilBlocksError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stage = experiment.config["stages"][index]
    with tempfile.TemporaryDirectory(prefix="bench-host-memory-") as folder:
        trainer = StageTrainer(experiment, index, RunDir(folder), torch.device("cpu"), log=lambda *a: None,
                               progress=False)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        timed = time_stage(trainer, torch.device("cpu"))
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    model = experiment.models[stage["train"]]
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    history = timed.result["history"]
    print(json.dumps({"allocator": allocator, "loop": timed.loop, "steps": timed.result["steps"], "faults": faults,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "weights": digest.hexdigest(),
                      "dev": {k: v for k, v in history[-1].items() if k not in ("step", "epoch")} if history else {},
                      "student": stage["train"], "teachers": stage["teachers"]}))
    return 0


def run_child(args: argparse.Namespace, argv: list[str], mode: str) -> dict:
    environment = dict(os.environ)
    environment.pop(ENVIRONMENT, None)
    if mode == "system":
        environment[ENVIRONMENT] = "system"
    done = subprocess.run([sys.executable, __file__, *argv, "--child", mode], env=environment,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"error: the '{mode}' side failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.child:
        return child(args)
    from blocks.engine.benchmark import load_average
    from blocks.engine.training_benchmark import start_benchmark

    start_benchmark("DistilBlocks host-memory benchmark: CPU training steps with glibc's default allocator vs "
                    "freed memory kept for reuse", "tools/bench_host_memory.py", argv, args.threads, "cpu",
                    host_memory=False)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    ends: dict[str, dict] = {}
    for repeat in range(args.repeats):
        for mode in MODES:
            result = run_child(args, argv, mode)
            if repeat == 0 and mode == MODES[0]:
                print(f"recipe: {args.config}; '{result['student']}' taught by "
                      f"{', '.join(result['teachers']) or 'no teacher'} (teacher outputs: "
                      f"{'the shared cache' if args.teacher == 'cache' else 'the teacher, every step'}); "
                      f"{result['steps']} steps per side")
            per_step = result["loop"] / max(result["steps"], 1)
            times[mode].append(per_step)
            ends.setdefault(mode, result)
            same = result["weights"] == ends[mode]["weights"]
            print(f"  repeat {repeat + 1}, {mode:6s}: {1000 * per_step:.1f} ms/step, "
                  f"{result['faults'] / max(result['steps'], 1):,.0f} page faults/step, peak memory "
                  f"{result['peak_rss_mb']:,.0f} MB ({result['allocator']})"
                  + ("" if same else "  [weights differ from this side's first repeat]"), flush=True)
    system_ms, keep_ms = (1000 * statistics.median(times[mode]) for mode in MODES)
    identical = ends["system"]["weights"] == ends["keep"]["weights"] and ends["system"]["dev"] == ends["keep"]["dev"]
    shown = ", ".join(f"{k} {v:.4f}" for k, v in ends["keep"]["dev"].items()) or "no dev split"
    print()
    print(f"results ({args.steps} steps, median of {args.repeats}):")
    print(f"  glibc default (DISTILBLOCKS_MALLOC=system): {system_ms:.1f} ms/step")
    print(f"  freed memory kept (blocks train):           {keep_ms:.1f} ms/step")
    print(f"  speedup system / keep:                      {system_ms / keep_ms:.2f}x")
    print(f"  peak memory, system vs keep: {ends['system']['peak_rss_mb']:,.0f} MB vs "
          f"{ends['keep']['peak_rss_mb']:,.0f} MB")
    print(f"  students at the end: {'bitwise identical' if identical else 'DIFFER'} (dev {shown})")
    print(f"load average after (1, 5, 15 min): {load_average()}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())

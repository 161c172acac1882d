"""The engine on a GPU: teacher fine-tuning tokens/s in bf16 autocast vs fp32, and the GPU
utilisation of a distillation stage.

Part 1, precision. The first ``--steps`` steps of the teacher recipe's stage (default
``model_zoo/sst2/minilm_teacher_lr1e4.json``, MiniLM fine-tuned on SST-2), run by
``StageTrainer(...).run`` as ``blocks train`` runs them, once with ``"precision": "fp32"`` and once
with ``"bf16"``, from the same weights and the same batch order, alternating ``--repeats`` times
so that a change of load hits both. Each precision first runs ``--warmup-steps`` untimed steps.
Tokens are the real (unpadded) tokens of the batches trained,
counted as they are collated. Reported: tokens/s and examples/s of each side, bf16 / fp32, and the
dev metrics after the last repeat of each (after ``--steps`` steps only: a check that bf16
learns, not an accuracy figure).

Part 2, utilisation (with ``--distill CONFIG``). The first ``--steps`` steps of that recipe's
distillation stage (its teachers from run directories, ``--distill-set`` overrides), once with the
teacher cache (built first, not timed) and once with the teachers in the loop. While each training
loop runs, a thread samples the GPU's utilisation every 0.1 s (``torch.cuda.utilization``, else
``nvidia-smi``). Reported: ms/step, examples/s, mean and median utilisation, peak GPU memory.

On a CPU it runs too, for its tests: autocast is CUDA-only, so both precisions run fp32 there
(the ratio is about 1), and no utilisation is sampled.

Usage, on a GPU machine::

    python tools/bench_gpu.py --device cuda --steps 300 \
        --set models.teacher.run=... \
        --distill model_zoo/sst2/minilm_kd_bilstm.json \
        --distill-set models.teacher.run=runs/teacher_lr1e4/minilm_teacher-seed1

(``--set`` applies to the teacher recipe; the default one trains its own teacher and needs no run.)
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from blocks.engine.benchmark import available_cores, load_average
from blocks.engine.training_benchmark import (alternate_sides, first_steps_of_stage, snapshot, start_benchmark,
                                              time_stage)
from blocks.engine.run_dir import RunDir
from blocks.engine.trainer import StageTrainer
from blocks.errors import DistilBlocksError
from blocks.experiment import Experiment
from blocks.values import Sequence

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEACHER = ROOT / "model_zoo" / "sst2" / "minilm_teacher_lr1e4.json"
SAMPLE_SECONDS = 0.1


# -- GPU utilisation ----------------------------------------------------------------------------
def utilisation_reader(device: torch.device):
    """A function giving the device's utilisation in percent now, or None when none can be read."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        torch.cuda.utilization(index)  # needs pynvml (nvidia-ml-py)
        return lambda: float(torch.cuda.utilization(index))
    except Exception:  # noqa: BLE001 -- no pynvml, or no NVML: fall back to the command line tool
        pass
    command = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", str(index)]
    try:
        float(subprocess.run(command, capture_output=True, text=True, timeout=5, check=True).stdout.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return lambda: float(subprocess.run(command, capture_output=True, text=True, timeout=5).stdout.strip())


class UtilisationSampler:
    """Samples a reader every ``SAMPLE_SECONDS`` in a thread while it is entered."""

    def __init__(self, reader):
        self.reader, self.samples = reader, []
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.reader is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(SAMPLE_SECONDS):
            try:
                self.samples.append(self.reader())
            except (OSError, subprocess.SubprocessError, ValueError):
                pass

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> str:
        if not self.samples:
            return "not sampled (no CUDA device or no NVML/nvidia-smi)"
        return (f"mean {statistics.fmean(self.samples):.0f}%, median {statistics.median(self.samples):.0f}% "
                f"({len(self.samples)} samples)")


# -- one timed run of a stage -------------------------------------------------------------------
def count_tokens(trainer: StageTrainer, experiment: Experiment) -> list[int]:
    """Wrap the trainer's collate to count the real tokens of the trained model's batches."""
    keys = list(experiment.model_inputs[trainer.model_name].values())
    counted = [0]
    collate = trainer.train_split.collate

    def counting(index):
        batch = collate(index)
        for key in keys:
            value = batch.inputs[key]
            if isinstance(value, Sequence):
                counted[0] += int(value.mask.sum())
                break
        return batch

    trainer.train_split.collate = counting
    return counted


def run_stage(experiment: Experiment, stage_index: int, device: torch.device, initial: dict, label: str,
              precision: str | None = None, cache: bool | None = None, reader=None) -> dict:
    config = experiment.config.values
    stage = config["stages"][stage_index]
    if precision is not None:
        config["precision"] = precision
    if cache is not None:
        stage["cache_teachers"] = cache
    model = experiment.models[stage["train"]]
    model.load_state_dict(initial)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as folder:
        trainer = StageTrainer(experiment, stage_index, RunDir(folder), device, log=lambda *a: None, progress=False)
        tokens = count_tokens(trainer, experiment)
        try:
            with UtilisationSampler(reader) as sampler:
                timed = time_stage(trainer, device)
        finally:
            del trainer.train_split.collate  # the split's own method again
    history = timed.result["history"]
    dev = {k: v for k, v in (history[-1] if history else {}).items() if k not in ("step", "epoch")}
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"loop": timed.loop, "build": timed.build, "steps": timed.result["steps"], "tokens": tokens[0],
            "examples": timed.result["steps"] * stage["batch_size"], "dev": dev, "label": label,
            "utilisation": sampler, "peak_gib": peak}


# -- the two parts ------------------------------------------------------------------------------
def precision_part(args, device: torch.device) -> int:
    experiment, index = first_steps_of_stage(args.config, args.overrides, args.stage, args.steps,
                                             cache_teachers=True, device_name=args.device)
    stage = experiment.config["stages"][index]
    model = experiment.models[stage["train"]]
    for name in [stage["train"], *stage["teachers"]]:
        experiment.models[name].to(device)
    initial = snapshot(model)
    print(f"\npart 1: precision. recipe {args.config}, stage {index} '{stage['name']}': '{stage['train']}' "
          f"({model.parameter_count():,} parameters), batch size {stage['batch_size']}, {args.steps} steps")
    if device.type != "cuda":
        print("  (CPU: autocast is CUDA-only, so both sides run fp32 here; the ratio is about 1)")
    if args.warmup_steps:  # untimed: first calls allocate memory and pick kernels, for each precision
        stage["max_steps"] = args.warmup_steps
        for precision in ("fp32", "bf16"):
            run_stage(experiment, index, device, initial, "warm-up", precision=precision)
        stage["max_steps"] = args.steps
    times, last = alternate_sides(
        {"fp32": lambda: run_stage(experiment, index, device, initial, "fp32", precision="fp32"),
         "bf16": lambda: run_stage(experiment, index, device, initial, "bf16", precision="bf16")}, args.repeats)
    rows = {}
    for name in ("fp32", "bf16"):
        per_step = statistics.median(times[name])
        result = last[name]
        tokens_per_step = result["tokens"] / max(result["steps"], 1)
        rows[name] = (tokens_per_step / per_step, stage["batch_size"] / per_step, per_step, result)
    print(f"\nresults, part 1 ({args.steps} steps, median of {args.repeats}):")
    print("| precision | ms/step | tokens/s | examples/s | peak GPU memory | dev after the steps |")
    print("|---|---:|---:|---:|---:|---|")
    for name, (tokens_s, examples_s, per_step, result) in rows.items():
        peak = f"{result['peak_gib']:.2f} GiB" if result["peak_gib"] is not None else "n/a"
        dev = ", ".join(f"{k} {v:.4f}" for k, v in result["dev"].items()) or "no dev split"
        print(f"| {name} | {1000 * per_step:.1f} | {tokens_s:,.0f} | {examples_s:,.1f} | {peak} | {dev} |")
    print(f"bf16 / fp32 tokens/s: {rows['bf16'][0] / rows['fp32'][0]:.2f}x")
    return 0


def utilisation_part(args, device: torch.device) -> int:
    experiment, index = first_steps_of_stage(args.distill, args.distill_overrides, None, args.steps,
                                             cache_teachers=True, device_name=args.device)
    stage = experiment.config["stages"][index]
    if not stage["teachers"]:
        raise SystemExit(f"error: the last stage of {args.distill} has no teachers: --distill takes a "
                         f"distillation recipe")
    for name in [stage["train"], *stage["teachers"]]:
        experiment.models[name].to(device)
    initial = snapshot(experiment.models[stage["train"]])
    reader = utilisation_reader(device)
    print(f"\npart 2: GPU utilisation of a distillation stage. recipe {args.distill}, stage {index} "
          f"'{stage['name']}': '{stage['train']}' taught by {', '.join(stage['teachers'])}, batch size "
          f"{stage['batch_size']}, {args.steps} steps, precision {experiment.config['precision']}")
    results = {}
    for cache in (True, False):
        label = "teacher cache" if cache else "teacher in the loop"
        results[label] = run_stage(experiment, index, device, initial, label, cache=cache, reader=reader)
        print(f"  {label}: {results[label]['steps']} steps in {results[label]['loop']:.2f} s "
              f"(+ {results[label]['build']:.1f} s opening or building the cache, not timed)", flush=True)
    print(f"\nresults, part 2 ({args.steps} steps):")
    print("| teacher outputs | ms/step | examples/s | GPU utilisation | peak GPU memory |")
    print("|---|---:|---:|---|---:|")
    for label, result in results.items():
        per_step = result["loop"] / max(result["steps"], 1)
        peak = f"{result['peak_gib']:.2f} GiB" if result["peak_gib"] is not None else "n/a"
        print(f"| {label} | {1000 * per_step:.1f} | {result['examples'] / result['loop']:,.0f} | "
              f"{result['utilisation'].summary()} | {peak} |")
    return 0


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_gpu.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_TEACHER),
                        help="teacher recipe for part 1 (default: model_zoo/sst2/minilm_teacher_lr1e4.json)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override of the teacher recipe, as for `blocks train --set` (repeatable)")
    parser.add_argument("--stage", type=int, default=None, help="stage of the teacher recipe (default: the last)")
    parser.add_argument("--distill", default=None, metavar="CONFIG",
                        help="distillation recipe for part 2 (default: part 2 is skipped)")
    parser.add_argument("--distill-set", dest="distill_overrides", action="append", default=[],
                        metavar="PATH=VALUE", help="override of the distillation recipe (repeatable)")
    parser.add_argument("--steps", type=int, default=200, help="steps per side and repeat (default 200)")
    parser.add_argument("--repeats", type=int, default=2, help="alternations of fp32 and bf16 (default 2)")
    parser.add_argument("--warmup-steps", type=int, default=10,
                        help="untimed steps of each precision before part 1 (default 10)")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch threads (default: every usable core, here {available_cores()})")
    parser.add_argument("--device", default="cuda", help="cuda[:N] (default) or cpu")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = start_benchmark("DistilBlocks GPU benchmark: teacher fine-tuning in bf16 vs fp32, and the GPU "
                             "utilisation of distillation", "tools/bench_gpu.py", argv, args.threads, args.device)
    started = time.perf_counter()
    try:
        code = precision_part(args, device)
        if args.distill:
            code = max(code, utilisation_part(args, device))
    except DistilBlocksError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"\nwhole benchmark: {time.perf_counter() - started:.0f} s; load average after (1, 5, 15 min): "
          f"{load_average()}")
    return code


if __name__ == "__main__":
    sys.exit(main())

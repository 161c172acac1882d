#!/usr/bin/env python
"""Teacher cache: one distillation epoch with the teacher in the loop vs with the teacher cache.

Both sides run ``StageTrainer(...).run`` (what ``blocks train`` runs) for one epoch of the same
distillation stage, in one process, from the same student weights, the same teacher weights and
the same batch order:

* loop   -- ``"cache_teachers": false``: every step runs the frozen teacher (eval mode, no_grad)
            on the batch, then the student, the losses, backward and the optimizer step.
* cache  -- ``"cache_teachers": true``: the teacher runs once over the training set into
            ``RUN/cache/<key>/`` (timed separately: "cache build"), then every step slices the
            cached logits by the batch's example indexes instead of running the teacher.

Reported: the training loop of each side (the end-of-epoch dev evaluation and checkpoint writing
are timed and subtracted, they are the same on both sides), the cache build, the speedup
loop / cache, and the speedup counting the build (what one epoch gains; every further epoch,
stage or resume reuses the cache). The cached teacher outputs must equal the teacher's live outputs
(max |difference| <= 1e-4 on the first 16 training batches), and both sides must end with the same
student (dev metrics and weights), or, when last-bit differences of a transformer teacher's outputs
(its batches are padded differently when the cache is built) grew during training, with dev
metrics within 0.005: exit status 1 if not.

Teacher weights: ``--run-dir RUN`` takes them from ``RUN/models/<teacher>.safetensors`` (a run of
the same recipe whose teacher stage finished); ``--untrained-teacher`` keeps the randomly
initialised teacher (its outputs are as expensive to compute; only the timing matters then).

Target (from the issue): the cached epoch >= 5 x faster than the teacher-in-the-loop epoch on CPU.

Usage:
    python tools/bench_teacher_cache.py --run-dir runs/zoo/transformer_kd_bilstm-seed1
    python tools/bench_teacher_cache.py --config model_zoo/sst2/minilm_kd_bilstm.json \
        --set models.teacher.run=runs/zoo/minilm_teacher-seed1        # teacher from a finished run
    python tools/bench_teacher_cache.py --untrained-teacher --threads 2
    python tools/bench_teacher_cache.py --untrained-teacher --max-batches 50      # quick run
    python tools/bench_teacher_cache.py --config model_zoo/demo/demo.json --untrained-teacher
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch

from blocks.config.loader import load_config
from blocks.engine.checkpoint import load_checkpoint
from blocks.engine.run import load_run_model
from blocks.engine.run_dir import RunDir
from blocks.engine.teacher_cache import TeacherCache
from blocks.engine.trainer import StageTrainer
from blocks.engine.benchmark import available_cores, load_average
from blocks.engine.training_benchmark import NestedTimer, compare_weights, snapshot, start_benchmark, time_stage
from blocks.errors import DistilBlocksError
from blocks.experiment import Experiment

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "model_zoo" / "sst2" / "transformer_kd_bilstm.json"
TARGET = 5.0
OUTPUT_TOLERANCE = 1e-4  # cached vs live teacher outputs
DEV_TOLERANCE = 0.005  # dev metrics of the two students, when their weights are not the same


def seconds(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.2f}"


# -- the two sides ----------------------------------------------------------------------------
def distillation_stage(experiment: Experiment, index: int | None) -> int:
    stages = experiment.config["stages"]
    if index is None:
        found = [i for i, stage in enumerate(stages) if stage["teachers"]]
        if not found:
            raise SystemExit("error: the config has no stage with teachers")
        return found[0]
    if not 0 <= index < len(stages):
        raise SystemExit(f"error: --stage {index}: the config has {len(stages)} stage(s)")
    if not stages[index]["teachers"]:
        raise SystemExit(f"error: stage {index} ('{stages[index]['name']}') has no teachers")
    return index


def load_teachers(experiment: Experiment, teachers: list[str], run_dir: str | None, untrained: bool) -> str:
    from_runs = {t: experiment.config["models"][t] for t in teachers if "run" in experiment.config["models"][t]}
    if untrained:
        return "randomly initialised (--untrained-teacher)"
    if run_dir is None:
        missing = [t for t in teachers if t not in from_runs]
        if missing:
            raise SystemExit(f"error: teacher(s) {', '.join(missing)} are trained by the recipe itself: give "
                             f"--run-dir RUN (a run whose teacher stage finished) or --untrained-teacher")
        for name in from_runs:
            load_run_model(experiment, name)
        return "from " + ", ".join(sorted({m["run"] for m in from_runs.values()}))
    for teacher in teachers:
        path = Path(run_dir) / "models" / f"{teacher}.safetensors"
        if not path.is_file():
            raise SystemExit(f"error: {path} not found: the run's '{teacher}' stage has not finished; "
                             f"use another --run-dir or --untrained-teacher")
        tensors, _ = load_checkpoint(path)
        try:
            experiment.models[teacher].load_state_dict(tensors)
        except RuntimeError as error:
            raise SystemExit(f"error: {path} does not fit the recipe's '{teacher}' (another recipe, or "
                             f"another vocabulary?): {str(error).splitlines()[0]}") from None
    return f"from {run_dir}"


def side(experiment: Experiment, stage_index: int, device: torch.device, initial: dict, cache: bool,
         run_root: str | None) -> dict:
    """One epoch of the stage; seconds (total, end-of-epoch work, cache build) and the outcome."""
    stage = experiment.config["stages"][stage_index]
    stage["cache_teachers"] = cache
    experiment.config.values["cache_dir"] = None  # a fresh cache in the temporary run: its build is timed
    model = experiment.models[stage["train"]]
    model.load_state_dict(initial)
    gc.collect()
    messages: list[str] = []
    reads = NestedTimer()  # slicing the cache each step
    original_outputs = TeacherCache.outputs
    TeacherCache.outputs = reads.wrap(original_outputs)
    with contextlib.ExitStack() as restore, \
            tempfile.TemporaryDirectory(prefix="bench-cache-", dir=run_root) as folder:
        restore.callback(setattr, TeacherCache, "outputs", original_outputs)
        trainer = StageTrainer(experiment, stage_index, RunDir(folder), device, log=messages.append, progress=False)
        timed = time_stage(trainer, device)
        result = timed.result
        cache_bytes = trainer.teacher_cache.size_bytes if trainer.teacher_cache is not None else 0
        agreement = cache_agreement(experiment, trainer, device) if trainer.teacher_cache is not None else None
    last = result["history"][-1] if result["history"] else {}
    dev = {k: v for k, v in last.items() if k not in ("step", "epoch")}
    return {"total": timed.total, "end": timed.end, "build": timed.build, "loop": timed.loop,
            "steps": result["steps"], "dev": dev, "weights": snapshot(model), "cache_bytes": cache_bytes,
            "reads": reads.total, "messages": messages, "agreement": agreement}


def cache_agreement(experiment: Experiment, trainer: StageTrainer, device: torch.device, batches: int = 16) -> float:
    """Max |cached − live| over the cached teacher values of the first training batches: the cache
    must hold what the teacher computes (up to the last bits a different padding can change)."""
    from blocks.data.batching import sorted_batches
    from blocks.engine.teacher_cache import requested_nodes
    from blocks.values import Sequence

    nodes = requested_nodes(trainer.losses, trainer.teachers)
    split = trainer.train_split
    worst = 0.0
    with torch.no_grad():
        for index in sorted_batches(split.lengths, trainer.stage["batch_size"])[:batches]:
            batch = split.collate(index).to(device)
            cached = trainer.teacher_cache.outputs(batch.index, device)
            for teacher, names in nodes.items():
                live = experiment.model_values(teacher, batch)
                for name in names:
                    a, b = cached[teacher][name], live[name]
                    if isinstance(b, Sequence):
                        mask = b.mask[:, :a.values.shape[1]].unsqueeze(-1)
                        a, b = a.values * mask, b.values[:, :a.values.shape[1]] * mask
                    worst = max(worst, float((a.float() - b.float()).abs().max()))
    return worst


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_teacher_cache.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="recipe (default: model_zoo/sst2/transformer_kd_bilstm.json)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="config override as for `blocks train --set` (repeatable)")
    parser.add_argument("--stage", type=int, default=None,
                        help="index of the distillation stage (default: the first stage with teachers)")
    teacher = parser.add_mutually_exclusive_group()  # neither: the recipe's teachers come from run directories
    teacher.add_argument("--run-dir", help="take the teacher's weights from RUN/models/<teacher>.safetensors")
    teacher.add_argument("--untrained-teacher", action="store_true",
                         help="keep the randomly initialised teacher (only the timing matters)")
    parser.add_argument("--max-batches", type=int, default=None, metavar="N",
                        help="train only the first N batches of the epoch on both sides (default: the whole "
                             "epoch); the cache is still built over the whole training set")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch threads (default: every usable core, here {available_cores()})")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--warmup-batches", type=int, default=3,
                        help="untimed teacher+student forward passes before timing (default 3)")
    parser.add_argument("--target", type=float, default=TARGET, help=f"speedup to pass (default {TARGET:g})")
    parser.add_argument("--run-root", default=None,
                        help="folder for the temporary run directories (default: the system temp dir)")
    args = parser.parse_args(argv)
    if args.max_batches is not None and args.max_batches < 1:
        parser.error("--max-batches must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = start_benchmark("DistilBlocks teacher-cache benchmark: one distillation epoch, teacher in the loop "
                             "vs cached outputs", "tools/bench_teacher_cache.py", argv, args.threads, args.device)
    threads = torch.get_num_threads()

    try:
        probe = load_config(args.config, args.overrides)
        stage_index = args.stage
        if stage_index is None:
            stage_index = next((i for i, s in enumerate(probe["stages"]) if s["teachers"]), 0)
        stage_overrides = [f"stages.{stage_index}.epochs=1", f"stages.{stage_index}.eval_every=0",
                           f"device={args.device}"]
        if args.max_batches:
            stage_overrides.append(f"stages.{stage_index}.max_steps={args.max_batches}")
        config = load_config(args.config, [*args.overrides, *stage_overrides])
        started = time.perf_counter()
        experiment = Experiment.prepare(config, splits=("train", "dev"), log=lambda *a: None)
        experiment.load_pretrained(log=lambda *a: None)
        prepare_seconds = time.perf_counter() - started
    except DistilBlocksError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stage_index = distillation_stage(experiment, stage_index)
    stage = experiment.config["stages"][stage_index]
    teachers = list(stage["teachers"])
    source = load_teachers(experiment, teachers, args.run_dir, args.untrained_teacher)
    student = experiment.models[stage["train"]]
    for name in [stage["train"], *teachers]:
        experiment.models[name].to(device)
    initial = snapshot(student)
    train, dev = experiment.splits["train"], experiment.splits.get("dev")
    full_epoch = -(-len(train) // stage["batch_size"])
    batches = min(full_epoch, args.max_batches) if args.max_batches else full_epoch
    parameters = ", ".join(f"{n} {experiment.models[n].parameter_count():,}" for n in [*teachers, stage["train"]])
    print(f"recipe: {args.config}; stage {stage_index} '{stage['name']}': '{stage['train']}' taught by "
          f"{', '.join(teachers)} ({source}); parameters: {parameters}")
    print(f"data: train {len(train):,} examples, dev {len(dev) if dev else 0:,} (read and encoded once in "
          f"{prepare_seconds:.1f} s, not timed)")
    print(f"epoch: batch size {stage['batch_size']} -> {full_epoch:,} batches; timed: "
          + (f"the first {batches:,} (--max-batches)" if batches < full_epoch else f"all {full_epoch:,}")
          + f"; losses: {', '.join(loss['block'] for loss in stage['losses'])}; "
          f"cache built with batches of {stage['eval_batch_size']}")

    if args.warmup_batches:  # untimed: first calls allocate
        from blocks.data.batching import sorted_batches
        with torch.no_grad():
            for index in sorted_batches(train.lengths, stage["batch_size"])[:args.warmup_batches]:
                batch = train.collate(index).to(device)
                for name in [*teachers, stage["train"]]:
                    experiment.model_values(name, batch)

    loop = side(experiment, stage_index, device, initial, cache=False, run_root=args.run_root)
    print(f"teacher in the loop: {seconds(loop['total'])} s (training loop {seconds(loop['loop'])} s + dev "
          f"evaluation and checkpoints {seconds(loop['end'])} s), {loop['steps']:,} steps", flush=True)
    cached = side(experiment, stage_index, device, initial, cache=True, run_root=args.run_root)
    print(f"teacher cache:       {seconds(cached['total'])} s (cache build {seconds(cached['build'])} s + training "
          f"loop {seconds(cached['loop'])} s + dev evaluation and checkpoints {seconds(cached['end'])} s), "
          f"{cached['steps']:,} steps; cache {cached['cache_bytes'] / 1e6:,.2f} MB", flush=True)

    same_dev = loop["dev"] == cached["dev"]
    dev_gap = max((abs(loop["dev"][k] - cached["dev"].get(k, float("nan"))) for k in loop["dev"]), default=0.0)
    weights, weights_ok = compare_weights(loop["weights"], cached["weights"], rtol=1e-4, atol=1e-5)
    shown = lambda d: ", ".join(f"{k} {v:.4f}" for k, v in d.items()) or "no dev split"  # noqa: E731
    outputs_ok = cached["agreement"] is not None and cached["agreement"] <= OUTPUT_TOLERANCE
    print(f"teacher outputs: cached vs computed live on the first 16 training batches: max |difference| "
          f"{cached['agreement']:.2e} -> {'same' if outputs_ok else 'DIFFERENT'} (tolerance {OUTPUT_TOLERANCE:g})")
    print(f"dev after the epoch: loop {shown(loop['dev'])}; cache {shown(cached['dev'])} -> "
          f"{'same' if same_dev else f'differ by {dev_gap:.4f}'}; final student weights: {weights}")
    if not (same_dev and weights_ok) and outputs_ok:
        print("  (the teacher's outputs agree to the last bits a different padding of its batches changes; over "
              "hundreds of steps the student's training amplifies such bits, so the two students can end apart "
              f"by a little; accepted while the dev metrics differ by <= {DEV_TOLERANCE:g})")
    agree = outputs_ok and ((same_dev and weights_ok) or dev_gap <= DEV_TOLERANCE)

    speedup = loop["loop"] / cached["loop"] if cached["loop"] > 0 else float("inf")
    with_build = loop["loop"] / (cached["loop"] + cached["build"])
    per_epoch_saving = loop["loop"] - cached["loop"]
    print()
    print(f"results ({batches:,} batches):")
    print(f"  training loop, teacher in the loop:  {seconds(loop['loop'])} s")
    print(f"  training loop, teacher cache:        {seconds(cached['loop'])} s")
    print(f"  cache build (once per run dir):      {seconds(cached['build'])} s")
    print(f"  of the cached loop, reading the cache: {seconds(cached['reads'])} s "
          f"({1000 * cached['reads'] / max(cached['steps'], 1):.2f} ms per step); the rest is the student's "
          f"own forward, backward and step, the bound of this speedup")
    print(f"  speedup loop / cache:                {speedup:.2f}x  "
          f"{'PASS' if speedup >= args.target else 'FAIL'} (target >= {args.target:g}x)")
    print(f"  speedup counting the build:          {with_build:.2f}x (first epoch only; later epochs, stages "
          f"and resumes reuse the cache)")
    if per_epoch_saving > 0:
        print(f"  the build pays for itself after {cached['build'] / per_epoch_saving:.2f} epoch(s) of this length")
    print(f"load average after (1, 5, 15 min): {load_average()}")
    print()
    print("| recipe | batches | threads | loop (s) | cached (s) | build (s) | speedup | with build | target |")
    print("|---|---|---|---|---|---|---|---|---|")
    label = Path(args.config).stem
    print(f"| {label} | {batches:,} | {threads} | {seconds(loop['loop'])} | {seconds(cached['loop'])} | "
          f"{seconds(cached['build'])} | {speedup:.2f}x | {with_build:.2f}x | ≥ {args.target:g}x |")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())

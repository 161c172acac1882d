#!/usr/bin/env python
"""Engine overhead: one epoch through the DistilBlocks engine vs a minimal hand-written PyTorch loop.

Both sides train the same model (same initial weights) on the same encoded tensors, in the same
batch order, in one process:

* engine     -- ``StageTrainer(...).run(resume=False)`` for one epoch of one stage, exactly what
                ``blocks train`` runs: bucketed batches, loss blocks, grad clipping, LR schedule,
                periodic loss read-back and metrics.jsonl lines, and at the end of the epoch one
                dev evaluation, the best/last checkpoints and the published model weights.
                Reported twice: the full run, and the training loop alone (the end-of-epoch
                evaluation and checkpoint writing timed separately and subtracted).
* hand loop  -- ``collate -> forward -> F.cross_entropy -> backward -> clip -> step -> zero_grad``
                over the same batch list (``bucket_batches(train.lengths, batch_size,
                epoch_generator(seed, stage, 0))``); no logging, no evaluation, no checkpoint.

Runs are interleaved (engine, hand, engine, hand, ...) with the weights reset before each, after a
short untimed warm-up. Dropout is seeded the same way on both sides (``torch.manual_seed(seed +
stage)``, as the engine does at stage start), so the two runs do identical arithmetic: the final
weights are compared after every repeat (they should be bitwise identical), and ``--check`` also
compares the per-step loss trajectories in one extra untimed run of each.

Target (from the issue): engine time <= 1.10 x hand-loop time.

Usage:
    python tools/bench_engine_overhead.py                      # SST-2 BiLSTM+attention, 1 epoch, 2 repeats
    python tools/bench_engine_overhead.py --repeats 3 --threads 2 --check
    python tools/bench_engine_overhead.py --max-batches 40 --repeats 1    # quick smoke run
    python tools/bench_engine_overhead.py --config model_zoo/sst2/textcnn.json --set stages.0.batch_size=32

The stage must train one model with a single CrossEntropy loss, no teachers and accumulate = 1
(what the hand loop reproduces). Run it on an otherwise idle machine: the load average is printed
before and after, and a warning is shown when other processes are using the CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from blocks.config.loader import load_config
from blocks.data.batching import bucket_batches
from blocks.engine.optim import build_schedule
from blocks.engine.run_dir import RunDir
from blocks.engine.trainer import StageTrainer, epoch_generator
from blocks.engine.benchmark import available_cores, load_average
from blocks.engine.training_benchmark import NestedTimer, compare_weights, snapshot, start_benchmark, synchronize
from blocks.errors import DistilBlocksError
from blocks.experiment import Experiment

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "model_zoo" / "sst2" / "bilstm_attention.json"
TARGET = 1.10


# -- the stage both sides train ---------------------------------------------------------------
def check_stage(experiment: Experiment, stage_index: int) -> dict:
    stages = experiment.config["stages"]
    if not 0 <= stage_index < len(stages):
        raise SystemExit(f"error: --stage {stage_index}: the config has {len(stages)} stage(s)")
    stage = stages[stage_index]
    problems = []
    if stage["teachers"]:
        problems.append(f"it has teachers ({', '.join(stage['teachers'])})")
    if stage["accumulate"] != 1:
        problems.append(f"accumulate is {stage['accumulate']}")
    losses = stage["losses"]
    if len(losses) != 1 or losses[0]["block"] != "CrossEntropy":
        problems.append("its losses are not a single CrossEntropy")
    if experiment.task.name != "classification":
        problems.append("the task is not classification")
    if problems:
        raise SystemExit(f"error: stage {stage_index} ('{stage['name']}') cannot be reproduced by the hand loop: "
                         + "; ".join(problems))
    return stage


def plain_schedule(stage: dict) -> bool:
    schedule = stage["schedule"] or {}
    return schedule.get("type", "constant") == "constant" and not schedule.get("warmup", 0)


def torch_optimizer(config: dict, parameters) -> torch.optim.Optimizer:
    """The stage's optimizer, written out with torch.optim (the engine's defaults)."""
    kind = config.get("type", "adam")
    lr = config.get("lr", 1e-3)
    if kind == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=config.get("momentum", 0.0),
                               weight_decay=config.get("weight_decay", 0.0), nesterov=config.get("nesterov", False))
    optimizer_class = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    betas = tuple(float(b) for b in config.get("betas", (0.9, 0.999)))
    options = {"lr": lr, "betas": betas, "eps": config.get("eps", 1e-8),
               "weight_decay": config.get("weight_decay", 0.01 if kind == "adamw" else 0.0)}
    parameters = list(parameters)
    if config.get("fused", True):  # the same kernel as the engine: fused where this torch has it
        try:
            return optimizer_class(parameters, fused=True, **options)
        except (RuntimeError, ValueError, TypeError):
            pass
    return optimizer_class(parameters, foreach=True, **options)


class Bench:
    def __init__(self, experiment: Experiment, stage_index: int, device: torch.device, max_batches: int | None,
                 run_root: str | None):
        self.experiment = experiment
        self.stage_index = stage_index
        self.stage = check_stage(experiment, stage_index)
        self.model_name = self.stage["train"]
        self.model = experiment.models[self.model_name]
        self.device = device
        self.max_batches = max_batches
        self.run_root = run_root
        self.seed = experiment.config["seed"]
        self.train = experiment.splits["train"]
        loss = self.stage["losses"][0]
        self.output = loss.get("output") or self.model.output_name
        self.label_smoothing = float(loss.get("label_smoothing", 0.0))
        self.weight = float(loss.get("weight", 1.0))
        self.model.to(device)
        self.initial = snapshot(self.model)

    def reset(self) -> None:
        self.model.load_state_dict(self.initial)
        self.model.to(self.device).train()
        gc.collect()

    def batch_list(self) -> list[torch.Tensor]:
        batches = bucket_batches(self.train.lengths, self.stage["batch_size"],
                                 epoch_generator(self.seed, self.stage_index, 0))
        return batches[: self.max_batches] if self.max_batches else batches

    # -- the hand-written loop ---------------------------------------------------------------
    def hand(self, record: list | None = None, limit: int | None = None) -> float:
        """One epoch of a minimal PyTorch training loop; returns seconds."""
        self.reset()
        experiment, model, train, device = self.experiment, self.model, self.train, self.device
        name, output, clip = self.model_name, self.output, self.stage["grad_clip"]
        smoothing, weight = self.label_smoothing, self.weight
        synchronize(device)
        start = time.perf_counter()
        batches = self.batch_list()[:limit] if limit else self.batch_list()
        model.train()
        optimizer = torch_optimizer(self.stage["optimizer"], [p for p in model.parameters() if p.requires_grad])
        # a warm-up or decaying LR is one more LambdaLR step per batch; the default constant one is a no-op
        schedule = None if plain_schedule(self.stage) else build_schedule(
            optimizer, self.stage["schedule"], len(batches))
        torch.manual_seed(self.seed + self.stage_index)  # same dropout masks as the engine
        for index in batches:
            batch = train.collate(index).to(device)
            logits = experiment.model_values(name, batch)[output]
            loss = F.cross_entropy(logits, batch.labels, label_smoothing=smoothing)
            if weight != 1.0:
                loss = weight * loss
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            if schedule is not None:
                schedule.step()
            optimizer.zero_grad(set_to_none=True)
            if record is not None:
                record.append(loss.detach())
        synchronize(device)
        return time.perf_counter() - start

    # -- the engine ---------------------------------------------------------------------------
    def engine(self, record: list | None = None) -> dict:
        """One epoch through StageTrainer.run; returns seconds (full and loop-only) and what it said."""
        self.reset()
        messages: list[str] = []
        captured = io.StringIO()
        with tempfile.TemporaryDirectory(prefix="bench-engine-", dir=self.run_root) as folder:
            trainer = StageTrainer(self.experiment, self.stage_index, RunDir(folder), self.device,
                                   log=messages.append, progress=False)
            end_work = NestedTimer()  # dev evaluation, checkpoints, publishing the weights
            for method in ("_evaluate_and_save", "save", "save_best", "_finish"):
                setattr(trainer, method, end_work.wrap(getattr(trainer, method)))
            if record is not None:
                original = trainer._loss

                def recorded(batch):
                    loss = original(batch)
                    record.append(loss.detach().clone())
                    return loss
                trainer._loss = recorded
            synchronize(self.device)
            with contextlib.redirect_stdout(captured):
                start = time.perf_counter()
                result = trainer.run(resume=False)
                synchronize(self.device)
                total = time.perf_counter() - start
        dev = [line.strip() for line in captured.getvalue().splitlines() if ": dev " in line]
        return {"total": total, "end": end_work.total, "loop": total - end_work.total, "steps": result["steps"],
                "dev": dev[-1] if dev else "no dev split: no evaluation", "messages": messages}


# -- command line -----------------------------------------------------------------------------
def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_engine_overhead.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="recipe to train (default: model_zoo/sst2/bilstm_attention.json)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="config override as for `blocks train --set` (repeatable)")
    parser.add_argument("--stage", type=int, default=0, help="index of the stage to train (default 0)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed (engine, hand) pairs, interleaved; medians are reported (default 2)")
    parser.add_argument("--max-batches", type=int, default=None, metavar="N",
                        help="train only the first N batches of the epoch on both sides (quick runs; "
                             "default: the whole epoch)")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch threads (default: every usable core, here {available_cores()})")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--warmup-batches", type=int, default=5,
                        help="untimed hand-loop batches before the first timed run (default 5; 0 = none)")
    parser.add_argument("--check", action="store_true",
                        help="also run each side once more, untimed, recording every step's loss, and "
                             "require identical loss trajectories and final weights (exit status 1 if not)")
    parser.add_argument("--target", type=float, default=TARGET, help=f"ratio to pass (default {TARGET})")
    parser.add_argument("--run-root", default=None,
                        help="folder for the engine's temporary run directories (default: the system temp dir)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.max_batches is not None and args.max_batches < 1:
        parser.error("--max-batches must be >= 1")
    return args


def recipe_label(path: str) -> str:
    resolved = Path(path).resolve()
    for base in (ROOT / "model_zoo", ROOT):
        try:
            return str(resolved.relative_to(base).with_suffix(""))
        except ValueError:
            continue
    return resolved.stem


def seconds(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.2f}"


def verdict(ratio: float, target: float) -> str:
    return "PASS" if ratio <= target else "FAIL"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = start_benchmark("DistilBlocks engine-overhead benchmark: one epoch through the engine vs a "
                             "hand-written PyTorch loop", "tools/bench_engine_overhead.py", argv, args.threads,
                             args.device)
    threads = torch.get_num_threads()

    stage_overrides = [f"stages.{args.stage}.epochs=1", f"stages.{args.stage}.eval_every=0"]
    if args.max_batches:
        stage_overrides.append(f"stages.{args.stage}.max_steps={args.max_batches}")
    try:
        config = load_config(args.config, [*args.overrides, *stage_overrides])
        started = time.perf_counter()
        experiment = Experiment.prepare(config, splits=("train", "dev"), log=lambda *a: None)
        experiment.load_pretrained(log=lambda *a: None)
        prepare_seconds = time.perf_counter() - started
        bench = Bench(experiment, args.stage, device, args.max_batches, args.run_root)
    except DistilBlocksError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    stage = bench.stage
    train = experiment.splits["train"]
    dev = experiment.splits.get("dev")
    full_epoch = -(-len(train) // stage["batch_size"])
    timed_batches = min(full_epoch, args.max_batches) if args.max_batches else full_epoch
    optimizer = stage["optimizer"]
    schedule = stage["schedule"] or {"type": "constant"}
    print(f"recipe: {args.config} (seed {bench.seed}); stage {args.stage} '{stage['name']}' trains "
          f"'{bench.model_name}' ({bench.model.parameter_count():,} parameters)")
    print(f"data: train {len(train):,} examples, dev {len(dev) if dev else 0:,}; read and encoded once in "
          f"{prepare_seconds:.1f} s (not timed), shared by both sides")
    print(f"epoch: batch size {stage['batch_size']} -> {full_epoch:,} batches; timed: "
          + (f"the first {timed_batches:,} batches (--max-batches {args.max_batches})" if args.max_batches
             else f"all {full_epoch:,} batches (one epoch)"))
    print(f"training: {optimizer.get('type', 'adam')} lr {optimizer.get('lr', 1e-3):g}, grad_clip "
          f"{stage['grad_clip']}, schedule {schedule.get('type', 'constant')} (warm-up {schedule.get('warmup', 0)}), "
          f"loss CrossEntropy, engine logs the loss every {stage['log_every']} steps")
    print("engine side: StageTrainer.run = training loop + 1 dev evaluation + checkpoints at the end of the epoch "
          "(timed separately: 'end')")
    print("hand side:   collate -> forward -> F.cross_entropy -> backward -> clip -> step -> zero_grad; "
          "no logging, evaluation or checkpoint")
    print(f"order: engine, hand, x {args.repeats}, weights reset before each run; "
          f"warm-up: {args.warmup_batches} untimed hand-loop batches")
    print()

    if args.warmup_batches:
        bench.hand(limit=args.warmup_batches)

    engine_total, engine_loop, engine_end, hand_times = [], [], [], []
    weights_ok = True
    dev_line = ""
    for repeat in range(1, args.repeats + 1):
        engine = bench.engine()
        engine_weights = snapshot(bench.model)
        hand_seconds = bench.hand()
        same, ok = compare_weights(engine_weights, snapshot(bench.model))
        weights_ok &= ok
        engine_total.append(engine["total"])
        engine_loop.append(engine["loop"])
        engine_end.append(engine["end"])
        hand_times.append(hand_seconds)
        dev_line = engine["dev"]
        print(f"repeat {repeat}/{args.repeats}: engine {seconds(engine['total'])} s (training loop "
              f"{seconds(engine['loop'])} s + end {seconds(engine['end'])} s), hand loop {seconds(hand_seconds)} s; "
              f"{engine['steps']:,} steps; "
              f"final weights engine vs hand: {same}", flush=True)
    print(f"engine's evaluation after the epoch: {dev_line}")

    check_ok = True
    if args.check:
        engine_losses: list[torch.Tensor] = []
        hand_losses: list[torch.Tensor] = []
        bench.engine(record=engine_losses)
        engine_weights = snapshot(bench.model)
        bench.hand(record=hand_losses)
        same, weights_match = compare_weights(engine_weights, snapshot(bench.model))
        if len(engine_losses) != len(hand_losses):
            trajectory, losses_match = f"DIFFER (engine {len(engine_losses)} steps, hand {len(hand_losses)})", False
        else:
            a, b = torch.stack(engine_losses).float().cpu(), torch.stack(hand_losses).float().cpu()
            if torch.equal(a, b):
                trajectory, losses_match = f"identical over {len(a):,} steps (bitwise)", True
            else:
                diff = (a - b).abs().max().item()
                losses_match = bool(torch.allclose(a, b, rtol=1e-5, atol=1e-6))
                trajectory = (f"{'equal within tolerance' if losses_match else 'DIFFER'} over {len(a):,} steps "
                              f"(max |diff| {diff:.3e})")
        check_ok = weights_match and losses_match
        print(f"--check (one extra untimed run of each): loss trajectories {trajectory}; final weights {same} "
              f"-> {'OK' if check_ok else 'FAILED'}")

    hand = statistics.median(hand_times)
    loop = statistics.median(engine_loop)
    total = statistics.median(engine_total)
    end = statistics.median(engine_end)
    rows = [("hand-written PyTorch loop", hand_times, hand),
            ("engine, training loop only", engine_loop, loop),
            ("engine, full run (+ dev eval & checkpoints)", engine_total, total)]
    print()
    print(f"results: seconds for {timed_batches:,} batches, median of {args.repeats} repeat(s); "
          f"ratio = median / median of the hand loop")
    print(f"  {'':44} {'per repeat':>24} {'median':>8} {'ratio':>7}")
    for label, values, median in rows:
        per = " ".join(seconds(v) for v in values)
        print(f"  {label:44} {per:>24} {seconds(median):>8} {median / hand:7.3f}")
    print(f"  (end-of-epoch dev evaluation + checkpoints: median {seconds(end)} s)")
    loop_ratio, full_ratio = loop / hand, total / hand
    print()
    print(f"target: engine time <= {args.target:.2f} x hand loop")
    print(f"  engine (training loop only) / hand loop: {loop_ratio:.3f}  {verdict(loop_ratio, args.target)}")
    print(f"  engine (full run)           / hand loop: {full_ratio:.3f}  {verdict(full_ratio, args.target)}"
          f"  (includes the dev evaluation and checkpoints the hand loop does not do)")
    print(f"  final weights engine vs hand identical in every repeat: {'yes' if weights_ok else 'NO'}")
    print(f"load average after (1, 5, 15 min): {load_average()}")

    batches_cell = f"{timed_batches:,}" + (" (1 epoch)" if timed_batches == full_epoch else " (partial epoch)")
    print()
    print("Markdown (paste into docs):")
    print("| recipe | batches | threads | hand loop (s) | engine loop (s) | engine full run (s) "
          "| engine loop / hand | engine full / hand | target |")
    print("|---|---|---|---|---|---|---|---|---|")
    cells = [recipe_label(args.config), batches_cell, str(threads), seconds(hand), seconds(loop), seconds(total),
             f"{loop_ratio:.3f} {verdict(loop_ratio, args.target)}",
             f"{full_ratio:.3f} {verdict(full_ratio, args.target)}", f"≤ {args.target:.2f}"]
    print("| " + " | ".join(cells) + " |")
    return 0 if check_ok else 1


if __name__ == "__main__":
    sys.exit(main())

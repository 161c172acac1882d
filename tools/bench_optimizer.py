"""Optimizer step: torch's fused Adam kernel vs the multi-tensor (foreach) loop, on a recipe's real stage.

Both sides run ``StageTrainer(...).run`` (what ``blocks train`` runs) for the first N steps of the
same stage, in one process, from the same student weights and the same batch order, differing only
in ``optimizer.fused`` (true on one side, false on the other). Teachers come from the recipe's run
directories and their outputs from the recipe's shared teacher cache (built first if missing, not
timed), so the timed loop is the student's forward, backward, gradient clipping and optimizer
step. The sides alternate (fused, loop, fused, loop, ...) ``--repeats`` times so that a change of
machine load hits both.

Reported: seconds per step of each side (the dev evaluation and checkpoint writing at the end are
timed and subtracted), the speedup loop / fused, and whether the two students end the same (the
kernels do the same arithmetic in a different order, so the weights agree to float rounding).

Example (the SST-2 BiLSTM student over MiniLM word pieces, whose 11.7M-weight embedding the
optimizer updates densely every step)::

    python tools/bench_optimizer.py --config model_zoo/sst2/minilm_kd_bilstm.json \
        --set models.teacher.run=runs/zoo/minilm_teacher-seed1 --threads 1 --steps 100
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile

import torch

from blocks.engine.benchmark import available_cores, load_average
from blocks.engine.training_benchmark import (alternate_sides, compare_weights, first_steps_of_stage, snapshot,
                                              start_benchmark, time_stage)
from blocks.engine.run_dir import RunDir
from blocks.engine.trainer import StageTrainer
from blocks.errors import DistilBlocksError
from blocks.experiment import Experiment


def side(experiment: Experiment, stage_index: int, device: torch.device, initial: dict, fused: bool) -> dict:
    """The first steps of the stage with one optimizer kernel: seconds of the loop and the end weights."""
    stage = experiment.config["stages"][stage_index]
    stage["optimizer"] = {**stage["optimizer"], "fused": fused}
    model = experiment.models[stage["train"]]
    model.load_state_dict(initial)
    with tempfile.TemporaryDirectory(prefix="bench-optimizer-") as folder:
        trainer = StageTrainer(experiment, stage_index, RunDir(folder), device, log=lambda *a: None, progress=False)
        timed = time_stage(trainer, device)
        kernel = trainer.optimizer.defaults.get("fused")
    return {"loop": timed.loop, "build": timed.build, "steps": timed.result["steps"],
            "weights": snapshot(model), "label": "fused" if kernel else "foreach"}


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_optimizer.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe whose stage is timed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="config override as for `blocks train --set` (repeatable)")
    parser.add_argument("--stage", type=int, default=None, help="stage index (default: the last stage)")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per side and repeat (default 100)")
    parser.add_argument("--repeats", type=int, default=2, help="alternations of the two sides (default 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch threads (default: every usable core, here {available_cores()})")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = start_benchmark("DistilBlocks optimizer benchmark: fused Adam kernel vs the multi-tensor loop, "
                             "same stage, same steps", "tools/bench_optimizer.py", argv, args.threads, args.device)
    try:
        experiment, stage_index = first_steps_of_stage(args.config, args.overrides, args.stage, args.steps,
                                                       cache_teachers=True, device_name=args.device)
    except DistilBlocksError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stage = experiment.config["stages"][stage_index]
    if stage["optimizer"].get("type", "adam") == "sgd":
        raise SystemExit(f"error: stage {stage_index} uses sgd, which has no fused option here")
    student = experiment.models[stage["train"]]
    for name in [stage["train"], *stage["teachers"]]:
        experiment.models[name].to(device)
    initial = snapshot(student)
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    print(f"recipe: {args.config}; stage {stage_index} '{stage['name']}': '{stage['train']}' "
          f"({trainable:,} trainable parameters), {stage['optimizer'].get('type', 'adam')}, batch size "
          f"{stage['batch_size']}, grad clip {stage['grad_clip']}; teachers: {', '.join(stage['teachers']) or 'none'}"
          f" (outputs from the teacher cache)")

    times, ends = alternate_sides({"fused": lambda: side(experiment, stage_index, device, initial, True),
                                   "foreach": lambda: side(experiment, stage_index, device, initial, False)},
                                  args.repeats)
    weights, same = compare_weights(ends["fused"]["weights"], ends["foreach"]["weights"], rtol=1e-3, atol=1e-5)
    fused_ms, loop_ms = 1000 * statistics.median(times["fused"]), 1000 * statistics.median(times["foreach"])
    print()
    print(f"results ({args.steps} steps, median of {args.repeats}):")
    print(f"  multi-tensor loop (fused: false): {loop_ms:.1f} ms/step")
    print(f"  fused kernel (the default):       {fused_ms:.1f} ms/step")
    print(f"  speedup loop / fused:             {loop_ms / fused_ms:.2f}x")
    print(f"  final student weights, fused vs loop: {weights}")
    print(f"load average after (1, 5, 15 min): {load_average()}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

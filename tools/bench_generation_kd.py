#!/usr/bin/env python
"""Generation KD: seconds per training step of the small Multi30k student, by method.

Each side runs the trainer's own step (``StageTrainer._loss``: the loss's ``prepare_batch``
rollout, the student, the teacher in the loop, the losses; then backward and the optimizer step)
on the same batches of Multi30k training pairs, from the same student weights, with the teacher
of ``model_zoo/multi30k/transformer.json`` (width 256, 3 + 3 layers) and the student of
``configs/models/multi30k_transformer_small.json`` (width 128, 2 + 2):

* ``ce``           -- label-smoothed cross-entropy on the references (no teacher): from scratch;
* ``word_kd``      -- word-level KD, teacher in the loop (``GenerationKD`` data prefixes, teacher
                      distribution, + ``CrossEntropy``), as with ``"cache_teachers": false``;
* ``imitkd_half``  -- ImitKD with beta 0.5 (half the examples rolled out by greedy decoding);
* ``imitkd_all``   -- ImitKD with beta 0 (every example rolled out: the end of an ImitKD stage).

The first step of each side is a warm-up and not counted; the sides alternate ``--repeats``
times so a change of load hits all. Rollout cost grows with the rollouts' length: an untrained
student rarely ends a sentence and decodes to the task's length limit (10 + 1.5 x source
tokens), a trained one stops near the reference's length, so with an untrained student (the
default) the ImitKD rows are an upper bound; ``--student-weights`` and ``--teacher-weights``
take trained weights (``RUN/models/<model>.safetensors``). The mean rollout length is printed.

Usage:
    python tools/bench_generation_kd.py                                   # 1 thread, 4 timed steps
    python tools/bench_generation_kd.py --steps 8 --repeats 2 --threads 2
    python tools/bench_generation_kd.py --teacher-weights runs/multi30k/transformer/models/transformer.safetensors
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from blocks.engine.training_benchmark import start_benchmark  # noqa: E402

SIDES = {
    "ce": [{"block": "CrossEntropy", "label_smoothing": 0.1}],
    "word_kd": [{"block": "GenerationKD", "prefix": "data", "target": "teacher_distribution", "weight": 0.5},
                {"block": "CrossEntropy", "label_smoothing": 0.1, "weight": 0.5}],
    "imitkd_half": [{"block": "GenerationKD", "prefix": "mixture", "target": "teacher_argmax",
                     "beta": {"type": "constant", "start": 0.5}}],
    "imitkd_all": [{"block": "GenerationKD", "prefix": "mixture", "target": "teacher_argmax",
                    "beta": {"type": "constant", "start": 0.0}}],
}


def write_slice(source: Path, folder: Path, lines: int) -> None:
    """The first ``lines`` training pairs and 100 validation pairs of Multi30k into ``folder``."""
    for split, count in (("train", lines), ("val", 100)):
        for language in ("en", "de"):
            text = (source / f"{split}.{language}").read_text(encoding="utf-8").splitlines()[:count]
            (folder / f"{split}.{language}").write_text("\n".join(text) + "\n", encoding="utf-8")


def bench_config(data: Path, batch_size: int) -> dict:
    teacher = json.loads((REPOSITORY / "model_zoo/multi30k/transformer.json").read_text())["models"]["transformer"]
    stage = {"train": "student", "teachers": ["teacher"], "epochs": 1, "batch_size": batch_size,
             "cache_teachers": False, "optimizer": {"type": "adam", "lr": 0.001}, "grad_clip": 1.0}
    return {
        "extends": [str(REPOSITORY / "configs/data/multi30k.json"),
                    str(REPOSITORY / "configs/models/multi30k_transformer_small.json")],
        "data": {"root": str(data), "test": None},
        "device": "cpu",
        "models": {"teacher": teacher},
        "stages": [{"name": "teacher", "train": "teacher", "epochs": 1, "losses": [{"block": "CrossEntropy"}]}]
                  + [dict(stage, name=name, losses=losses) for name, losses in SIDES.items()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPOSITORY.parent / "shared" / "data" / "multi30k"),
                        help="the Multi30k folder (train.en, train.de, val.en, val.de)")
    parser.add_argument("--lines", type=int, default=3000, help="training pairs read (the subword vocabulary "
                                                                  "trains on them)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per side and repeat")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--teacher-weights", help="the teacher's safetensors (default: untrained)")
    parser.add_argument("--student-weights", help="the student's safetensors (default: untrained)")
    args = parser.parse_args(argv)
    device = start_benchmark("Generation KD: seconds per training step of the small Multi30k student",
                             __file__, argv, args.threads, "cpu")

    work = Path(tempfile.mkdtemp(prefix="bench_generation_kd_"))
    try:
        return _measure(args, device, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measure(args, device, work: Path) -> int:
    from blocks.config.loader import load_config
    from blocks.engine.checkpoint import load_checkpoint
    from blocks.engine.run_dir import RunDir
    from blocks.engine.trainer import StageTrainer
    from blocks.experiment import Experiment

    (work / "data").mkdir()
    write_slice(Path(args.data), work / "data", args.lines)
    (work / "config.json").write_text(json.dumps(bench_config(work / "data", args.batch_size)), encoding="utf-8")
    experiment = Experiment.prepare(load_config(work / "config.json", environ={}), splits=("train", "dev"),
                                    log=lambda *a: None)
    for name, weights in (("teacher", args.teacher_weights), ("student", args.student_weights)):
        if weights:
            experiment.models[name].load_state_dict(load_checkpoint(weights)[0])
    start = {k: v.clone() for k, v in experiment.models["student"].state_dict().items()}
    print(f"data: the first {len(experiment.splits['train']):,} training pairs; batch {args.batch_size}; "
          f"teacher {sum(p.numel() for p in experiment.models['teacher'].parameters()):,} parameters, student "
          f"{sum(p.numel() for p in experiment.models['student'].parameters()):,}; weights: teacher "
          f"{args.teacher_weights or 'untrained'}, student {args.student_weights or 'untrained'}")
    seconds: dict[str, list[float]] = {name: [] for name in SIDES}
    lengths: dict[str, list[float]] = {name: [] for name in SIDES}
    for _ in range(args.repeats):
        for index, name in enumerate(SIDES, start=1):
            experiment.models["student"].load_state_dict(start)
            torch.manual_seed(0)
            trainer = StageTrainer(experiment, index, RunDir(work / "run"), device, log=lambda *a: None,
                                   progress=False)
            trainer._prepare()
            for _, loss in trainer.losses:
                loss.start(trainer.total_steps)
            batches = trainer.epoch_batches(0)[:args.steps + 1]
            for position, indexes in enumerate(batches):
                batch = trainer.train_split.collate(indexes)
                started = time.perf_counter()
                trainer._loss(batch).backward()
                trainer._optimizer_step()
                if position:  # the first step warms up
                    seconds[name].append(time.perf_counter() - started)
            logged = {k: v for _, loss in trainer.losses for k, v in loss.log_values().items()}
            if "rollout_length" in logged:
                lengths[name].append(logged["rollout_length"])
    print(f"\n{'side':<12} {'s/step':>8} {'± std':>7} {'vs ce':>6}  rollout length (tokens, <eos> included)")
    base = statistics.mean(seconds["ce"])
    for name, values in seconds.items():
        mean = statistics.mean(values)
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        length = f"{statistics.mean(lengths[name]):.1f}" if lengths[name] else "-"
        print(f"{name:<12} {mean:8.3f} {spread:7.3f} {mean / base:5.1f}x  {length}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Where a trained model's inference time goes: the time of each graph node, and its share.

Loads a run (as ``tools/bench_inference.py`` does: the run's dev split, batches collated
beforehand, ``torch.inference_mode()``, the model in ``eval()``), runs one untimed warm-up pass,
then times every node's block over the same batches, ``--repeats`` times, keeping each node's
best. Shares are of the sum over the nodes, so they hold on a busy machine better than the
absolute times do.

    python tools/profile_nodes.py runs/conll2003/bilstm_crf_minilm_embeddings-seed1 --threads 1

A tagger's inference also includes its decoding (Viterbi for a CRF), timed as ``(decoding)``.
"""
from __future__ import annotations

import argparse
import time
from collections import Counter

import torch

from blocks.engine.benchmark import run_entries


def profile(run_dir: str, model: str | None, batch_size: int, examples: int, repeats: int) -> dict[str, float]:
    """Best seconds per node of ``model`` (the run's last trained model by default) over the batches."""
    entries, _ = run_entries(run_dir, "run", [batch_size], examples, min(examples, 300),
                             models=[model] if model else None)
    entry = entries[-1]
    graph = entry.experiment.models[entry.model]
    task = entry.experiment.task
    batches = entry.batches[batch_size]
    elapsed: Counter = Counter()
    started: dict[str, float] = {}
    handles = []
    for name, block in graph.blocks.items():
        def start(_module, _inputs, _name=name):
            started[_name] = time.perf_counter()

        def stop(_module, _inputs, _output, _name=name):
            elapsed[_name] += time.perf_counter() - started[_name]

        handles += [block.register_forward_pre_hook(start), block.register_forward_hook(stop)]
    best: dict[str, float] = {}
    try:
        with torch.inference_mode():
            for repeat in range(repeats + 1):  # the first pass warms up
                elapsed.clear()
                for batch in batches:
                    values = entry.experiment.model_values(entry.model, batch)
                    if task.per_token:
                        start = time.perf_counter()
                        task.decode_batch(values[graph.output_name], batch)
                        elapsed["(decoding)"] += time.perf_counter() - start
                if repeat:
                    for name, seconds in elapsed.items():
                        best[name] = min(best.get(name, float("inf")), seconds)
    finally:
        for handle in handles:
            handle.remove()
    print(f"{run_dir}: model '{entry.model}', {entry.examples[batch_size]} examples at batch {batch_size}, "
          f"best of {repeats}")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--model", help="the model to profile (default: the run's last trained model)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--examples", type=int, default=640, help="the first N dev examples")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    best = profile(args.run_dir, args.model, args.batch_size, args.examples, args.repeats)
    total = sum(best.values())
    print("| node | ms | share |\n|---|---:|---:|")
    for name, seconds in sorted(best.items(), key=lambda item: -item[1]):
        print(f"| {name} | {seconds * 1000:.1f} | {seconds / total:.1%} |")
    print(f"| all nodes | {total * 1000:.1f} | 100% |")


if __name__ == "__main__":
    main()

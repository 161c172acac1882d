#!/usr/bin/env python
"""The teacher cache of a generating teacher's decoder on Multi30k: top-k against the full distribution.

A word-level KD stage on a seq2seq task caches the teacher's decoder output, which is one
distribution over the target vocabulary per target position. The cache keeps the top k of each
(:mod:`blocks.engine.teacher_cache`). This script

1. counts the target positions of the whole Multi30k training set (29,000 pairs) with the
   recipes' subword vocabulary (BPE, 8,000 pieces shared by both languages, trained on the
   training pairs, at most 256 tokens per target with ``<eos>``), which fixes both sizes;
2. builds the top-k cache for the first ``--slice`` training pairs with a tiny *untrained*
   Transformer teacher (the values do not matter for the size, the vocabulary does), through
   :func:`blocks.engine.teacher_cache.open_or_build` exactly as a stage does, and reads its file
   sizes and build time;
3. extrapolates the slice's bytes per target position and seconds per sentence to the whole
   training set (stated as an extrapolation), beside the size the full distributions would take
   as float16 and as float32 (how the cache stores a teacher's output node).

Usage:
    python tools/measure_topk_cache.py                   # k = 8, 1,000 sentences, 1 thread
    python tools/measure_topk_cache.py --k 4 --slice 2000 --threads 2
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from blocks.config.loader import load_config  # noqa: E402
from blocks.data.subword import SubwordVocabularies  # noqa: E402
from blocks.engine.teacher_cache import CacheRequest, open_or_build  # noqa: E402
from blocks.experiment import Experiment  # noqa: E402

DEFAULT_DATA = REPOSITORY.parent / "shared" / "data" / "multi30k"
MAX_TARGET = 256  # the task's default max_target_length (tokens with <eos>)


def read_lines(path: Path, count: int | None = None) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        lines = [line.rstrip("\n") for line in handle]
    return lines[:count] if count else lines


def full_positions(data: Path, vocab_size: int) -> tuple[int, int, int, float]:
    """(pairs, target positions, vocabulary size, seconds) of the whole training set."""
    started = time.perf_counter()
    sources, targets = read_lines(data / "train.en"), read_lines(data / "train.de")
    pairs = [(s, t) for s, t in zip(sources, targets) if s.strip() and t.strip()]
    vocabularies = SubwordVocabularies.train([s for s, _ in pairs], [t for _, t in pairs], "bpe", vocab_size,
                                             True, 2)
    encoded = vocabularies.target.encode_batch([t for _, t in pairs])
    positions = sum(min(len(ids) + 1, MAX_TARGET) for ids in encoded)
    return len(pairs), positions, vocabularies.target.vocab_size, time.perf_counter() - started


def slice_config(folder: Path, vocab_size: int, k: int) -> Path:
    translator = {
        "inputs": {"source": {"field": "en", "type": "source"}, "prefix": {"field": "de", "type": "target"}},
        "graph": [{"name": "embed", "block": "Embedding", "input": "source", "dim": 32},
                  {"name": "encoder", "block": "TransformerEncoder", "layers": 1, "heads": 2},
                  {"name": "decoder", "block": "TransformerDecoder", "input": ["encoder", "prefix"], "layers": 1,
                   "heads": 2}],
    }
    values = {
        "seed": 1, "device": "cpu",
        "data": {"root": str(folder), "train": "train", "reader": {"format": "parallel", "languages": ["en", "de"]},
                 "label": "de"},
        "task": {"type": "seq2seq", "source": "en", "subword": {"vocab_size": vocab_size, "shared": True}},
        "models": {"teacher": translator, "student": translator},
        "stages": [{"name": "teacher", "train": "teacher", "epochs": 1},
                   {"name": "word_kd", "train": "student", "teachers": ["teacher"], "cache_top_k": k,
                    "losses": [{"block": "KD"}]}],
    }
    path = folder / "config.json"
    path.write_text(json.dumps(values), encoding="utf-8")
    return path


def megabytes(count: float) -> str:
    return f"{count / 1e6:,.1f} MB" if count < 1e9 else f"{count / 1e9:,.2f} GB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the Multi30k folder")
    parser.add_argument("--k", type=int, default=8, help="tokens kept per target position (cache_top_k)")
    parser.add_argument("--slice", type=int, default=1000, help="training pairs the cache is built for")
    parser.add_argument("--vocab-size", type=int, default=8000, help="the recipes' BPE vocabulary size")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (args.data / "train.en").is_file():
        print(f"Multi30k not found at {args.data} (--data)", file=sys.stderr)
        return 2

    pairs, positions, vocab, count_seconds = full_positions(args.data, args.vocab_size)
    print(f"whole training set: {pairs:,} pairs, {positions:,} target positions (<eos> included) with a BPE of "
          f"{vocab:,} pieces ({count_seconds:.1f} s to train it and encode the targets)")

    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        for language in ("en", "de"):
            lines = read_lines(args.data / f"train.{language}", args.slice)
            (folder / f"train.{language}").write_text("\n".join(lines) + "\n", encoding="utf-8")
        # the slice trains its own BPE, smaller than the recipes'; the top-k cache's size per
        # position does not depend on the vocabulary, the full distribution's does (from step 1)
        experiment = Experiment.prepare(load_config(slice_config(folder, args.vocab_size, args.k), environ={}),
                                        log=lambda *a, **k: None)
        split = experiment.splits["train"]
        request = CacheRequest(experiment, split, {"teacher": ["decoder"]}, folder / "run", torch.device("cpu"),
                               progress=False, log=lambda *a, **k: None, top_k=args.k)
        started = time.perf_counter()
        caches = open_or_build(request)
        seconds = time.perf_counter() - started
        [cache] = caches.caches
        [entry] = cache.meta["entries"]
        files = {name: record["bytes"] for name, record in entry["files"].items()}
        slice_positions = entry["files"]["values"]["shape"][0]

    per_position = (files["values"] + files["log_probs"] + files["mask"]) / slice_positions
    offsets = 8 * (pairs + 1)
    top_k_size = per_position * positions + offsets
    print(f"slice: {len(split):,} pairs, {slice_positions:,} target positions; top-{args.k} cache "
          f"{megabytes(sum(files.values()))} ({', '.join(f'{n} {b:,} B' for n, b in files.items())}), "
          f"{per_position:.1f} bytes per position; built in {seconds:.1f} s by a tiny untrained teacher "
          f"({args.threads} thread(s))")
    print(f"extrapolated to the whole training set (the slice's bytes per position x {positions:,} positions): "
          f"top-{args.k} cache {megabytes(top_k_size)}; building it with this tiny teacher about "
          f"{seconds * positions / slice_positions:,.0f} s (a real teacher's forward passes take longer)")
    print(f"full distributions, for comparison ({positions:,} positions x {vocab:,} pieces): "
          f"{megabytes(positions * vocab * 2)} as float16, {megabytes(positions * vocab * 4)} as float32 "
          f"({positions * vocab * 2 / top_k_size:,.0f}x the top-{args.k} cache as float16)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

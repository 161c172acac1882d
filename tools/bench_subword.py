"""Subword vocabularies on Multi30k: training time, pieces per sentence, encoding speed, round trip.

For each model (BPE, unigram) and each layout (one vocabulary shared by source and target, or
one per side), trains on the first ``--pairs`` training pairs with ``blocks.data.subword`` and
reports the training time, the mean number of pieces per target sentence of the validation
split, the time to encode the whole training split (both sides), and how many validation
targets do not decode back to their text exactly. The ``tokenizers`` library trains and encodes
on as many threads as ``RAYON_NUM_THREADS`` allows (default: every core).

Example::

    RAYON_NUM_THREADS=1 python tools/bench_subword.py --data ../shared/data/multi30k --vocab 8000
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from blocks.data.parallel_reader import read_parallel_files
from blocks.data.subword import SubwordVocabularies


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/multi30k")
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--pairs", type=int, default=None, help="the first N training pairs (default: all)")
    parser.add_argument("--models", nargs="+", default=["bpe", "unigram"], choices=["bpe", "unigram"])
    args = parser.parse_args(argv)
    train = read_parallel_files(args.data / "train.en", args.data / "train.de")
    dev = read_parallel_files(args.data / "val.en", args.data / "val.de")
    sources, targets = train.sources[:args.pairs], train.targets[:args.pairs]
    print(f"{len(sources)} training pairs, vocabulary size {args.vocab}")
    rows = []
    for model in args.models:
        for shared in (True, False):
            start = time.perf_counter()
            vocabularies = SubwordVocabularies.train(sources, targets, model, args.vocab, shared=shared)
            training = time.perf_counter() - start
            start = time.perf_counter()
            vocabularies.source.encode_batch(sources)
            vocabularies.target.encode_batch(targets)
            encoding = time.perf_counter() - start
            dev_ids = vocabularies.target.encode_batch(dev.targets)
            mismatches = sum(decoded != " ".join(text.split())
                             for decoded, text in zip(vocabularies.target.decode_batch(dev_ids), dev.targets))
            row = {"model": model, "shared": shared, "train_s": training, "encode_s": encoding,
                   "pieces_per_sentence": sum(map(len, dev_ids)) / len(dev_ids), "round_trip_mismatches": mismatches,
                   "target_vocab": vocabularies.target.vocab_size}
            rows.append(row)
            print(f"  {model:<7} {'shared' if shared else 'separate':<8}  trained in {training:6.2f} s  "
                  f"encoded the training split in {encoding:5.2f} s  {row['pieces_per_sentence']:5.1f} pieces per "
                  f"dev target  target vocabulary {row['target_vocab']}  round-trip mismatches {mismatches}")
    return rows


if __name__ == "__main__":
    main()

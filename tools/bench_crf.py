#!/usr/bin/env python
"""The CRF functions of ``blocks/layers/crf.py`` next to pytorch-crf, on CoNLL-2003-shaped batches.

Sentence lengths come from a CoNLL-style file (default: the CoNLL-2003 dev split, read with the
column reader) in batches of ``--batch`` sentences in file order; emissions are random
(``--tags`` tags, 9 for CoNLL NER). Timed, best of ``--repeats`` passes over ``--batches``
batches, the two sides alternating within each pass so that a change of machine load hits both:

* ``nll``: the negative log-likelihood, forward and backward (a training step's CRF part),
  against ``torchcrf.CRF(...)(emissions, tags, mask)``;
* ``viterbi``: decoding, against ``torchcrf.CRF.decode`` (which returns Python lists);
* ``marginals``: forward-backward, against the gradient of ``log Z`` by autograd (pytorch-crf
  has no marginals).

pytorch-crf cannot take a sentence of length 0; the file has none. Prints ms per batch and the
ratio, and checks first that both sides agree (exit code 1 if not).

Usage:
    python tools/bench_crf.py                      # CoNLL-2003 dev, batch 32, 1 thread
    python tools/bench_crf.py --batch 64 --threads 2 --file ../shared/data/conll2003/test.txt
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from blocks.data.column_reader import read_column_rows  # noqa: E402
from blocks.errors import DistilBlocksError  # noqa: E402
from blocks.layers.crf import crf_log_likelihood, crf_log_partition, crf_marginals, crf_viterbi  # noqa: E402
from blocks.values import TagScores  # noqa: E402

DEFAULT_FILE = REPOSITORY.parent / "shared" / "data" / "conll2003" / "valid.txt"


def make_batches(lengths: list[int], batch: int, tags: int, count: int, seed: int = 0) -> list[tuple]:
    """``(emissions, mask, gold tags)`` for the first ``count`` batches of the given lengths."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for start in range(0, min(len(lengths), batch * count), batch):
        chunk = torch.tensor(lengths[start:start + batch])
        width = int(chunk.max())
        mask = torch.arange(width).unsqueeze(0) < chunk.unsqueeze(1)
        emissions = torch.randn(len(chunk), width, tags, generator=generator) * 3
        gold = torch.randint(0, tags, (len(chunk), width), generator=generator)
        batches.append((emissions, mask, gold))
    return batches


def ours(reference, emissions, mask):
    return TagScores(emissions, mask, reference.transitions, reference.start_transitions,
                     reference.end_transitions)


def nll_ours(reference, emissions, mask, gold):
    emissions = emissions.detach().requires_grad_(True)
    loss = -crf_log_likelihood(ours(reference, emissions, mask), gold).sum()
    loss.backward()
    return loss.detach()


def nll_theirs(reference, emissions, mask, gold):
    emissions = emissions.detach().requires_grad_(True)
    loss = -reference(emissions, gold, mask=mask, reduction="sum")
    loss.backward()
    return loss.detach()


def viterbi_ours(reference, emissions, mask, gold):
    with torch.no_grad():
        return crf_viterbi(ours(reference, emissions, mask))[0]


def viterbi_theirs(reference, emissions, mask, gold):
    with torch.no_grad():
        return reference.decode(emissions, mask=mask)


def marginals_ours(reference, emissions, mask, gold):
    with torch.no_grad():
        return crf_marginals(ours(reference, emissions, mask))


def marginals_autograd(reference, emissions, mask, gold):
    emissions = emissions.detach().requires_grad_(True)
    log_z = crf_log_partition(TagScores(emissions, mask, reference.transitions.detach(),
                                        reference.start_transitions.detach(), reference.end_transitions.detach()))
    (gradient,) = torch.autograd.grad(log_z.sum(), emissions)
    return gradient


TASKS = {"nll": (nll_ours, nll_theirs, "pytorch-crf"),
         "viterbi": (viterbi_ours, viterbi_theirs, "pytorch-crf"),
         "marginals": (marginals_ours, marginals_autograd, "autograd of log Z")}


def check(reference, batches) -> list[str]:
    """Where the two sides disagree (empty when they agree)."""
    problems = []
    for emissions, mask, gold in batches:
        if not torch.allclose(nll_ours(reference, emissions, mask, gold), nll_theirs(reference, emissions, mask, gold),
                              rtol=1e-4):
            problems.append("nll differs")
        tags = viterbi_ours(reference, emissions, mask, gold)
        decoded = viterbi_theirs(reference, emissions, mask, gold)
        if [tags[i, :int(mask[i].sum())].tolist() for i in range(len(decoded))] != decoded:
            problems.append("viterbi paths differ")
        difference = (marginals_ours(reference, emissions, mask, gold)
                      - marginals_autograd(reference, emissions, mask, gold)).abs().max()
        if difference > 1e-4:
            problems.append(f"marginals differ by {difference:.2e}")
    return problems


def measure(batches, tags: int, repeats: int) -> dict[str, tuple[float, float]]:
    """task -> (ours, theirs) milliseconds per batch, best pass of ``repeats``."""
    import torchcrf

    reference = torchcrf.CRF(tags, batch_first=True)
    problems = check(reference, batches[:3])
    if problems:
        raise SystemExit(f"the two sides disagree: {'; '.join(sorted(set(problems)))}")
    results = {}
    for task, (mine, theirs, _) in TASKS.items():
        best = [float("inf"), float("inf")]
        for _ in range(repeats):
            totals = [0.0, 0.0]
            for emissions, mask, gold in batches:
                for side, function in enumerate((mine, theirs)):
                    start = time.perf_counter()
                    function(reference, emissions, mask, gold)
                    totals[side] += time.perf_counter() - start
            best = [min(b, t) for b, t in zip(best, totals)]
        results[task] = (1000 * best[0] / len(batches), 1000 * best[1] / len(batches))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--file", default=str(DEFAULT_FILE), help="a CoNLL-style file giving the sentence lengths")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--tags", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        rows = read_column_rows(args.file)
    except DistilBlocksError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    lengths = [len(row.fields["0"]) for row in rows]
    batches = make_batches(lengths, args.batch, args.tags, args.batches)
    words = sum(int(mask.sum()) for _, mask, _ in batches)
    print(f"{len(batches)} batches of {args.batch} sentences from {Path(args.file).name} ({words:,} words, "
          f"longest {max(lengths[:args.batch * args.batches])}), {args.tags} tags, {args.threads} thread(s)")
    print(f"{'':10} {'blocks (ms/batch)':>18} {'baseline (ms/batch)':>20} {'ratio':>7}  baseline")
    for task, (mine, theirs) in measure(batches, args.tags, args.repeats).items():
        print(f"{task:10} {mine:18.2f} {theirs:20.2f} {theirs / mine:6.2f}x  {TASKS[task][2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

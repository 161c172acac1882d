"""End-to-end smoke run of the seq2seq building blocks on real data: read, tokenize, train, decode, score.

Reads the first ``--pairs`` sentence pairs of Multi30k en→de (``blocks.data.parallel_reader``),
trains a shared BPE vocabulary on them (``blocks.data.subword``), trains a tiny Transformer
(embedding shared by the source, the target and the output projection; a ``TransformerEncoder``
and a ``TransformerDecoder``, ``--width`` 64, 1 + 1 layers) with label-smoothed cross-entropy for
``--minutes`` of wall-clock time, then decodes the first ``--dev`` validation sentences with greedy
search and beam search (``blocks.generation``) and scores them with sacreBLEU
(``blocks.generation_metrics``). It proves the pieces fit together before the seq2seq task type
exists; the scores of so small a model trained so briefly are far below the issue's targets.

Example (about three minutes on one thread)::

    python tools/seq2seq_smoke.py --data ../shared/data/multi30k --threads 1 --minutes 2
"""
from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from blocks.data.parallel_reader import read_parallel_files
from blocks.data.subword import BOS_ID, EOS_ID, PAD_ID, SubwordVocabularies
from blocks.generation import GenerationSettings, generate
from blocks.generation_metrics import TextPredictions, compute_text_metrics
from blocks.layers.decoders import TransformerDecoder
from blocks.layers.transformer import TransformerEncoder
from blocks.values import SEQUENCE, Sequence, Spec


class TinyTranslator(nn.Module):
    """Source embedding (the decoder's, shared) + TransformerEncoder + TransformerDecoder."""

    def __init__(self, vocab: int, width: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.decoder = TransformerDecoder([Spec(SEQUENCE, width)], vocab, layers=layers, heads=heads,
                                          dropout=dropout, max_length=128)
        self.encoder = TransformerEncoder([Spec(SEQUENCE, width)], layers=layers, heads=heads, dropout=dropout,
                                          max_length=128)
        self.width = width

    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> Sequence:
        embedded = self.decoder.embedding(ids) * math.sqrt(self.width)
        return self.encoder(Sequence(embedded, mask))

    def forward(self, source: torch.Tensor, source_mask: torch.Tensor, prefix: torch.Tensor,
                prefix_mask: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(source, source_mask), Sequence(prefix, prefix_mask)).values


def pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(row) for row in rows)
    ids = torch.full((len(rows), length), PAD_ID, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
    return ids, ids != PAD_ID


def training_batches(sources: list[list[int]], targets: list[list[int]], size: int, rng: random.Random):
    """Batches of similar source lengths, in a random order, for one epoch."""
    order = sorted(range(len(sources)), key=lambda i: (len(sources[i]), rng.random()))
    groups = [order[start:start + size] for start in range(0, len(order), size)]
    rng.shuffle(groups)
    for group in groups:
        source, source_mask = pad([sources[i] for i in group])
        prefix, prefix_mask = pad([[BOS_ID] + targets[i] for i in group])
        gold, _ = pad([targets[i] + [EOS_ID] for i in group])
        yield source, source_mask, prefix, prefix_mask, gold


def decode(model: TinyTranslator, sources: list[list[int]], settings: GenerationSettings, batch: int):
    """Generated ids in the order of ``sources``, and the sentences per second."""
    model.eval()
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    outputs: list[list[int]] = [[] for _ in sources]
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(order), batch):
            rows = order[first:first + batch]
            ids, mask = pad([sources[i] for i in rows])
            result = generate(model.decoder, model.encode(ids, mask), settings, bos_id=BOS_ID, eos_id=EOS_ID,
                              pad_id=PAD_ID)
            for row, tokens in zip(rows, result.tokens):
                outputs[row] = tokens
    return outputs, len(sources) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/multi30k")
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--dev", type=int, default=200)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    train = read_parallel_files(args.data / "train.en", args.data / "train.de")
    dev = read_parallel_files(args.data / "val.en", args.data / "val.de")
    sources, targets = train.sources[:args.pairs], train.targets[:args.pairs]
    start = time.perf_counter()
    vocabularies = SubwordVocabularies.train(sources, targets, "bpe", vocab_size=args.vocab, shared=True)
    tokenizer = vocabularies.target
    print(f"{len(sources)} training pairs, {args.dev} dev pairs; shared BPE of {tokenizer.vocab_size} pieces "
          f"trained in {time.perf_counter() - start:.2f} s")
    train_sources = [ids + [EOS_ID] for ids in tokenizer.encode_batch(sources)]
    train_targets = tokenizer.encode_batch(targets)
    dev_sources = [ids + [EOS_ID] for ids in tokenizer.encode_batch(dev.sources[:args.dev])]
    references = dev.targets[:args.dev]

    model = TinyTranslator(tokenizer.vocab_size, args.width, args.layers, args.heads, args.dropout)
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / args.warmup, math.sqrt(args.warmup / (step + 1))))
    print(f"model: width {args.width}, {args.layers}+{args.layers} layers, {parameters:,} parameters; "
          f"training for {args.minutes} min on {args.threads} thread(s)")
    deadline = time.perf_counter() + 60 * args.minutes
    step, epoch, recent = 0, 0, []
    while time.perf_counter() < deadline and (args.max_steps is None or step < args.max_steps):
        epoch += 1
        model.train()
        for source, source_mask, prefix, prefix_mask, gold in training_batches(train_sources, train_targets,
                                                                              args.batch, rng):
            logits = model(source, source_mask, prefix, prefix_mask)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), gold.reshape(-1), ignore_index=PAD_ID,
                                   label_smoothing=args.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            recent.append(loss.item())
            if step % 100 == 0:
                print(f"  step {step:>5}  epoch {epoch:>3}  loss {sum(recent) / len(recent):.3f}")
                recent = []
            if time.perf_counter() >= deadline or (args.max_steps is not None and step >= args.max_steps):
                break
    print(f"trained {step} steps ({epoch} epochs)")

    results = {"steps": step, "epochs": epoch, "parameters": parameters}
    for name, settings in (("greedy", GenerationSettings("greedy")),
                           (f"beam {args.beam}", GenerationSettings("beam", beam_size=args.beam))):
        outputs, speed = decode(model, dev_sources, settings, batch=32)
        hypotheses = tokenizer.decode_batch(outputs)
        scores = compute_text_metrics(["bleu", "bleu_lc", "chrf"], TextPredictions(hypotheses, references))
        results[name] = {metric: score.value for metric, score in scores.items()} | {"sentences_per_s": speed}
        print(f"dev {name:<7}: BLEU {scores['bleu'].value:5.2f}  lowercased BLEU {scores['bleu_lc'].value:5.2f}  "
              f"chrF {scores['chrf'].value:5.2f}  ({speed:.1f} sentences/s at batch 32)")
        print(f"  e.g. {dev.sources[0]!r}\n    -> {hypotheses[0]!r}\n    reference {references[0]!r}")
    print(f"BLEU signature: {scores['bleu'].signature}")
    return results


if __name__ == "__main__":
    main()

"""Decoding speed: greedy search vs beam search, and cached vs uncached decoding, side by side.

A Transformer encoder and a decoder with random weights (``--decoder transformer`` or ``rnn``: a
GRU with Bahdanau attention) decode random source sentences whose lengths follow Multi30k's
(8 to 24 pieces). With random weights ``<eos>`` is never the likely token, so every output runs
to its length limit ``a + b * source length`` (``--max-len-a``, ``--max-len-b``): the figures are
for full-length outputs, the worst case of a trained model. Each batch size is timed with the
strategies alternating, best of ``--repeats`` passes, in ``torch.inference_mode()``; the encoder
runs once per batch inside the timing. The baseline "greedy, no cache" is greedy search through a
decoder that keeps only the prefix and recomputes its whole teacher-forced forward at every step
(what decoding costs without the decoders' cached ``step``).

Example::

    python tools/bench_generation.py --threads 1 --sentences 128 --batch 1 32
"""
from __future__ import annotations

import argparse
import time

import torch

from blocks.generation import GenerationSettings, generate
from blocks.layers.decoders import RNNDecoder, TransformerDecoder
from blocks.layers.transformer import TransformerEncoder
from blocks.values import SEQUENCE, Sequence, Spec

PAD, BOS, EOS = 0, 1, 2


class RandomTranslator(torch.nn.Module):
    """Embedding + TransformerEncoder + a decoder, random weights, inference mode."""

    def __init__(self, decoder: str, vocab: int, width: int, layers: int):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, width)
        self.encoder = TransformerEncoder([Spec(SEQUENCE, width)], layers=layers, heads=4, dropout=0.0,
                                          positions="sinusoidal")
        if decoder == "transformer":
            self.decoder = TransformerDecoder([Spec(SEQUENCE, width)], vocab, layers=layers, heads=4, dropout=0.0)
        else:
            self.decoder = RNNDecoder([Spec(SEQUENCE, width)], vocab, cell="gru", hidden=width, dropout=0.0)
        self.eval()

    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> Sequence:
        return self.encoder(Sequence(self.embedding(ids), mask))


def random_sources(count: int, vocab: int, generator: torch.Generator) -> list[torch.Tensor]:
    lengths = torch.randint(8, 25, (count,), generator=generator)
    return [torch.randint(4, vocab, (int(n),), generator=generator) for n in lengths]


def batches(sources: list[torch.Tensor], size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    ordered = sorted(sources, key=len)
    result = []
    for start in range(0, len(ordered), size):
        chunk = ordered[start:start + size]
        length = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), length), PAD, dtype=torch.long)
        for row, source in enumerate(chunk):
            ids[row, :len(source)] = source
        result.append((ids, ids != PAD))
    return result


class UncachedDecoder(torch.nn.Module):
    """The decoder protocol without a cache: each step reruns ``forward`` over the whole prefix."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder
        self.max_length = getattr(decoder, "max_length", None)

    def init_state(self, memory: Sequence) -> dict:
        return {"memory": memory.values, "memory_mask": memory.mask,
                "prefix": memory.mask.new_zeros(memory.mask.shape[0], 0, dtype=torch.long)}

    def step(self, last_ids: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        prefix = torch.cat([state["prefix"], last_ids[:, None]], dim=1)
        logits = self.decoder(Sequence(state["memory"], state["memory_mask"]), prefix).values[:, -1]
        return logits, {**state, "prefix": prefix}

    def reorder_state(self, state: dict, index: torch.Tensor) -> dict:
        return {key: value.index_select(0, index) for key, value in state.items()}


def time_pass(model: RandomTranslator, decoder, prepared, settings: GenerationSettings) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = 0
    with torch.inference_mode():
        for ids, mask in prepared:
            result = generate(decoder, model.encode(ids, mask), settings, bos_id=BOS, eos_id=EOS, pad_id=PAD)
            tokens += sum(len(t) + 1 for t in result.tokens)
    return time.perf_counter() - start, tokens


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decoder", choices=["transformer", "rnn"], default="transformer")
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--max-len-a", type=float, default=5.0)
    parser.add_argument("--max-len-b", type=float, default=1.2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = RandomTranslator(args.decoder, args.vocab, args.width, args.layers)
    sources = random_sources(args.sentences, args.vocab, torch.Generator().manual_seed(0))
    greedy = GenerationSettings("greedy", max_len_a=args.max_len_a, max_len_b=args.max_len_b)
    beam = GenerationSettings("beam", beam_size=args.beam, max_len_a=args.max_len_a, max_len_b=args.max_len_b)
    strategies = {"greedy": (model.decoder, greedy), f"beam {args.beam}": (model.decoder, beam),
                  "greedy, no cache": (UncachedDecoder(model.decoder), greedy)}
    parameters = sum(p.numel() for p in model.parameters())
    shape = f"{args.layers}+{args.layers} layers" if args.decoder == "transformer" else \
        f"{args.layers}-layer encoder + 1-layer GRU"
    print(f"{args.decoder} decoder, width {args.width}, {shape}, vocab {args.vocab}, "
          f"{parameters:,} parameters, {args.sentences} sentences, {args.threads} thread(s)")
    rows = []
    for size in args.batch:
        prepared = batches(sources, size)
        best = {name: float("inf") for name in strategies}
        tokens = {}
        for _ in range(args.repeats):
            for name, (decoder, settings) in strategies.items():  # alternating: a change of load hits all
                seconds, tokens[name] = time_pass(model, decoder, prepared, settings)
                best[name] = min(best[name], seconds)
        for name in strategies:
            rows.append({"batch": size, "strategy": name, "sentences_per_s": args.sentences / best[name],
                         "tokens_per_s": tokens[name] / best[name]})
            print(f"  batch {size:>3}  {name:<16} {rows[-1]['sentences_per_s']:>9.1f} sentences/s "
                  f"{rows[-1]['tokens_per_s']:>10.0f} tokens/s")
        speed = {name: args.sentences / seconds for name, seconds in best.items()}
        print(f"  batch {size:>3}  greedy / beam {args.beam}: {speed['greedy'] / speed[f'beam {args.beam}']:.2f}x; "
              f"cached / uncached greedy: {speed['greedy'] / speed['greedy, no cache']:.2f}x")
    return rows


if __name__ == "__main__":
    main()

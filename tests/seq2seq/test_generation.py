"""Generation: beam search is exact with a large beam, beam 1 and top-1 sampling are greedy search,
length limits, reproducible sampling; on both decoder families."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.nn import functional as F

from blocks.generation import (GenerationSettings, beam_search, generate, greedy_search, length_penalty_factor,
                               max_target_lengths, sample_top_k)
from blocks.layers.decoders import RNNDecoder, TransformerDecoder
from blocks.values import SEQUENCE, Sequence, Spec

PAD, BOS, EOS = 0, 1, 2
WIDTH = 8
SPECIALS = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD)


def transformer(vocab: int, seed: int = 0):
    torch.manual_seed(seed)
    return TransformerDecoder([Spec(SEQUENCE, WIDTH)], vocab, layers=1, heads=2, dropout=0.0).eval()


def rnn(vocab: int, seed: int = 0):
    torch.manual_seed(seed)
    decoder = RNNDecoder([Spec(SEQUENCE, WIDTH)], vocab, cell="lstm", hidden=8, attention="luong", dropout=0.0)
    with torch.no_grad():  # sharper distributions than the initial near-uniform ones
        decoder.output.weight.mul_(8)
    return decoder.eval()


def memory(lengths: list[int], seed: int = 1) -> Sequence:
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(len(lengths), max(lengths), WIDTH, generator=generator)
    return Sequence(values, torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None])


def one_row(batch: Sequence, row: int) -> Sequence:
    """Sentence ``row`` of a batch on its own, without padding."""
    length = int(batch.mask[row].sum())
    return Sequence(batch.values[row:row + 1, :length], batch.mask[row:row + 1, :length])


def sequence_log_prob(decoder, memory_row: Sequence, tokens: list[int]) -> float:
    """log P(tokens) under teacher forcing: log-softmax over the whole vocabulary at each position."""
    prefix = torch.tensor([[BOS] + tokens[:-1]])
    with torch.no_grad():
        log_probs = F.log_softmax(decoder(memory_row, prefix).values[0], dim=-1)
    return float(sum(log_probs[i, token] for i, token in enumerate(tokens)))


def exhaustive_best(decoder, memory_row: Sequence, vocab: int, limit: int, alpha: float, form: str):
    """The best output over every sequence of at most ``limit`` tokens ending in <eos>."""
    free = [t for t in range(vocab) if t not in (PAD, BOS, EOS)]
    best = None
    for length in range(1, limit + 1):
        for body in itertools.product(free, repeat=length - 1):
            tokens = list(body) + [EOS]
            score = sequence_log_prob(decoder, memory_row, tokens) / length_penalty_factor(length, alpha, form)
            if best is None or score > best[0]:
                best = (score, list(body))
    return best


@pytest.mark.parametrize("make", [transformer, rnn], ids=["transformer", "rnn"])
@pytest.mark.parametrize("alpha,form", [(0.0, "gnmt"), (1.0, "gnmt"), (2.0, "fairseq")])
def test_beam_as_large_as_all_outputs_is_exhaustive_search(make, alpha, form):
    vocab, limits = 6, [3, 2]  # free tokens 3, 4, 5; outputs of at most 3 and 2 tokens
    decoder = make(vocab)
    batch = memory([2, 1])  # length limits 1 + 1 * source length
    result = beam_search(decoder, batch, beam_size=vocab ** max(limits), length_penalty=alpha,
                         length_penalty_form=form, max_len_a=1, max_len_b=1, **SPECIALS)
    for row, limit in enumerate(limits):
        score, tokens = exhaustive_best(decoder, one_row(batch, row), vocab, limit, alpha, form)
        assert result.tokens[row] == tokens
        assert result.scores[row].item() == pytest.approx(score, abs=1e-4)


@pytest.mark.parametrize("make", [transformer, rnn], ids=["transformer", "rnn"])
def test_beam_one_and_top_one_sampling_are_greedy_search(make):
    decoder = make(20)
    batch = memory([5, 1, 3, 4])
    greedy = greedy_search(decoder, batch, max_len_a=3, max_len_b=2, **SPECIALS)
    beam = beam_search(decoder, batch, beam_size=1, length_penalty=0.0, max_len_a=3, max_len_b=2, **SPECIALS)
    sampled = sample_top_k(decoder, batch, top_k=1, temperature=0.7, max_len_a=3, max_len_b=2, **SPECIALS)
    assert beam.tokens == greedy.tokens == sampled.tokens
    assert torch.allclose(beam.scores, greedy.scores, atol=1e-5)
    assert torch.allclose(sampled.scores, greedy.scores, atol=1e-5)
    # greedy scores are the log-probabilities of the outputs, <eos> included
    for row, tokens in enumerate(greedy.tokens):
        expected = sequence_log_prob(decoder, one_row(batch, row), tokens + [EOS])
        assert greedy.scores[row].item() == pytest.approx(expected, abs=1e-4)


def test_batched_generation_equals_one_sentence_at_a_time():
    decoder = transformer(30, seed=3)
    batch = memory([6, 2, 4], seed=5)
    together = beam_search(decoder, batch, beam_size=4, **SPECIALS)
    for row in range(3):
        alone = beam_search(decoder, one_row(batch, row), beam_size=4, **SPECIALS)
        assert alone.tokens[0] == together.tokens[row]
        assert alone.scores[0].item() == pytest.approx(together.scores[row].item(), abs=1e-5)


def test_length_limits_and_forced_eos():
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    assert max_target_lengths(mask, 2, 1.5).tolist() == [8, 11]
    assert max_target_lengths(mask, 2, 1.5, decoder_limit=10).tolist() == [8, 10]
    assert max_target_lengths(mask, -20, 0.5).tolist() == [1, 1]
    # a model that never wants to stop: every output is cut at its limit, <eos> forced last
    decoder = rnn(12)
    with torch.no_grad():
        decoder.output.bias[EOS] = -1e4
    batch = memory([1, 3])
    for result in (greedy_search(decoder, batch, max_len_a=2, max_len_b=1, **SPECIALS),
                   beam_search(decoder, batch, beam_size=3, max_len_a=2, max_len_b=1, **SPECIALS),
                   sample_top_k(decoder, batch, top_k=5, max_len_a=2, max_len_b=1,
                                generator=torch.Generator().manual_seed(0), **SPECIALS)):
        assert [len(tokens) for tokens in result.tokens] == [2, 4]  # limits 3 and 5, <eos> excluded
        assert all(t not in (PAD, BOS, EOS) for tokens in result.tokens for t in tokens)
    # and the transformer's position limit caps the length
    short = TransformerDecoder([Spec(SEQUENCE, WIDTH)], 12, layers=1, heads=2, max_length=3).eval()
    assert all(len(t) <= 2 for t in greedy_search(short, memory([5]), max_len_a=50, **SPECIALS).tokens)


def test_sampling_is_reproducible_with_a_generator_and_varies_without_one():
    decoder = rnn(15)
    batch = memory([4] * 8)
    draw = lambda seed: sample_top_k(decoder, batch, top_k=6, temperature=2.0,  # noqa: E731
                                     generator=torch.Generator().manual_seed(seed), **SPECIALS).tokens
    assert draw(7) == draw(7)
    assert draw(7) != draw(8)
    greedy = greedy_search(decoder, batch, **SPECIALS).tokens
    assert draw(7) != greedy  # temperature 2 over 6 tokens strays from the argmax


def test_generate_dispatches_on_the_settings():
    decoder = transformer(16)
    batch = memory([3, 5])
    assert generate(decoder, batch, GenerationSettings("beam", beam_size=1, length_penalty=0.0), **SPECIALS).tokens \
        == generate(decoder, batch, GenerationSettings("greedy"), **SPECIALS).tokens
    sampled = generate(decoder, batch, GenerationSettings("sample", top_k=3),
                       generator=torch.Generator().manual_seed(1), **SPECIALS)
    assert len(sampled.tokens) == 2 and sampled.scores.shape == (2,)
    with pytest.raises(ValueError, match="unknown generation strategy 'nucleus'"):
        generate(decoder, batch, GenerationSettings("nucleus"), **SPECIALS)
    with pytest.raises(ValueError, match="unknown length penalty form 'google'"):
        beam_search(decoder, batch, length_penalty_form="google", **SPECIALS)
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        sample_top_k(decoder, batch, top_k=0, **SPECIALS)


def test_length_penalty_factor():
    assert length_penalty_factor(7, 1.0, "gnmt") == pytest.approx(2.0)
    assert length_penalty_factor(7, 0.0, "gnmt") == 1.0
    assert length_penalty_factor(4, 0.5, "fairseq") == pytest.approx(2.0)
    assert math.isclose(length_penalty_factor(1, 0.6, "gnmt"), 1.0)


def test_empty_sources_and_empty_batches():
    for decoder in (transformer(9), rnn(9)):
        batch = memory([3, 1])
        batch = Sequence(batch.values, batch.mask & torch.tensor([[True], [False]]))  # the second source is empty
        for result in (greedy_search(decoder, batch, max_len_a=2, max_len_b=1, **SPECIALS),
                       beam_search(decoder, batch, beam_size=3, max_len_a=2, max_len_b=1, **SPECIALS)):
            assert len(result.tokens[0]) <= 4 and len(result.tokens[1]) <= 1  # limits 5 and 2, <eos> included
            assert torch.isfinite(result.scores).all()
        empty = Sequence(torch.zeros(0, 3, WIDTH), torch.zeros(0, 3, dtype=torch.bool))
        for result in (greedy_search(decoder, empty, **SPECIALS), beam_search(decoder, empty, **SPECIALS)):
            assert result.tokens == [] and result.scores.shape == (0,)

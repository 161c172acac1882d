"""Generating target sequences with a decoder: greedy search, beam search, top-k sampling.

Every strategy runs batched over any decoder that follows the protocol of
:mod:`blocks.layers.decoders` (``init_state`` / ``step`` / ``reorder_state``), with the decoder's
cached incremental decoding, in inference mode. Conventions shared by all of them:

* Decoding starts from ``<bos>``; ``<pad>`` and ``<bos>`` are never generated.
* **Length limit.** Sentence *i* may have at most ``floor(a + b * source length)`` target
  tokens, ``<eos>`` included (``max_len_a``, ``max_len_b``; the source length is the number of
  real positions of the memory), never fewer than 1 and never more than the decoder's
  ``max_length``. At the last allowed position ``<eos>`` is forced, so every output ends.
* **Scores** are sums of the model's log-probabilities (log-softmax over the whole vocabulary,
  ``<eos>`` included). Beam search ranks finished hypotheses by that sum divided by a length
  penalty of their length *n* (``<eos>`` counted): GNMT's ``((5 + n) / 6) ** alpha`` (Wu et al.
  2016) or fairseq's ``n ** alpha``; ``alpha = 0`` ranks by the plain sum.
* **Output**: :class:`Generated` — per sentence the token ids without ``<bos>`` and ``<eos>``,
  and its score (beam search: the length-penalised one).

Beam search follows fairseq: each step looks at the best ``2 * beam`` continuations of the
sentence's beams; an ``<eos>`` among the best ``beam`` of them finishes a hypothesis; the best
``beam`` other continuations stay alive. A sentence is done once it has ``beam`` finished
hypotheses or reaches its length limit, and then leaves the batch (greedy search and sampling
drop an ended sentence the same way); the best finished hypothesis is its output. With a
beam as large as the number of possible outputs nothing is pruned, so the search is exact (the
tests check it against exhaustive enumeration), and beam 1 is greedy search.

How it plugs into the engine (the seq2seq task type, a later step): a model's or stage's
``generation`` settings become a :class:`GenerationSettings`; dev selection decodes with greedy
search, the final dev/test evaluation and ``predict`` with beam search, sequence-level KD decodes
the training sources with the teacher, and the rollout methods (ImitKD) sample from the student.
Outputs are decoded to text by :class:`blocks.data.subword.SubwordTokenizer`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from blocks.values import Sequence

if TYPE_CHECKING:  # pragma: no cover
    from blocks.layers.decoders import Decoder

LengthPenalty = Literal["gnmt", "fairseq"]


@dataclass
class Generated:
    """What a generation strategy returns for a batch.

    Attributes:
        tokens: per sentence, the generated ids without ``<bos>`` and ``<eos>``.
        scores: ``[batch]``: the sum of log-probabilities (``<eos>`` included); for beam search
            divided by the length penalty.
    """

    tokens: list[list[int]]
    scores: Tensor


@dataclass
class GenerationSettings:
    """How to generate: the strategy and its knobs (one place for a model's or stage's config).

    Attributes:
        strategy: ``greedy``, ``beam`` or ``sample`` (top-k sampling).
        beam_size: beam search: hypotheses kept per sentence.
        length_penalty: beam search: alpha of the length penalty (0 = none).
        length_penalty_form: beam search: ``gnmt`` ``((5 + n) / 6) ** alpha`` or ``fairseq`` ``n ** alpha``.
        max_len_a: the constant part of the length limit.
        max_len_b: the part of the length limit proportional to the source length.
        top_k: sampling: sample among the k most likely tokens (k = 1 is greedy search).
        temperature: sampling: divide the log-probabilities by this before sampling.
    """

    strategy: Literal["greedy", "beam", "sample"] = "greedy"
    beam_size: int = 5
    length_penalty: float = 1.0
    length_penalty_form: LengthPenalty = "gnmt"
    max_len_a: float = 10.0
    max_len_b: float = 1.5
    top_k: int = 10
    temperature: float = 1.0


def generate(decoder: "Decoder", memory: Sequence, settings: GenerationSettings, *, bos_id: int, eos_id: int,
             pad_id: int, generator: torch.Generator | None = None) -> Generated:
    """Run the strategy named by ``settings`` (see the module docstring)."""
    common = dict(bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, max_len_a=settings.max_len_a,
                  max_len_b=settings.max_len_b)
    if settings.strategy == "greedy":
        return greedy_search(decoder, memory, **common)
    if settings.strategy == "beam":
        return beam_search(decoder, memory, beam_size=settings.beam_size, length_penalty=settings.length_penalty,
                           length_penalty_form=settings.length_penalty_form, **common)
    if settings.strategy == "sample":
        return sample_top_k(decoder, memory, top_k=settings.top_k, temperature=settings.temperature,
                            generator=generator, **common)
    raise ValueError(f"unknown generation strategy '{settings.strategy}' (known: greedy, beam, sample)")


def max_target_lengths(memory_mask: Tensor, max_len_a: float, max_len_b: float,
                       decoder_limit: int | None = None) -> Tensor:
    """``[batch]`` longest allowed outputs, ``<eos>`` included: ``floor(a + b * source length)``,
    at least 1 and at most ``decoder_limit``."""
    source_lengths = memory_mask.sum(dim=1).double()
    limits = torch.floor(max_len_a + max_len_b * source_lengths).long().clamp(min=1)
    if decoder_limit is not None:
        limits = limits.clamp(max=decoder_limit)
    return limits


def length_penalty_factor(length: int, alpha: float, form: LengthPenalty = "gnmt") -> float:
    """The divisor of a hypothesis' log-probability at ``length`` tokens (``<eos>`` included)."""
    if form == "gnmt":
        return ((5.0 + length) / 6.0) ** alpha
    if form == "fairseq":
        return float(length) ** alpha
    raise ValueError(f"unknown length penalty form '{form}' (known: gnmt, fairseq)")


def _next_log_probs(decoder: "Decoder", last: Tensor, state, limits: Tensor, step: int, bos_id: int, eos_id: int,
                    pad_id: int) -> tuple[Tensor, object]:
    """Log-probabilities ``[rows, V]`` of the next token, with ``<pad>``/``<bos>`` banned and
    ``<eos>`` forced in the rows whose length limit is reached at this step."""
    logits, state = decoder.step(last, state)
    log_probs = F.log_softmax(logits.float(), dim=-1)
    log_probs[:, pad_id] = -math.inf
    log_probs[:, bos_id] = -math.inf
    forced = limits == step + 1
    if bool(forced.any()):
        others = torch.ones(log_probs.shape[1], dtype=torch.bool, device=log_probs.device)
        others[eos_id] = False
        log_probs = log_probs.masked_fill(forced[:, None] & others[None], -math.inf)
    return log_probs, state


def _single_path(decoder: "Decoder", memory: Sequence, choose: Callable[[Tensor], Tensor], bos_id: int,
                 eos_id: int, pad_id: int, max_len_a: float, max_len_b: float) -> Generated:
    """One hypothesis per sentence, extended by ``choose(log_probs [B, V]) -> ids [B]``.

    A sentence that has ended leaves the batch (its rows of the state are dropped), so the
    decoder works only on the sentences still running."""
    batch = memory.values.shape[0]
    device = memory.values.device
    limits = max_target_lengths(memory.mask, max_len_a, max_len_b, getattr(decoder, "max_length", None)).to(device)
    tokens: list[list[int]] = [[] for _ in range(batch)]
    scores = torch.zeros(batch, dtype=torch.float32, device=device)
    with torch.inference_mode():
        state = decoder.init_state(memory)
        active = torch.arange(batch, device=device)  # the sentences still running
        last = torch.full((batch,), bos_id, dtype=torch.long, device=device)
        for step in range(int(limits.max()) if batch else 0):
            log_probs, state = _next_log_probs(decoder, last, state, limits[active], step, bos_id, eos_id, pad_id)
            chosen = choose(log_probs)
            scores[active] += log_probs.gather(1, chosen[:, None]).squeeze(1)
            ended = chosen == eos_id
            for sentence, token, end in zip(active.tolist(), chosen.tolist(), ended.tolist()):
                if not end:
                    tokens[sentence].append(token)
            if bool(ended.any()):
                running = (~ended).nonzero().squeeze(1)
                if running.numel() == 0:
                    break
                state = decoder.reorder_state(state, running)
                active, chosen = active[running], chosen[running]
            last = chosen
    return Generated(tokens, scores.cpu())


def greedy_search(decoder: "Decoder", memory: Sequence, *, bos_id: int, eos_id: int, pad_id: int,
                  max_len_a: float = 10.0, max_len_b: float = 1.5) -> Generated:
    """The most likely next token at every step."""
    return _single_path(decoder, memory, lambda log_probs: log_probs.argmax(dim=-1), bos_id, eos_id, pad_id,
                        max_len_a, max_len_b)


def sample_top_k(decoder: "Decoder", memory: Sequence, *, bos_id: int, eos_id: int, pad_id: int, top_k: int = 10,
                 temperature: float = 1.0, generator: torch.Generator | None = None,
                 max_len_a: float = 10.0, max_len_b: float = 1.5) -> Generated:
    """Sample each next token among the ``top_k`` most likely, from their probabilities at
    ``temperature``; ``generator`` makes the draws reproducible. Scores are the model's
    log-probabilities of the drawn tokens (at temperature 1)."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")

    def choose(log_probs: Tensor) -> Tensor:
        values, indices = log_probs.topk(min(top_k, log_probs.shape[1]), dim=-1)
        if values.shape[1] == 1:
            return indices[:, 0]
        drawn = torch.multinomial(torch.softmax(values / temperature, dim=-1), 1, generator=generator)
        return indices.gather(1, drawn).squeeze(1)

    return _single_path(decoder, memory, choose, bos_id, eos_id, pad_id, max_len_a, max_len_b)


def beam_search(decoder: "Decoder", memory: Sequence, *, bos_id: int, eos_id: int, pad_id: int, beam_size: int = 5,
                length_penalty: float = 1.0, length_penalty_form: LengthPenalty = "gnmt",
                max_len_a: float = 10.0, max_len_b: float = 1.5) -> Generated:
    """Beam search (see the module docstring for the rules)."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    length_penalty_factor(1, length_penalty, length_penalty_form)  # check the form before decoding
    batch, beam = memory.values.shape[0], beam_size
    device = memory.values.device
    limits = max_target_lengths(memory.mask, max_len_a, max_len_b, getattr(decoder, "max_length", None)).to(device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    with torch.inference_mode():
        rows = torch.arange(batch, device=device).repeat_interleave(beam)
        state = decoder.init_state(Sequence(memory.values[rows], memory.mask[rows]))
        active = torch.arange(batch, device=device)  # the sentences still running; a done one leaves the batch
        scores = torch.full((batch, beam), -math.inf, device=device)  # [active, beam]
        scores[:, 0] = 0.0  # the beams start identical: expand only the first
        history = torch.zeros(batch * beam, 0, dtype=torch.long, device=device)  # [active * beam, step]
        last = torch.full((batch * beam,), bos_id, dtype=torch.long, device=device)
        ranks = torch.arange(2 * beam, device=device)
        for step in range(int(limits.max()) if batch else 0):
            running = len(active)
            log_probs, state = _next_log_probs(decoder, last, state, limits[active].repeat_interleave(beam), step,
                                               bos_id, eos_id, pad_id)
            vocab = log_probs.shape[1]
            candidates = (scores.reshape(-1, 1) + log_probs).view(running, beam * vocab)
            top_scores, top_index = candidates.topk(min(2 * beam, beam * vocab), dim=1)
            source_beam, token = top_index // vocab, top_index % vocab
            is_eos = token == eos_id
            ending = is_eos & (ranks[None, :top_scores.shape[1]] < beam) & torch.isfinite(top_scores)
            if bool(ending.any()):
                divisor = length_penalty_factor(step + 1, length_penalty, length_penalty_form)
                for position, rank in ending.nonzero().tolist():
                    hypotheses = finished[int(active[position])]
                    if len(hypotheses) < beam:
                        row = position * beam + int(source_beam[position, rank])
                        hypotheses.append((float(top_scores[position, rank]) / divisor, history[row].tolist()))
            # beam <= 2 * beam candidates, of which at most beam end: the others continue (-inf ones dead)
            alive_scores, chosen = top_scores.masked_fill(is_eos, -math.inf).topk(beam, dim=1)
            kept = torch.arange(running, device=device)[:, None] * beam + source_beam.gather(1, chosen)
            next_tokens = token.gather(1, chosen)
            going_on = torch.tensor([len(finished[sentence]) < beam for sentence in active.tolist()], device=device)
            going_on &= limits[active] > step + 1
            if not bool(going_on.any()):
                break
            if not bool(going_on.all()):
                active, kept, next_tokens, alive_scores = (
                    active[going_on], kept[going_on], next_tokens[going_on], alive_scores[going_on])
            kept = kept.view(-1)
            state = decoder.reorder_state(state, kept)
            last = next_tokens.view(-1)
            history = torch.cat([history[kept], last[:, None]], dim=1)
            scores = alive_scores
    tokens, best_scores = [], []
    for hypotheses in finished:
        score, ids = max(hypotheses, key=lambda hypothesis: hypothesis[0])
        tokens.append(ids)
        best_scores.append(score)
    return Generated(tokens, torch.tensor(best_scores, dtype=torch.float32))


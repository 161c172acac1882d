"""What travels along the edges of a graph, at build time (:class:`Spec`) and at run time.

At run time an edge carries either

* a :class:`Sequence` — ``values`` of shape ``[batch, length, width]`` (or ``[batch, length]`` of
  token ids, or ``[batch, length, chars]`` of character ids) together with a boolean ``mask`` of
  shape ``[batch, length]`` that is True on real positions; or
* a plain ``torch.Tensor`` of shape ``[batch, width]`` (a *vector*, e.g. a pooled sentence); or
* :class:`TagScores` — a linear-chain CRF's scores over a sequence: per-position emission scores
  ``[batch, length, tags]``, the ``[batch, length]`` mask, and the ``[tags, tags]`` transition,
  ``[tags]`` start and ``[tags]`` end scores (disallowed transitions hold a large negative
  number), from which the CRF functions of :mod:`blocks.layers.crf` compute the log-likelihood,
  the Viterbi path and the posterior marginals; or
* :class:`AttentionMaps` — the attention probabilities of an encoder's layers, ``[batch, layers,
  heads, length, length]``, with the ``[batch, length]`` mask of the sequence they attend over
  (offered by encoders as a named output, see :mod:`blocks.graph`).

At build time every edge has a :class:`Spec` saying which of those it is and how wide, so that
blocks can size their parameters without the user typing an input width.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

if TYPE_CHECKING:  # pragma: no cover
    from blocks.data.vocabulary import Vocabulary

TOKENS = "tokens"  # Sequence of token ids [B, L]
CHARS = "chars"  # Sequence of character ids [B, L, C]
SEQUENCE = "sequence"  # Sequence of features [B, L, D]
VECTOR = "vector"  # Tensor [B, D]
ATTENTION = "attention"  # AttentionMaps [B, layers, heads, L, L]; Spec.extra: {"layers": n, "heads": h}
TAG_SCORES = "tag_scores"  # TagScores: CRF emissions [B, L, T] + transitions; Spec.width = T
KINDS = (TOKENS, CHARS, SEQUENCE, VECTOR, ATTENTION, TAG_SCORES)

# A parameter annotated ``int | Literal["labels"]`` may be given as "labels": the graph builder
# replaces it with the task's number of outputs (label count, or 1 for regression).
LABELS = "labels"


class Sequence(NamedTuple):
    """A padded batch of sequences and its mask (True = real position)."""

    values: torch.Tensor
    mask: torch.Tensor

    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)


class AttentionMaps(NamedTuple):
    """Attention probabilities ``maps`` ``[batch, layers, heads, length, length]`` (row: query
    position, column: key position; a real row sums to 1, before any attention dropout) and the
    sequence ``mask`` ``[batch, length]``. Padded rows and columns are 0."""

    maps: torch.Tensor
    mask: torch.Tensor


class WordPieces(NamedTuple):
    """A pretrained model's input over words: the word-piece ids ``values`` ``[batch, pieces]``
    with their ``mask``, and ``words`` ``[batch, pieces]``: the index of the word each piece
    belongs to (-1 for special tokens and padding). A ``WordAlign`` node uses ``words`` to map the
    encoder's per-piece states back to one state per word. ``counts`` ``[batch]`` holds each
    sentence's number of words, those cut off by the input's ``max_length`` included, so that the
    word-level output has as many positions as the sentence has words."""

    values: torch.Tensor
    mask: torch.Tensor
    words: torch.Tensor
    counts: torch.Tensor | None = None

    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)


class TopKLogProbs(NamedTuple):
    """A truncated next-token distribution per position, as the teacher cache stores a
    generating teacher's output (a full distribution over the target vocabulary per position
    does not fit on disk): ``indices`` ``[batch, length, k]`` of the k most likely tokens,
    ``log_probs`` ``[batch, length, k]`` their log-probabilities under the *full* softmax (at
    temperature 1; a loss renormalises over the k kept: see
    :func:`blocks.distill.generation_losses`), and the ``[batch, length]`` ``mask``."""

    indices: torch.Tensor
    log_probs: torch.Tensor
    mask: torch.Tensor

    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)


class TagScores(NamedTuple):
    """A linear-chain CRF's scores for a batch of sequences.

    ``emissions`` ``[batch, length, tags]`` (padded positions are ignored through ``mask``),
    ``mask`` ``[batch, length]`` (True = real position; real positions form a prefix),
    ``transitions`` ``[tags, tags]`` (``transitions[i, j]``: score of tag ``j`` following tag
    ``i``), ``start`` ``[tags]`` and ``end`` ``[tags]`` (scores of the first and last tag).
    Transitions the tag scheme forbids hold a large negative number, so no path uses them.
    """

    emissions: torch.Tensor
    mask: torch.Tensor
    transitions: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor


@dataclass(frozen=True)
class Spec:
    """The build-time description of one edge.

    ``width`` is the feature width for ``sequence`` and ``vector`` edges. For ``tokens`` and
    ``chars`` edges it is None and ``vocab`` holds the vocabulary the ids index into. For
    ``attention`` edges it is None and ``extra`` holds ``layers`` and ``heads``.
    """

    kind: str
    width: int | None = None
    vocab: "Vocabulary | None" = field(default=None, compare=False, repr=False)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown edge kind {self.kind!r}; expected one of {KINDS}")

    @property
    def vocab_size(self) -> int:
        if self.vocab is None:
            raise ValueError(f"a {self.kind} edge has no vocabulary")
        return len(self.vocab)

    def describe(self) -> str:
        if self.kind in (TOKENS, CHARS):
            size = len(self.vocab) if self.vocab is not None else "?"
            return f"{self.kind}(vocab {size})"
        if self.kind == ATTENTION:
            return f"{self.kind}[{self.extra.get('layers', '?')} layers x {self.extra.get('heads', '?')} heads]"
        return f"{self.kind}[{self.width}]"

"""From word pieces back to words: the bridge between a pretrained encoder and word-level tasks.

A pretrained model reads a sentence's words through its own tokenizer, which may split a word
into several pieces (``Johanson`` -> ``johan ##son``). For a word-level task (tagging), the
input of ``"type": "pretrained"`` carries, beside the piece ids, the word each piece belongs to
(:class:`~blocks.values.WordPieces`); ``WordAlign`` turns the encoder's per-piece states into one
state per word, so that a word-piece teacher and a word-level student meet at the same positions::

    {"name": "encoder", "block": "PretrainedEncoder", "input": "pieces", "pooling": "none"},
    {"name": "words", "block": "WordAlign", "input": ["encoder", "pieces"], "mode": "first"},
    {"name": "emissions", "block": "Linear"}
"""
from __future__ import annotations

from typing import Literal

import torch

from blocks.block import Block, expect_inputs
from blocks.errors import WidthError
from blocks.registry import register_block
from blocks.values import SEQUENCE, TOKENS, Sequence, Spec, WordPieces


@register_block("WordAlign")
class WordAlign(Block):
    """One state per word from a pretrained encoder's per-piece states.

    Inputs: the encoder's sequence ``[batch, pieces, width]`` (``"pooling": "none"``) and the
    pretrained input it read (word pieces with their words, as a word-level task encodes them).
    Output: sequence ``[batch, words, width]``, one position per word of the sentence (so it lines
    up with other word-level inputs); a word has a state when at least one of its pieces survived
    the input's ``max_length`` (the mask is False for the others, and their state is 0).

    Args:
        mode: first (the state of each word's first piece, as BERT taggers do) or mean (the
            average of its pieces' states).
    """

    def __init__(self, inputs: list[Spec], mode: Literal["first", "mean"] = "first"):
        super().__init__()
        expect_inputs(inputs, 2, (SEQUENCE, TOKENS))
        states, pieces = inputs
        if states.kind != SEQUENCE or pieces.kind != TOKENS:
            raise WidthError(f"takes the encoder's sequence, then its pretrained input; got {states.describe()}, "
                             f"{pieces.describe()}")
        if not pieces.extra.get("words"):
            raise WidthError("its second input must be a pretrained input over words (a tagging task's words); "
                             "this one reads text")
        if mode not in ("first", "mean"):
            raise WidthError(f"mode must be 'first' or 'mean', got {mode!r}")
        self.mode = mode
        self.output_spec = Spec(SEQUENCE, states.width)

    def forward(self, states: Sequence, pieces: WordPieces) -> Sequence:
        values, words = states.values, pieces.words
        batch, _, width = values.shape
        count = int(words.max()) + 1 if words.numel() else 0
        if pieces.counts is not None and pieces.counts.numel():  # the words max_length cut off too
            count = max(count, int(pieces.counts.max()))
        count = max(count, 1)
        real = words >= 0
        target = words.clamp(min=0)
        if self.mode == "first":
            previous = torch.cat([words.new_full((batch, 1), -1), words[:, :-1]], dim=1)
            chosen = real & (words != previous)
        else:
            chosen = real
        weights = chosen.to(values.dtype)
        summed = values.new_zeros(batch, count, width).scatter_add(
            1, target.unsqueeze(-1).expand(-1, -1, width), values * weights.unsqueeze(-1))
        pieces_per_word = values.new_zeros(batch, count).scatter_add(1, target, weights)
        mask = pieces_per_word > 0
        result = summed / pieces_per_word.clamp(min=1).unsqueeze(-1)
        return Sequence(result, mask)

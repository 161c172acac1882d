"""Blocks that reduce a sequence to a vector."""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from blocks.block import Block, expect_inputs
from blocks.layers.masking import masked_max, masked_mean, masked_softmax
from blocks.registry import register_block
from blocks.values import SEQUENCE, VECTOR, Sequence, Spec


@register_block("Pooling")
class Pooling(Block):
    """Reduce a sequence to a vector by max, mean, first or last real position.

    Input: sequence ``[batch, length, width]``. Output: vector ``[batch, width]``. "last" takes
    the position ``length - 1`` of each example; an empty sequence gives zeros.

    Args:
        mode: "max" or "mean" over the real positions, or the "first" or "last" real position.
    """

    def __init__(self, inputs: list[Spec], mode: Literal["max", "mean", "first", "last"] = "max"):
        super().__init__()
        expect_inputs(inputs, 1, (SEQUENCE,))
        self.mode = mode
        self.output_spec = Spec(VECTOR, inputs[0].width)

    def forward(self, sequence: Sequence) -> torch.Tensor:
        values, mask = sequence
        if self.mode == "max":
            return masked_max(values, mask, dim=1)
        if self.mode == "mean":
            return masked_mean(values, mask, dim=1)
        lengths = mask.sum(dim=1)
        if self.mode == "first":
            index = torch.zeros_like(lengths)
        else:
            index = (lengths - 1).clamp(min=0)
        picked = values[torch.arange(values.shape[0], device=values.device), index]
        return picked.masked_fill((lengths == 0).unsqueeze(-1), 0.0)


@register_block("AttentionPooling")
class AttentionPooling(Block):
    """Reduce a sequence to a vector by a learned attention-weighted sum of its positions.

    Input: sequence ``[batch, length, width]``. Each head scores every position (a dot product
    with a learned query, or a small tanh MLP when ``hidden`` is set), takes a softmax over the
    real positions and sums the positions with those weights. Output: vector
    ``[batch, width * heads]`` (the heads' sums concatenated).

    Args:
        hidden: size of a tanh MLP that scores positions; null scores with a learned query vector.
        heads: number of attention heads, each with its own scores over the full width.
    """

    def __init__(self, inputs: list[Spec], hidden: int | None = None, heads: int = 1):
        super().__init__()
        expect_inputs(inputs, 1, (SEQUENCE,))
        width = inputs[0].width
        self.heads = heads
        if hidden is None:
            self.scorer = nn.Linear(width, heads, bias=False)  # one query vector per head
            nn.init.normal_(self.scorer.weight, std=1.0 / math.sqrt(width))
        else:
            self.scorer = nn.Sequential(nn.Linear(width, hidden), nn.Tanh(),
                                        nn.Linear(hidden, heads, bias=False))
        self.output_spec = Spec(VECTOR, width * heads)

    def forward(self, sequence: Sequence) -> torch.Tensor:
        values, mask = sequence
        scores = self.scorer(values)  # [batch, length, heads]
        weights = masked_softmax(scores, mask.unsqueeze(-1), dim=1)
        pooled = torch.einsum("blh,bld->bhd", weights, values)  # [batch, heads, width]
        return pooled.reshape(values.shape[0], -1)

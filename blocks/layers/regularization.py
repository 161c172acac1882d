"""Dropout and layer normalisation, on vectors or sequences."""
from __future__ import annotations

import torch
from torch import nn

from blocks.block import Block, expect_inputs
from blocks.layers.masking import zero_padding
from blocks.registry import register_block
from blocks.values import SEQUENCE, VECTOR, Sequence, Spec


@register_block("Dropout")
class Dropout(Block):
    """Randomly zero features during training.

    Input: vector ``[batch, width]`` or sequence ``[batch, length, width]``. Output: the same
    kind, width and mask; padded positions are zero.

    Args:
        p: probability of zeroing each feature.
    """

    def __init__(self, inputs: list[Spec], p: float = 0.1):
        super().__init__()
        expect_inputs(inputs, 1, (VECTOR, SEQUENCE))
        self.dropout = nn.Dropout(p)
        self.output_spec = Spec(inputs[0].kind, inputs[0].width)

    def forward(self, value: Sequence | torch.Tensor) -> Sequence | torch.Tensor:
        if isinstance(value, Sequence):
            return Sequence(zero_padding(self.dropout(value.values), value.mask), value.mask)
        return self.dropout(value)


@register_block("LayerNorm")
class LayerNorm(Block):
    """Layer normalisation over the features (of a vector, or of each position of a sequence).

    Input: vector ``[batch, width]`` or sequence ``[batch, length, width]``. Output: the same
    kind, width and mask; padded positions are zero.

    Args:
        eps: small number added to the variance for numerical stability.
    """

    def __init__(self, inputs: list[Spec], eps: float = 1e-5):
        super().__init__()
        expect_inputs(inputs, 1, (VECTOR, SEQUENCE))
        self.norm = nn.LayerNorm(inputs[0].width, eps=eps)
        self.output_spec = Spec(inputs[0].kind, inputs[0].width)

    def forward(self, value: Sequence | torch.Tensor) -> Sequence | torch.Tensor:
        if isinstance(value, Sequence):
            return Sequence(zero_padding(self.norm(value.values), value.mask), value.mask)
        return self.norm(value)

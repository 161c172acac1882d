"""Convolutional text encoder (Kim, 2014)."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from blocks.block import Block, expect_inputs
from blocks.errors import WidthError
from blocks.layers.masking import masked_max, masked_mean, zero_padding
from blocks.registry import register_block
from blocks.values import SEQUENCE, VECTOR, Sequence, Spec

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


@register_block("TextCNN")
class TextCNN(Block):
    """Convolutions of several window sizes over a sequence, pooled over time.

    Input: sequence ``[batch, length, width]``. Padded positions are zeroed before the
    convolutions, which pad with zeros so that the output keeps the input length ('same'
    padding); outputs at padded positions are left out of the pooling. Output: vector
    ``[batch, filters * len(windows)]``, or with pool "none" a sequence
    ``[batch, length, filters * len(windows)]`` with the input mask.

    Args:
        filters: number of filters per window size.
        windows: convolution window sizes, in positions.
        activation: nonlinearity applied to the convolution outputs.
        pool: how the positions are reduced: "max", "mean", or "none" to keep the sequence.
    """

    def __init__(self, inputs: list[Spec], filters: int = 100, windows: list[int] = (3, 4, 5),
                 activation: Literal["relu", "tanh", "gelu"] = "relu",
                 pool: Literal["max", "mean", "none"] = "max"):
        super().__init__()
        expect_inputs(inputs, 1, (SEQUENCE,))
        windows = [int(w) for w in windows]
        if not windows or min(windows) < 1:
            raise WidthError(f"windows must be a non-empty list of sizes >= 1, got {windows}")
        self.pool = pool
        self.windows = windows
        self.convolutions = nn.ModuleList(nn.Conv1d(inputs[0].width, filters, window) for window in windows)
        self.activation = ACTIVATIONS[activation]()
        width = filters * len(windows)
        self.output_spec = Spec(SEQUENCE if pool == "none" else VECTOR, width)

    def forward(self, sequence: Sequence) -> Sequence | torch.Tensor:
        values, mask = sequence
        values = zero_padding(values, mask).transpose(1, 2)  # [batch, width, length]
        features = []
        for window, convolution in zip(self.windows, self.convolutions):
            # 'same' zero padding (the extra position of an even window goes on the right).
            padded = F.pad(values, ((window - 1) // 2, window // 2))
            features.append(self.activation(convolution(padded)))
        features = torch.cat(features, dim=1).transpose(1, 2)  # [batch, length, filters * windows]
        if self.pool == "max":
            return masked_max(features, mask, dim=1)
        if self.pool == "mean":
            return masked_mean(features, mask, dim=1)
        return Sequence(zero_padding(features, mask), mask)

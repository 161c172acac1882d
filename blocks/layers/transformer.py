"""Transformer encoder over masked sequences."""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from blocks.block import Block, expect_inputs
from blocks.errors import WidthError
from blocks.layers.masking import attention_key_mask, zero_padding
from blocks.registry import register_block
from blocks.values import SEQUENCE, Sequence, Spec


def sinusoidal_positions(length: int, width: int) -> torch.Tensor:
    """The fixed sine/cosine position encodings of Vaswani et al. (2017), ``[length, width]``."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: width // 2])
    return table


@register_block("TransformerEncoder")
class TransformerEncoder(Block):
    """Stack of Transformer encoder layers (self-attention + feed-forward) over a sequence.

    Input: sequence ``[batch, length, input width]``, projected to ``width`` first when that
    differs from the input. Position encodings are added, then ``layers`` encoder layers run
    with padding masked out of attention. Output: sequence ``[batch, length, width]`` with the
    input mask, zero at padded positions. Sequences longer than ``max_length`` are refused
    when position encodings are used.

    Args:
        layers: number of encoder layers.
        heads: number of attention heads; width must divide by it.
        width: model width; null keeps the input width, a number adds a linear projection.
        ffn: hidden size of the feed-forward sublayer; null means 4 * width.
        dropout: dropout inside the layers and on the input.
        positions: position encodings added to the input: "learned", "sinusoidal" or "none".
        max_length: longest sequence the position encodings cover.
        pre_ln: layer norm before each sublayer (and once at the end) instead of after it.
    """

    def __init__(self, inputs: list[Spec], layers: int = 2, heads: int = 4, width: int | None = None,
                 ffn: int | None = None, dropout: float = 0.1,
                 positions: Literal["learned", "sinusoidal", "none"] = "learned",
                 max_length: int = 512, pre_ln: bool = True):
        super().__init__()
        expect_inputs(inputs, 1, (SEQUENCE,))
        input_width = inputs[0].width
        width = input_width if width is None else width
        if heads < 1 or width % heads != 0:
            raise WidthError(f"width {width} does not divide into {heads} heads")
        self.max_length = max_length
        self.projection = nn.Linear(input_width, width) if width != input_width else None
        self.positions = positions
        if positions == "learned":
            self.position_embedding = nn.Embedding(max_length, width)
            nn.init.normal_(self.position_embedding.weight, std=0.02)
        elif positions == "sinusoidal":
            self.register_buffer("position_table", sinusoidal_positions(max_length, width),
                                 persistent=False)
        self.input_dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(width, heads, ffn if ffn is not None else 4 * width,
                                           dropout, batch_first=True, norm_first=pre_ln)
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(width) if pre_ln else None,
                                             enable_nested_tensor=False)
        self.output_spec = Spec(SEQUENCE, width)

    def forward(self, sequence: Sequence) -> Sequence:
        values, mask = sequence
        length = values.shape[1]
        if self.positions != "none" and length > self.max_length:
            longest = int(mask.sum(dim=1).max())
            if longest > self.max_length:
                raise ValueError(f"TransformerEncoder got a sequence of length {longest}, longer than"
                                 f" its max_length {self.max_length}; raise max_length or truncate"
                                 f" the input")
            # Only padding lies beyond max_length: encode the real part, pad the result back.
            cropped = self.forward(Sequence(values[:, :self.max_length], mask[:, :self.max_length]))
            padding = cropped.values.new_zeros(values.shape[0], length - self.max_length,
                                               cropped.values.shape[-1])
            return Sequence(torch.cat([cropped.values, padding], dim=1), mask)
        if self.projection is not None:
            values = self.projection(values)
        if self.positions == "learned":
            values = values + self.position_embedding.weight[:length]
        elif self.positions == "sinusoidal":
            values = values + self.position_table[:length]
        values = self.input_dropout(zero_padding(values, mask))
        encoded = self.encoder(values, src_key_padding_mask=~attention_key_mask(mask))
        return Sequence(zero_padding(encoded, mask), mask)

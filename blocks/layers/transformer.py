"""Transformer encoder over masked sequences."""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from blocks.block import Block, NamedOutputs, expect_inputs
from blocks.errors import WidthError
from blocks.layers.masking import attention_key_mask, masked_softmax, zero_padding
from blocks.registry import register_block
from blocks.values import ATTENTION, SEQUENCE, AttentionMaps, Sequence, Spec


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
    when position encodings are used. With ``attentions`` the node also offers the named output
    ``"<node>:attentions"``: the self-attention probabilities of every layer,
    ``[batch, layers, heads, length, length]`` (before attention dropout; padded rows and
    columns 0), for attention-map distillation (``AttentionMatch``).

    Args:
        layers: number of encoder layers.
        heads: number of attention heads; width must divide by it.
        width: model width; null keeps the input width, a number adds a linear projection.
        ffn: hidden size of the feed-forward sublayer; null means 4 * width.
        dropout: dropout inside the layers and on the input.
        positions: position encodings added to the input: "learned", "sinusoidal" or "none".
        max_length: longest sequence the position encodings cover.
        pre_ln: layer norm before each sublayer (and once at the end) instead of after it.
        attentions: also offer the attention probabilities as the named output
            "<node>:attentions" (computed only when set).
    """

    def __init__(self, inputs: list[Spec], layers: int = 2, heads: int = 4, width: int | None = None,
                 ffn: int | None = None, dropout: float = 0.1,
                 positions: Literal["learned", "sinusoidal", "none"] = "learned",
                 max_length: int = 512, pre_ln: bool = True, attentions: bool = False):
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
        self.attentions = attentions
        if attentions:
            self.named_outputs = {"attentions": Spec(ATTENTION, extra={"layers": layers, "heads": heads})}

    def forward(self, sequence: Sequence) -> Sequence | NamedOutputs:
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
            encoded = cropped.main if self.attentions else cropped
            padding = encoded.values.new_zeros(values.shape[0], length - self.max_length,
                                               encoded.values.shape[-1])
            result = Sequence(torch.cat([encoded.values, padding], dim=1), mask)
            if not self.attentions:
                return result
            extra = length - self.max_length
            maps = F.pad(cropped.named["attentions"].maps, (0, extra, 0, extra))
            return NamedOutputs(result, {"attentions": AttentionMaps(maps, mask)})
        if self.projection is not None:
            values = self.projection(values)
        if self.positions == "learned":
            values = values + self.position_embedding.weight[:length]
        elif self.positions == "sinusoidal":
            values = values + self.position_table[:length]
        values = self.input_dropout(zero_padding(values, mask))
        if not self.attentions:
            encoded = self.encoder(values, src_key_padding_mask=~attention_key_mask(mask))
            return Sequence(zero_padding(encoded, mask), mask)
        encoded, maps = self._encode_with_attentions(values, mask)
        return NamedOutputs(Sequence(zero_padding(encoded, mask), mask), {"attentions": AttentionMaps(maps, mask)})

    def _encode_with_attentions(self, values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What ``self.encoder`` computes (its layers, called as it calls them), and each layer's
        attention probabilities ``[batch, layers, heads, length, length]``.

        The probabilities are recomputed from the layer's query and key projections (the layers
        themselves do not return them), before attention dropout, so the encoded values are
        exactly those of the plain path.
        """
        key_mask = attention_key_mask(mask)
        padding_mask = ~key_mask
        maps = []
        for layer in self.encoder.layers:
            maps.append(self._attention_probabilities(layer, values, key_mask))
            values = layer(values, src_key_padding_mask=padding_mask)
        if self.encoder.norm is not None:
            values = self.encoder.norm(values)
        maps = torch.stack(maps, dim=1)  # [batch, layers, heads, length, length]
        real = mask[:, None, None, :, None] & mask[:, None, None, None, :]
        return values, maps.masked_fill(~real, 0.0)

    @staticmethod
    def _attention_probabilities(layer: nn.TransformerEncoderLayer, values: torch.Tensor,
                                 key_mask: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) of one layer's self-attention over ``values`` (the layer's input)."""
        attention = layer.self_attn
        if layer.norm_first:
            values = layer.norm1(values)
        batch, length, width = values.shape
        heads = attention.num_heads
        weight_q, weight_k, _ = attention.in_proj_weight.chunk(3)
        bias_q, bias_k = (None, None) if attention.in_proj_bias is None else attention.in_proj_bias.chunk(3)[:2]
        query = F.linear(values, weight_q, bias_q).view(batch, length, heads, -1).transpose(1, 2)
        key = F.linear(values, weight_k, bias_k).view(batch, length, heads, -1).transpose(1, 2)
        scores = torch.matmul(query, key.transpose(-2, -1)) / math.sqrt(query.shape[-1])
        return masked_softmax(scores, key_mask[:, None, None, :])

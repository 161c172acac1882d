"""Attention blocks: self-attention within a sequence, and attention from one sequence to another."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from blocks.block import Block, expect_inputs
from blocks.errors import WidthError
from blocks.layers.masking import attention_key_mask, masked_softmax, zero_padding
from blocks.registry import register_block
from blocks.values import SEQUENCE, Sequence, Spec


@register_block("MultiHeadSelfAttention")
class MultiHeadSelfAttention(Block):
    """Multi-head scaled dot-product self-attention over the real positions of a sequence.

    Input: sequence ``[batch, length, width]``; ``width`` must divide by ``heads``. Padding is
    never attended to. Output: sequence ``[batch, length, width]`` with the input mask, zero at
    padded positions.

    Args:
        heads: number of attention heads (each of size width / heads).
        dropout: dropout on the attention weights during training.
        residual: add the input to the output.
    """

    def __init__(self, inputs: list[Spec], heads: int = 4, dropout: float = 0.0,
                 residual: bool = False):
        super().__init__()
        expect_inputs(inputs, 1, (SEQUENCE,))
        width = inputs[0].width
        if heads < 1 or width % heads != 0:
            raise WidthError(f"input width {width} does not divide into {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.residual = residual
        self.query_key_value = nn.Linear(width, 3 * width)
        self.output = nn.Linear(width, width)
        self.output_spec = Spec(SEQUENCE, width)

    def forward(self, sequence: Sequence) -> Sequence:
        values, mask = sequence
        batch, length, width = values.shape
        projected = self.query_key_value(values).reshape(batch, length, 3, self.heads, width // self.heads)
        query, key, value = projected.permute(2, 0, 3, 1, 4)  # each [batch, heads, length, head width]
        key_mask = attention_key_mask(mask)[:, None, None, :]  # [batch, 1, 1, length]
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=key_mask,
                                                  dropout_p=self.dropout if self.training else 0.0)
        output = self.output(attended.transpose(1, 2).reshape(batch, length, width))
        if self.residual:
            output = output + values
        return Sequence(zero_padding(output, mask), mask)


@register_block("CrossAttention")
class CrossAttention(Block):
    """Align sequence a to sequence b: each position of a attends over the real positions of b.

    Inputs: sequences a ``[batch, La, Da]`` and b ``[batch, Lb, Db]``. Scores are dot products
    (unscaled, as in ESIM) or bilinear ``a W b``; a softmax over b's real positions weights b's
    positions into an "aligned" vector for each position of a. With ``project`` b is first
    mapped by a learned linear layer to width Da, and that projection is what is scored and
    aligned. Output: a sequence with a's length and mask, of width Db ("aligned"),
    Da + Db ("concat"), or 4 * Da ("enhanced": [a; aligned; a - aligned; a * aligned], which
    needs Db == Da); Db here is Da when ``project`` is set.

    Args:
        score: how a position of a scores a position of b: "dot" (needs equal widths) or
            "bilinear" (a learned matrix between the two widths).
        output: "aligned" (the aligned b only), "concat" ([a; aligned]) or "enhanced"
            ([a; aligned; a - aligned; a * aligned]).
        project: map b to a's width with a learned linear layer before scoring and aligning.
    """

    def __init__(self, inputs: list[Spec], score: Literal["dot", "bilinear"] = "dot",
                 output: Literal["aligned", "concat", "enhanced"] = "enhanced",
                 project: bool = False):
        super().__init__()
        expect_inputs(inputs, 2, (SEQUENCE,))
        a_width, b_width = inputs[0].width, inputs[1].width
        self.output_mode = output
        self.projection = nn.Linear(b_width, a_width) if project else None
        if project:
            b_width = a_width
        if score == "dot" and a_width != b_width:
            raise WidthError(f"dot scores need equal widths, got a {a_width} and b {b_width};"
                             f" use score \"bilinear\" or project true")
        if output == "enhanced" and a_width != b_width:
            raise WidthError(f"output \"enhanced\" needs equal widths, got a {a_width} and"
                             f" b {b_width}; use project true or output \"concat\"")
        self.bilinear = nn.Linear(b_width, a_width, bias=False) if score == "bilinear" else None
        width = {"aligned": b_width, "concat": a_width + b_width, "enhanced": 4 * a_width}[output]
        self.output_spec = Spec(SEQUENCE, width)

    def forward(self, a: Sequence, b: Sequence) -> Sequence:
        b_values = zero_padding(b.values, b.mask)
        if self.projection is not None:
            b_values = self.projection(b_values)
        keys = self.bilinear(b_values) if self.bilinear is not None else b_values
        scores = torch.bmm(a.values, keys.transpose(1, 2))  # [batch, La, Lb]
        weights = masked_softmax(scores, b.mask.unsqueeze(1), dim=-1)
        aligned = torch.bmm(weights, b_values)  # [batch, La, Db]
        if self.output_mode == "aligned":
            output = aligned
        elif self.output_mode == "concat":
            output = torch.cat([a.values, aligned], dim=-1)
        else:
            output = torch.cat([a.values, aligned, a.values - aligned, a.values * aligned], dim=-1)
        return Sequence(zero_padding(output, a.mask), a.mask)

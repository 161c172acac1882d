"""Blocks that merge two or more edges into one."""
from __future__ import annotations

import math
import typing
from typing import Literal

import torch

from blocks.block import Block, expect_inputs
from blocks.errors import WidthError
from blocks.layers.masking import zero_padding
from blocks.registry import register_block
from blocks.values import SEQUENCE, VECTOR, Sequence, Spec

Part = Literal["a", "b", "absdiff", "product", "diff"]
PARTS = typing.get_args(Part)


def _check_lengths(values: list[Sequence]) -> None:
    if torch.jit.is_tracing():  # shapes are tensors while tracing (export); the inputs were checked in training
        return
    lengths = [int(v.values.shape[1]) for v in values]
    if len(set(lengths)) > 1:
        raise ValueError(f"sequences of different lengths cannot be combined position by position:"
                         f" {lengths}")


def _part(name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if name == "a":
        return a
    if name == "b":
        return b
    if name == "absdiff":
        return (a - b).abs()
    if name == "product":
        return a * b
    return a - b  # "diff"


@register_block("Combine")
class Combine(Block):
    """Match features of two inputs: a, b, |a - b|, a * b, a - b, concatenated.

    Inputs: a and b, both vectors ``[batch, width]`` or both sequences
    ``[batch, length, width]`` of the same length, of equal width. Output: the same kind,
    of width ``width * len(parts)`` (a sequence keeps a's mask).

    Args:
        parts: the pieces to concatenate, in order, from "a", "b", "absdiff" (|a - b|),
            "product" (a * b) and "diff" (a - b).
    """

    def __init__(self, inputs: list[Spec], parts: list[Part] = ("a", "b", "absdiff", "product")):
        super().__init__()
        expect_inputs(inputs, 2, (VECTOR, SEQUENCE))
        a, b = inputs
        if a.kind != b.kind:
            raise WidthError(f"inputs must be of the same kind, got {a.describe()} and {b.describe()}")
        if a.width != b.width:
            raise WidthError(f"inputs must have equal widths, got {a.width} and {b.width}")
        self.parts = list(parts)
        unknown = [p for p in self.parts if p not in PARTS]
        if not self.parts or unknown:
            raise ValueError(f"parts must be a non-empty list of {', '.join(PARTS)}; got {self.parts}")
        self.output_spec = Spec(a.kind, a.width * len(self.parts))

    def forward(self, a: Sequence | torch.Tensor, b: Sequence | torch.Tensor) -> Sequence | torch.Tensor:
        mask = None
        if isinstance(a, Sequence):
            _check_lengths([a, b])
            mask, a, b = a.mask, a.values, b.values
        output = torch.cat([_part(name, a, b) for name in self.parts], dim=-1)
        return output if mask is None else Sequence(zero_padding(output, mask), mask)


@register_block("Concat")
class Concat(Block):
    """Concatenate two or more inputs along the feature width.

    Inputs: all vectors ``[batch, width_i]``, or all sequences ``[batch, length, width_i]`` of
    the same length. Output: the same kind, of width ``sum(width_i)``; a sequence takes the
    first input's mask.
    """

    def __init__(self, inputs: list[Spec]):
        super().__init__()
        if len(inputs) < 2:
            raise WidthError(f"takes 2 or more inputs, got {len(inputs)}")
        expect_inputs(inputs, len(inputs), (VECTOR, SEQUENCE))
        kinds = {spec.kind for spec in inputs}
        if len(kinds) > 1:
            raise WidthError(f"inputs must be all vectors or all sequences, got"
                             f" {', '.join(spec.describe() for spec in inputs)}")
        self.output_spec = Spec(inputs[0].kind, sum(spec.width for spec in inputs))

    def forward(self, *values: Sequence | torch.Tensor) -> Sequence | torch.Tensor:
        if isinstance(values[0], Sequence):
            _check_lengths(list(values))
            mask = values[0].mask
            output = torch.cat([v.values for v in values], dim=-1)
            return Sequence(zero_padding(output, mask), mask)
        return torch.cat(values, dim=-1)


@register_block("Average")
class Average(Block):
    """Average two or more vectors of the same width, e.g. per-teacher output heads at inference.

    ``mode`` "mean" averages the inputs (logits) as they are; "probabilities" averages their
    softmax distributions and returns the log of the mean (valid logits of the averaged
    distribution).

    Args:
        mode: "mean" or "probabilities".
    """

    def __init__(self, inputs: list[Spec], mode: Literal["mean", "probabilities"] = "mean"):
        super().__init__()
        if len(inputs) < 2:
            raise WidthError(f"takes 2 or more inputs, got {len(inputs)}")
        expect_inputs(inputs, len(inputs), (VECTOR,))
        widths = {spec.width for spec in inputs}
        if len(widths) > 1:
            raise WidthError(f"inputs must have the same width, got {', '.join(spec.describe() for spec in inputs)}")
        if mode not in ("mean", "probabilities"):
            raise WidthError(f"unknown mode {mode!r} (known: mean, probabilities)")
        self.mode = mode
        self.output_spec = Spec(VECTOR, inputs[0].width)

    def forward(self, *values: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack(values, dim=0)
        if self.mode == "mean":
            return stacked.mean(dim=0)
        return torch.logsumexp(torch.log_softmax(stacked.float(), dim=-1), dim=0) - math.log(len(values))

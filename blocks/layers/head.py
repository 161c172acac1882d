"""Output layers: a linear map and a multilayer perceptron, on vectors or sequences."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from blocks.block import Block, expect_inputs
from blocks.layers.convolution import ACTIVATIONS
from blocks.layers.masking import zero_padding
from blocks.registry import register_block
from blocks.values import LABELS, SEQUENCE, VECTOR, Sequence, Spec


def _output_size(out: int | str) -> int:
    if out == LABELS:
        raise ValueError('out="labels" is replaced by the number of task outputs when a graph is'
                         ' built; give a number when constructing the block directly')
    return int(out)


def _apply(module: nn.Module, value: Sequence | torch.Tensor) -> Sequence | torch.Tensor:
    """Run ``module`` on the features of a vector or of each position of a sequence."""
    if isinstance(value, Sequence):
        return Sequence(zero_padding(module(value.values), value.mask), value.mask)
    return module(value)


@register_block("Linear")
class Linear(Block):
    """A linear layer, on a vector or on each position of a sequence.

    Input: vector ``[batch, width]`` or sequence ``[batch, length, width]``. Output: the same
    kind (and mask) of width ``out``.

    Args:
        out: output width; "labels" means the task's number of outputs.
        bias: whether to add a learned bias.
    """

    def __init__(self, inputs: list[Spec], out: int | Literal["labels"] = LABELS, bias: bool = True):
        super().__init__()
        expect_inputs(inputs, 1, (VECTOR, SEQUENCE))
        out = _output_size(out)
        self.linear = nn.Linear(inputs[0].width, out, bias=bias)
        self.output_spec = Spec(inputs[0].kind, out)

    def forward(self, value: Sequence | torch.Tensor) -> Sequence | torch.Tensor:
        return _apply(self.linear, value)


@register_block("MLP")
class MLP(Block):
    """A multilayer perceptron, on a vector or on each position of a sequence.

    Input: vector ``[batch, width]`` or sequence ``[batch, length, width]``. Each hidden layer
    is linear, then the activation, then dropout; a final linear layer gives width ``out``.
    Output: the same kind (and mask) of width ``out``.

    Args:
        hidden: sizes of the hidden layers, in order (an empty list gives a single linear layer).
        activation: nonlinearity after each hidden layer.
        dropout: dropout after each hidden layer.
        out: output width; "labels" means the task's number of outputs.
    """

    def __init__(self, inputs: list[Spec], hidden: list[int] = (256,),
                 activation: Literal["relu", "tanh", "gelu"] = "relu", dropout: float = 0.0,
                 out: int | Literal["labels"] = LABELS):
        super().__init__()
        expect_inputs(inputs, 1, (VECTOR, SEQUENCE))
        out = _output_size(out)
        layers: list[nn.Module] = []
        width = inputs[0].width
        for size in hidden:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation](), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, out))
        self.layers = nn.Sequential(*layers)
        self.output_spec = Spec(inputs[0].kind, out)

    def forward(self, value: Sequence | torch.Tensor) -> Sequence | torch.Tensor:
        return _apply(self.layers, value)

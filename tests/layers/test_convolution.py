import pytest
import torch

from blocks.errors import WidthError
from blocks.layers.convolution import TextCNN
from blocks.values import SEQUENCE, VECTOR, Spec


@pytest.mark.parametrize("pool, kind", [("max", VECTOR), ("mean", VECTOR), ("none", SEQUENCE)])
def test_spec_and_shape(pool, kind, tools):
    block = TextCNN([Spec(SEQUENCE, 4)], filters=3, windows=[2, 3], pool=pool)
    assert block.output_spec == Spec(kind, 6)
    out = block(tools.random_sequence([5, 2], 4))
    if pool == "none":
        assert out.values.shape == (2, 6, 6)
    else:
        assert out.shape == (2, 6)


@pytest.mark.parametrize("pool", ["max", "mean", "none"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
def test_padding_invariance(pool, activation, tools):
    block = TextCNN([Spec(SEQUENCE, 4)], filters=3, windows=[2, 3, 4], activation=activation, pool=pool)
    examples = [(torch.randn(n, 4),) for n in (6, 1, 3)]
    tools.assert_padding_invariant(block, examples)


def test_gradient(tools):
    block = TextCNN([Spec(SEQUENCE, 4)], filters=3, windows=[3])
    sequence = tools.random_sequence([4, 2], 4, requires_grad=True)
    block(sequence).sum().backward()
    assert sequence.values.grad[:, :2].abs().sum() > 0
    assert torch.all(sequence.values.grad[1, 2:] == 0)  # padding gets no gradient


def test_width_errors():
    with pytest.raises(WidthError):
        TextCNN([Spec(VECTOR, 4)])
    with pytest.raises(WidthError):
        TextCNN([Spec(SEQUENCE, 4)], windows=[])

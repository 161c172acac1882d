import pytest
import torch

from blocks.errors import WidthError
from blocks.layers.regularization import Dropout, LayerNorm
from blocks.values import SEQUENCE, TOKENS, VECTOR, Spec


@pytest.mark.parametrize("cls", [Dropout, LayerNorm])
@pytest.mark.parametrize("kind", [VECTOR, SEQUENCE])
def test_keeps_spec(cls, kind):
    assert cls([Spec(kind, 5)]).output_spec == Spec(kind, 5)


@pytest.mark.parametrize("cls", [Dropout, LayerNorm])
def test_padding_invariance_and_gradient(cls, tools):
    block = cls([Spec(SEQUENCE, 5)])
    tools.assert_padding_invariant(block, [(torch.randn(n, 5),) for n in (3, 1)])
    block.train()
    sequence = tools.random_sequence([3, 1], 5, requires_grad=True)
    out = block(sequence)
    assert torch.equal(out.mask, sequence.mask)
    out.values.sum().backward()
    assert sequence.values.grad is not None
    x = torch.randn(4, 5, requires_grad=True)
    (block(x) * torch.randn(4, 5)).sum().backward()
    assert x.grad.abs().sum() > 0


def test_dropout_behaviour():
    block = Dropout([Spec(VECTOR, 1000)], p=0.5)
    x = torch.ones(2, 1000)
    assert torch.equal(block.eval()(x), x)
    dropped = block.train()(x)
    assert (dropped == 0).any() and (dropped == 2).any()


def test_layer_norm_normalises():
    out = LayerNorm([Spec(VECTOR, 6)], eps=1e-6)(torch.randn(3, 6) * 10 + 4)
    assert torch.allclose(out.mean(-1), torch.zeros(3), atol=1e-5)


@pytest.mark.parametrize("cls", [Dropout, LayerNorm])
def test_errors(cls):
    with pytest.raises(WidthError):
        cls([Spec(TOKENS)])
    with pytest.raises(WidthError):
        cls([])

import pytest
import torch

from blocks.errors import WidthError
from blocks.layers.head import MLP, Linear
from blocks.values import SEQUENCE, TOKENS, VECTOR, Spec


def test_linear_vector():
    block = Linear([Spec(VECTOR, 4)], out=3)
    assert block.output_spec == Spec(VECTOR, 3)
    x = torch.randn(2, 4, requires_grad=True)
    out = block(x)
    assert out.shape == (2, 3)
    out.sum().backward()
    assert x.grad.abs().sum() > 0
    assert Linear([Spec(VECTOR, 4)], out=3, bias=False).linear.bias is None


def test_linear_sequence(tools):
    block = Linear([Spec(SEQUENCE, 4)], out=3)
    assert block.output_spec == Spec(SEQUENCE, 3)
    tools.assert_padding_invariant(block, [(torch.randn(n, 4),) for n in (3, 1)])


@pytest.mark.parametrize("hidden", [[], [5], [5, 6]])
@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
def test_mlp(hidden, activation, tools):
    block = MLP([Spec(VECTOR, 4)], hidden=hidden, activation=activation, dropout=0.1, out=2)
    assert block.output_spec == Spec(VECTOR, 2)
    x = torch.randn(3, 4, requires_grad=True)
    block(x).sum().backward()
    assert x.grad.abs().sum() > 0
    assert len([m for m in block.modules() if isinstance(m, torch.nn.Linear)]) == len(hidden) + 1
    sequence_block = MLP([Spec(SEQUENCE, 4)], hidden=hidden, activation=activation, out=2)
    assert sequence_block.output_spec == Spec(SEQUENCE, 2)
    tools.assert_padding_invariant(sequence_block, [(torch.randn(n, 4),) for n in (3, 1)])


def test_shared_on_two_inputs():
    block = MLP([Spec(VECTOR, 4)], hidden=[3], out=2)
    a, b = torch.randn(2, 4), torch.randn(5, 4)
    assert block(a).shape == (2, 2) and block(b).shape == (5, 2)
    assert torch.allclose(block(a)[1], block(torch.cat([b, a]))[6], atol=1e-6)


@pytest.mark.parametrize("cls", [Linear, MLP])
def test_errors(cls):
    with pytest.raises(WidthError):
        cls([Spec(TOKENS)], out=2)
    with pytest.raises(WidthError):
        cls([Spec(VECTOR, 2), Spec(VECTOR, 2)], out=2)
    with pytest.raises(ValueError, match="labels"):
        cls([Spec(VECTOR, 2)])  # "labels" left unresolved

import pytest
import torch

from blocks.errors import WidthError
from blocks.layers.combination import Combine, Concat
from blocks.values import SEQUENCE, TOKENS, VECTOR, Sequence, Spec


def test_combine_vectors():
    block = Combine([Spec(VECTOR, 2), Spec(VECTOR, 2)], parts=["a", "b", "absdiff", "product", "diff"])
    assert block.output_spec == Spec(VECTOR, 10)
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]])
    expected = torch.tensor([[1.0, 2.0, 3.0, -1.0, 2.0, 3.0, 3.0, -2.0, -2.0, 3.0]])
    assert torch.equal(block(a, b), expected)


def test_combine_sequences(tools):
    block = Combine([Spec(SEQUENCE, 3), Spec(SEQUENCE, 3)])
    assert block.output_spec == Spec(SEQUENCE, 12)
    tools.assert_padding_invariant(block, [(torch.randn(n, 3), torch.randn(n, 3)) for n in (4, 1, 2)])
    a = tools.random_sequence([3, 1], 3, requires_grad=True)
    b = Sequence(torch.randn(2, 4, 3, requires_grad=True), a.mask)
    out = block(a, b)
    assert out.values.shape == (2, 4, 12) and torch.equal(out.mask, a.mask)
    out.values.sum().backward()
    assert a.values.grad.abs().sum() > 0 and b.values.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="lengths"):
        block(a, tools.random_sequence([5], 3))


def test_combine_errors():
    with pytest.raises(WidthError):
        Combine([Spec(VECTOR, 3), Spec(VECTOR, 4)])
    with pytest.raises(WidthError):
        Combine([Spec(VECTOR, 3), Spec(SEQUENCE, 3)])
    with pytest.raises(WidthError):
        Combine([Spec(VECTOR, 3)])
    with pytest.raises(WidthError):
        Combine([Spec(TOKENS), Spec(TOKENS)])
    with pytest.raises(ValueError, match="parts"):
        Combine([Spec(VECTOR, 3), Spec(VECTOR, 3)], parts=["a", "sum"])


def test_concat_vectors():
    block = Concat([Spec(VECTOR, 2), Spec(VECTOR, 3), Spec(VECTOR, 1)])
    assert block.output_spec == Spec(VECTOR, 6)
    out = block(torch.ones(2, 2), torch.zeros(2, 3), torch.ones(2, 1))
    assert out.shape == (2, 6)


def test_concat_sequences(tools):
    block = Concat([Spec(SEQUENCE, 2), Spec(SEQUENCE, 3)])
    assert block.output_spec == Spec(SEQUENCE, 5)
    tools.assert_padding_invariant(block, [(torch.randn(n, 2), torch.randn(n, 3)) for n in (3, 1)])
    a = tools.random_sequence([3, 1], 2, requires_grad=True)
    out = block(a, Sequence(torch.randn(2, 4, 3), a.mask))
    assert out.values.shape == (2, 4, 5)
    out.values.sum().backward()
    assert a.values.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="lengths"):
        block(a, tools.random_sequence([5], 3))


def test_concat_errors():
    with pytest.raises(WidthError):
        Concat([Spec(VECTOR, 2)])
    with pytest.raises(WidthError):
        Concat([Spec(VECTOR, 2), Spec(SEQUENCE, 2)])
    with pytest.raises(WidthError):
        Concat([Spec(TOKENS), Spec(TOKENS)])


def test_average_of_heads():
    from blocks.layers.combination import Average

    a, b = torch.tensor([[1.0, 3.0]]), torch.tensor([[3.0, -1.0]])
    assert torch.equal(Average([Spec(VECTOR, 2)] * 2)(a, b), torch.tensor([[2.0, 1.0]]))
    probabilities = Average([Spec(VECTOR, 2)] * 2, mode="probabilities")(a, b)
    expected = (torch.softmax(a, -1) + torch.softmax(b, -1)) / 2
    assert torch.allclose(probabilities.exp(), expected)
    with pytest.raises(WidthError, match="same width"):
        Average([Spec(VECTOR, 2), Spec(VECTOR, 3)])
    with pytest.raises(WidthError, match="2 or more"):
        Average([Spec(VECTOR, 2)])

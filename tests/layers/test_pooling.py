import pytest
import torch

from blocks.errors import WidthError
from blocks.layers.pooling import AttentionPooling, Pooling
from blocks.values import SEQUENCE, VECTOR, Sequence, Spec


@pytest.mark.parametrize("mode", ["max", "mean", "first", "last"])
def test_pooling(mode, tools):
    block = Pooling([Spec(SEQUENCE, 3)], mode=mode)
    assert block.output_spec == Spec(VECTOR, 3)
    tools.assert_padding_invariant(block, [(torch.randn(n, 3),) for n in (4, 1, 2)])


def test_pooling_values():
    values = torch.tensor([[[1.0], [5.0], [3.0], [100.0]]])
    mask = torch.tensor([[True, True, True, False]])
    expected = {"max": 5.0, "mean": 3.0, "first": 1.0, "last": 3.0}
    for mode, value in expected.items():
        assert Pooling([Spec(SEQUENCE, 1)], mode=mode)(Sequence(values, mask)).item() == value
    empty = Sequence(values, torch.zeros_like(mask))
    for mode in expected:
        assert Pooling([Spec(SEQUENCE, 1)], mode=mode)(empty).item() == 0


@pytest.mark.parametrize("hidden, heads", [(None, 1), (None, 3), (5, 2)])
def test_attention_pooling(hidden, heads, tools):
    block = AttentionPooling([Spec(SEQUENCE, 4)], hidden=hidden, heads=heads)
    assert block.output_spec == Spec(VECTOR, 4 * heads)
    tools.assert_padding_invariant(block, [(torch.randn(n, 4),) for n in (5, 1, 3)])
    sequence = tools.random_sequence([3, 2], 4, requires_grad=True)
    out = block(sequence)
    assert out.shape == (2, 4 * heads)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())
    assert torch.all(sequence.values.grad[1, 2:] == 0)


def test_attention_pooling_heads_differ(tools):
    block = AttentionPooling([Spec(SEQUENCE, 4)], heads=2)
    out = block(tools.random_sequence([5], 4)).reshape(2, 4)
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("cls", [Pooling, AttentionPooling])
def test_width_errors(cls):
    with pytest.raises(WidthError):
        cls([Spec(VECTOR, 4)])
    with pytest.raises(WidthError):
        cls([])

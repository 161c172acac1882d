import pytest
import torch

from blocks.errors import WidthError
from blocks.layers.attention import CrossAttention, MultiHeadSelfAttention
from blocks.values import SEQUENCE, VECTOR, Sequence, Spec


@pytest.mark.parametrize("residual", [False, True])
def test_self_attention(residual, tools):
    block = MultiHeadSelfAttention([Spec(SEQUENCE, 8)], heads=2, residual=residual)
    assert block.output_spec == Spec(SEQUENCE, 8)
    tools.assert_padding_invariant(block, [(torch.randn(n, 8),) for n in (5, 1, 3)])
    block.train()
    sequence = tools.random_sequence([4, 2], 8, requires_grad=True)
    out = block(sequence)
    assert out.values.shape == (2, 5, 8)
    out.values.sum().backward()
    assert all(p.grad is not None for p in block.parameters())
    assert torch.all(sequence.values.grad[1, 2:] == 0)


def test_self_attention_dropout_and_empty_sequence():
    block = MultiHeadSelfAttention([Spec(SEQUENCE, 4)], heads=1, dropout=0.5)
    mask = torch.tensor([[True, False], [False, False]])
    out = block.eval()(Sequence(torch.randn(2, 2, 4), mask))
    assert torch.isfinite(out.values).all() and torch.all(out.values[1] == 0)
    block.train()(Sequence(torch.randn(2, 2, 4), mask))


def test_self_attention_width_errors():
    with pytest.raises(WidthError, match="heads"):
        MultiHeadSelfAttention([Spec(SEQUENCE, 6)], heads=4)
    with pytest.raises(WidthError):
        MultiHeadSelfAttention([Spec(VECTOR, 8)])


@pytest.mark.parametrize("score, output, project, a_width, b_width, width", [
    ("dot", "enhanced", False, 4, 4, 16),
    ("dot", "aligned", False, 4, 4, 4),
    ("dot", "concat", True, 4, 6, 8),
    ("bilinear", "concat", False, 4, 6, 10),
    ("bilinear", "aligned", False, 4, 6, 6),
    ("bilinear", "enhanced", True, 4, 6, 16),
])
def test_cross_attention(score, output, project, a_width, b_width, width, tools):
    block = CrossAttention([Spec(SEQUENCE, a_width), Spec(SEQUENCE, b_width)], score=score,
                           output=output, project=project)
    assert block.output_spec == Spec(SEQUENCE, width)
    examples = [(torch.randn(la, a_width), torch.randn(lb, b_width)) for la, lb in [(3, 5), (1, 2), (4, 1)]]
    tools.assert_padding_invariant(block, examples)
    a = tools.random_sequence([3, 2], a_width, requires_grad=True)
    b = tools.random_sequence([1, 4], b_width, requires_grad=True)
    out = block(a, b)
    assert out.values.shape == (2, 4, width) and torch.equal(out.mask, a.mask)
    out.values.sum().backward()
    assert torch.all(b.values.grad[0, 1:] == 0)  # b's padding receives no attention
    assert b.values.grad[0, 0].abs().sum() > 0
    assert all(p.grad is not None for p in block.parameters())


def test_cross_attention_ignores_b_padding():
    block = CrossAttention([Spec(SEQUENCE, 2), Spec(SEQUENCE, 2)], output="aligned")
    a = Sequence(torch.ones(1, 1, 2), torch.tensor([[True]]))
    b = Sequence(torch.tensor([[[1.0, 2.0], [50.0, 50.0]]]), torch.tensor([[True, False]]))
    assert torch.allclose(block(a, b).values, torch.tensor([[[1.0, 2.0]]]))


def test_cross_attention_width_errors():
    with pytest.raises(WidthError, match="dot"):
        CrossAttention([Spec(SEQUENCE, 4), Spec(SEQUENCE, 6)], output="concat")
    with pytest.raises(WidthError, match="enhanced"):
        CrossAttention([Spec(SEQUENCE, 4), Spec(SEQUENCE, 6)], score="bilinear")
    with pytest.raises(WidthError):
        CrossAttention([Spec(SEQUENCE, 4)])
    with pytest.raises(WidthError):
        CrossAttention([Spec(SEQUENCE, 4), Spec(VECTOR, 4)])


def test_cross_attention_shared_both_directions(tools):
    block = CrossAttention([Spec(SEQUENCE, 4), Spec(SEQUENCE, 4)])
    a, b = tools.random_sequence([3, 2], 4), tools.random_sequence([5, 1], 4)
    assert block(a, b).values.shape == (2, 4, 16)
    assert block(b, a).values.shape == (2, 6, 16)

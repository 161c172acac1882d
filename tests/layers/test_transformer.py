import pytest
import torch

from blocks.errors import WidthError
from blocks.layers.transformer import TransformerEncoder
from blocks.values import SEQUENCE, VECTOR, Sequence, Spec


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "none"])
@pytest.mark.parametrize("pre_ln", [True, False])
def test_padding_invariance(positions, pre_ln, tools):
    block = TransformerEncoder([Spec(SEQUENCE, 8)], layers=2, heads=2, ffn=16, positions=positions,
                               max_length=16, pre_ln=pre_ln)
    assert block.output_spec == Spec(SEQUENCE, 8)
    tools.assert_padding_invariant(block, [(torch.randn(n, 8),) for n in (5, 1, 3)])


def test_projection_and_gradient(tools):
    block = TransformerEncoder([Spec(SEQUENCE, 5)], layers=1, heads=2, width=6, max_length=8)
    assert block.output_spec == Spec(SEQUENCE, 6)
    assert block.projection is not None
    sequence = tools.random_sequence([4, 2], 5, requires_grad=True)
    out = block(sequence)
    assert out.values.shape == (2, 5, 6)
    assert torch.all(out.values[1, 2:] == 0)
    out.values.sum().backward()
    assert sequence.values.grad[0].abs().sum() > 0
    assert torch.all(sequence.values.grad[1, 2:] == 0)
    assert block.position_embedding.weight.grad is not None


def test_max_length(tools):
    block = TransformerEncoder([Spec(SEQUENCE, 4)], layers=1, heads=1, max_length=4).eval()
    with pytest.raises(ValueError, match="max_length"):
        block(tools.random_sequence([5], 4))
    # only padding beyond max_length: encoded like the unpadded batch
    values = torch.randn(1, 6, 4)
    mask = torch.tensor([[True, True, True, False, False, False]])
    out = block(Sequence(values, mask))
    alone = block(Sequence(values[:, :3], mask[:, :3]))
    assert out.values.shape == (1, 6, 4)
    assert torch.allclose(out.values[:, :3], alone.values, atol=1e-5)
    assert torch.all(out.values[:, 3:] == 0)


def test_empty_sequence_is_finite():
    block = TransformerEncoder([Spec(SEQUENCE, 4)], layers=1, heads=2).eval()
    mask = torch.tensor([[True, False], [False, False]])
    out = block(Sequence(torch.randn(2, 2, 4), mask))
    assert torch.isfinite(out.values).all() and torch.all(out.values[1] == 0)


def test_width_errors():
    with pytest.raises(WidthError, match="heads"):
        TransformerEncoder([Spec(SEQUENCE, 6)], heads=4)
    with pytest.raises(WidthError, match="heads"):
        TransformerEncoder([Spec(SEQUENCE, 8)], heads=4, width=10)
    with pytest.raises(WidthError):
        TransformerEncoder([Spec(VECTOR, 8)])


def test_training_path_matches_inference_path(tools):
    block = TransformerEncoder([Spec(SEQUENCE, 8)], layers=2, heads=2, dropout=0.0)
    sequence = tools.random_sequence([4, 2], 8)
    with_grad = block.train()(sequence).values  # the regular path, with autograd
    with torch.no_grad():
        fast = block.eval()(sequence).values  # may take PyTorch's fused inference path
    assert torch.allclose(with_grad, fast, atol=1e-5)

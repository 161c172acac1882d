import pytest
import torch

from blocks.errors import WidthError
from blocks.layers.recurrent import BiGRU, BiLSTM
from blocks.values import SEQUENCE, VECTOR, Sequence, Spec

RNNS = [BiLSTM, BiGRU]


@pytest.mark.parametrize("cls", RNNS)
@pytest.mark.parametrize("bidirectional, width", [(True, 10), (False, 5)])
def test_spec_and_shape(cls, bidirectional, width, tools):
    block = cls([Spec(SEQUENCE, 4)], hidden=5, bidirectional=bidirectional)
    assert block.output_spec == Spec(SEQUENCE, width)
    out = block(tools.random_sequence([3, 1], 4))
    assert out.values.shape == (2, 4, width)
    assert torch.all(out.values[1, 1:] == 0)


@pytest.mark.parametrize("cls", RNNS)
def test_padding_invariance(cls, tools):
    block = cls([Spec(SEQUENCE, 4)], hidden=3, layers=2, dropout=0.3)
    examples = [(torch.randn(n, 4),) for n in (5, 1, 3)]
    tools.assert_padding_invariant(block, examples)


@pytest.mark.parametrize("cls", RNNS)
def test_gradient_and_empty_sequence(cls, tools):
    block = cls([Spec(SEQUENCE, 4)], hidden=3)
    values = torch.randn(2, 3, 4, requires_grad=True)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    out = block(Sequence(values, mask))
    assert torch.all(out.values[1] == 0)  # an empty sequence gives zeros
    out.values.sum().backward()
    assert values.grad[0, :2].abs().sum() > 0
    assert torch.all(values.grad[0, 2] == 0)
    assert all(p.grad is not None for p in block.parameters())


@pytest.mark.parametrize("cls", RNNS)
def test_width_errors(cls):
    with pytest.raises(WidthError):
        cls([Spec(VECTOR, 4)])
    with pytest.raises(WidthError):
        cls([Spec(SEQUENCE, 4), Spec(SEQUENCE, 4)])


def test_shared_on_two_inputs(tools):
    block = BiLSTM([Spec(SEQUENCE, 4)], hidden=3)
    a, b = tools.random_sequence([2, 3], 4), tools.random_sequence([4], 4)
    assert block(a).values.shape == (2, 4, 6)
    assert block(b).values.shape == (1, 5, 6)


@pytest.mark.parametrize("cls", RNNS)
@pytest.mark.parametrize("bidirectional, layers", [(True, 1), (True, 2), (False, 2)])
def test_padded_path_equals_packed_path(cls, bidirectional, layers):
    """The default padded path (reversed rows for the right-to-left direction) computes what
    torch's PackedSequence path does: outputs and every gradient, with an empty row in the batch."""
    torch.manual_seed(0)
    padded = cls([Spec(SEQUENCE, 4)], hidden=3, layers=layers, bidirectional=bidirectional)
    packed = cls([Spec(SEQUENCE, 4)], hidden=3, layers=layers, bidirectional=bidirectional, packed=True)
    packed.load_state_dict(padded.state_dict())
    lengths = torch.tensor([5, 2, 0, 4])
    mask = torch.arange(6)[None] < lengths[:, None]
    values = torch.randn(4, 6, 4)
    results = []
    for block in (padded, packed):
        inputs = values.clone().requires_grad_(True)
        out = block(Sequence(inputs, mask)).values
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out, inputs.grad, [p.grad for p in block.parameters()]))
    (out_a, grad_a, params_a), (out_b, grad_b, params_b) = results
    torch.testing.assert_close(out_a, out_b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad_a, grad_b, atol=1e-6, rtol=1e-5)
    for a, b in zip(params_a, params_b):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert torch.all(out_a[2] == 0) and torch.all(out_a[1, 2:] == 0)

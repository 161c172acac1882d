import pytest
import torch

from blocks.errors import DataError, WidthError
from blocks.layers.embedding import CharCNN, Embedding
from blocks.values import CHARS, SEQUENCE, TOKENS, Sequence, Spec


def tokens_spec(vocab):
    return Spec(TOKENS, vocab=vocab)


def test_embedding_spec_and_shape(vocab):
    block = Embedding([tokens_spec(vocab)], dim=8)
    assert block.output_spec == Spec(SEQUENCE, 8)
    ids = torch.tensor([[2, 3, 4], [5, 0, 0]])
    out = block(Sequence(ids, ids != 0))
    assert out.values.shape == (2, 3, 8)
    assert torch.equal(out.mask, ids != 0)
    assert torch.all(block.embedding.weight[0] == 0)


def test_embedding_padding_invariance(vocab, tools):
    block = Embedding([tokens_spec(vocab)], dim=6)
    examples = [(torch.tensor([2, 3, 4, 5]),), (torch.tensor([6]),), (torch.tensor([7, 1]),)]
    tools.assert_padding_invariant(block, examples)


def test_embedding_gradient_and_frozen(vocab):
    block = Embedding([tokens_spec(vocab)], dim=4)
    ids = torch.tensor([[2, 3, 0]])
    block(Sequence(ids, ids != 0)).values.sum().backward()
    grad = block.embedding.weight.grad
    assert grad[2].abs().sum() > 0 and torch.all(grad[0] == 0)
    frozen = Embedding([tokens_spec(vocab)], dim=4, trainable=False)
    assert not frozen.embedding.weight.requires_grad


def test_sparse_embedding_gradient_holds_only_the_batch_rows(vocab):
    block = Embedding([tokens_spec(vocab)], dim=4, sparse=True)
    dense = Embedding([tokens_spec(vocab)], dim=4)
    dense.load_state_dict(block.state_dict())
    ids = torch.tensor([[2, 3, 3, 0]])
    for b in (block, dense):
        b(Sequence(ids, ids != 0)).values.pow(2).sum().backward()
    grad = block.embedding.weight.grad
    assert grad.is_sparse
    assert set(grad.coalesce().indices()[0].tolist()) <= {2, 3}  # the padding row gets no gradient
    assert torch.equal(grad.to_dense(), dense.embedding.weight.grad)
    with pytest.raises(WidthError, match="'sparse' gradients need a trainable embedding"):
        Embedding([tokens_spec(vocab)], dim=4, sparse=True, trainable=False)


def test_embedding_width_errors(vocab):
    with pytest.raises(WidthError):
        Embedding([Spec(SEQUENCE, 8)])
    with pytest.raises(WidthError):
        Embedding([tokens_spec(vocab), tokens_spec(vocab)])
    with pytest.raises(WidthError):
        Embedding([Spec(TOKENS)])  # no vocabulary


GLOVE = """the 0.1 0.2 0.3
cat 1 2 3
apple 4 5 6
Apple 7 8 9
New York 0.5 0.5 0.5
zebra 9 9 9
"""


def test_load_pretrained_glove(vocab, tmp_path):
    (tmp_path / "glove.txt").write_text(GLOVE, encoding="utf-8")
    block = Embedding([tokens_spec(vocab)], dim=3, pretrained="glove.txt")
    report = block.load_pretrained(tmp_path)
    # the, cat, Apple, New York of 10 tokens (with <pad> and <unk>)
    assert report == "Embedding: 4 of 10 vocabulary tokens found in glove.txt (40.0%)"
    weight = block.embedding.weight
    assert torch.allclose(weight[vocab.index("the")], torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(weight[vocab.index("cat")], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.allclose(weight[vocab.index("Apple")], torch.tensor([7.0, 8.0, 9.0]))  # exact wins
    assert torch.allclose(weight[vocab.index("New York")], torch.tensor([0.5, 0.5, 0.5]))
    assert torch.all(weight[0] == 0)


def test_load_pretrained_lowercase_and_header(tools, tmp_path):
    vocab = tools.TinyVocab(["Paris", "berlin"])
    path = tmp_path / "vectors.txt"
    path.write_text("2 2\nparis 1 2\nberlin 3 4\n", encoding="utf-8")
    block = Embedding([tokens_spec(vocab)], dim=2, pretrained=str(path))
    report = block.load_pretrained(tmp_path / "elsewhere")  # absolute path ignores base_dir
    assert "2 of 4 vocabulary tokens" in report and "(50.0%)" in report
    assert torch.allclose(block.embedding.weight[2], torch.tensor([1.0, 2.0]))
    assert torch.allclose(block.embedding.weight[3], torch.tensor([3.0, 4.0]))


def test_load_pretrained_errors(vocab, tmp_path):
    block = Embedding([tokens_spec(vocab)], dim=3, pretrained="glove.txt")
    with pytest.raises(DataError, match="not found"):
        block.load_pretrained(tmp_path)

    (tmp_path / "glove.txt").write_text("the 1 2 3\ncat 1 2\n", encoding="utf-8")
    with pytest.raises(DataError) as error:
        block.load_pretrained(tmp_path)
    assert error.value.line == 2 and "line 2" in str(error.value)

    (tmp_path / "glove.txt").write_text("the 1 2 3\ncat 1 x 3\n", encoding="utf-8")
    with pytest.raises(DataError) as error:
        block.load_pretrained(tmp_path)
    assert error.value.line == 2

    (tmp_path / "glove.txt").write_text("the 1 2 3 4\n", encoding="utf-8")
    with pytest.raises(DataError, match="4-dimensional") as error:
        block.load_pretrained(tmp_path)
    assert error.value.line == 1

    (tmp_path / "glove.txt").write_text("5 50\nthe 1 2 3\n", encoding="utf-8")
    with pytest.raises(DataError, match="50-dimensional"):
        block.load_pretrained(tmp_path)

    assert Embedding([tokens_spec(vocab)], dim=3).load_pretrained(tmp_path) is None


def chars_spec(vocab):
    return Spec(CHARS, vocab=vocab)


def test_charcnn_spec_shape_and_gradient(vocab):
    block = CharCNN([chars_spec(vocab)], char_dim=4, filters=5, windows=[2, 3])
    assert block.output_spec == Spec(SEQUENCE, 10)
    ids = torch.tensor([[[2, 3, 4], [5, 0, 0]], [[6, 0, 0], [0, 0, 0]]])
    mask = torch.tensor([[True, True], [True, False]])
    out = block(Sequence(ids, mask))
    assert out.values.shape == (2, 2, 10)
    assert torch.all(out.values[1, 1] == 0)
    out.values.sum().backward()
    assert block.embedding.weight.grad[2].abs().sum() > 0
    assert all(conv.weight.grad.abs().sum() > 0 for conv in block.convolutions)


def test_charcnn_padding_invariance(vocab, tools):
    block = CharCNN([chars_spec(vocab)], char_dim=4, filters=3, windows=[2, 3, 4])
    examples = [
        (torch.tensor([[2, 3, 4, 5, 6], [7, 0, 0, 0, 0]]),),
        (torch.tensor([[8], [9], [2]]),),  # words shorter than the windows
        (torch.tensor([[3, 3]]),),
    ]
    tools.assert_padding_invariant(block, examples)


def test_charcnn_equals_a_masked_conv1d(vocab):
    """The block's matrix-product convolution gives what ``nn.Conv1d`` with the same weights gives,
    max-pooled over the positions touching a real character, and the same gradients."""
    from blocks.layers.masking import masked_max

    torch.manual_seed(0)
    block = CharCNN([chars_spec(vocab)], char_dim=6, filters=5, windows=[1, 2, 3, 5])
    ids = torch.randint(1, len(vocab), (3, 4, 7))
    ids[0, 1, 3:] = 0
    ids[1, 2, 1:] = 0
    ids[2, 3] = 0
    mask = torch.tensor([[True] * 4, [True, True, True, False], [True, True, True, False]])
    out = block(Sequence(ids, mask)).values

    flat = ids.reshape(12, 7)
    char_mask = (flat != 0) & mask.reshape(-1, 1)
    embedded = block.embedding(flat).masked_fill(~char_mask.unsqueeze(-1), 0.0).transpose(1, 2)
    expected = []
    for window, convolution in zip(block.windows, block.convolutions):
        features = convolution(embedded).transpose(1, 2)
        ones = torch.ones(1, 1, window)
        valid = torch.nn.functional.conv1d(char_mask.unsqueeze(1).float(), ones, padding=window - 1).squeeze(1) > 0
        expected.append(masked_max(features, valid, dim=1))
    expected = torch.cat(expected, -1).reshape(3, 4, -1).masked_fill(~mask.unsqueeze(-1), 0.0)
    assert torch.allclose(out, expected, atol=1e-5)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), [c.weight for c in block.convolutions])
    reference = torch.autograd.grad((expected * weights).sum(), [c.weight for c in block.convolutions])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, reference))


def test_charcnn_width_errors(vocab):
    with pytest.raises(WidthError):
        CharCNN([tokens_spec(vocab)])
    with pytest.raises(WidthError):
        CharCNN([chars_spec(vocab)], windows=[])

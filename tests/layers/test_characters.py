"""CharBiLSTM and Casing: shapes, padding invariance, the states they read, casing classes, tracing."""
from __future__ import annotations

import warnings

import pytest
import torch

from blocks.data.vocabulary import Vocabulary
from blocks.errors import WidthError
from blocks.layers.characters import CASING_CLASSES, Casing, CharBiLSTM
from blocks.values import CHARS, SEQUENCE, TOKENS, Sequence, Spec

LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,-'%:/!?éÉ東"


@pytest.fixture
def char_vocab() -> Vocabulary:
    return Vocabulary(list(LETTERS))


def encode(vocab: Vocabulary, sentences: list[list[str]]) -> Sequence:
    """Character ids ``[batch, words, chars]`` (0 = padding) with garbage in padding words."""
    length = max(len(s) for s in sentences)
    width = max(len(w) for s in sentences for w in s)
    ids = torch.randint(2, len(vocab), (len(sentences), length, width))  # garbage where the mask is off
    mask = torch.zeros(len(sentences), length, dtype=torch.bool)
    for i, sentence in enumerate(sentences):
        for j, word in enumerate(sentence):
            ids[i, j] = 0
            ids[i, j, :len(word)] = torch.tensor(vocab.encode(list(word)))
            mask[i, j] = True
    return Sequence(ids, mask)


def reference_bilstm(block: CharBiLSTM, vocab: Vocabulary, word: str) -> torch.Tensor:
    """The two final states of one word, read one character at a time with LSTM cells."""
    embedded = block.embedding(torch.tensor(vocab.encode(list(word))))
    states = []
    for lstm, steps in ((block.forward_lstm, embedded), (block.backward_lstm, embedded.flip(0))):
        cell = torch.nn.LSTMCell(lstm.input_size, lstm.hidden_size)
        cell.load_state_dict({"weight_ih": lstm.weight_ih_l0, "weight_hh": lstm.weight_hh_l0,
                              "bias_ih": lstm.bias_ih_l0, "bias_hh": lstm.bias_hh_l0})
        h = c = torch.zeros(1, lstm.hidden_size)
        for step in steps:
            h, c = cell(step.unsqueeze(0), (h, c))
        states.append(h[0])
    return torch.cat(states)


def test_char_bilstm_final_states_of_real_characters(char_vocab):
    block = CharBiLSTM([Spec(CHARS, vocab=char_vocab)], char_dim=5, hidden=4).eval()
    assert block.output_spec == Spec(SEQUENCE, 8)
    sentences = [["Peter", "Blackburn", "."], ["EU"], ["a", "1996-08-22"]]
    chars = encode(char_vocab, sentences)
    with torch.no_grad():
        out = block(chars)
        assert out.values.shape == (3, 3, 8) and torch.equal(out.mask, chars.mask)
        for i, sentence in enumerate(sentences):
            for j, word in enumerate(sentence):
                assert torch.allclose(out.values[i, j], reference_bilstm(block, char_vocab, word), atol=1e-5), word
            assert torch.all(out.values[i, len(sentence):] == 0)


def test_char_bilstm_padding_invariance(vocab, tools):
    block = CharBiLSTM([Spec(CHARS, vocab=vocab)], char_dim=4, hidden=3)
    examples = [
        (torch.tensor([[2, 3, 4, 5, 6], [7, 0, 0, 0, 0]]),),
        (torch.tensor([[8], [9], [2]]),),
        (torch.tensor([[3, 3]]),),
    ]
    tools.assert_padding_invariant(block, examples)


def test_char_bilstm_gradients_empty_words_and_all_padding(char_vocab):
    block = CharBiLSTM([Spec(CHARS, vocab=char_vocab)], char_dim=4, hidden=3)
    chars = encode(char_vocab, [["ab", "c"], ["d"]])
    block(chars).values.sum().backward()
    assert block.embedding.weight.grad[char_vocab.index("a")].abs().sum() > 0
    assert torch.all(block.embedding.weight.grad[0] == 0)
    assert block.backward_lstm.weight_ih_l0.grad.abs().sum() > 0
    ids = torch.zeros(2, 3, 4, dtype=torch.long)
    empty = block(Sequence(ids, torch.zeros(2, 3, dtype=torch.bool)))  # no real word at all
    assert empty.values.shape == (2, 3, 6) and torch.all(empty.values == 0)
    no_chars = block(Sequence(ids, torch.ones(2, 3, dtype=torch.bool)))  # real words without characters
    assert torch.all(no_chars.values == 0)


CASES = {"the": "lower", "don't": "lower", "EU": "upper", "U.S.": "upper", "A": "upper", "Peter": "title",
         "Émile": "title", "iPhone": "mixed", "McDonald": "mixed", "1996-08-22": "numeric", "3,000": "numeric",
         "50%": "numeric", "7": "numeric", "2nd": "contains_digit", "A4": "contains_digit", ".": "punctuation",
         "--": "punctuation", "?!": "punctuation", "東": "other", "ü": "other"}  # ü is not in the vocabulary


def test_casing_classes(char_vocab):
    block = Casing([Spec(CHARS, vocab=char_vocab)], dim=3)
    words = list(CASES)
    chars = encode(char_vocab, [words, words[:2]])
    classes = block.classes(chars)
    assert [CASING_CLASSES[k] for k in classes[0].tolist()] == list(CASES.values())
    assert [CASING_CLASSES[k] for k in classes[1].tolist()] == ["lower", "lower"] + ["padding"] * (len(words) - 2)
    out = block(chars)
    assert out.values.shape == (2, len(words), 3) and block.output_spec == Spec(SEQUENCE, 3)
    assert torch.all(out.values[1, 2:] == 0)
    assert torch.allclose(out.values[0, 0], block.embedding.weight[CASING_CLASSES.index("lower")])
    out.values.sum().backward()
    assert block.embedding.weight.grad[CASING_CLASSES.index("title")].abs().sum() > 0
    assert len({k for k in classes[0].tolist()}) == len(CASING_CLASSES) - 1  # every class but padding seen


def test_casing_padding_invariance(vocab, tools):
    block = Casing([Spec(CHARS, vocab=vocab)], dim=4)
    examples = [(torch.tensor([[2, 3, 0], [7, 8, 9]]),), (torch.tensor([[4]]),)]
    tools.assert_padding_invariant(block, examples)


def test_width_errors(char_vocab):
    for block in (CharBiLSTM, Casing):
        with pytest.raises(WidthError):
            block([Spec(TOKENS, vocab=char_vocab)])
        with pytest.raises(WidthError, match="has no vocabulary"):
            block([Spec(CHARS)])
    with pytest.raises(WidthError):
        Casing([Spec(CHARS, vocab=char_vocab)], dim=0)


class _Wrapper(torch.nn.Module):
    """Plain tensors in and out, as an exported model's wrapper feeds a block."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, ids, mask):
        return self.block(Sequence(ids, mask)).values


@pytest.mark.parametrize("make", [lambda v: CharBiLSTM([Spec(CHARS, vocab=v)], char_dim=4, hidden=3),
                                  lambda v: Casing([Spec(CHARS, vocab=v)], dim=4)], ids=["CharBiLSTM", "Casing"])
def test_trace_generalises_to_other_shapes(char_vocab, make):
    model = _Wrapper(make(char_vocab)).eval()
    example = encode(char_vocab, [["Peter", "ran"], ["EU"]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trace is deprecated in torch >= 2.9, still works
        traced = torch.jit.trace(model, tuple(example), check_trace=False)
    for sentences in ([["a"]], [["Blackburn", "1996-08-22", ".", "x"], ["U.S.", "iPhone"], ["b"]]):
        chars = encode(char_vocab, sentences)
        with torch.no_grad():
            assert torch.allclose(traced(*chars), model(*chars), atol=1e-6)


def test_blocks_are_registered():
    from blocks.registry import BLOCKS

    assert BLOCKS.get("CharBiLSTM") is CharBiLSTM and BLOCKS.get("Casing") is Casing


@pytest.mark.parametrize("make", [lambda v: CharBiLSTM([Spec(CHARS, vocab=v)], char_dim=4, hidden=3),
                                  lambda v: Casing([Spec(CHARS, vocab=v)], dim=4)], ids=["CharBiLSTM", "Casing"])
def test_onnx_export_generalises_to_other_shapes(char_vocab, make, tmp_path):
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    model = _Wrapper(make(char_vocab)).eval()
    example = encode(char_vocab, [["Peter", "ran"], ["EU"]])
    path = tmp_path / "chars.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(example), str(path), input_names=["ids", "mask"], output_names=["out"],
                          opset_version=17, dynamo=False,
                          dynamic_axes={"ids": {0: "batch", 1: "words", 2: "chars"}, "mask": {0: "batch", 1: "words"}})
    session = onnxruntime.InferenceSession(str(path))
    for sentences in ([["a"]], [["Blackburn", "1996-08-22", ".", "x"], ["U.S.", "iPhone"], ["b"]]):
        ids, mask = encode(char_vocab, sentences)
        (out,) = session.run(None, {"ids": ids.numpy(), "mask": mask.numpy()})
        with torch.no_grad():
            assert torch.allclose(torch.from_numpy(out), model(ids, mask), atol=1e-5)

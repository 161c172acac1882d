"""Word features computed from a word's characters: a character BiLSTM and the word's casing.

Both read a chars input (``[batch, words, chars]`` of character ids, 0 = padding, characters
first in each word) and give one vector per word, so they work for words the word vocabulary
has never seen. The character CNN (``CharCNN``) is in :mod:`blocks.layers.embedding`. Both trace
(``torch.jit.trace``) and export to ONNX (TorchScript-based exporter) with the batch, word and
character counts dynamic (``tests/layers/test_characters.py``).
"""
from __future__ import annotations

import unicodedata

import torch
from torch import Tensor, nn

from blocks.block import Block, expect_inputs
from blocks.errors import WidthError
from blocks.layers.masking import zero_padding
from blocks.layers.recurrent import _reversal_index, _reverse_rows
from blocks.registry import register_block
from blocks.values import CHARS, SEQUENCE, Sequence, Spec


def _vocabulary(spec: Spec):
    if spec.vocab is None:
        raise WidthError(f"the {spec.kind} input has no vocabulary")
    return spec.vocab


@register_block("CharBiLSTM")
class CharBiLSTM(Block):
    """Character BiLSTM word features (as in Lample et al. 2016): each word's characters read left
    to right and right to left; the word's vector is the two final states, concatenated.

    Input: chars ``[batch, words, chars]`` of character ids (0 = padding), masked over words.
    Output: sequence ``[batch, words, 2 * hidden]``; padding words give zeros. Only a word's real
    characters are read (the right-to-left pass starts at its last real character), so the result
    does not depend on how much padding the batch carries; only real words are computed.

    Args:
        char_dim: size of each character embedding.
        hidden: hidden size of each direction.
    """

    def __init__(self, inputs: list[Spec], char_dim: int = 25, hidden: int = 25):
        super().__init__()
        expect_inputs(inputs, 1, (CHARS,))
        vocab = _vocabulary(inputs[0])
        if char_dim < 1 or hidden < 1:
            raise WidthError(f"char_dim and hidden must be at least 1, got {char_dim} and {hidden}")
        self.pad_index = getattr(vocab, "pad_index", 0)
        self.hidden = hidden
        self.embedding = nn.Embedding(len(vocab), char_dim, padding_idx=self.pad_index)
        self.forward_lstm = nn.LSTM(char_dim, hidden, batch_first=True)
        self.backward_lstm = nn.LSTM(char_dim, hidden, batch_first=True)
        self.output_spec = Spec(SEQUENCE, 2 * hidden)

    def forward(self, chars: Sequence) -> Sequence:
        ids, word_mask = chars.values, chars.mask
        batch, length, width = ids.shape
        flat = ids.reshape(batch * length, width)
        real = word_mask.reshape(-1).nonzero().squeeze(1)  # the real words' rows
        words = flat.index_select(0, real)  # [n, chars]
        char_mask = words != self.pad_index
        lengths = char_mask.sum(dim=1)
        embedded = zero_padding(self.embedding(words), char_mask)
        last = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, self.hidden)
        forward_states, _ = self.forward_lstm(embedded)  # padding comes after the real characters
        backward_states, _ = self.backward_lstm(_reverse_rows(embedded, _reversal_index(char_mask)))
        features = torch.cat([forward_states.gather(1, last), backward_states.gather(1, last)], dim=2).squeeze(1)
        features = features * (lengths > 0).unsqueeze(1).to(features.dtype)  # a word without characters: 0
        values = features.new_zeros(batch * length, 2 * self.hidden).index_copy(0, real, features)
        return Sequence(values.reshape(batch, length, 2 * self.hidden), word_mask)


#: The casing classes of :class:`Casing`, in index order.
CASING_CLASSES = ("padding", "lower", "upper", "title", "mixed", "numeric", "contains_digit", "punctuation",
                  "other")
(_PADDING, _LOWER_WORD, _UPPER_WORD, _TITLE, _MIXED, _NUMERIC, _CONTAINS_DIGIT, _PUNCTUATION_WORD,
 _OTHER_WORD) = range(len(CASING_CLASSES))

# classes of single characters
_CHAR_CLASSES = ("padding", "lower", "upper", "digit", "number_sign", "punctuation", "other")
_PAD_CHAR, _LOWER, _UPPER, _DIGIT, _NUMBER_SIGN, _PUNCTUATION, _OTHER = range(len(_CHAR_CLASSES))
#: characters that may appear inside a number (1,000.5  1996-08-22  10:30  50%  +3  1/2)
NUMBER_SIGNS = frozenset(".,-+/:%")


def character_class(token: str) -> int:
    """The class of one entry of a character vocabulary (index into ``_CHAR_CLASSES``)."""
    if len(token) != 1:
        return _OTHER  # <unk> and any multi-character entry
    if token.isdigit():
        return _DIGIT
    if token in NUMBER_SIGNS:
        return _NUMBER_SIGN
    if token.isupper():
        return _UPPER
    if token.islower():
        return _LOWER
    if unicodedata.category(token)[0] in "PS":
        return _PUNCTUATION
    return _OTHER


@register_block("Casing")
class Casing(Block):
    """A learned embedding of each word's casing class, from its characters.

    Classes: padding, lower (``the``, ``don't``), upper (``EU``, ``U.S.``, ``A``), title
    (``Peter``), mixed (``iPhone``, ``McDonald``), numeric (``1996-08-22``, ``3,000``, ``50%``),
    contains_digit (``2nd``, ``A4``), punctuation (``.``, ``--``), other (letters without case,
    ...). The class of every character-vocabulary entry is computed once at construction, so a
    word never seen in training gets its class too. Read the chars input without lowercasing.

    Input: chars ``[batch, words, chars]`` of character ids (0 = padding), masked over words.
    Output: sequence ``[batch, words, dim]``; padding words give zeros.

    Args:
        dim: size of each casing class's vector.
    """

    def __init__(self, inputs: list[Spec], dim: int = 8):
        super().__init__()
        expect_inputs(inputs, 1, (CHARS,))
        vocab = _vocabulary(inputs[0])
        if dim < 1:
            raise WidthError(f"dim must be at least 1, got {dim}")
        pad_index = getattr(vocab, "pad_index", 0)
        classes = [_PAD_CHAR if index == pad_index else character_class(token)
                   for index, token in enumerate(vocab.tokens)]
        self.register_buffer("char_classes", torch.tensor(classes, dtype=torch.long), persistent=False)
        self.embedding = nn.Embedding(len(CASING_CLASSES), dim, padding_idx=_PADDING)
        self.output_spec = Spec(SEQUENCE, dim)

    def classes(self, chars: Sequence) -> Tensor:
        """The casing class of every word ``[batch, words]`` (indices into ``CASING_CLASSES``)."""
        ids, word_mask = chars.values, chars.mask
        char_classes = self.char_classes[ids]  # [B, L, C]

        def count(kind: int) -> Tensor:
            return (char_classes == kind).sum(dim=2)

        lower, upper, digit = count(_LOWER), count(_UPPER), count(_DIGIT)
        signs, punctuation = count(_NUMBER_SIGN), count(_PUNCTUATION)
        size = (char_classes != _PAD_CHAR).sum(dim=2)
        first_upper = char_classes[:, :, 0] == _UPPER
        result = torch.full_like(size, _OTHER_WORD)
        # assigned from the least to the most specific rule, each overriding the ones before
        result = torch.where((upper > 0) & (lower > 0), torch.full_like(size, _MIXED), result)
        result = torch.where((upper == 1) & (lower > 0) & first_upper, torch.full_like(size, _TITLE), result)
        result = torch.where((lower > 0) & (upper == 0), torch.full_like(size, _LOWER_WORD), result)
        result = torch.where((upper > 0) & (lower == 0), torch.full_like(size, _UPPER_WORD), result)
        result = torch.where((punctuation + signs == size), torch.full_like(size, _PUNCTUATION_WORD), result)
        result = torch.where(digit > 0, torch.full_like(size, _CONTAINS_DIGIT), result)
        result = torch.where((digit > 0) & (digit + signs == size), torch.full_like(size, _NUMERIC), result)
        return torch.where(word_mask & (size > 0), result, torch.full_like(size, _PADDING))

    def forward(self, chars: Sequence) -> Sequence:
        return Sequence(zero_padding(self.embedding(self.classes(chars)), chars.mask), chars.mask)

"""Shared fixtures for the layer block tests: a tiny vocabulary, batching, and the padding check."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import blocks.layers  # noqa: F401  (registers the blocks)
from blocks.values import Sequence


class TinyVocab:
    """A stand-in for blocks.data.vocabulary.Vocabulary: tokens, pad 0, unk 1."""

    pad_index = 0
    unk_index = 1

    def __init__(self, tokens):
        self.tokens = ["<pad>", "<unk>"] + list(tokens)

    def __len__(self):
        return len(self.tokens)

    def index(self, token):
        return self.tokens.index(token) if token in self.tokens else self.unk_index


def collate(examples: list[torch.Tensor], extra: int = 0) -> Sequence | torch.Tensor:
    """Batch unbatched examples, padding with garbage so that only the mask can hide it.

    Float ``[L, D]`` -> sequence, int ``[L]`` -> token ids, int ``[L, C]`` -> char ids (chars
    padded with 0 inside real words), float ``[D]`` -> vector. ``extra`` pads every example,
    the longest too, by that many more positions.
    """
    first = examples[0]
    if first.is_floating_point() and first.dim() == 1:
        return torch.stack(examples)
    lengths = [e.shape[0] for e in examples]
    length = max(lengths) + extra
    batch = len(examples)
    if first.is_floating_point():
        values = torch.randn(batch, length, first.shape[1]) * 5  # noise at padded positions
    elif first.dim() == 1:
        values = torch.randint(1, 4, (batch, length))
    else:
        chars = max(e.shape[1] for e in examples) + extra
        values = torch.randint(1, 4, (batch, length, chars))  # garbage in padding words
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for i, example in enumerate(examples):
        n = example.shape[0]
        if example.dim() == 2 and not example.is_floating_point():
            values[i, :n] = 0
            values[i, :n, :example.shape[1]] = example
        else:
            values[i, :n] = example
        mask[i, :n] = True
    return Sequence(values, mask)


def assert_padding_invariant(block, examples: list[tuple[torch.Tensor, ...]], extra: int = 3):
    """Each example's output alone equals its output in a padded batch (and padding outputs 0)."""
    block.eval()
    with torch.no_grad():
        inputs = [collate(list(column), extra) for column in zip(*examples)]
        batched = block(*inputs)
        for i, example in enumerate(examples):
            alone = block(*[collate([value]) for value in example])
            if isinstance(alone, Sequence):
                n = alone.values.shape[1]
                assert torch.equal(batched.mask[i, :n], alone.mask[0])
                assert torch.allclose(batched.values[i, :n], alone.values[0], atol=1e-5), \
                    (batched.values[i, :n] - alone.values[0]).abs().max()
                assert torch.all(batched.values[i, n:] == 0)
                assert not batched.mask[i, n:].any()
            else:
                assert torch.allclose(batched[i], alone[0], atol=1e-5), (batched[i] - alone[0]).abs().max()


def random_sequence(lengths: list[int], width: int, requires_grad: bool = False) -> Sequence:
    """A padded batch of random features with the given lengths (noise in the padding)."""
    batch = collate([torch.randn(n, width) for n in lengths], extra=1)
    return Sequence(batch.values.requires_grad_(requires_grad), batch.mask)


@pytest.fixture
def vocab():
    return TinyVocab(["the", "cat", "sat", "on", "mat", "Apple", "New York", "dog"])


@pytest.fixture
def tools():
    """The helpers above, for the tests (conftest modules are not imported by name)."""
    return SimpleNamespace(collate=collate, assert_padding_invariant=assert_padding_invariant,
                           random_sequence=random_sequence, TinyVocab=TinyVocab)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

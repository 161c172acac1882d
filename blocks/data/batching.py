"""Batches of example indexes, and padding of variable-length id sequences.

Training batches come from :func:`bucket_batches`: shuffled, but with examples of similar length
grouped so that little padding is computed. Evaluation batches come from
:func:`sorted_batches`: longest first, no randomness. Both return lists of 1-D ``long`` tensors of
example indexes; every index appears in exactly one batch.

:func:`pad_ids` and :func:`pad_chars` turn a batch of sequences into the padded tensors and the
``[batch, length]`` boolean masks (True = real position) that :class:`blocks.values.Sequence`
carries. The padded length is at least 1 even when every sequence in the batch is empty, so
layers never meet a zero-length time axis; an empty sequence is a row of padding whose mask is
all False (poolings over the mask must cope with that, e.g. by clamping the count to 1).
"""
from __future__ import annotations

from typing import Sequence as SequenceType

import torch
from torch.nn.utils.rnn import pad_sequence


def _check(lengths: torch.Tensor, batch_size: int) -> torch.Tensor:
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be a 1-D tensor, got shape {tuple(lengths.shape)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return lengths


def bucket_batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator,
                   pool_size: int = 50) -> list[torch.Tensor]:
    """Shuffled batches of examples of similar length.

    The indexes ``0 .. len(lengths)-1`` are shuffled, cut into pools of ``batch_size *
    pool_size``, each pool is sorted by length (longest first, ties in shuffled order) and cut
    into batches, and the order of all batches is shuffled. Only the very last batch of the last
    pool can be smaller than ``batch_size``. The result depends only on ``lengths``, the sizes
    and the generator's state (which it advances).

    Args:
        lengths: ``[N]`` length of each example.
        batch_size: examples per batch.
        generator: source of randomness (seed it for reproducible epochs).
        pool_size: batches per pool; 1 = no length grouping, larger = less padding but
            less randomness.
    """
    lengths = _check(lengths, batch_size)
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
        raise ValueError(f"pool_size must be a positive integer, got {pool_size!r}")
    n = lengths.numel()
    if n == 0:
        return []
    permutation = torch.randperm(n, generator=generator)
    shuffled_lengths = lengths.cpu()[permutation]
    pool = torch.arange(n) // (batch_size * pool_size)
    # sort by (pool ascending, length descending): a stable sort on length, then on pool
    by_length = torch.sort(shuffled_lengths, descending=True, stable=True).indices
    by_pool = torch.sort(pool[by_length], stable=True).indices
    order = permutation[by_length[by_pool]]
    batches = list(torch.split(order, batch_size))
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def sorted_batches(lengths: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Batches for evaluation: longest examples first (ties by index), no shuffling."""
    lengths = _check(lengths, batch_size)
    if lengths.numel() == 0:
        return []
    order = torch.sort(lengths.cpu(), descending=True, stable=True).indices
    return list(torch.split(order, batch_size))


def _as_long(sequence) -> torch.Tensor:
    tensor = torch.as_tensor(sequence)
    if tensor.dtype != torch.long:
        tensor = tensor.long()
    return tensor


def pad_ids(sequences: SequenceType[torch.Tensor], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad 1-D id sequences to ``[B, L]`` (``L = max(1, longest)``) with a ``[B, L]`` bool mask.

    Args:
        sequences: B tensors (or lists) of ids, each ``[Li]``; ``Li`` may be 0.
        pad: the padding id.
    """
    if len(sequences) == 0:
        raise ValueError("pad_ids needs at least one sequence")
    tensors = [_as_long(s).reshape(-1) for s in sequences]
    lengths = torch.tensor([t.numel() for t in tensors])
    width = max(1, int(lengths.max()))
    ids = pad_sequence(tensors, batch_first=True, padding_value=pad)
    if ids.shape[1] < width:  # every sequence empty
        ids = torch.full((len(tensors), width), pad, dtype=torch.long)
    mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    return ids, mask


def pad_chars(words: SequenceType[torch.Tensor], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad per-sentence character-id matrices to ``[B, L, C]`` with a ``[B, L]`` word mask.

    Args:
        words: B tensors ``[Li, Ci]``: sentence i has ``Li`` words of ``Ci`` character ids each
            (already padded to a common width within the sentence). ``Li`` may be 0.
        pad: the padding id (for missing words and for characters beyond a word's end).

    ``L = max(1, max Li)`` and ``C = max(1, max Ci)``. The mask is True on real words; character
    padding inside a real word is left for the character encoder to mask by the pad id.
    """
    if len(words) == 0:
        raise ValueError("pad_chars needs at least one sentence")
    tensors = []
    for i, sentence in enumerate(words):
        tensor = _as_long(sentence)
        if tensor.dim() == 1 and tensor.numel() == 0:  # an empty sentence given as []
            tensor = tensor.reshape(0, 0)
        if tensor.dim() != 2:
            raise ValueError(f"sentence {i} must be a [words, chars] tensor, got shape {tuple(tensor.shape)}")
        tensors.append(tensor)
    lengths = torch.tensor([t.shape[0] for t in tensors])
    length = max(1, int(lengths.max()))
    chars = max(1, max(t.shape[1] for t in tensors))
    out = torch.full((len(tensors), length, chars), pad, dtype=torch.long)
    for i, tensor in enumerate(tensors):
        if tensor.numel():
            out[i, :tensor.shape[0], :tensor.shape[1]] = tensor
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    return out, mask

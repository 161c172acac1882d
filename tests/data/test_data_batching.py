"""Batching and padding."""
from __future__ import annotations

import pytest
import torch

from blocks.data.batching import bucket_batches, pad_chars, pad_ids, sorted_batches


def lengths_of(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 60, (n,), generator=torch.Generator().manual_seed(seed))


def seeded(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_bucket_batches_cover_every_index_once():
    lengths = lengths_of(1003)
    batches = bucket_batches(lengths, 32, seeded(), pool_size=5)
    together = torch.cat(batches)
    assert together.dtype == torch.long
    assert torch.equal(together.sort().values, torch.arange(1003))
    sizes = [len(b) for b in batches]
    assert sizes.count(32) == len(sizes) - 1 and sorted(sizes)[0] == 1003 % 32


def test_bucket_batches_deterministic_and_shuffled():
    lengths = lengths_of(500)
    first = bucket_batches(lengths, 16, seeded(7))
    again = bucket_batches(lengths, 16, seeded(7))
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and len(first) == len(again)
    other = bucket_batches(lengths, 16, seeded(8))
    assert any(not torch.equal(a, b) for a, b in zip(first, other))
    # the generator advances: the next epoch differs
    generator = seeded(7)
    epoch1, epoch2 = bucket_batches(lengths, 16, generator), bucket_batches(lengths, 16, generator)
    assert any(not torch.equal(a, b) for a, b in zip(epoch1, epoch2))


def test_bucket_batches_sorted_within_batches_and_less_padding():
    lengths = lengths_of(2000)
    batches = bucket_batches(lengths, 20, seeded(), pool_size=10)
    for batch in batches:
        values = lengths[batch]
        assert torch.all(values[:-1] >= values[1:])  # longest first
    padded = sum(int(lengths[b].max()) * len(b) for b in batches)
    random = sum(int(lengths[b].max()) * len(b) for b in torch.randperm(2000, generator=seeded()).split(20))
    assert padded < 0.8 * random


def test_bucket_batches_pool_of_one_batch_is_plain_shuffle():
    lengths = lengths_of(100)
    batches = bucket_batches(lengths, 10, seeded(), pool_size=1)
    assert torch.equal(torch.cat(batches).sort().values, torch.arange(100))


def test_bucket_batches_edge_cases():
    assert bucket_batches(torch.tensor([], dtype=torch.long), 8, seeded()) == []
    one = bucket_batches(torch.tensor([5]), 8, seeded())
    assert len(one) == 1 and one[0].tolist() == [0]
    with pytest.raises(ValueError):
        bucket_batches(lengths_of(10), 0, seeded())
    with pytest.raises(ValueError):
        bucket_batches(lengths_of(10), 4, seeded(), pool_size=0)
    with pytest.raises(ValueError):
        bucket_batches(torch.ones(2, 2), 4, seeded())


def test_sorted_batches():
    lengths = torch.tensor([3, 9, 1, 9, 4, 7, 2])
    batches = sorted_batches(lengths, 3)
    assert [b.tolist() for b in batches] == [[1, 3, 5], [4, 0, 6], [2]]
    assert sorted_batches(torch.tensor([], dtype=torch.long), 3) == []


def test_pad_ids():
    ids, mask = pad_ids([torch.tensor([5, 6, 7]), torch.tensor([8]), torch.tensor([], dtype=torch.long)])
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False], [False, False, False]]
    ids, _ = pad_ids([[1, 2], [3]], pad=9)
    assert ids.tolist() == [[1, 2], [3, 9]]


def test_pad_ids_all_empty_keeps_one_position():
    ids, mask = pad_ids([torch.tensor([], dtype=torch.long)] * 2)
    assert ids.shape == (2, 1) and not mask.any()
    with pytest.raises(ValueError):
        pad_ids([])


def test_pad_chars():
    first = torch.tensor([[1, 2, 3], [4, 0, 0]])  # 2 words, 3 chars
    second = torch.tensor([[5, 6, 7, 8, 9]])  # 1 word, 5 chars
    empty = torch.zeros(0, 0, dtype=torch.long)
    chars, mask = pad_chars([first, second, empty])
    assert chars.shape == (3, 2, 5) and chars.dtype == torch.long
    assert chars[0].tolist() == [[1, 2, 3, 0, 0], [4, 0, 0, 0, 0]]
    assert chars[1].tolist() == [[5, 6, 7, 8, 9], [0, 0, 0, 0, 0]]
    assert not chars[2].any()
    assert mask.tolist() == [[True, True], [True, False], [False, False]]
    chars, mask = pad_chars([empty, torch.tensor([])])
    assert chars.shape == (2, 1, 1) and not mask.any()
    with pytest.raises(ValueError):
        pad_chars([torch.tensor([1, 2])])

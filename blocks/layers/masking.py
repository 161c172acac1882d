"""Mask helpers shared by the layer blocks.

A mask is a boolean tensor that is True on real positions and False on padding. Every helper
here gives a padded position no influence on a real one, so an example's result does not
depend on how much padding its batch carries.
"""
from __future__ import annotations

import torch
from torch import Tensor


def zero_padding(values: Tensor, mask: Tensor) -> Tensor:
    """``values`` ``[B, L, ...]`` with the positions where ``mask`` ``[B, L]`` is False set to 0."""
    while mask.dim() < values.dim():
        mask = mask.unsqueeze(-1)
    return values.masked_fill(~mask, 0.0)


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax of ``scores`` over ``dim`` giving weight 0 where ``mask`` is False.

    ``mask`` broadcasts against ``scores``. A slice with no real position gets all-zero weights
    (not NaN).
    """
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=dim)
    return weights.masked_fill(~mask, 0.0)


def masked_max(values: Tensor, mask: Tensor, dim: int = 1) -> Tensor:
    """Maximum of ``values`` over ``dim`` among the positions where ``mask`` is True.

    ``mask`` has the shape of ``values`` up to ``dim`` (trailing dimensions broadcast). A slice
    with no real position gives 0.
    """
    while mask.dim() < values.dim():
        mask = mask.unsqueeze(-1)
    filled = values.masked_fill(~mask, torch.finfo(values.dtype).min)
    result = filled.max(dim=dim).values
    return result.masked_fill(~mask.any(dim=dim), 0.0)


def masked_mean(values: Tensor, mask: Tensor, dim: int = 1) -> Tensor:
    """Mean of ``values`` over ``dim`` among the positions where ``mask`` is True (0 if none)."""
    while mask.dim() < values.dim():
        mask = mask.unsqueeze(-1)
    total = values.masked_fill(~mask, 0.0).sum(dim=dim)
    count = mask.sum(dim=dim).clamp(min=1)
    return total / count


def attention_key_mask(mask: Tensor) -> Tensor:
    """A key mask for attention in which an all-padding sequence may attend everywhere.

    Attention over no key at all is NaN; letting an empty sequence attend to its padding keeps
    the numbers finite. Its outputs are padding and get zeroed by the caller.
    """
    empty = ~mask.any(dim=1, keepdim=True)
    return mask | empty

"""A linear-chain CRF: the ``CRF`` block and the functions over its :class:`~blocks.values.TagScores`.

The score of a tag path ``y_1 .. y_n`` of a sentence of ``n`` words is
``start[y_1] + sum_t emissions[t, y_t] + sum_t transitions[y_{t-1}, y_t] + end[y_n]``; the CRF's
distribution over paths is ``exp(score) / Z``. The functions here are vectorised over the batch
(one loop over positions, none over sentences or tags):

* :func:`crf_log_partition` ``log Z`` ``[batch]`` (forward algorithm);
* :func:`crf_log_likelihood` ``log p(tags)`` ``[batch]`` (the negative of the training loss);
* :func:`crf_viterbi` the best path ``[batch, length]`` (0 on padding) and its score ``[batch]``;
* :func:`crf_marginals` ``p(y_t = j)`` ``[batch, length, tags]`` by forward-backward (rows sum to
  1 on real positions, 0 on padding); the same numbers as the gradient of ``log Z`` with respect
  to the emissions, without needing autograd.

Masks: real positions form a prefix of each row. A sentence of length 0 is allowed anywhere in a
batch (unlike pytorch-crf, whose mask must be on at the first position): its log-partition,
log-likelihood and best score are 0, its path and marginals all 0. Padded emissions are ignored
even when they hold NaN or infinity. All sums are log-sum-exps in float32, whatever the input
dtype (under autocast too), so long sentences neither overflow nor lose precision.

:func:`crf_viterbi` compiles with ``torch.jit.script`` (its loops become TorchScript loops over
the run-time length), and a module calling the scripted function exports to ONNX through the
TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``; the loops become ONNX
``Loop`` operators) — see ``tests/layers/test_crf.py``.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor, nn

from blocks.block import Block, expect_inputs
from blocks.errors import WidthError
from blocks.registry import register_block
from blocks.values import SEQUENCE, TAG_SCORES, Sequence, Spec, TagScores

#: What a transition, start or end the tag scheme forbids adds to its score.
DISALLOWED = -10000.0


def _prepared(scores: TagScores) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """float32 emissions with padded positions zeroed, the bool mask, float32 transitions."""
    mask = scores.mask.to(torch.bool)
    emissions = scores.emissions.float().masked_fill(~mask.unsqueeze(-1), 0.0)
    return emissions, mask, scores.transitions.float(), scores.start.float(), scores.end.float()


def _forward(emissions: Tensor, mask: Tensor, transitions: Tensor, start: Tensor) -> List[Tensor]:
    """``alpha_t`` ``[batch, tags]`` for every position: log-sum of the scores of all paths that
    end in each tag at position t, emission included. A padded position repeats the last real
    one's alpha."""
    alpha = start.unsqueeze(0) + emissions[:, 0]
    alphas = [alpha]
    transitions = transitions.unsqueeze(0)
    for t in range(1, emissions.shape[1]):
        step = torch.logsumexp(alpha.unsqueeze(2) + transitions, dim=1) + emissions[:, t]
        alpha = torch.where(mask[:, t].unsqueeze(1), step, alpha)
        alphas.append(alpha)
    return alphas


def _log_partition(alpha: Tensor, mask: Tensor, end: Tensor) -> Tensor:
    log_z = torch.logsumexp(alpha + end.unsqueeze(0), dim=1)
    return torch.where(mask.any(dim=1), log_z, torch.zeros_like(log_z))


def crf_log_partition(scores: TagScores) -> Tensor:
    """``log Z`` ``[batch]``: the log of the summed exp-scores of all tag paths (0 for an empty
    sentence)."""
    emissions, mask, transitions, start, end = _prepared(scores)
    if emissions.shape[1] == 0:
        return emissions.new_zeros(emissions.shape[0])
    return _log_partition(_forward(emissions, mask, transitions, start)[-1], mask, end)


def crf_path_score(scores: TagScores, tags: Tensor) -> Tensor:
    """The score of the given tag paths ``[batch, length]`` (values on padding are ignored, may be
    any integer such as -100) ``[batch]``; 0 for an empty sentence."""
    emissions, mask, transitions, start, end = _prepared(scores)
    batch, length = mask.shape
    if length == 0:
        return emissions.new_zeros(batch)
    tags = tags.long().masked_fill(~mask, 0)
    real = mask.to(emissions.dtype)
    score = emissions.gather(2, tags.unsqueeze(2)).squeeze(2).sum(dim=1)  # padded emissions are 0
    score = score + (transitions[tags[:, :-1], tags[:, 1:]] * real[:, 1:]).sum(dim=1)
    lengths = mask.sum(dim=1)
    last = tags.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    ends = start[tags[:, 0]] + end[last]
    return score + torch.where(lengths > 0, ends, torch.zeros_like(ends))


def crf_log_likelihood(scores: TagScores, tags: Tensor) -> Tensor:
    """``log p(tags)`` ``[batch]`` under the CRF (0 for an empty sentence); the CRF's training
    loss is its negative. ``tags`` ``[batch, length]``; values on padding are ignored."""
    return crf_path_score(scores, tags) - crf_log_partition(scores)


def crf_viterbi(scores: TagScores) -> Tuple[Tensor, Tensor]:
    """The best tag path of each sentence ``[batch, length]`` (int64, 0 on padding) and its score
    ``[batch]`` (0 for an empty sentence). Compiles with ``torch.jit.script``."""
    return viterbi_decode(scores.emissions, scores.mask, scores.transitions, scores.start, scores.end)


def viterbi_decode(emissions: Tensor, mask: Tensor, transitions: Tensor, start: Tensor,
                   end: Tensor) -> Tuple[Tensor, Tensor]:
    """:func:`crf_viterbi` over the five tensors of a TagScores. For an exported model: a traced
    wrapper calls ``torch.jit.script(viterbi_decode)`` so that its loops follow the run-time
    length (a traced loop would be unrolled for the example's length)."""
    mask = mask.to(torch.bool)
    emissions = emissions.float().masked_fill(~mask.unsqueeze(-1), 0.0)
    transitions = transitions.float().unsqueeze(0)
    batch = emissions.shape[0]
    length = emissions.shape[1]
    count = emissions.shape[2]
    if length == 0:
        return (torch.zeros(batch, 0, dtype=torch.long, device=emissions.device),
                emissions.new_zeros(batch))
    score = start.float().unsqueeze(0) + emissions[:, 0]
    # a padded position points back to the same tag, so the path runs through it unchanged
    identity = torch.arange(count, device=emissions.device).unsqueeze(0).expand(batch, count)
    history: List[Tensor] = []
    for t in range(1, length):
        best, index = (score.unsqueeze(2) + transitions).max(dim=1)
        real = mask[:, t].unsqueeze(1)
        score = torch.where(real, best + emissions[:, t], score)
        history.append(torch.where(real, index, identity))
    best_score, last = (score + end.float().unsqueeze(0)).max(dim=1)
    path: List[Tensor] = [last]
    for t in range(length - 2, -1, -1):
        last = history[t].gather(1, last.unsqueeze(1)).squeeze(1)
        path.append(last)
    # stacked last position first, then flipped (the ONNX export ignores a list's reverse())
    tags = torch.stack(path, dim=1).flip(1).masked_fill(~mask, 0)
    best_score = torch.where(mask.any(dim=1), best_score, torch.zeros_like(best_score))
    return tags, best_score


def crf_marginals(scores: TagScores) -> Tensor:
    """Posterior marginals ``p(y_t = j)`` ``[batch, length, tags]`` by forward-backward: each real
    position's row sums to 1, padded positions are 0."""
    emissions, mask, transitions, start, end = _prepared(scores)
    batch, length, count = emissions.shape
    if length == 0:
        return emissions.new_zeros(batch, 0, count)
    alphas = _forward(emissions, mask, transitions, start)
    end_row = end.unsqueeze(0).expand(batch, count)
    beta = end_row  # beta_t: log-sum of the scores of the path's rest after position t
    betas = [beta]
    transitions = transitions.unsqueeze(0)
    for t in range(length - 2, -1, -1):
        step = torch.logsumexp(transitions + (emissions[:, t + 1] + beta).unsqueeze(1), dim=2)
        beta = torch.where(mask[:, t + 1].unsqueeze(1), step, end_row)  # t is the last real position
        betas.append(beta)
    betas.reverse()
    # alpha + beta is log Z + log p(y_t = j); normalising each position over the tags (instead of
    # subtracting log Z) is the same in exact arithmetic and keeps float32 rows summing to 1
    marginals = torch.softmax(torch.stack(alphas, dim=1) + torch.stack(betas, dim=1), dim=2)
    return marginals.masked_fill(~mask.unsqueeze(-1), 0.0)


@register_block("CRF")
class CRF(Block):
    """A linear-chain CRF over per-word tag scores.

    Input: sequence ``[batch, length, tags]`` of emission scores (a per-word ``Linear`` head with
    ``"out": "labels"``). Output: tag scores (the emissions, the mask and the learned transition,
    start and end scores), which the tagging task decodes by Viterbi and ``CRFLoss`` trains by the
    negative log-likelihood. Transitions the tag scheme forbids (``I-PER`` after ``O`` in IOB2)
    get -10000 added, so no decoded path uses them.
    """

    def __init__(self, inputs: list[Spec]):
        super().__init__()
        expect_inputs(inputs, 1, (SEQUENCE,))
        count = inputs[0].width
        if count is None or count < 1:
            raise WidthError(f"needs emission scores of width >= 1 (one per tag), got {count}")
        self.transitions = nn.Parameter(torch.empty(count, count).uniform_(-0.1, 0.1))
        self.start = nn.Parameter(torch.empty(count).uniform_(-0.1, 0.1))
        self.end = nn.Parameter(torch.empty(count).uniform_(-0.1, 0.1))
        # the tag scheme's constraints, saved with the weights (all allowed until constrain())
        self.register_buffer("start_allowed", torch.ones(count, dtype=torch.bool))
        self.register_buffer("allowed", torch.ones(count, count, dtype=torch.bool))
        self.register_buffer("end_allowed", torch.ones(count, dtype=torch.bool))
        self.output_spec = Spec(TAG_SCORES, count)

    def constrain(self, start_allowed: Tensor, allowed: Tensor, end_allowed: Tensor) -> None:
        """Forbid what the masks hold False for (see
        :func:`blocks.data.tag_schemes.allowed_transitions`): first tags, tag-to-tag transitions,
        last tags."""
        count = self.transitions.shape[0]
        for name, mask, shape in (("start_allowed", start_allowed, (count,)), ("allowed", allowed, (count, count)),
                                  ("end_allowed", end_allowed, (count,))):
            if tuple(mask.shape) != shape:
                raise WidthError(f"{name} must have shape {shape} for {count} tags, got {tuple(mask.shape)}")
            getattr(self, name).copy_(mask.to(torch.bool))

    def forward(self, emissions: Sequence) -> TagScores:
        penalty = torch.tensor(DISALLOWED, dtype=self.transitions.dtype, device=self.transitions.device)
        zero = torch.zeros((), dtype=self.transitions.dtype, device=self.transitions.device)
        transitions = self.transitions + torch.where(self.allowed, zero, penalty)
        start = self.start + torch.where(self.start_allowed, zero, penalty)
        end = self.end + torch.where(self.end_allowed, zero, penalty)
        return TagScores(emissions.values, emissions.mask, transitions, start, end)

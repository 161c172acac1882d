"""Evaluation metrics, computed in torch from a :class:`Predictions` object.

Every metric is a function ``name(predictions) -> float`` registered with
:func:`blocks.registry.register_metric`; a config names metrics by their registered names and
:func:`compute_metrics` evaluates a list of them.

Conventions shared by all metrics:

* **Classification**: ``scores`` is ``[N, C]`` (probabilities, or any scores whose arg-max is the
  predicted class) and ``labels`` is ``[N]`` of class indexes. "Binary" metrics (precision,
  recall, f1, roc_auc, and the correlations / errors / rankings on classification output) are
  computed for the class ``predictions.positive`` against all others (one-vs-rest), using
  ``scores[:, positive]`` as the positive score.
* A one-dimensional ``scores`` of a classification task (integer ``labels``) is read as the
  probability of the positive class of a binary task: the predicted class is ``positive`` where
  the score is >= 0.5.
* **Regression**: ``scores`` and ``labels`` are ``[N]`` floats.
* **Zero division**: whenever a metric is undefined (empty input, no predicted positives for
  precision, a single class for roc_auc, a constant input for a correlation, no group with a
  positive answer for map/mrr, ...) it is **0.0**, never NaN and never an exception.
* Results are Python floats. Tensors may be on any device; they are read on the CPU in float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from blocks.errors import ConfigError
from blocks.registry import METRICS, register_metric

#: Metrics (and the training loss) for which a smaller value is better.
LOWER_IS_BETTER = {"mse", "rmse", "loss"}


def higher_is_better(name: str) -> bool:
    """Whether a larger value of the metric ``name`` is better.

    A name may carry a prefix such as ``dev/`` or ``dev.`` (``dev/loss`` reads as ``loss``); any
    name ending in ``loss`` (``kd_loss``) counts as a loss.
    """
    base = name.replace("/", ".").rsplit(".", 1)[-1]
    return not (base in LOWER_IS_BETTER or base.endswith("loss"))


@dataclass
class Predictions:
    """What a model predicted on an evaluation set, with the true labels.

    Attributes:
        scores: classification: ``[N, C]`` probabilities; regression: ``[N]`` float predictions.
        labels: classification: ``[N]`` long label indexes; regression: ``[N]`` floats.
        groups: ranking: a group id (e.g. the question id) per example, for ``map`` and ``mrr``.
        positive: index of the positive class for binary metrics.
    """

    scores: torch.Tensor
    labels: torch.Tensor
    groups: list[str] | None = None
    positive: int = 1

    def __post_init__(self) -> None:
        n = self.scores.shape[0] if self.scores.dim() else 0
        if self.scores.dim() not in (1, 2):
            raise ValueError(f"Predictions.scores must be [N] or [N, C], not {list(self.scores.shape)}")
        if self.labels.dim() != 1 or self.labels.shape[0] != n:
            raise ValueError(f"Predictions.labels must be [{n}], not {list(self.labels.shape)}")
        if self.groups is not None and len(self.groups) != n:
            raise ValueError(f"Predictions.groups has {len(self.groups)} entries for {n} examples")

    @property
    def is_classification(self) -> bool:
        """True for classification output (``[N, C]`` scores, or integer labels)."""
        return self.scores.dim() == 2 or not torch.is_floating_point(self.labels)


# ----------------------------------------------------------------------------------------------
# helpers


def _scores(p: Predictions) -> torch.Tensor:
    return p.scores.detach().to("cpu", torch.float64)


def _labels_long(p: Predictions) -> torch.Tensor:
    return p.labels.detach().to("cpu").long()


def _predicted(p: Predictions) -> torch.Tensor:
    """Predicted class index per example."""
    scores = p.scores.detach().cpu()
    if scores.dim() == 2:
        return scores.argmax(dim=1) if scores.shape[1] else torch.zeros(scores.shape[0], dtype=torch.long)
    positive = int(p.positive)
    return torch.where(scores.double() >= 0.5, positive, 1 - positive).long()


def _positive_score(p: Predictions) -> torch.Tensor:
    """Score of the positive class ([N, C] -> column ``positive``; [N] as is), float64."""
    scores = _scores(p)
    return scores[:, p.positive] if scores.dim() == 2 else scores


def _positive_target(p: Predictions) -> torch.Tensor:
    """1.0 where the label is the positive class, else 0.0 (float64)."""
    return (_labels_long(p) == p.positive).double()


def _targets(p: Predictions) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, target) float64 vectors for correlations and errors.

    Regression: the scores and labels. Classification: ``scores[:, positive]`` against the
    indicator of the positive label.
    """
    if p.scores.dim() == 1 and torch.is_floating_point(p.labels):
        return _scores(p), p.labels.detach().to("cpu", torch.float64)
    return _positive_score(p), _positive_target(p)


def _divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """Element-wise num / den with 0 where den == 0."""
    return torch.where(den != 0, num / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(num))


def _confusion(p: Predictions) -> torch.Tensor:
    """Confusion matrix ``[C, C]`` (rows: true class, columns: predicted class), float64."""
    labels, predicted = _labels_long(p), _predicted(p)
    classes = 0
    if p.scores.dim() == 2:
        classes = p.scores.shape[1]
    if labels.numel():
        classes = max(classes, int(labels.max()) + 1, int(predicted.max()) + 1)
    classes = max(classes, int(p.positive) + 1, 2 if p.scores.dim() == 1 else 1)
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError("classification labels must be >= 0")
    counts = torch.bincount(labels * classes + predicted, minlength=classes * classes)
    return counts.reshape(classes, classes).double()


def _binary_counts(p: Predictions) -> tuple[float, float, float]:
    """(true positives, false positives, false negatives) for the positive class."""
    labels, predicted = _labels_long(p), _predicted(p)
    true, guessed = labels == p.positive, predicted == p.positive
    tp = int((true & guessed).sum())
    return float(tp), float(int(guessed.sum()) - tp), float(int(true.sum()) - tp)


def _safe(num: float, den: float) -> float:
    return num / den if den else 0.0


def _per_class(p: Predictions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class (precision, recall, f1) over the classes present in labels or predictions."""
    cm = _confusion(p)
    tp = cm.diagonal()
    true, guessed = cm.sum(dim=1), cm.sum(dim=0)
    present = (true > 0) | (guessed > 0)
    precision, recall = _divide(tp, guessed), _divide(tp, true)
    f1 = _divide(2 * tp, true + guessed)
    return precision[present], recall[present], f1[present]


def _mean(values: torch.Tensor) -> float:
    return float(values.mean()) if values.numel() else 0.0


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``values`` (ascending) with ties given their average rank, float64."""
    values = values.detach().to("cpu", torch.float64).reshape(-1)
    if values.numel() == 0:
        return values
    ordered, order = torch.sort(values, stable=True)
    _, inverse, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()  # last 1-based rank of each run of equal values
    average = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(values)
    ranks[order] = average[inverse]
    return ranks


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    if x.numel() < 2:
        return 0.0
    xc, yc = x - x.mean(), y - y.mean()
    den = math.sqrt(float((xc * xc).sum()) * float((yc * yc).sum()))
    if den == 0 or not math.isfinite(den):
        return 0.0
    return max(-1.0, min(1.0, float((xc * yc).sum()) / den))


# ----------------------------------------------------------------------------------------------
# classification


@register_metric("accuracy")
def accuracy(predictions: Predictions) -> float:
    """Fraction of examples whose arg-max class is the label (0.0 on no examples)."""
    labels = _labels_long(predictions)
    if labels.numel() == 0:
        return 0.0
    return float((_predicted(predictions) == labels).double().mean())


@register_metric("precision")
def precision(predictions: Predictions) -> float:
    """Precision of the positive class: TP / (TP + FP); 0.0 when nothing is predicted positive."""
    tp, fp, _ = _binary_counts(predictions)
    return _safe(tp, tp + fp)


@register_metric("recall")
def recall(predictions: Predictions) -> float:
    """Recall of the positive class: TP / (TP + FN); 0.0 when no label is positive."""
    tp, _, fn = _binary_counts(predictions)
    return _safe(tp, tp + fn)


@register_metric("f1")
def f1(predictions: Predictions) -> float:
    """F1 of the positive class: 2TP / (2TP + FP + FN); 0.0 when there is no positive at all."""
    tp, fp, fn = _binary_counts(predictions)
    return _safe(2 * tp, 2 * tp + fp + fn)


@register_metric("macro_precision")
def macro_precision(predictions: Predictions) -> float:
    """Unweighted mean of per-class precision over the classes seen in labels or predictions.

    A class never predicted has precision 0.0 (as in scikit-learn with zero_division=0).
    """
    return _mean(_per_class(predictions)[0])


@register_metric("macro_recall")
def macro_recall(predictions: Predictions) -> float:
    """Unweighted mean of per-class recall over the classes seen in labels or predictions."""
    return _mean(_per_class(predictions)[1])


@register_metric("macro_f1")
def macro_f1(predictions: Predictions) -> float:
    """Unweighted mean of per-class F1 (not the F1 of macro precision and recall).

    Classes are those seen in labels or predictions; an undefined F1 counts as 0.0.
    """
    return _mean(_per_class(predictions)[2])


@register_metric("mcc")
def mcc(predictions: Predictions) -> float:
    """Matthews correlation coefficient, general multi-class form (Gorodkin's R_K).

    From the confusion matrix C with t = row sums, p = column sums, c = trace, s = total:
    (c*s - t.p) / sqrt((s^2 - p.p) (s^2 - t.t)); 0.0 when the denominator is 0.
    """
    cm = _confusion(predictions)
    t, p = cm.sum(dim=1), cm.sum(dim=0)
    c, s = float(cm.trace()), float(cm.sum())
    num = c * s - float(t @ p)
    den = (s * s - float(p @ p)) * (s * s - float(t @ t))
    if den <= 0:
        return 0.0
    return max(-1.0, min(1.0, num / math.sqrt(den)))


@register_metric("roc_auc")
def roc_auc(predictions: Predictions) -> float:
    """Area under the ROC curve of ``scores[:, positive]`` for the positive class.

    Computed in the Mann–Whitney form with average ranks for ties (a tie between a positive and
    a negative counts 1/2): (sum of positive ranks - P(P+1)/2) / (P N). 0.0 when the labels hold a
    single class.
    """
    score, target = _positive_score(predictions), _positive_target(predictions) > 0
    positives = int(target.sum())
    negatives = target.numel() - positives
    if positives == 0 or negatives == 0:
        return 0.0
    rank_sum = float(average_ranks(score)[target].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


# ----------------------------------------------------------------------------------------------
# correlations and errors


@register_metric("pearson")
def pearson(predictions: Predictions) -> float:
    """Pearson correlation of predictions and labels; 0.0 when either is constant.

    For classification, ``scores[:, positive]`` against the indicator of the positive label.
    """
    return _pearson(*_targets(predictions))


@register_metric("spearman")
def spearman(predictions: Predictions) -> float:
    """Spearman rank correlation (Pearson of average ranks, so ties are handled); 0.0 if constant.

    For classification, ``scores[:, positive]`` against the indicator of the positive label.
    """
    x, y = _targets(predictions)
    return _pearson(average_ranks(x), average_ranks(y))


@register_metric("mse")
def mse(predictions: Predictions) -> float:
    """Mean squared error (lower is better); 0.0 on no examples.

    For classification, of ``scores[:, positive]`` against the positive indicator (Brier score).
    """
    x, y = _targets(predictions)
    return float(((x - y) ** 2).mean()) if x.numel() else 0.0


@register_metric("rmse")
def rmse(predictions: Predictions) -> float:
    """Root mean squared error (lower is better); 0.0 on no examples."""
    return math.sqrt(mse(predictions))


# ----------------------------------------------------------------------------------------------
# answer ranking


def _ranking(p: Predictions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Per example in ranked order: (group index, 1-based rank in its group, is positive), groups.

    Within each group examples are sorted by ``scores[:, positive]`` descending; ties keep the
    original order.
    """
    if p.groups is None:
        raise ConfigError("metrics 'map' and 'mrr' need a group (question id) per example;"
                          " the evaluation data has none")
    ids: dict[str, int] = {}
    group = torch.tensor([ids.setdefault(g, len(ids)) for g in p.groups], dtype=torch.long)
    score, positive = _positive_score(p), _positive_target(p) > 0
    order = torch.sort(-score, stable=True).indices
    order = order[torch.sort(group[order], stable=True).indices]
    group, positive = group[order], positive[order]
    sizes = torch.bincount(group, minlength=len(ids))
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.arange(group.numel()) - starts[group] + 1
    return group, rank, positive, len(ids)


@register_metric("map")
def mean_average_precision(predictions: Predictions) -> float:
    """Mean average precision over groups (questions), ranking by ``scores[:, positive]``.

    AP of a group = mean of precision@k over the ranks k of its positive answers. Groups with no
    positive answer are dropped (standard WikiQA practice); 0.0 when no group has one.
    """
    group, rank, positive, count = _ranking(predictions)
    if count == 0:
        return 0.0
    hits = positive.long()
    cumulative = torch.cumsum(hits, 0)
    group_hits = torch.zeros(count, dtype=torch.long).index_add_(0, group, hits)
    before = torch.cumsum(group_hits, 0) - group_hits  # positives in earlier groups
    precision_at = (cumulative - before[group]).double() / rank.double()
    ap_sum = torch.zeros(count, dtype=torch.float64).index_add_(0, group, precision_at * hits)
    kept = group_hits > 0
    return _mean(ap_sum[kept] / group_hits[kept].double())


@register_metric("mrr")
def mrr(predictions: Predictions) -> float:
    """Mean reciprocal rank of the first positive answer per group (question).

    Ranking by ``scores[:, positive]`` descending, ties in original order. Groups with no
    positive answer are dropped; 0.0 when no group has one.
    """
    group, rank, positive, count = _ranking(predictions)
    if count == 0:
        return 0.0
    big = group.numel() + 1
    first = torch.full((count,), big, dtype=torch.long)
    first = first.scatter_reduce(0, group, torch.where(positive, rank, big), reduce="amin")
    kept = first < big
    return _mean(1.0 / first[kept].double())


# ----------------------------------------------------------------------------------------------


def compute_metrics(names: list[str], predictions: Predictions, file: str | None = None,
                    path: str | None = None) -> dict[str, float]:
    """Evaluate the metrics ``names`` on ``predictions``: ``{name: value}`` in the given order.

    An unknown name raises :class:`ConfigError` (with a suggestion) at ``file``/``path``.
    """
    functions: dict[str, Callable[[Predictions], float]] = {}
    for i, name in enumerate(names):
        functions[name] = METRICS.get(name, file, f"{path}/{i}" if path is not None else None)
    return {name: float(function(predictions)) for name, function in functions.items()}

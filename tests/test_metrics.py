"""Metrics against hand-computed values, and against scikit-learn / scipy when installed."""
from __future__ import annotations

import math
import random
import time

import pytest
import torch

from blocks.errors import ConfigError
from blocks.metrics import (LOWER_IS_BETTER, Predictions, average_ranks, compute_metrics,
                            higher_is_better)
from blocks.registry import METRICS

ALL = ["accuracy", "precision", "recall", "f1", "macro_precision", "macro_recall", "macro_f1",
       "roc_auc", "mcc", "pearson", "spearman", "mse", "rmse", "map", "mrr"]


def binary(positive_scores, labels, **kwargs) -> Predictions:
    p = torch.tensor(positive_scores, dtype=torch.float32)
    return Predictions(torch.stack([1 - p, p], dim=1), torch.tensor(labels), **kwargs)


def metric(name: str, predictions: Predictions) -> float:
    value = compute_metrics([name], predictions)[name]
    assert type(value) is float
    return value


# p(positive) and labels; predicted class = 1 where p > 0.5:
#   p:      .9  .8  .3  .6  .2  .4  .7  .55
#   label:   1   0   1   1   0   0   1   0
#   pred:    1   1   0   1   0   0   1   1
# TP = 3 (0, 3, 6), FP = 2 (1, 7), FN = 1 (2), TN = 2 (4, 5)
EXAMPLE = ([.9, .8, .3, .6, .2, .4, .7, .55], [1, 0, 1, 1, 0, 0, 1, 0])


def test_all_metrics_are_registered_without_config_parameters():
    assert set(ALL) <= set(METRICS.names())
    for name in ALL:
        assert METRICS.parameters(name) == []  # `predictions` is supplied by the framework
        assert METRICS.describe(name)


def test_binary_classification_by_hand():
    p = binary(*EXAMPLE)
    assert metric("accuracy", p) == pytest.approx(5 / 8)       # TP + TN = 5 of 8
    assert metric("precision", p) == pytest.approx(3 / 5)      # 3 / (3 + 2)
    assert metric("recall", p) == pytest.approx(3 / 4)         # 3 / (3 + 1)
    assert metric("f1", p) == pytest.approx(2 / 3)             # 2*3 / (2*3 + 2 + 1)
    # class 0: predicted 3 times (TN + FN), true 4 times (TN + FP), correct 2 times
    #   precision 2/3, recall 2/4, f1 = 2*2 / (3 + 4) = 4/7
    assert metric("macro_precision", p) == pytest.approx((3 / 5 + 2 / 3) / 2)  # 19/30
    assert metric("macro_recall", p) == pytest.approx((3 / 4 + 1 / 2) / 2)     # 5/8
    assert metric("macro_f1", p) == pytest.approx((2 / 3 + 4 / 7) / 2)        # 13/21
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (6 - 2) / sqrt(5*4*4*3)
    assert metric("mcc", p) == pytest.approx(4 / math.sqrt(240))
    # positives .9 .3 .6 .7 vs negatives .8 .2 .4 .55: pairs won 4 + 1 + 3 + 3 = 11 of 16
    assert metric("roc_auc", p) == pytest.approx(11 / 16)


def test_positive_class_can_be_zero():
    p = binary(*EXAMPLE, positive=0)
    # class 0 as positive: TP = 2, FP = 1 (predicted 0, label 1), FN = 2 (label 0, predicted 1)
    assert metric("precision", p) == pytest.approx(2 / 3)
    assert metric("recall", p) == pytest.approx(2 / 4)
    assert metric("roc_auc", p) == pytest.approx(11 / 16)  # scores[:, 0] = 1 - p: same ordering of pairs


def test_one_dimensional_scores_are_positive_probabilities():
    p = Predictions(torch.tensor(EXAMPLE[0]), torch.tensor(EXAMPLE[1]))
    assert metric("accuracy", p) == pytest.approx(5 / 8)
    assert metric("f1", p) == pytest.approx(2 / 3)
    assert metric("roc_auc", p) == pytest.approx(11 / 16)


def test_auc_ties_count_half():
    # positives .5 .8, negatives .5 .2: (.5 vs .5) = 1/2, .5 > .2, .8 > both -> 3.5 of 4
    p = binary([.5, .8, .5, .2], [1, 1, 0, 0])
    assert metric("roc_auc", p) == pytest.approx(3.5 / 4)
    # all scores equal: every pair a tie
    assert metric("roc_auc", binary([.3] * 4, [1, 0, 1, 0])) == pytest.approx(0.5)


def test_multiclass_mcc_and_macro():
    # labels  0 0 1 1 2 2, predicted 0 1 1 1 2 0
    # confusion (rows true): [[1,1,0],[0,2,0],[1,0,1]]; t = (2,2,2), p = (2,3,1), c = 4, s = 6
    # (c*s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)) = (24 - 12) / sqrt((36 - 14)(36 - 12))
    predicted = torch.tensor([0, 1, 1, 1, 2, 0])
    scores = torch.nn.functional.one_hot(predicted, 3).float() * 0.8 + 0.2 / 3
    p = Predictions(scores, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert metric("mcc", p) == pytest.approx(12 / math.sqrt(22 * 24))
    assert metric("accuracy", p) == pytest.approx(4 / 6)
    # precision per class: 1/2, 2/3, 1/1; recall: 1/2, 2/2, 1/2
    assert metric("macro_precision", p) == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert metric("macro_recall", p) == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    # f1 per class 2tp/(true+pred): 2/4, 4/5, 2/3
    assert metric("macro_f1", p) == pytest.approx((2 / 4 + 4 / 5 + 2 / 3) / 3)
    # binary metrics are one-vs-rest for `positive` (class 1 here): TP 2, FP 1, FN 0
    assert metric("precision", p) == pytest.approx(2 / 3)
    assert metric("recall", p) == pytest.approx(1.0)


def test_macro_uses_only_classes_seen():
    # 4 columns but class 3 never appears in labels or predictions: it does not count
    scores = torch.tensor([[.9, .05, .03, .02], [.1, .8, .05, .05]])
    p = Predictions(scores, torch.tensor([0, 1]))
    assert metric("macro_f1", p) == 1.0


def test_regression_correlations_and_errors():
    # x = 1 2 3 4, y = 2 4 5 9: centred x -1.5 -.5 .5 1.5, y -3 -1 0 4
    # sum xy = 4.5 + .5 + 0 + 6 = 11; sum xx = 5; sum yy = 26
    p = Predictions(torch.tensor([1., 2., 3., 4.]), torch.tensor([2., 4., 5., 9.]))
    assert metric("pearson", p) == pytest.approx(11 / math.sqrt(5 * 26))
    assert metric("spearman", p) == pytest.approx(1.0)  # same order
    # errors .25 0 4 -> mse 4.25 / 3
    q = Predictions(torch.tensor([1., 2., 3.]), torch.tensor([1.5, 2., 1.]))
    assert metric("mse", q) == pytest.approx(4.25 / 3)
    assert metric("rmse", q) == pytest.approx(math.sqrt(4.25 / 3))


def test_spearman_ties_use_average_ranks():
    # x = 1 2 2 3 -> ranks 1 2.5 2.5 4; y = 1 3 2 4 -> ranks 1 3 2 4
    # centred: -1.5 0 0 1.5 and -1.5 .5 -.5 1.5; sum xy = 4.5, sum xx = 4.5, sum yy = 5
    assert average_ranks(torch.tensor([1., 2., 2., 3.])).tolist() == [1, 2.5, 2.5, 4]
    p = Predictions(torch.tensor([1., 2., 2., 3.]), torch.tensor([1., 3., 2., 4.]))
    assert metric("spearman", p) == pytest.approx(4.5 / math.sqrt(4.5 * 5))


def test_correlations_on_classification_use_positive_score():
    # p(positive) .9 .2 .6 vs labels 1 0 0 (means 1.7/3 and 1/3):
    # centred x 1/3, -1.1/3, .1/3; y 2/3, -1/3, -1/3
    # sum xy = (2 + 1.1 - .1)/9 = 3/9; sum xx = (1 + 1.21 + .01)/9 = 2.22/9; sum yy = 6/9
    p = binary([.9, .2, .6], [1, 0, 0])
    assert metric("pearson", p) == pytest.approx(3 / math.sqrt(2.22 * 6))
    # mse = ((.9-1)^2 + .2^2 + .6^2) / 3 = (.01 + .04 + .36) / 3
    assert metric("mse", p) == pytest.approx(.41 / 3)


# Ranking: three questions, given interleaved.
#   q1: scores .9 .8 .1, labels 0 1 1 -> ranked 0 1 1: P@2 = 1/2, P@3 = 2/3, AP = 7/12, RR = 1/2
#   q2: scores .4 .6,    labels 0 1   -> ranked 1 0:   AP = 1, RR = 1
#   q3: scores .5 .7,    labels 0 0   -> no positive: dropped from MAP and MRR
RANKING = [("q1", .9, 0), ("q2", .4, 0), ("q3", .5, 0), ("q1", .8, 1), ("q2", .6, 1),
           ("q1", .1, 1), ("q3", .7, 0)]


def ranking(rows) -> Predictions:
    groups, scores, labels = zip(*rows)
    return binary(list(scores), list(labels), groups=list(groups))


def test_map_and_mrr_by_hand():
    p = ranking(RANKING)
    assert metric("map", p) == pytest.approx((7 / 12 + 1) / 2)  # 19/24
    assert metric("mrr", p) == pytest.approx((1 / 2 + 1) / 2)   # 3/4
    # AUC keeps every example: positives .8 .6 .1 vs negatives .9 .4 .5 .7
    # pairs won: .8 > .4 .5 .7 (3), .6 > .4 .5 (2), .1 (0) -> 5 of 12
    assert metric("roc_auc", p) == pytest.approx(5 / 12)


def test_ranking_ties_keep_original_order():
    # q4: three equal scores, labels 0 1 0: stable order puts the positive at rank 2
    p = ranking([("q4", .5, 0), ("q4", .5, 1), ("q4", .5, 0)])
    assert metric("map", p) == pytest.approx(1 / 2)
    assert metric("mrr", p) == pytest.approx(1 / 2)
    p = ranking([("q4", .5, 1), ("q4", .5, 0)])
    assert metric("map", p) == 1.0


def test_ranking_without_groups_or_positives():
    with pytest.raises(ConfigError, match="group"):
        metric("map", binary([.1, .2], [0, 1]))
    assert metric("map", ranking([("a", .5, 0), ("b", .4, 0)])) == 0.0
    assert metric("mrr", ranking([("a", .5, 0), ("b", .4, 0)])) == 0.0


def test_zero_division_is_zero():
    nothing_positive = binary([.1, .2, .3], [0, 0, 0])
    assert metric("precision", nothing_positive) == 0.0
    assert metric("recall", nothing_positive) == 0.0
    assert metric("f1", nothing_positive) == 0.0
    assert metric("roc_auc", nothing_positive) == 0.0  # one class only
    assert metric("mcc", nothing_positive) == 0.0
    constant = Predictions(torch.tensor([1., 1., 1.]), torch.tensor([1., 2., 3.]))
    assert metric("pearson", constant) == 0.0
    assert metric("spearman", constant) == 0.0
    empty = Predictions(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), groups=[])
    for name in ALL:
        assert metric(name, empty) == 0.0, name


def test_compute_metrics_and_unknown_names():
    p = binary(*EXAMPLE)
    result = compute_metrics(["f1", "accuracy"], p)
    assert list(result) == ["f1", "accuracy"]
    with pytest.raises(ConfigError, match="did you mean 'accuracy'") as error:
        compute_metrics(["acuracy"], p, file="run.json", path="/metrics")
    assert error.value.path == "/metrics/0" and error.value.file == "run.json"


def test_higher_is_better():
    assert LOWER_IS_BETTER == {"mse", "rmse", "loss"}
    assert higher_is_better("accuracy") and higher_is_better("map")
    assert not higher_is_better("mse") and not higher_is_better("rmse") and not higher_is_better("loss")
    assert not higher_is_better("dev/loss") and not higher_is_better("kd_loss")


def test_predictions_shapes_are_checked():
    with pytest.raises(ValueError):
        Predictions(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError):
        Predictions(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), groups=["a"])


def test_large_inputs_are_fast():
    # Vectorised: ~0.1 s for 100k examples on an idle core. The bound only catches a Python loop
    # or a quadratic algorithm (which would take minutes), not a busy shared machine.
    generator = torch.Generator().manual_seed(0)
    n = 100_000
    p = Predictions(torch.softmax(torch.randn(n, 3, generator=generator), 1),
                    torch.randint(0, 3, (n,), generator=generator),
                    groups=[str(i // 10) for i in range(n)])
    start = time.perf_counter()
    values = compute_metrics(ALL, p)
    assert time.perf_counter() - start < 10.0
    assert 0.3 < values["accuracy"] < 0.37 and 0.45 < values["roc_auc"] < 0.55


# ----------------------------------------------------------------------------------------------
# cross-checks


def random_binary(seed: int, n: int = 300, ties: bool = False):
    rng = random.Random(seed)
    scores = [rng.random() for _ in range(n)]
    if ties:
        scores = [round(s, 1) for s in scores]
    labels = [int(rng.random() < 0.4 + 0.3 * s) for s in scores]
    return scores, labels


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True)])
def test_against_sklearn_binary(seed, ties):
    metrics = pytest.importorskip("sklearn.metrics")
    scores, labels = random_binary(seed, ties=ties)
    p = binary(scores, labels)
    predicted = p.scores.argmax(1).tolist()
    expected = {
        "accuracy": metrics.accuracy_score(labels, predicted),
        "precision": metrics.precision_score(labels, predicted, zero_division=0),
        "recall": metrics.recall_score(labels, predicted, zero_division=0),
        "f1": metrics.f1_score(labels, predicted, zero_division=0),
        "macro_precision": metrics.precision_score(labels, predicted, average="macro", zero_division=0),
        "macro_recall": metrics.recall_score(labels, predicted, average="macro", zero_division=0),
        "macro_f1": metrics.f1_score(labels, predicted, average="macro", zero_division=0),
        "mcc": metrics.matthews_corrcoef(labels, predicted),
        "roc_auc": metrics.roc_auc_score(labels, p.scores[:, 1].double().tolist()),
    }
    got = compute_metrics(list(expected), p)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name


def test_against_sklearn_multiclass():
    metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(3)
    scores = torch.softmax(torch.randn(400, 4, generator=generator), 1)
    labels = torch.randint(0, 4, (400,), generator=generator)
    predicted = scores.argmax(1).tolist()
    p = Predictions(scores, labels)
    assert metric("mcc", p) == pytest.approx(metrics.matthews_corrcoef(labels.tolist(), predicted))
    assert metric("macro_f1", p) == pytest.approx(metrics.f1_score(labels.tolist(), predicted, average="macro"))
    assert metric("accuracy", p) == pytest.approx(metrics.accuracy_score(labels.tolist(), predicted))


@pytest.mark.parametrize("ties", [False, True])
def test_against_scipy_correlations(ties):
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(5)
    x = [rng.gauss(0, 1) for _ in range(200)]
    y = [a + rng.gauss(0, 1) for a in x]
    if ties:
        x, y = [round(a) for a in x], [round(b) for b in y]
    p = Predictions(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64))
    assert metric("pearson", p) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-9)
    assert metric("spearman", p) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-9)
    assert average_ranks(torch.tensor(x)).tolist() == pytest.approx(list(stats.rankdata(x)))


def test_map_against_sklearn_average_precision():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(7)
    rows = [(f"q{rng.randrange(30)}", rng.random(), int(rng.random() < 0.3)) for _ in range(400)]
    aps, rrs = [], []
    for group in sorted({g for g, _, _ in rows}):
        scores = [s for g, s, _ in rows if g == group]
        labels = [y for g, _, y in rows if g == group]
        if any(labels):
            aps.append(metrics.average_precision_score(labels, scores))
            ranked = [y for _, y in sorted(zip(scores, labels), key=lambda item: -item[0])]
            rrs.append(1 / (ranked.index(1) + 1))
    p = ranking(rows)
    assert metric("map", p) == pytest.approx(sum(aps) / len(aps))
    assert metric("mrr", p) == pytest.approx(sum(rrs) / len(rrs))

"""Corpus-level text metrics for generated sequences, computed by sacreBLEU.

The classification metrics of :mod:`blocks.metrics` read tensors (a :class:`Predictions`); a
translation is judged on text. :class:`TextPredictions` holds what a seq2seq model produced,
decoded to plain detokenized strings (:meth:`blocks.data.subword.SubwordTokenizer.decode`), beside
one reference string per sentence, read from the data as is. The metrics:

* ``bleu`` — sacreBLEU's corpus BLEU: cased, on detokenized text with its own ``13a``
  tokenization, exponential smoothing; the number to report and compare between runs.
* ``bleu_lc`` — the same, lowercased: closer to the "lowercased, tokenized BLEU" most Multi30k
  papers quote (still not equal to it: their tokenizers differ), to be shown beside ``bleu``.
* ``chrf`` — sacreBLEU's chrF (character 6-grams, beta 2).

Each result is a :class:`TextScore`: the value on sacreBLEU's 0–100 scale (not the 0–1 scale of
the classification metrics) and sacreBLEU's signature string (``nrefs:1|case:mixed|eff:no|
tok:13a|smooth:exp|version:2.6.0``), which a run's summary stores so that a number can be
reproduced and compared like with like. An empty corpus scores 0.0, as every undefined metric
does in :mod:`blocks.metrics`.

These are plain functions in a table of their own (:data:`TEXT_METRICS`), not entries of the
``METRICS`` registry: a registered metric is offered to every task and called with tensor
``Predictions``, which these cannot read. How they plug into the engine (the seq2seq task type,
a later step): the task lists these names as its metrics, decodes the dev/test outputs to text
and calls :func:`compute_text_metrics`; the values go to the metrics log like any other metric
and the signatures into the run summary.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.metrics.base import Metric

from blocks.errors import ConfigError, did_you_mean


@dataclass
class TextPredictions:
    """Generated sentences and their references, both plain detokenized text.

    Attributes:
        hypotheses: what the model produced, one string per sentence.
        references: the reference translation of each sentence.
    """

    hypotheses: list[str]
    references: list[str]

    def __post_init__(self) -> None:
        if len(self.hypotheses) != len(self.references):
            raise ValueError(f"TextPredictions has {len(self.hypotheses)} hypotheses for "
                             f"{len(self.references)} references")
        for what, texts in (("hypotheses", self.hypotheses), ("references", self.references)):
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    raise ValueError(f"TextPredictions.{what}[{i}] is a {type(text).__name__}, not text")


@dataclass(frozen=True)
class TextScore:
    """A corpus-level score (0–100) and the sacreBLEU signature that says how it was computed."""

    value: float
    signature: str


#: Metric name -> a factory of the configured sacreBLEU metric.
TEXT_METRICS: dict[str, Callable[[], Metric]] = {
    "bleu": lambda: BLEU(),
    "bleu_lc": lambda: BLEU(lowercase=True),
    "chrf": lambda: CHRF(),
}


def text_metric(name: str, predictions: TextPredictions) -> TextScore:
    """The metric ``name`` (a key of :data:`TEXT_METRICS`) on ``predictions``."""
    if name not in TEXT_METRICS:
        raise ValueError(f"unknown text metric '{name}' (known: {', '.join(TEXT_METRICS)})")
    metric = TEXT_METRICS[name]()
    if predictions.hypotheses:
        value = float(metric.corpus_score(predictions.hypotheses, [predictions.references]).score)
    else:
        metric.corpus_score(["-"], [["-"]])  # sacreBLEU writes a signature only once it has scored
        value = 0.0
    return TextScore(value, str(metric.get_signature()))


def compute_text_metrics(names: list[str], predictions: TextPredictions, file: str | None = None,
                         path: str | None = None) -> dict[str, TextScore]:
    """Evaluate the text metrics ``names``: ``{name: TextScore}`` in the given order.

    An unknown name raises :class:`ConfigError` (with a suggestion) at ``file``/``path``, the
    config's list of metrics (the index of the name is appended).
    """
    for i, name in enumerate(names):
        if name not in TEXT_METRICS:
            raise ConfigError(f"unknown text metric '{name}'{did_you_mean(name, TEXT_METRICS)} "
                              f"(known: {', '.join(TEXT_METRICS)})", file,
                              f"{path}/{i}" if path is not None else None)
    return {name: text_metric(name, predictions) for name in names}

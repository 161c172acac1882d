"""Text metrics: the values and signatures of sacreBLEU itself, on a few sentences."""
from __future__ import annotations

import pytest
import sacrebleu

from blocks.errors import ConfigError
from blocks.generation_metrics import TEXT_METRICS, TextPredictions, TextScore, compute_text_metrics, text_metric

HYPOTHESES = ["Ein Mann fährt Fahrrad auf der Straße.", "zwei Hunde spielen im Schnee",
              "Eine Frau verkauft Obst.", "Kinder laufen am Strand entlang."]
REFERENCES = ["Ein Mann fährt auf der Straße Fahrrad.", "Zwei Hunde spielen im Schnee.",
              "Eine Frau verkauft Obst auf dem Markt.", "Kinder laufen am Strand."]


def test_values_and_signatures_are_sacrebleus():
    predictions = TextPredictions(HYPOTHESES, REFERENCES)
    scores = compute_text_metrics(["bleu", "bleu_lc", "chrf"], predictions)
    assert list(scores) == ["bleu", "bleu_lc", "chrf"]
    cased = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES])
    lowered = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES], lowercase=True)
    chrf = sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES])
    assert scores["bleu"].value == pytest.approx(cased.score)
    assert scores["bleu_lc"].value == pytest.approx(lowered.score)
    assert scores["chrf"].value == pytest.approx(chrf.score)
    # "zwei ..." against "Zwei ...": the lowercased score is the higher one
    assert 0 < scores["bleu"].value < scores["bleu_lc"].value < 100
    assert scores["bleu"].signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert "case:lc" in scores["bleu_lc"].signature
    assert scores["chrf"].signature.startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")


def test_perfect_and_empty_corpora():
    assert text_metric("bleu", TextPredictions(REFERENCES, REFERENCES)).value == pytest.approx(100.0)
    assert text_metric("chrf", TextPredictions(REFERENCES, REFERENCES)).value == pytest.approx(100.0)
    empty = text_metric("bleu", TextPredictions([], []))
    assert empty == TextScore(0.0, empty.signature) and empty.signature.startswith("nrefs:1|")


def test_bad_input():
    with pytest.raises(ValueError, match="3 hypotheses for 4 references"):
        TextPredictions(HYPOTHESES[:3], REFERENCES)
    with pytest.raises(ValueError, match=r"hypotheses\[1\] is a list, not text"):
        TextPredictions(["a", [5, 6]], ["a", "b"])
    with pytest.raises(ConfigError, match=r"run\.json: /task/metrics/1: unknown text metric 'blue'; did you mean"):
        compute_text_metrics(["chrf", "blue"], TextPredictions([], []), "run.json", "/task/metrics")
    with pytest.raises(ValueError, match="unknown text metric 'ter'"):
        text_metric("ter", TextPredictions([], []))
    assert set(TEXT_METRICS) == {"bleu", "bleu_lc", "chrf"}

"""Per-example tasks: the default input cap, regression labels that are not finite, clamped predictions."""
from __future__ import annotations

import pytest
import torch

from blocks.errors import DataError
from blocks.experiment import Experiment


def test_a_huge_line_is_cut_to_the_default_cap_and_counted(project):
    from blocks.data.dataset import DEFAULT_MAX_TOKENS

    rows = project.sentences(40, 1)
    rows[3] = (" ".join(["good"] * 5000), "1")
    project.write_tsv(project.root / "data" / "train.tsv", rows)
    lines = []
    experiment = Experiment.prepare(project.load(), log=lines.append)
    key = experiment.model_inputs["student"]["tokens"]
    assert len(experiment.splits["train"].ids[key][3]) == DEFAULT_MAX_TOKENS
    assert any("1 example(s) of field 'text' cut to their first 512 tokens" in line for line in lines), lines


@pytest.mark.parametrize("bad", ["nan", "inf", "-Infinity"])
def test_a_regression_label_that_is_not_finite_names_file_and_line(project, bad):
    values = project.config()
    values["task"] = {"type": "regression"}
    rows = [(text, "2.5") for text, _ in project.sentences(20, 1)]
    rows[4] = (rows[4][0], bad)
    project.write_tsv(project.root / "data" / "train.tsv", rows)
    with pytest.raises(DataError) as caught:
        project.prepare(values)
    assert "train.tsv, line 6" in str(caught.value) and "finite" in str(caught.value)


def test_regression_predictions_are_clamped_to_the_label_range():
    from blocks.tasks.regression import Regression

    task = Regression([0.0, 5.0])
    assert task.decode_batch(torch.tensor([[-1.0], [2.5], [7.98]]), None).tolist() == [0.0, 2.5, 5.0]
    assert Regression.from_values(task.to_json()).label_range == [0.0, 5.0]

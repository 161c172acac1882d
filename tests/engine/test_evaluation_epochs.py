"""The epoch an evaluation reports: the passes over the training set done, however it was triggered."""
from __future__ import annotations

import json

import pytest

from blocks.engine.run import train
from tests.conftest import quiet


@pytest.mark.parametrize("eval_every, epochs", [(0, [1, 2]), (8, [1, 2]), (4, [0.5, 1, 1.5, 2])])
def test_an_evaluation_reports_the_epochs_done(project, eval_every, epochs):
    values = project.single_stage()  # 120 examples, batch 16: 8 steps an epoch, 2 epochs
    values["stages"][0]["eval_every"] = eval_every
    train(project.load(values), run_dir=project.root / "run", progress=False, log=quiet)
    events = [json.loads(line) for line in (project.root / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["epoch"] for e in evals] == epochs
    assert [e["step"] for e in evals] == [round(8 * epoch) for epoch in epochs]

"""Regression: one real-valued score per example (similarity, rating).

The model's output is a vector of width 1 (``"labels"`` means 1). Labels must be finite numbers;
``task.label_range`` (``[low, high]``), when given, clamps predictions into that range for
evaluation and prediction — the gold scores of most regression data sets are bounded (STS-B: 0-5).
"""
from __future__ import annotations

import json
import math

import torch

from blocks.errors import DataError
from blocks.tasks.base import TaskType, register_task_type
from blocks.tasks.classification import REGRESSION_METRICS
from blocks.values import VECTOR


@register_task_type
class Regression(TaskType):
    name = "regression"
    output_kinds = (VECTOR,)

    def __init__(self, label_range: list[float] | None = None):
        self.labels = []
        self.positive = 0
        self.label_range = list(label_range) if label_range else None

    @classmethod
    def from_config(cls, task_config, train_rows, label_field, mapping, file=None):
        return cls(task_config.get("label_range"))

    @classmethod
    def from_values(cls, values):
        return cls(values.get("label_range"))

    def to_json(self):
        values = {"type": self.name, "labels": [], "positive": 0}
        if self.label_range:
            values["label_range"] = self.label_range
        return values

    def describe(self):
        clamp = f", predictions clamped to [{self.label_range[0]:g}, {self.label_range[1]:g}]" if self.label_range else ""
        return f"regression (one score per example{clamp})"

    @property
    def num_outputs(self):
        return 1

    def parse_labels(self, rows, label_field, mapping):
        from blocks.data.dataset import field_value

        values = []
        for row in rows:
            text = field_value(row, label_field, mapping)
            try:
                value = float(text)
            except ValueError:
                raise DataError(f"label '{text}' is not a number (regression task)", row.file, row.line) from None
            if not math.isfinite(value):
                raise DataError(f"label '{text.strip()}' is not a finite number (regression task)", row.file,
                                row.line)
            values.append(value)
        return torch.tensor(values, dtype=torch.float)

    def unlabelled(self, lengths):
        return torch.full((len(lengths),), float("nan"))

    def decode_batch(self, output, batch):
        values = output.float().reshape(-1)
        if self.label_range:
            values = values.clamp(self.label_range[0], self.label_range[1])
        return values.cpu()

    @classmethod
    def config_default_metrics(cls, task_config):
        return list(REGRESSION_METRICS[:3])

    def metric_problem(self, name):
        if name not in REGRESSION_METRICS:
            return (f"metric '{name}' needs a classification task; a regression task can use "
                    f"{', '.join(REGRESSION_METRICS)}")
        return None

    def metrics(self, predictions, split, names, model=None):
        from blocks.metrics import Predictions, compute_metrics

        return compute_metrics(names, Predictions(scores=predictions, labels=split.labels, groups=split.groups,
                                                  positive=0))

    def prediction_header(self, output_format):
        return "score" if output_format == "tsv" else None

    def format_prediction(self, prediction, example, output_format, model=None):
        value = float(prediction)
        return f"{value:.6g}" if output_format == "tsv" else json.dumps({"score": value})

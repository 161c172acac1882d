"""Classification (and answer ranking): one class per example (or sentence pair).

Labels are read as strings and indexed in the order of ``task.labels`` (default: sorted as
found in the training file, numerically when every label is an integer). The model's output is
a vector of one logit per class; predictions are the softmax probabilities ``[N, C]``. Ranking
metrics (``map``, ``mrr``) read the examples' ``data.group`` field.
"""
from __future__ import annotations

import json

import torch

from blocks.errors import ConfigError, DataError
from blocks.tasks.base import UNLABELLED, TaskType, register_task_type
from blocks.values import VECTOR

#: Metrics of a single score per example, which a regression task also has.
REGRESSION_METRICS = ("pearson", "spearman", "mse", "rmse")  # the first three are the regression default
#: Metrics that need a tag sequence per example.
TAGGING_METRICS = ("entity_f1", "entity_precision", "entity_recall", "token_accuracy")


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


@register_task_type
class Classification(TaskType):
    name = "classification"
    output_kinds = (VECTOR,)

    def __init__(self, labels: list[str], positive: int = 1):
        self.labels = list(labels)
        self.positive = positive

    @classmethod
    def from_config(cls, task_config, train_rows, label_field, mapping, file=None):
        from blocks.data.dataset import field_value

        labels = task_config.get("labels")
        if labels is None:
            seen = sorted({field_value(row, label_field, mapping).strip() for row in train_rows})
            if all(_is_int(x) for x in seen):
                seen.sort(key=int)
            labels = seen
        if len(labels) < 2:
            raise DataError(f"classification needs at least two labels; found {labels}", train_rows[0].file)
        positive = 1
        if task_config.get("positive_label") is not None:
            if task_config["positive_label"] not in labels:
                raise ConfigError(f"positive_label '{task_config['positive_label']}' is not a label ({labels})",
                                  file, "/task/positive_label")
            positive = labels.index(task_config["positive_label"])
        return cls(labels, positive)

    @classmethod
    def from_values(cls, values):
        return cls(values["labels"], values.get("positive", 1))

    def to_json(self):
        return {"type": self.name, "labels": self.labels, "positive": self.positive}

    # -- labels ---------------------------------------------------------------------------------
    def parse_labels(self, rows, label_field, mapping):
        from blocks.data.dataset import field_value

        index = {label: i for i, label in enumerate(self.labels)}
        values = []
        for row in rows:
            text = field_value(row, label_field, mapping).strip()
            if text not in index:
                raise DataError(f"label '{text}' was not seen in the training data (labels: "
                                f"{', '.join(self.labels)})", row.file, row.line)
            values.append(index[text])
        return torch.tensor(values, dtype=torch.long)

    def unlabelled(self, lengths):
        return torch.full((len(lengths),), UNLABELLED, dtype=torch.long)

    # -- predictions and metrics ---------------------------------------------------------------
    def decode_batch(self, output, batch):
        return torch.softmax(output.float(), dim=-1).cpu()

    @classmethod
    def config_default_metrics(cls, task_config):
        return ["accuracy"]

    def metric_problem(self, name):
        if name in TAGGING_METRICS:
            return f"metric '{name}' needs a tagging task"
        return None

    def metrics(self, predictions, split, names, model=None):
        from blocks.metrics import Predictions, compute_metrics

        return compute_metrics(names, Predictions(scores=predictions, labels=split.labels, groups=split.groups,
                                                  positive=self.positive))

    def prediction_header(self, output_format):
        if output_format == "tsv":
            return "label\t" + "\t".join(f"p_{label}" for label in self.labels)
        return None

    def format_prediction(self, prediction, example, output_format, model=None):
        probabilities = prediction.tolist()
        label = self.labels[int(prediction.argmax())]
        if output_format == "tsv":
            return label + "\t" + "\t".join(f"{p:.6f}" for p in probabilities)
        return json.dumps({"label": label,
                           "probabilities": dict(zip(self.labels, [round(p, 6) for p in probabilities]))})

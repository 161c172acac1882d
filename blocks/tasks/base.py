"""The task-type interface: what a label is, and everything that follows from it.

A config's ``task.type`` names a task type. The engine, the teacher cache, the losses, the
metrics and the CLI never branch on that name; they ask the task type:

* **labels** — how they are read from rows (:meth:`TaskType.parse_labels`), filled in for
  examples without a gold label (:meth:`TaskType.unlabelled`), and collated into a batch
  (:meth:`TaskType.collate_labels`): one label per example for classification and regression,
  one per word for tagging;
* **the model's output** — which edge kinds a model's output node may have
  (:attr:`TaskType.output_kinds`) and how many outputs a head has (:attr:`TaskType.num_outputs`,
  the value of ``"labels"`` in a graph);
* **decoding** — from the output of a batch to per-example predictions
  (:meth:`TaskType.decode_batch`: probabilities, a score, a tag sequence by argmax or Viterbi);
* **metrics** — which metrics make sense (:meth:`TaskType.metric_problem`), the default list,
  and computing them over a split (:meth:`TaskType.metrics`);
* **prediction output** — the lines ``blocks predict`` writes (:meth:`TaskType.format_prediction`);
* **persistence** — ``task.json`` in a run directory (:meth:`TaskType.to_json`), and files the
  task trains on the train split (:meth:`TaskType.save_files`, :meth:`TaskType.load_files`: the
  seq2seq subword vocabularies);
* **generation** (optional) — a task whose predictions come from running a model step by step
  (:attr:`TaskType.generates`, seq2seq) labels a batch with :meth:`TaskType.predict_batch`
  instead of decoding one forward pass; it may also encode input types of its own
  (:attr:`TaskType.input_types`) and compute metrics outside the ``METRICS`` registry
  (:attr:`TaskType.own_metrics`).

Each task type registers itself in :data:`TASK_TYPES` with :func:`register_task_type`.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from blocks.errors import ConfigError, did_you_mean

#: The label of an example without a gold label (in a stage's transfer set): this index for
#: classes (F.cross_entropy's default ignore_index), NaN for regression.
UNLABELLED = -100

TASK_TYPES: dict[str, type["TaskType"]] = {}


def register_task_type(cls: type["TaskType"]) -> type["TaskType"]:
    TASK_TYPES[cls.name] = cls
    return cls


class TaskType:
    """Base of task types; see the module docstring for what each method answers."""

    name: ClassVar[str]
    #: Edge kinds a model's output node may have for this task (see :mod:`blocks.values`).
    output_kinds: ClassVar[tuple[str, ...]]
    #: Whether each example has one label (classification, regression) or one per word.
    per_token: ClassVar[bool] = False

    #: Model input types (``inputs.<name>.type``) this task encodes itself (:meth:`encode_input`).
    input_types: ClassVar[tuple[str, ...]] = ()
    #: Metric names this task computes itself, not registered in ``METRICS`` for other tasks.
    own_metrics: ClassVar[tuple[str, ...]] = ()
    #: Predictions come from :meth:`predict_batch` (generation), not :meth:`decode_batch`.
    generates: ClassVar[bool] = False

    labels: list[str]
    positive: int = 1

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, task_config: dict, train_rows: list, label_field: str, mapping: dict,
                    file: str | None = None) -> "TaskType":
        """The task of a config, with its label set discovered from the training rows if needed."""
        raise NotImplementedError

    @classmethod
    def from_values(cls, values: dict) -> "TaskType":
        """Rebuild from :meth:`to_json`'s output (a run directory's ``task.json``)."""
        raise NotImplementedError

    def to_json(self) -> dict:
        raise NotImplementedError

    def describe(self) -> str:
        """One line for ``validate`` and the log."""
        return f"{self.name} ({len(self.labels)} labels: {', '.join(self.labels)})"

    # -- labels ---------------------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        return len(self.labels)

    def num_outputs_of(self, model: str) -> int:
        """The outputs of one model (seq2seq: a model with vocabularies of its own predicts theirs)."""
        return self.num_outputs

    def parse_labels(self, rows: list, label_field: str, mapping: dict) -> Any:
        """The gold labels of ``rows`` (a tensor ``[N]``, or a list of ``[length]`` tensors)."""
        raise NotImplementedError

    def unlabelled(self, lengths: list[int]) -> Any:
        """Labels for examples without gold labels (``lengths``: each example's word count)."""
        raise NotImplementedError

    def concat_labels(self, parts: list) -> Any:
        """Labels of several parts of a split, in order (transfer sets)."""
        return torch.cat(parts)

    def select_labels(self, labels: Any, index: torch.Tensor) -> Any:
        """The labels of the examples at ``index`` (a subset, in that order)."""
        return labels[index]

    def collate_labels(self, labels: Any, index: torch.Tensor) -> torch.Tensor:
        """The label tensor of a batch of the examples at ``index``."""
        return labels[index]

    # -- predictions and metrics ---------------------------------------------------------------
    def decode_batch(self, output: Any, batch) -> Any:
        """Per-example predictions of a batch from the model's output value (on the CPU)."""
        raise NotImplementedError

    def join_predictions(self, chunks: list, order: list[torch.Tensor]) -> Any:
        """Batch predictions (in ``order``) back in the split's example order."""
        scores = torch.cat(chunks)
        result = torch.empty_like(scores)
        result[torch.cat(order)] = scores
        return result

    @property
    def default_metrics(self) -> list[str]:
        return self.config_default_metrics(self.to_json())

    @classmethod
    def config_default_metrics(cls, task_config: dict) -> list[str]:
        """The metrics of a config's task when it lists none."""
        raise NotImplementedError

    def metric_problem(self, name: str) -> str | None:
        """Why metric ``name`` does not apply to this task (None when it does)."""
        return None

    def metrics(self, predictions: Any, split, names: list[str], model: str | None = None) -> dict[str, float]:
        """Metrics ``names`` of ``model``'s predictions of ``split``."""
        raise NotImplementedError

    def format_prediction(self, prediction: Any, example: dict, output_format: str, model: str | None = None) -> str:
        """The text ``blocks predict`` writes for one example (``example``: its raw fields) that
        ``model`` predicted."""
        raise NotImplementedError

    def prediction_header(self, output_format: str) -> str | None:
        """A header line for ``blocks predict``'s TSV output, if any."""
        return None

    # -- optional: inputs, files and generation of their own (seq2seq) ------------------------------
    def input_vocabulary(self, input_type: str, owner: str | None = None) -> Any:
        """The vocabulary (its length and ``pad_index``) of one of :attr:`input_types`; ``owner``:
        the model whose own vocabularies it is, None for the task's."""
        raise NotImplementedError

    def encode_input(self, input_type: str, texts: list[str], max_length: int | None, owner: str | None = None
                     ) -> tuple[list[torch.Tensor], int, int]:
        """Id tensors of ``texts`` for one of :attr:`input_types` (``max_length``: the input's,
        None when not set; ``owner`` as in :meth:`input_vocabulary`), the number of texts cut and
        the limit they were cut to."""
        raise NotImplementedError

    def save_files(self, run_dir) -> None:
        """Write what the task learned from the train split into the run directory."""

    def load_files(self, run_dir) -> None:
        """Read what :meth:`save_files` wrote (``test`` and ``predict`` from a run directory)."""

    def check_files(self, run_dir) -> None:
        """A resumed run: what the task learned again from the train split is what it saved
        (a CheckpointError naming the file otherwise)."""

    def summary_extras(self) -> dict:
        """What a run's summary records beside the scores (seq2seq: the metric signatures)."""
        return {}

    def predict_batch(self, experiment, model_name: str, batch, final: bool) -> Any:
        """Per-example predictions of a batch by running the model (:attr:`generates` tasks).
        ``final``: the final evaluation, test or predict (else a dev evaluation during training)."""
        raise NotImplementedError


def task_from_config(task_config: dict, train_rows: list, label_field: str, mapping: dict,
                     file: str | None = None) -> TaskType:
    return task_class(task_config["type"], file).from_config(task_config, train_rows, label_field, mapping, file)


def task_from_json(values: dict) -> TaskType:
    return task_class(values["type"], None).from_values(values)


def task_class(name: str, file: str | None) -> type[TaskType]:
    load_task_types()
    if name not in TASK_TYPES:
        raise ConfigError(f"unknown task type '{name}'{did_you_mean(name, TASK_TYPES)} "
                          f"(known: {', '.join(TASK_TYPES)})", file, "/task/type")
    return TASK_TYPES[name]


def load_task_types() -> None:
    import blocks.tasks.classification  # noqa: F401
    import blocks.tasks.regression  # noqa: F401
    import blocks.tasks.tagging  # noqa: F401
    import blocks.tasks.seq2seq  # noqa: F401

"""Labelling new examples with a trained model of a run directory, from Python or ``blocks predict``.

    from blocks.predictor import Predictor

    predictor = Predictor("runs/demo")          # the model the last stage trained (the student)
    predictor.predict(["a gorgeous , witty film", "a dull mess"])
    # [{"label": "1", "probabilities": {"0": 0.08, "1": 0.92}}, {"label": "0", ...}]
    Predictor("runs/mrpc").predict([("The cat sat .", "A cat was sitting .")])   # a sentence-pair model
    predictor.predict([{"text": "a gorgeous , witty film"}])                      # rows keyed by field

An example is a text (for a model reading one text field), a tuple or list of texts (one per
field the model reads, in :attr:`Predictor.fields` order), or a dict keyed by those fields. What a
prediction holds is the task's: ``label`` and ``probabilities`` (classification), ``score``
(regression). Nothing is written to disk.
"""
from __future__ import annotations

import json
import os
from typing import Iterable

from blocks.data.readers import Row, read_rows
from blocks.errors import CheckpointError, DataError


def _quiet(*args, **kwargs) -> None:
    pass


class Predictor:
    """One trained model of a run directory, ready to label examples.

    Args:
        run_dir: a run directory (``blocks train`` wrote it).
        model: the model to use; default: the one the last stage trained.
        threads: CPU threads PyTorch computes with; default: the run config's ``threads``, else
            :func:`blocks.threads.default_threads`.
        batch_size: examples per forward pass.
        trust_imports: import the Python modules the run's config lists in ``imports`` (code from
            the run directory runs here: only for runs from a source you trust).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``; default: the run's device, or
            the CPU for a run trained on CUDA where there is no CUDA device (``note`` is told).
    """

    def __init__(self, run_dir: str | os.PathLike, model: str | None = None, threads: int | None = None,
                 batch_size: int = 256, trust_imports: bool = False, device: str | None = None, note=None):
        from blocks.engine.run import final_model, load_run
        from blocks.experiment import inference_device
        from blocks.threads import use_threads

        self.directory, self.experiment, state = load_run(run_dir, log=_quiet, trust_imports=trust_imports)
        config = self.experiment.config
        use_threads(threads or config.values.get("threads"))
        self.model = model or final_model(config)
        if self.model not in state["models"]:
            raise CheckpointError(f"model '{self.model}' has not finished training "
                                  f"(finished: {', '.join(state['models'])})", str(self.directory.progress_file))
        self.device = inference_device(config["device"], device, note)
        self.batch_size = batch_size
        used = set(self.experiment.model_inputs[self.model].values())
        # a seq2seq decoder's target prefix is generated, not read
        self._inputs = {key: field for key, field in self.experiment.fields.items()
                        if key in used and field.type != "target"}
        # fields the task's data maps to null: a pair input's second text, absent from a task of
        # single sentences in a multi-task run
        self._absent = {name for name, column in config["data"].get("fields", {}).items() if column is None}
        #: the data fields the model reads, in the order a tuple example gives them
        self.fields: list[str] = list(dict.fromkeys(
            name for field in self._inputs.values() for name in (field.field, field.pair_field)
            if name and name not in self._absent))
        self.experiment.models[self.model].to(self.device)

    @property
    def task(self):
        return self.experiment.task

    # -- examples in, predictions out -----------------------------------------------------------
    def predict(self, examples: Iterable[str | tuple | list | dict]) -> list[dict]:
        """The prediction for each example (see the module's documentation for what they are)."""
        rows = [self.example_row(example, "<examples>", number) for number, example in enumerate(examples, 1)]
        return [json.loads(text) for text in self.formatted(rows, {}, "<examples>", "jsonl")]

    def example_row(self, example: str | tuple | list | dict, source: str, number: int) -> Row:
        """One example as a row keyed by the model's fields (``source`` and ``number`` name it in errors)."""
        if isinstance(example, dict):
            missing = [name for name in self.fields if name not in example]
            if missing:
                raise DataError(f"the example has no field '{missing[0]}' (model '{self.model}' reads "
                                f"{self._reads()})", source, number)
            return Row({name: example[name] for name in self.fields}, source, number)
        texts = [example] if isinstance(example, str) else list(example)
        if len(texts) != len(self.fields) or not all(isinstance(text, str) for text in texts):
            raise DataError(f"model '{self.model}' reads {self._reads()}; the example gives "
                            f"{len(texts)} text(s)", source, number)
        return Row(dict(zip(self.fields, texts)), source, number)

    def line_rows(self, text: str, source: str) -> list[Row]:
        """``blocks predict --lines``: one example per non-blank line, its texts separated by tabs
        for a model reading several fields (a single-field model takes the whole line)."""
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            if len(self.fields) == 1:
                rows.append(Row({self.fields[0]: line}, source, number))
                continue
            texts = line.split("\t")
            if len(texts) != len(self.fields):
                raise DataError(f"model '{self.model}' reads {self._reads()}: give them on one line, "
                                f"separated by a tab; the line has {len(texts)} text(s)", source, number)
            rows.append(Row(dict(zip(self.fields, texts)), source, number))
        return rows

    def file_rows(self, path: str, text: str | None = None, format: str | None = None) -> list[Row]:
        """The rows of a data file (or of ``text``, its content already read) in the run's reader settings."""
        data = self.experiment.config["data"]
        options = dict(data.get("reader", {}))
        if format:
            options["format"] = format
        rows = read_rows(path, **options, text=text)
        if not rows:
            raise DataError("the input holds no examples", path)
        return rows

    def formatted(self, rows: list[Row], mapping: dict, source: str, output_format: str) -> list[str]:
        """For each row, the task's text for its prediction (a TSV line or a JSON object).

        ``mapping`` maps the model's fields to the rows' columns (``{}``: rows keyed by field)."""
        from blocks.data.dataset import encode_rows, field_value
        from blocks.engine.evaluation import predict

        if not rows:
            return []
        experiment = self.experiment
        mapping = {**mapping, **{name: None for name in self._absent}}
        split = encode_rows("input", rows, self._inputs, experiment.vocabularies, self.task, None, None,
                            mapping, source)
        predictions = predict(experiment, self.model, split, self.batch_size, self.device,
                              experiment.config["precision"])
        return [self.task.format_prediction(prediction, {name: field_value(row, name, mapping) for name in self.fields},
                                            output_format, self.model)
                for prediction, row in zip(predictions, rows)]

    def _reads(self) -> str:
        if len(self.fields) == 1:
            return f"one text field ({self.fields[0]})"
        return f"{len(self.fields)} text fields ({', '.join(self.fields)})"

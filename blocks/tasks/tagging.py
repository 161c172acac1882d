"""Sequence tagging: one label per word (named entities, chunks, part-of-speech tags).

Each example is a sentence of words with one tag per word. The tags are read from a field whose
value is a list (the ``columns`` reader gives lists) or a whitespace-separated string, and must
have as many entries as the words of every word-level input. ``task.scheme`` declares how the
file's tags encode entities (``IOB1``, ``IOB2``, ``BIOES``, or ``none`` for tags without entity
structure, such as part-of-speech); ``task.model_scheme`` the scheme the model predicts in
(default: the file's), the tags being converted on read. A tag sequence that breaks its scheme
(``I-X`` after ``O`` in IOB2) is an error naming the file and line, or is repaired (the invalid
``I-X`` starts an entity) with ``"repair": true``.

The model's output is either a sequence of per-word logits (decoded by argmax) or the
:class:`~blocks.values.TagScores` of a ``CRF`` node (decoded by Viterbi). Entity-level metrics
(``entity_f1``, ``entity_precision``, ``entity_recall``) are computed by ``seqeval`` in its
default, conlleval-compatible mode, on tags converted to IOB2; ``token_accuracy`` counts words.
"""
from __future__ import annotations

import json

import torch

from blocks.data.batching import pad_ids
from blocks.errors import ConfigError, DataError
from blocks.registry import register_metric
from blocks.tasks.base import UNLABELLED, TaskType, register_task_type
from blocks.tasks.classification import TAGGING_METRICS
from blocks.values import SEQUENCE, TAG_SCORES, Sequence, TagScores

ENTITY_SCHEMES = ("IOB1", "IOB2", "BIOES")


def word_list(value, row, field: str) -> list[str]:
    """A field's words: a list as is, a string split on whitespace."""
    if isinstance(value, list):
        return value
    return value.split()


class TagPredictions:
    """Predicted and gold tag sequences of a split, as strings in the IOB2 scheme (``scheme``
    None: tags without entity structure)."""

    def __init__(self, predicted: list[list[str]], gold: list[list[str]], scheme: str | None):
        self.predicted, self.gold, self.scheme = predicted, gold, scheme


@register_task_type
class Tagging(TaskType):
    name = "tagging"
    output_kinds = (SEQUENCE, TAG_SCORES)
    per_token = True

    def __init__(self, labels: list[str], scheme: str = "IOB2", model_scheme: str | None = None,
                 repair: bool = False):
        self.labels = list(labels)
        self.positive = 0
        self.scheme = scheme
        self.model_scheme = model_scheme or scheme
        self.repair = repair

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, task_config, train_rows, label_field, mapping, file=None):
        scheme = task_config.get("scheme") or "IOB2"
        model_scheme = task_config.get("model_scheme") or scheme
        if (scheme == "none") != (model_scheme == "none"):
            raise ConfigError(f"tags in scheme '{scheme}' cannot be converted to '{model_scheme}'", file,
                              "/task/model_scheme")
        task = cls([], scheme, model_scheme, bool(task_config.get("repair")))
        labels = task_config.get("labels")
        if labels is None:
            seen: set[str] = set()
            for row in train_rows:
                seen.update(task.read_tags(row, label_field, mapping))
            if scheme == "none":
                labels = sorted(seen)
            else:  # every tag of the scheme for each entity type seen (an I-PRT may appear only in dev)
                from blocks.data.tag_schemes import scheme_labels

                labels = scheme_labels(sorted({tag[2:] for tag in seen if tag != "O"}), model_scheme)
        if len(labels) < 2:
            raise DataError(f"tagging needs at least two tags; found {labels}", train_rows[0].file)
        task.labels = list(labels)
        return task

    @classmethod
    def from_values(cls, values):
        return cls(values["labels"], values.get("scheme", "IOB2"), values.get("model_scheme"),
                   values.get("repair", False))

    def to_json(self):
        return {"type": self.name, "labels": self.labels, "positive": 0, "scheme": self.scheme,
                "model_scheme": self.model_scheme, "repair": self.repair}

    def describe(self):
        scheme = "" if self.scheme == "none" else (
            f", {self.scheme} tags" + (f" read as {self.model_scheme}" if self.model_scheme != self.scheme else ""))
        return f"tagging ({len(self.labels)} tags{scheme}: {', '.join(self.labels)})"

    def transition_constraints(self):
        """(start_allowed [T], allowed [T, T], end_allowed [T]) bool tensors of the model's tag
        scheme, for a CRF; None for tags without entity structure."""
        if self.model_scheme == "none":
            return None
        from blocks.data.tag_schemes import allowed_transitions

        return allowed_transitions(self.labels, self.model_scheme)

    # -- labels ---------------------------------------------------------------------------------
    def read_tags(self, row, label_field: str, mapping: dict) -> list[str]:
        """One row's tags, checked against the file's scheme and converted to the model's."""
        from blocks.data import tag_schemes
        from blocks.data.dataset import field_value

        tags = [tag.strip() for tag in word_list(field_value(row, label_field, mapping), row, label_field)]
        if self.scheme == "none":
            return tags
        problem = tag_schemes.check(tags, self.scheme)
        if problem is not None:
            if not self.repair:
                position, reason = problem
                raise DataError(f"tag {position + 1} of the sentence ('{tags[position]}'): {reason}; set "
                                f"\"repair\": true in the task to repair such tags",
                                row.file, row.line + position)
            tags = tag_schemes.repair(tags, self.scheme)
        if self.model_scheme != self.scheme:
            tags = tag_schemes.convert(tags, self.scheme, self.model_scheme)
        return tags

    def parse_labels(self, rows, label_field, mapping):
        index = {label: i for i, label in enumerate(self.labels)}
        result = []
        for row in rows:
            tags = self.read_tags(row, label_field, mapping)
            if not tags:
                raise DataError("an empty sentence (no words, no tags)", row.file, row.line)
            ids = []
            for position, tag in enumerate(tags):
                if tag not in index:
                    raise DataError(f"tag '{tag}' (word {position + 1}) was not seen in the training data "
                                    f"(tags: {', '.join(self.labels)})", row.file, row.line + position)
                ids.append(index[tag])
            result.append(torch.tensor(ids, dtype=torch.long))
        return result

    def unlabelled(self, lengths):
        return [torch.full((length,), UNLABELLED, dtype=torch.long) for length in lengths]

    def concat_labels(self, parts):
        return [labels for part in parts for labels in part]

    def select_labels(self, labels, index):
        return [labels[i] for i in index.tolist()]

    def collate_labels(self, labels, index):
        return pad_ids([labels[i] for i in index.tolist()], UNLABELLED)[0]

    # -- predictions and metrics ---------------------------------------------------------------
    def decode_batch(self, output, batch):
        """Each example's predicted tag ids, one per real position."""
        if isinstance(output, TagScores):
            from blocks.layers.crf import crf_viterbi

            tags, _ = crf_viterbi(output)
            mask = output.mask
        elif isinstance(output, Sequence):
            tags, mask = output.values.argmax(dim=-1), output.mask
        else:
            raise ValueError("a tagging model's output must be a sequence of per-word logits or a CRF node")
        lengths = mask.sum(dim=1).tolist()
        tags = tags.cpu()
        return [tags[i, :length].clone() for i, length in enumerate(lengths)]

    def join_predictions(self, chunks, order):
        flat = [tags for chunk in chunks for tags in chunk]
        positions = torch.cat(order).tolist()
        result: list = [None] * len(flat)
        for position, tags in zip(positions, flat):
            result[position] = tags
        return result

    def tag_strings(self, ids: torch.Tensor, length: int | None = None) -> list[str]:
        """Tag ids as strings in the IOB2 scheme (for metrics and output); padded to ``length`` with O."""
        from blocks.data import tag_schemes

        tags = [self.labels[i] for i in ids.tolist()]
        if length is not None and len(tags) < length:
            tags += ["O"] * (length - len(tags))  # words beyond a truncated input: nothing predicted
        if self.model_scheme not in ("none", "IOB2"):
            tags = tag_schemes.convert(tags, self.model_scheme, "IOB2")
        return tags

    def predictions(self, predicted: list[torch.Tensor], gold: list[torch.Tensor]) -> TagPredictions:
        strings_gold = [self.tag_strings(g) for g in gold]
        strings_predicted = [self.tag_strings(p, len(g)) for p, g in zip(predicted, gold)]
        return TagPredictions(strings_predicted, strings_gold, None if self.model_scheme == "none" else "IOB2")

    @classmethod
    def config_default_metrics(cls, task_config):
        if (task_config.get("scheme") or "IOB2") == "none":
            return ["token_accuracy"]
        return ["entity_f1", "entity_precision", "entity_recall", "token_accuracy"]

    def metric_problem(self, name):
        if name not in TAGGING_METRICS:
            return f"metric '{name}' does not apply to a tagging task (tagging metrics: {', '.join(TAGGING_METRICS)})"
        if self.scheme == "none" and name != "token_accuracy":
            return f"metric '{name}' needs entity tags (task.scheme IOB1, IOB2 or BIOES); these tags have none"
        return None

    def metrics(self, predictions, split, names, model=None):
        from blocks.metrics import compute_metrics

        return compute_metrics(names, self.predictions(predictions, split.labels))

    def entity_report(self, predictions, split) -> dict[str, dict[str, float]]:
        """Precision, recall, F1 and support per entity type (and micro average), by seqeval."""
        from seqeval.metrics import classification_report

        tagged = self.predictions(predictions, split.labels)
        report = classification_report(tagged.gold, tagged.predicted, output_dict=True, zero_division=0)
        return {name: {key.replace("-score", ""): float(value) for key, value in values.items()}
                for name, values in report.items() if name not in ("macro avg", "weighted avg")}

    def prediction_header(self, output_format):
        return None

    def format_prediction(self, prediction, example, output_format, model=None):
        """CoNLL columns (word, tag) with a blank line after the sentence, or a JSON object with
        the words, tags and entity spans."""
        from blocks.data import tag_schemes

        value = next(iter(example.values()), [])  # the words the model read
        words = value if isinstance(value, list) else value.split()
        tags = self.tag_strings(prediction, len(words))
        if output_format == "jsonl":
            entities = []
            if self.model_scheme != "none":
                for kind, start, end in tag_schemes.spans(tags, "IOB2"):
                    entities.append({"type": kind, "start": start, "end": end, "text": " ".join(words[start:end])})
            return json.dumps({"words": words, "tags": tags, "entities": entities})
        return "\n".join(f"{word}\t{tag}" for word, tag in zip(words, tags)) + "\n"


# -- metrics ----------------------------------------------------------------------------------------
def _check(predictions) -> TagPredictions:
    if not isinstance(predictions, TagPredictions):
        raise ValueError("this metric needs tag sequences (a tagging task)")
    return predictions


def _seqeval(score: str, predictions) -> float:
    """A micro-averaged seqeval score (``f1_score``, ``precision_score``, ``recall_score``) in its
    default, conlleval-compatible mode; 0.0 without sentences or entities."""
    import seqeval.metrics

    p = _check(predictions)
    return float(getattr(seqeval.metrics, score)(p.gold, p.predicted, zero_division=0)) if p.gold else 0.0


@register_metric("entity_f1")
def entity_f1(predictions) -> float:
    """Micro-averaged entity F1 (seqeval, conlleval-compatible); 0.0 without entities."""
    return _seqeval("f1_score", predictions)


@register_metric("entity_precision")
def entity_precision(predictions) -> float:
    """Micro-averaged entity precision (seqeval, conlleval-compatible)."""
    return _seqeval("precision_score", predictions)


@register_metric("entity_recall")
def entity_recall(predictions) -> float:
    """Micro-averaged entity recall (seqeval, conlleval-compatible)."""
    return _seqeval("recall_score", predictions)


@register_metric("token_accuracy")
def token_accuracy(predictions) -> float:
    """Fraction of words whose predicted tag is the gold tag."""
    p = _check(predictions)
    total = sum(len(g) for g in p.gold)
    right = sum(sum(a == b for a, b in zip(pred, gold)) for pred, gold in zip(p.predicted, p.gold))
    return right / total if total else 0.0

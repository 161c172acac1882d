"""From a config's ``data`` section and the models' ``inputs`` to batches of tensors.

file -> rows (with file and line) -> label indexes and per-input token ids (tokenized and indexed
once, up front) -> padded batches with masks. Teacher and student may read the same field through
different tokenizers and vocabularies; identical input definitions are encoded once and shared.
"""
from __future__ import annotations

import collections
import json
import os
from dataclasses import dataclass
from typing import Any

import torch

from blocks.data.batching import pad_chars, pad_ids
from blocks.data.pretrained_tokenizer import PretrainedTokenizer, resolve_pretrained
from blocks.data.readers import Row, read_rows
from blocks.data.vocabulary import Vocabulary
from blocks.errors import ConfigError, DataError
from blocks.registry import TOKENIZERS
from blocks.values import CHARS, TOKENS, Sequence, Spec

SPLITS = ("train", "dev", "test")
PRETRAINED = "pretrained"
# The label of an example without a gold label (in a stage's transfer set): this index for
# classification (F.cross_entropy's default ignore_index), NaN for regression.
UNLABELLED = -100


@dataclass
class Task:
    """The label side of the data: classification labels in order, or regression."""

    type: str
    labels: list[str]
    positive: int = 1

    @property
    def num_outputs(self) -> int:
        return 1 if self.type == "regression" else len(self.labels)

    def to_json(self) -> dict:
        return {"type": self.type, "labels": self.labels, "positive": self.positive}

    @classmethod
    def from_json(cls, values: dict) -> "Task":
        return cls(values["type"], values["labels"], values.get("positive", 1))


@dataclass
class InputField:
    """One model input: a data field read through a tokenizer into a vocabulary.

    For ``pretrained`` inputs the tokenizer is a :class:`PretrainedTokenizer`, the vocabulary is
    its own id space, and ``pair_field`` may name a second field encoded as a sentence pair.
    """

    key: str  # shared by every model input with the same definition
    field: str
    type: str
    tokenizer: Any
    lowercase: bool
    max_length: int | None
    vocab: str
    max_word_length: int
    pair_field: str | None = None

    def tokens(self, text: str) -> list[str]:
        if self.lowercase:
            text = text.lower()
        tokens = self.tokenizer(text)
        return tokens[: self.max_length] if self.max_length else tokens


@dataclass
class Batch:
    """A collated batch: model inputs by input key, labels, example indexes, ranking groups.

    ``labelled`` is None when every example has a gold label; in a transfer set that also holds
    unlabelled examples it is a bool mask of the examples that do (the others' labels are
    :data:`UNLABELLED`, or NaN for regression), which the gold-label losses average over.
    """

    inputs: dict[str, Sequence]
    labels: torch.Tensor | None
    index: torch.Tensor
    groups: list[str] | None = None
    labelled: torch.Tensor | None = None

    def to(self, device: torch.device) -> "Batch":
        if device.type == "cpu":
            return self
        blocking = {"non_blocking": True}
        inputs = {k: Sequence(v.values.to(device, **blocking), v.mask.to(device, **blocking))
                  for k, v in self.inputs.items()}
        labels = self.labels.to(device, **blocking) if self.labels is not None else None
        labelled = self.labelled.to(device, **blocking) if self.labelled is not None else None
        return Batch(inputs, labels, self.index, self.groups, labelled)

    def pin_memory(self) -> "Batch":
        inputs = {k: Sequence(v.values.pin_memory(), v.mask.pin_memory()) for k, v in self.inputs.items()}
        labels = self.labels.pin_memory() if self.labels is not None else None
        labelled = self.labelled.pin_memory() if self.labelled is not None else None
        return Batch(inputs, labels, self.index, self.groups, labelled)

    def __len__(self) -> int:
        return len(self.index)


def build_input_fields(models: dict, file: str | None, base_dir=None, locations: dict[str, str] | None = None
                       ) -> tuple[dict[str, InputField], dict[str, dict[str, str]]]:
    """Every distinct input definition, and for each model its input names -> input keys.

    ``locations`` maps pretrained tokenizer locations as written in the config to folders that
    replace them (a run directory's copies).
    """
    fields: dict[str, InputField] = {}
    by_definition: dict[str, str] = {}
    model_inputs: dict[str, dict[str, str]] = {}
    vocab_kinds: dict[str, tuple[str, str]] = {}
    for model_name, model in models.items():
        model_inputs[model_name] = {}
        for input_name, definition in model["inputs"].items():
            path = f"/models/{model_name}/inputs/{input_name}"
            canonical = json.dumps(definition, sort_keys=True)
            if canonical not in by_definition:
                key = f"input{len(by_definition)}"
                by_definition[canonical] = key
                fields[key] = make_input_field(key, definition, file, path, base_dir, locations or {})
            model_inputs[model_name][input_name] = by_definition[canonical]
            if definition["type"] == PRETRAINED:
                continue  # a pretrained tokenizer brings its own vocabulary
            kind = vocab_kinds.setdefault(definition["vocab"], (definition["type"], path))
            if kind[0] != definition["type"]:
                raise ConfigError(f"vocabulary '{definition['vocab']}' is used for {kind[0]} at {kind[1]} and for "
                                  f"{definition['type']} here; give the {definition['type']} input its own vocab",
                                  file, f"{path}/vocab")
    return fields, model_inputs


def make_input_field(key: str, definition: dict, file: str | None, path: str, base_dir,
                     locations: dict[str, str]) -> InputField:
    if definition["type"] == PRETRAINED:
        written = definition["tokenizer"]
        location = locations.get(written) or resolve_pretrained(written, base_dir, file, f"{path}/tokenizer")
        tokenizer = PretrainedTokenizer(location, definition["max_length"], written, file, f"{path}/tokenizer")
        return InputField(key=key, field=definition["field"], type=PRETRAINED, tokenizer=tokenizer,
                          lowercase=False, max_length=tokenizer.max_length, vocab=f"pretrained:{written}",
                          max_word_length=definition["max_word_length"], pair_field=definition["pair_field"])
    return InputField(key=key, field=definition["field"], type=definition["type"],
                      tokenizer=build_tokenizer(definition["tokenizer"], file, f"{path}/tokenizer"),
                      lowercase=definition["lowercase"], max_length=definition["max_length"],
                      vocab=definition["vocab"], max_word_length=definition["max_word_length"])


def build_tokenizer(spec: str | dict, file: str | None, path: str):
    if isinstance(spec, str):
        name, params = spec, {}
    else:
        name, params = spec["type"], {k: v for k, v in spec.items() if k != "type"}
    TOKENIZERS.get(name, file, path if isinstance(spec, str) else f"{path}/type")
    TOKENIZERS.validate_params(name, params, file, path)
    return TOKENIZERS.build(name, params=params)


@dataclass
class SplitSource:
    name: str
    path: str
    reader: dict
    fields: dict


def split_sources(data: dict) -> dict[str, SplitSource]:
    """The configured splits with absolute paths and merged reader options."""
    sources = {}
    for split in SPLITS:
        entry = data.get(split)
        if entry is None:
            continue
        if isinstance(entry, str):
            entry = {"path": entry}
        path = entry["path"] if os.path.isabs(entry["path"]) else os.path.join(data["root"], entry["path"])
        reader = {**data.get("reader", {}), **entry.get("reader", {})}
        fields = {**data.get("fields", {}), **entry.get("fields", {})}
        sources[split] = SplitSource(split, os.path.normpath(path), reader, fields)
    return sources


def read_split(source: SplitSource) -> list[Row]:
    return read_rows(source.path, **source.reader)


def field_value(row: Row, name: str, mapping: dict) -> str:
    """The value of a logical field in a row (mapped to a column name or index)."""
    column = mapping.get(name, name)
    if isinstance(column, int):
        values = list(row.fields.values())
        if column >= len(values):
            raise DataError(f"field '{name}' maps to column {column} but the row has {len(values)} columns",
                            row.file, row.line)
        return values[column]
    try:
        return row.fields[column]
    except KeyError:
        available = ", ".join(row.fields)
        raise DataError(f"no column '{column}' (for field '{name}'); columns: {available}", row.file, row.line) from None


def discover_task(task_config: dict, train_rows: list[Row], label_field: str, mapping: dict) -> Task:
    if task_config["type"] == "regression":
        return Task("regression", [], 0)
    labels = task_config["labels"]
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
                              None, "/task/positive_label")
        positive = labels.index(task_config["positive_label"])
    return Task("classification", list(labels), positive)


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def count_tokens(fields: dict[str, InputField], rows: list[Row], mapping: dict) -> dict[str, collections.Counter]:
    """Token (or character) counts per vocabulary over the given rows."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for input_field in fields.values():
        if input_field.type == PRETRAINED:
            continue  # a pretrained tokenizer brings its vocabulary
        counter = counts[input_field.vocab]
        for row in rows:
            tokens = input_field.tokens(field_value(row, input_field.field, mapping))
            if input_field.type == CHARS:
                for token in tokens:
                    counter.update(token[: input_field.max_word_length])
            else:
                counter.update(tokens)
    return counts


class EncodedSplit:
    """One split, tokenized and indexed once: per-example id tensors, labels, lengths."""

    def __init__(self, name: str, file: str, ids: dict[str, list[torch.Tensor]], labels: torch.Tensor | None,
                 groups: list[str] | None, pad_index: dict[str, int], input_types: dict[str, str]):
        self.name, self.file = name, file
        self.ids, self.labels, self.groups = ids, labels, groups
        self.pad_index, self.input_types = pad_index, input_types
        self.labelled: torch.Tensor | None = None  # a transfer set with unlabelled examples: which have labels
        self.size = len(next(iter(ids.values()))) if ids else 0
        lengths = [torch.tensor([len(t) for t in seqs]) for seqs in ids.values()]
        self.lengths = torch.stack(lengths).max(dim=0).values if lengths else torch.zeros(0, dtype=torch.long)

    def __len__(self) -> int:
        return self.size

    def collate(self, index: torch.Tensor) -> Batch:
        positions = index.tolist()
        inputs = {}
        for key, sequences in self.ids.items():
            chosen = [sequences[i] for i in positions]
            pad = self.pad_index[key]
            if self.input_types[key] == CHARS:
                values, mask = pad_chars(chosen, pad)
            else:
                values, mask = pad_ids(chosen, pad)
            inputs[key] = Sequence(values, mask)
        labels = self.labels[index] if self.labels is not None else None
        groups = [self.groups[i] for i in positions] if self.groups is not None else None
        labelled = self.labelled[index] if self.labelled is not None else None
        return Batch(inputs, labels, index, groups, labelled)


def encode_rows(name: str, rows: list[Row], fields: dict[str, InputField], vocabularies: dict[str, Vocabulary],
                task: Task, label_field: str | None, group_field: str | None, mapping: dict,
                file: str) -> EncodedSplit:
    """Tokenize and index every input; parse labels (None when ``label_field`` is None)."""
    ids: dict[str, list[torch.Tensor]] = {}
    for key, input_field in fields.items():
        if input_field.type == PRETRAINED:
            texts = [field_value(row, input_field.field, mapping) for row in rows]
            pairs = ([field_value(row, input_field.pair_field, mapping) for row in rows]
                     if input_field.pair_field else None)
            ids[key] = input_field.tokenizer.encode(texts, pairs)
            continue
        vocab = vocabularies[input_field.vocab]
        encoded = []
        for row in rows:
            tokens = input_field.tokens(field_value(row, input_field.field, mapping)) or [vocab.tokens[vocab.unk_index]]
            if input_field.type == CHARS:
                words = [vocab.encode(list(token[: input_field.max_word_length])) or [vocab.unk_index]
                         for token in tokens]
                width = max(len(w) for w in words)
                matrix = torch.zeros(len(words), width, dtype=torch.long)
                for i, word in enumerate(words):
                    matrix[i, : len(word)] = torch.tensor(word)
                encoded.append(matrix)
            else:
                encoded.append(torch.tensor(vocab.encode(tokens), dtype=torch.long))
        ids[key] = encoded
    labels = None
    if label_field is not None:
        labels = parse_labels(rows, task, label_field, mapping)
    groups = [field_value(row, group_field, mapping) for row in rows] if group_field else None
    pad_index = {key: vocabularies[f.vocab].pad_index for key, f in fields.items()}
    types = {key: f.type for key, f in fields.items()}
    return EncodedSplit(name, file, ids, labels, groups, pad_index, types)


def parse_labels(rows: list[Row], task: Task, label_field: str, mapping: dict) -> torch.Tensor:
    if task.type == "regression":
        values = []
        for row in rows:
            text = field_value(row, label_field, mapping)
            try:
                values.append(float(text))
            except ValueError:
                raise DataError(f"label '{text}' is not a number (regression task)", row.file, row.line) from None
        return torch.tensor(values, dtype=torch.float)
    index = {label: i for i, label in enumerate(task.labels)}
    values = []
    for row in rows:
        text = field_value(row, label_field, mapping).strip()
        if text not in index:
            raise DataError(f"label '{text}' was not seen in the training data (labels: {', '.join(task.labels)})",
                            row.file, row.line)
        values.append(index[text])
    return torch.tensor(values, dtype=torch.long)


def input_specs(fields: dict[str, InputField], model_inputs: dict[str, str],
                vocabularies: dict[str, Vocabulary]) -> dict[str, Spec]:
    """Build-time Spec of each input of one model."""
    specs = {}
    for input_name, key in model_inputs.items():
        input_field = fields[key]
        kind = CHARS if input_field.type == CHARS else TOKENS
        extra = {"pretrained": input_field.tokenizer.location} if input_field.type == PRETRAINED else {}
        specs[input_name] = Spec(kind, None, vocabularies[input_field.vocab], extra)
    return specs

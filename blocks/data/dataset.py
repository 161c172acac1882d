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
from typing import Any, Iterable

import torch

from blocks.data.batching import pad_chars, pad_ids
from blocks.data.dev_split import DevCarve, dev_carve
from blocks.data.pretrained_tokenizer import PretrainedTokenizer, resolve_pretrained
from blocks.data.readers import Row, Rows, read_rows
from blocks.data.vocabulary import Vocabulary
from blocks.errors import ConfigError, DataError
from blocks.registry import TOKENIZERS
from blocks.tasks.base import UNLABELLED, TaskType
from blocks.values import CHARS, TOKENS, Sequence, Spec, WordPieces

__all__ = ["UNLABELLED", "SPLITS", "PRETRAINED", "Batch", "EncodedSplit", "InputField", "TaskType"]

SPLITS = ("train", "dev", "test")
PRETRAINED = "pretrained"
# A pretrained input over words (a tagging task): each example's ids are [pieces, 2] (piece id,
# word index); a batch is a WordPieces value.
PRETRAINED_WORDS = "pretrained-words"
#: Input types the task encodes itself (seq2seq: the source sentence, the target prefix); their
#: vocabulary is the task's (see :meth:`blocks.tasks.base.TaskType.encode_input`).
TASK_INPUT_TYPES = ("source", "target")
#: The tokens an input keeps of one example when its ``max_length`` is not set: one 2-million
#: character line would otherwise pad every batch it is in to 400,000 positions.
DEFAULT_MAX_TOKENS = 512


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
    words: bool = False  # the field holds words (a tagging task): split on whitespace, never re-tokenized
    owner: str | None = None  # a task input of a model with vocabularies of its own (seq2seq): that model

    @property
    def token_limit(self) -> int:
        """The tokens kept per example: ``max_length``, else :data:`DEFAULT_MAX_TOKENS`. A pretrained
        input's ``max_length`` counts the word pieces its tokenizer keeps, not words, so the words
        it reads are limited like those of a word-level input without one (a word past the pieces
        keeps its position without a state, lined up with the other word-level inputs)."""
        if self.type == PRETRAINED:
            return DEFAULT_MAX_TOKENS
        return self.max_length or DEFAULT_MAX_TOKENS

    def all_tokens(self, text: str | list[str]) -> list[str]:
        """The tokens of a field's value before truncation: a list of words as is (a tagging
        file's words), a string through the tokenizer (or split on whitespace for a word-level task)."""
        if isinstance(text, list) or self.words:
            tokens = text if isinstance(text, list) else text.split()
            if self.lowercase:
                tokens = [token.lower() for token in tokens]
            return tokens
        return self.tokenizer(text.lower() if self.lowercase else text)

    def tokens(self, text: str | list[str]) -> list[str]:
        """The tokens of a field's value, truncated to :attr:`token_limit`."""
        return self.all_tokens(text)[: self.token_limit]

    @property
    def storage_type(self) -> str:
        """How an example's ids are stored and collated (see :meth:`EncodedSplit.collate`)."""
        return PRETRAINED_WORDS if self.type == PRETRAINED and self.words else self.type


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
        inputs = {k: type(v)(*(t if t is None else t.to(device, **blocking) for t in v))
                  for k, v in self.inputs.items()}
        labels = self.labels.to(device, **blocking) if self.labels is not None else None
        labelled = self.labelled.to(device, **blocking) if self.labelled is not None else None
        return Batch(inputs, labels, self.index, self.groups, labelled)

    def pin_memory(self) -> "Batch":
        inputs = {k: type(v)(*(t if t is None else t.pin_memory() for t in v)) for k, v in self.inputs.items()}
        labels = self.labels.pin_memory() if self.labels is not None else None
        labelled = self.labelled.pin_memory() if self.labelled is not None else None
        return Batch(inputs, labels, self.index, self.groups, labelled)

    def __len__(self) -> int:
        return len(self.index)


def build_input_fields(models: dict, file: str | None, base_dir=None, locations: dict[str, str] | None = None,
                       words: bool = False, own_vocabularies: Iterable[str] = ()
                       ) -> tuple[dict[str, InputField], dict[str, dict[str, str]]]:
    """Every distinct input definition, and for each model its input names -> input keys.

    ``locations`` maps pretrained tokenizer locations as written in the config to folders that
    replace them (a run directory's copies). ``words``: the task labels words (tagging), so every
    input reads the fields as words. ``own_vocabularies``: models whose task inputs (seq2seq's
    source and target) are encoded with vocabularies of their own, so those inputs are theirs alone.
    """
    own_vocabularies = set(own_vocabularies)
    fields: dict[str, InputField] = {}
    by_definition: dict[str, str] = {}
    model_inputs: dict[str, dict[str, str]] = {}
    vocab_kinds: dict[str, tuple[str, str]] = {}
    for model_name, model in models.items():
        model_inputs[model_name] = {}
        for input_name, definition in model["inputs"].items():
            path = f"/models/{model_name}/inputs/{input_name}"
            owner = model_name if model_name in own_vocabularies and definition["type"] in TASK_INPUT_TYPES else None
            canonical = json.dumps([definition, owner], sort_keys=True)
            if canonical not in by_definition:
                key = f"input{len(by_definition)}"
                by_definition[canonical] = key
                fields[key] = make_input_field(key, definition, file, path, base_dir, locations or {}, owner)
                fields[key].words = words
            model_inputs[model_name][input_name] = by_definition[canonical]
            if definition["type"] == PRETRAINED or definition["type"] in TASK_INPUT_TYPES:
                continue  # a pretrained tokenizer, or the task, brings its own vocabulary
            kind = vocab_kinds.setdefault(definition["vocab"], (definition["type"], path))
            if kind[0] != definition["type"]:
                raise ConfigError(f"vocabulary '{definition['vocab']}' is used for {kind[0]} at {kind[1]} and for "
                                  f"{definition['type']} here; give the {definition['type']} input its own vocab",
                                  file, f"{path}/vocab")
    return fields, model_inputs


def make_input_field(key: str, definition: dict, file: str | None, path: str, base_dir,
                     locations: dict[str, str], owner: str | None = None) -> InputField:
    if definition["type"] == PRETRAINED:
        written = definition["tokenizer"]
        location = locations.get(written) or resolve_pretrained(written, base_dir, file, f"{path}/tokenizer")
        tokenizer = PretrainedTokenizer(location, definition["max_length"], written, file, f"{path}/tokenizer")
        return InputField(key=key, field=definition["field"], type=PRETRAINED, tokenizer=tokenizer,
                          lowercase=False, max_length=tokenizer.max_length, vocab=f"pretrained:{written}",
                          max_word_length=definition["max_word_length"], pair_field=definition["pair_field"])
    if definition["type"] in TASK_INPUT_TYPES:
        return InputField(key=key, field=definition["field"], type=definition["type"], tokenizer=None,
                          lowercase=False, max_length=definition["max_length"],
                          vocab=f"task:{definition['type']}" + (f"@{owner}" if owner else ""),
                          max_word_length=definition["max_word_length"], owner=owner)
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
    carve: DevCarve | None = None  # train and a dev carved from it: the train file, minus or only the dev rows
    max_examples: int | None = None  # keep a fixed random sample of this many rows
    tokenizer: str | dict | None = None  # transfer files: split each text field into words with this tokenizer


def split_sources(data: dict) -> dict[str, SplitSource]:
    """The configured splits with absolute paths and merged reader options."""
    sources = {}
    carve = dev_carve(data)
    for split in SPLITS:
        entry = data.get(split)
        if entry is None or (split == "dev" and carve is not None):
            continue
        if isinstance(entry, str):
            entry = {"path": entry}
        path = entry["path"] if os.path.isabs(entry["path"]) else os.path.join(data["root"], entry["path"])
        reader = {**data.get("reader", {}), **entry.get("reader", {})}
        fields = {**data.get("fields", {}), **entry.get("fields", {})}
        sources[split] = SplitSource(split, os.path.normpath(path), reader, fields,
                                     max_examples=entry.get("max_examples"))
    if carve is not None:
        train = sources["train"]
        sources["train"] = SplitSource("train", train.path, train.reader, train.fields, carve, train.max_examples)
        sources["dev"] = SplitSource("dev", train.path, train.reader, train.fields, carve)
    return sources


#: the seed of a split's ``max_examples`` sample: fixed, so every run (and seed) reads the same rows
SAMPLE_SEED = 20_201_116


def read_split(source: SplitSource) -> list[Row]:
    rows = read_rows(source.path, **source.reader)
    if source.carve is not None:
        train, dev = source.carve.split(rows, source.fields, source.path)
        rows = dev if source.name == "dev" else train
    if source.max_examples is not None and len(rows) > source.max_examples:
        rows = sample_rows(rows, source.max_examples)
    return rows


def sample_rows(rows: list[Row], count: int) -> list[Row]:
    """``count`` rows drawn at random with a fixed seed, kept in file order (notes of the reader
    carried over, with the sample's size)."""
    generator = torch.Generator().manual_seed(SAMPLE_SEED)
    keep = sorted(torch.randperm(len(rows), generator=generator)[:count].tolist())
    notes = list(getattr(rows, "notes", ()))
    notes.append(f"a fixed random sample of {count:,} of its {len(rows):,} rows (max_examples)")
    return Rows([rows[i] for i in keep], notes)


def field_value(row: Row, name: str, mapping: dict) -> str:
    """The value of a logical field in a row (mapped to a column name or index)."""
    column = mapping.get(name, name)
    if column is None:
        raise DataError(f"field '{name}' is mapped to null (absent from these files), but an input reads it "
                        f"(null suits a pair input's second text only)", row.file, row.line, field=name)
    if isinstance(column, int):
        values = list(row.fields.values())
        if column >= len(values):
            raise DataError(f"field '{name}' maps to column {column} but the row has {len(values)} columns",
                            row.file, row.line, field=name)
        return values[column]
    try:
        return row.fields[column]
    except KeyError:
        available = ", ".join(row.fields)
        raise DataError(f"no column '{column}' (for field '{name}'); columns: {available}", row.file, row.line,
                        field=name) from None


def count_tokens(fields: dict[str, InputField], rows: list[Row], mapping: dict) -> dict[str, collections.Counter]:
    """Token (or character) counts per vocabulary over the given rows."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for input_field in fields.values():
        if input_field.type == PRETRAINED or input_field.type in TASK_INPUT_TYPES:
            continue  # a pretrained tokenizer, or the task, brings its vocabulary
        counter = counts[input_field.vocab]
        for row in rows:
            tokens = input_field.tokens(field_value(row, input_field.field, mapping))
            if input_field.type == CHARS:
                for token in tokens:
                    counter.update(token[: input_field.max_word_length])
            else:
                counter.update(tokens)
    return counts


class _TensorLabels:
    """Label collation of a split built without a task (one label per example)."""

    @staticmethod
    def collate_labels(labels, index):
        return labels[index]


_TENSOR_LABELS = _TensorLabels()


class EncodedSplit:
    """One split, tokenized and indexed once: per-example id tensors, labels, lengths."""

    def __init__(self, name: str, file: str, ids: dict[str, list[torch.Tensor]], labels,
                 groups: list[str] | None, pad_index: dict[str, int], input_types: dict[str, str],
                 task: TaskType | None = None):
        """``labels``: the task's label store (a tensor ``[N]``, or a list of per-word tensors);
        ``task`` collates them (classification when None: a tensor indexed by the batch)."""
        self.name, self.file = name, file
        self.task = task if task is not None else _TENSOR_LABELS
        self.ids, self.labels, self.groups = ids, labels, groups
        self.pad_index, self.input_types = pad_index, input_types
        self.labelled: torch.Tensor | None = None  # a transfer set with unlabelled examples: which have labels
        self.truncated: dict[str, tuple[int, int]] = {}  # field -> (examples cut, limit); see encode_rows
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
                inputs[key] = Sequence(*pad_chars(chosen, pad))
            elif self.input_types[key] == PRETRAINED_WORDS:  # [pieces + 1, 2]: (piece id, word index)
                values, mask = pad_ids([t[:-1, 0] for t in chosen], pad)  # then (number of words, marker)
                words, _ = pad_ids([t[:-1, 1] for t in chosen], -1)
                inputs[key] = WordPieces(values, mask, words, torch.stack([t[-1, 0] for t in chosen]))
            else:
                inputs[key] = Sequence(*pad_ids(chosen, pad))
        labels = self.task.collate_labels(self.labels, index) if self.labels is not None else None
        groups = [self.groups[i] for i in positions] if self.groups is not None else None
        labelled = self.labelled[index] if self.labelled is not None else None
        return Batch(inputs, labels, index, groups, labelled)


def encode_rows(name: str, rows: list[Row], fields: dict[str, InputField], vocabularies: dict[str, Vocabulary],
                task: TaskType, label_field: str | None, group_field: str | None, mapping: dict,
                file: str) -> EncodedSplit:
    """Tokenize and index every input; parse labels (None when ``label_field`` is None).

    The split's ``truncated`` maps a field to (examples cut, the limit) where an input kept only
    the first tokens of some examples."""
    ids: dict[str, list[torch.Tensor]] = {}
    truncated: dict[str, tuple[int, int]] = {}
    for key, input_field in fields.items():
        if input_field.type in TASK_INPUT_TYPES:
            ids[key], cut, limit = task.encode_input(input_field.type,
                                                     [field_value(row, input_field.field, mapping) for row in rows],
                                                     input_field.max_length, input_field.owner)
            if cut:
                truncated[input_field.field] = (cut, limit)
            continue
        if input_field.type == PRETRAINED and input_field.words:
            ids[key], cut = input_field.tokenizer.encode_words(
                [input_field.tokens(field_value(row, input_field.field, mapping)) for row in rows])
            if cut:  # sentences whose last words got no piece within max_length
                truncated[input_field.field] = (cut, input_field.tokenizer.max_length)
            continue
        if input_field.type == PRETRAINED:
            texts = [field_value(row, input_field.field, mapping) for row in rows]
            # a pair field mapped to null: these files hold single texts (a task of single sentences
            # read by a model that also reads pairs)
            single = input_field.pair_field is None or (input_field.pair_field in mapping
                                                        and mapping[input_field.pair_field] is None)
            pairs = None if single else [field_value(row, input_field.pair_field, mapping) for row in rows]
            ids[key] = input_field.tokenizer.encode(texts, pairs)
            continue
        vocab = vocabularies[input_field.vocab]
        encoded = []
        cut = 0
        for row in rows:
            tokens = input_field.all_tokens(field_value(row, input_field.field, mapping))
            if len(tokens) > input_field.token_limit:
                tokens = tokens[: input_field.token_limit]
                cut += 1
            tokens = tokens or [vocab.tokens[vocab.unk_index]]
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
        if cut:
            truncated[input_field.field] = (cut, input_field.token_limit)
    labels = None
    if label_field is not None:
        labels = task.parse_labels(rows, label_field, mapping)
        if task.per_token:
            check_word_counts(rows, fields, ids, labels, mapping)
    groups = [field_value(row, group_field, mapping) for row in rows] if group_field else None
    pad_index = {key: vocabularies[f.vocab].pad_index for key, f in fields.items()}
    types = {key: f.storage_type for key, f in fields.items()}
    split = EncodedSplit(name, file, ids, labels, groups, pad_index, types, task)
    split.truncated = truncated
    return split


def check_word_counts(rows: list[Row], fields: dict[str, InputField], ids: dict[str, list[torch.Tensor]],
                      labels: list[torch.Tensor], mapping: dict) -> None:
    """Word-level inputs must have one word per tag (unless ``max_length`` cut the words short)."""
    for key, input_field in fields.items():
        if input_field.type == PRETRAINED or input_field.type in TASK_INPUT_TYPES:
            continue
        for row, sequence, tags in zip(rows, ids[key], labels):
            if len(sequence) == len(tags) or (len(sequence) == input_field.token_limit < len(tags)):
                continue
            words = len(input_field.tokens(field_value(row, input_field.field, mapping)))
            raise DataError(f"the sentence has {words} word(s) in field '{input_field.field}' but {len(tags)} "
                            f"tag(s)", row.file, row.line)


def input_specs(fields: dict[str, InputField], model_inputs: dict[str, str],
                vocabularies: dict[str, Vocabulary]) -> dict[str, Spec]:
    """Build-time Spec of each input of one model."""
    specs = {}
    for input_name, key in model_inputs.items():
        input_field = fields[key]
        kind = CHARS if input_field.type == CHARS else TOKENS
        extra = ({"pretrained": input_field.tokenizer.location, "words": input_field.words}
                 if input_field.type == PRETRAINED else {})
        specs[input_name] = Spec(kind, None, vocabularies[input_field.vocab], extra)
    return specs

"""The examples a stage trains on: its transfer set.

By default a stage trains on the task's train split. A stage's ``transfer`` key makes it train
on the train split (``"train": true``, the default; the only examples with gold labels), plus
unlabelled ``files`` (e.g. question/sentence pairs of another corpus mapped onto the task's field
names), plus ``augment.copies`` perturbed copies of each train example
(:mod:`blocks.augmentation`), at most ``max_examples`` of them. Unlabelled and augmented
examples carry no gold label (:data:`blocks.data.dataset.UNLABELLED`, NaN for regression): the
stage's teachers label them, and the gold-label losses (``CrossEntropy``, ``MSE``) average over
the labelled examples only. ``generate`` makes a seq2seq stage train on a teacher's
translations of the train split instead (sequence-level KD: :mod:`blocks.generated_transfer`).

The set is built once, when the stage starts (with the teachers' current weights, which the
nearest-word swaps read), deterministically from the seed: the teacher cache, keyed by a hash of
the encoded examples, then stores the teachers' outputs for exactly this set, and a resumed stage
builds the same set and reuses the cache.
"""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

import torch

from blocks.augmentation import AugmentOptions, Augmenter, neighbour_table, split_words, teacher_word_vectors
from blocks.data.dataset import (PRETRAINED, UNLABELLED, EncodedSplit, SplitSource, build_tokenizer, encode_rows,
                                 field_value, read_split, split_sources)
from blocks.data.readers import Row, read_rows
from blocks.engine.teacher_cache import check_cache_top_k
from blocks.errors import ConfigError, DataError, TrainingError, did_you_mean
from blocks.generated_transfer import check_generate_config, describe_generate, generated_split
from blocks.registry import LOSSES

# Stands for the mask token in augmented text until each input gets its own: the pretrained
# tokenizer's mask token ([MASK]), or for word-level inputs a word no vocabulary holds (an unknown
# word, as in Tang et al.).
MASK = "\ue000"
WORD_MASK = "xxmaskxx"
SHOWN_MASK = "[MASK]"


# -- the config -------------------------------------------------------------------------------------
def augment_copies(transfer: dict | None) -> int:
    augment = (transfer or {}).get("augment")
    return int(augment.get("copies", 20)) if augment else 0


def has_unlabelled(transfer: dict | None) -> bool:
    """Whether a stage's transfer set holds examples without gold labels (files or augmented copies)."""
    return bool(transfer) and (bool(transfer.get("files")) or augment_copies(transfer) > 0)


def stage_fields(values: dict, stage: dict) -> list[str]:
    """The data fields the stage's models (the trained one and its teachers) read, in order."""
    found: dict[str, None] = {}
    for name in [stage["train"], *stage["teachers"]]:
        for definition in values["models"].get(name, {}).get("inputs", {}).values():
            found[definition["field"]] = None
            if definition.get("pair_field"):
                found[definition["pair_field"]] = None
    return list(found)


def check_transfer_config(values: dict, index: int, file: str | None) -> None:
    """What the schema cannot say about ``stages[index].transfer`` (teachers, fields, losses)."""
    stage = values["stages"][index]
    check_cache_top_k(values, index, file)  # a stage setting of the teacher cache, checked with the stage
    transfer = stage.get("transfer")
    if not transfer:
        return
    check_generate_config(values, index, file)
    path = f"/stages/{index}/transfer"
    augment = transfer.get("augment")
    copies = augment_copies(transfer)
    if not transfer.get("train", True) and not transfer.get("files") and not copies:
        raise ConfigError("the transfer set is empty: \"train\" is false and there are no files and no "
                          "augmented copies", file, path)
    for j, entry in enumerate(transfer.get("files") or []):
        if isinstance(entry, dict) and entry.get("tokenizer") is not None:
            build_tokenizer(entry["tokenizer"], file, f"{path}/files/{j}/tokenizer")  # unknown name or parameter
    if has_unlabelled(transfer):
        what = " and ".join(w for w, present in (("unlabelled files", transfer.get("files")),
                                                  ("augmented copies", copies)) if present)
        if not stage["teachers"]:
            raise ConfigError(f"the transfer set holds {what}, which only teachers can label; give the stage "
                              f"\"teachers\" (and a teacher loss such as KD or LogitMSE)", file, path)
        losses = stage["losses"]
        if all(getattr(LOSSES.get(loss["block"], file, f"/stages/{index}/losses/{j}/block"), "label_only", False)
               for j, loss in enumerate(losses)):
            names = ", ".join(dict.fromkeys(loss["block"] for loss in losses))
            extra = "" if transfer.get("train", True) else " (and it holds no labelled examples at all)"
            raise ConfigError(f"every loss of the stage ({names}) learns from gold labels only, but the transfer "
                              f"set holds {what} without gold labels{extra}; add a loss that learns from the "
                              f"teachers, such as KD or LogitMSE", file, f"/stages/{index}/losses")
    if augment and copies:
        where = f"{path}/augment"
        try:
            AugmentOptions(augment.get("mask", 0.1), augment.get("swap", 0.1), augment.get("ngram", 0.25),
                           augment.get("max_ngram", 5))
        except ValueError as error:
            raise ConfigError(str(error), file, where) from None
        teacher = augment.get("teacher")
        if teacher is not None and teacher not in stage["teachers"]:
            raise ConfigError(f"'{teacher}' is not a teacher of this stage{did_you_mean(teacher, stage['teachers'])}"
                              f" (teachers: {', '.join(stage['teachers'])})", file, f"{where}/teacher")
        read = stage_fields(values, stage)
        for j, name in enumerate(augment.get("fields") or []):
            if name not in read:
                raise ConfigError(f"field '{name}' is not read by the stage's models{did_you_mean(name, read)} "
                                  f"(they read: {', '.join(read)})", file, f"{where}/fields/{j}")


def file_sources(data: dict, transfer: dict) -> list[SplitSource]:
    """The transfer files with absolute paths and merged reader options and fields."""
    sources = []
    for j, entry in enumerate(transfer.get("files") or []):
        if isinstance(entry, str):
            entry = {"path": entry}
        path = entry["path"] if os.path.isabs(entry["path"]) else os.path.join(data["root"], entry["path"])
        reader = {**data.get("reader", {}), **entry.get("reader", {})}
        fields = {**data.get("fields", {}), **entry.get("fields", {})}
        sources.append(SplitSource(f"transfer file {j}", os.path.normpath(path), reader, fields,
                                   tokenizer=entry.get("tokenizer")))
    return sources


def read_transfer_file(source: SplitSource, fields: list[str]) -> list[Row]:
    """A transfer file's rows, each checked to hold every field the stage's models read. With the
    source's ``tokenizer``, each of those fields' text becomes its words joined by single spaces
    (what a tagging task reads as the words of a sentence)."""
    rows = read_rows(source.path, **source.reader)
    if not rows:
        raise DataError("the transfer file holds no examples", source.path)
    split = build_tokenizer(source.tokenizer, source.path, "tokenizer") if source.tokenizer else None
    for row in rows:
        for name in fields:
            value = field_value(row, name, source.fields)  # a DataError naming the file and line
            if split is not None and isinstance(value, str):
                column = source.fields.get(name, name)
                if isinstance(column, int):
                    column = list(row.fields)[column]
                row.fields[column] = " ".join(split(value))
    return rows


def describe_transfer(experiment, index: int) -> str | None:
    """One line on a stage's transfer set for ``blocks validate`` (its files are read and checked)."""
    values = experiment.config.values
    stage = values["stages"][index]
    transfer = stage.get("transfer")
    if not transfer:
        return None
    if transfer.get("generate"):
        return describe_generate(experiment, index)
    fields = stage_fields(values, stage)
    parts = []
    if transfer["train"]:
        parts.append(f"train {len(experiment.splits['train']):,}")
    for source in file_sources(values["data"], transfer):
        parts.append(f"{len(read_transfer_file(source, fields)):,} from {source.path}")
    copies = augment_copies(transfer)
    if copies:
        parts.append(f"{copies} augmented copies of each train example (made when the stage starts)")
    cap = f", at most {transfer['max_examples']:,}" if transfer.get("max_examples") else ""
    return "transfer set: " + " + ".join(parts) + cap


# -- building the set ----------------------------------------------------------------------------------
def stage_input_keys(experiment, stage: dict) -> list[str]:
    """The encoded inputs the stage's models read (only these are encoded for its transfer set)."""
    keys: dict[str, None] = {}
    for name in [stage["train"], *stage["teachers"]]:
        for key in experiment.model_inputs[name].values():
            keys[key] = None
    return list(keys)


def _encode(rows: list[Row], experiment, keys: list[str], mapping: dict, file: str,
            masked: bool = False) -> dict[str, list[torch.Tensor]]:
    """Every input ``keys`` of ``rows``, without labels. With ``masked``, the mask stand-in in the
    text becomes each input's own mask token first."""
    by_token: dict[str, list[str]] = {}
    for key in keys:
        field = experiment.fields[key]
        token = None
        if field.type == PRETRAINED:
            tokenizer = field.tokenizer.tokenizer
            token = tokenizer.mask_token or tokenizer.unk_token
        by_token.setdefault(token or WORD_MASK, []).append(key)
    ids: dict[str, list[torch.Tensor]] = {}
    for token, group in by_token.items():
        group_rows = rows
        if masked:
            group_rows = [Row({k: v.replace(MASK, token) for k, v in row.fields.items()}, row.file, row.line)
                          for row in rows]
        fields = {key: experiment.fields[key] for key in group}
        encoded = encode_rows("transfer", group_rows, fields, experiment.vocabularies, experiment.task, None, None,
                              mapping, file)
        ids.update(encoded.ids)
    return {key: ids[key] for key in keys}


class TransferSet:
    """A stage's examples: the encoded split, and what it holds (for the log and the tests)."""

    def __init__(self, split: EncodedSplit, counts: dict[str, int], shown: list[tuple[dict, dict]],
                 seconds: float, dropped: int = 0):
        self.split, self.counts, self.shown, self.seconds, self.dropped = split, counts, shown, seconds, dropped


def build_transfer_set(experiment, index: int, log=print, cache_root: Path | None = None, shared: bool = False,
                       device: torch.device | None = None, progress: bool = True) -> EncodedSplit:
    """The split stage ``index`` trains on: the train split itself, or its transfer set.

    A generated transfer set (:mod:`blocks.generated_transfer`) is stored in ``cache_root`` (the
    teacher cache's folder; ``shared``: the config's ``cache_dir``) and decoded on ``device``."""
    values = experiment.config.values
    stage = values["stages"][index]
    transfer = stage.get("transfer")
    train = experiment.splits["train"]
    if transfer and transfer.get("generate"):
        if cache_root is None:
            raise TrainingError(f"stage '{stage['name']}': a generated transfer set needs a folder to be stored in")
        return generated_split(experiment, index, stage_input_keys(experiment, stage), Path(cache_root), shared,
                               device or torch.device("cpu"), progress, log)
    if not transfer or (transfer["train"] and not has_unlabelled(transfer)
                        and not (transfer.get("max_examples") and transfer["max_examples"] < len(train))):
        return train
    built = make_transfer_set(experiment, index)
    log_transfer_set(built, stage, log)
    return built.split


def make_transfer_set(experiment, index: int) -> TransferSet:
    """Build stage ``index``'s transfer set (see the module docstring)."""
    started = time.perf_counter()
    values = experiment.config.values
    stage = values["stages"][index]
    transfer = stage["transfer"]
    path = f"/stages/{index}/transfer"
    data = values["data"]
    train = experiment.splits["train"]
    keys = stage_input_keys(experiment, stage)
    fields = stage_fields(values, stage)
    task = experiment.task

    parts: list[dict[str, list[torch.Tensor]]] = []
    counts = {"train": 0, "files": 0, "augmented": 0}
    if transfer["train"]:
        parts.append({key: train.ids[key] for key in keys})
        counts["train"] = len(train)
    for source in file_sources(data, transfer):
        rows = read_transfer_file(source, fields)
        parts.append(_encode(rows, experiment, keys, source.fields, source.path))
        counts["files"] += len(rows)

    shown: list[tuple[dict, dict]] = []
    dropped = 0
    augment = transfer.get("augment")
    copies = augment_copies(transfer)
    if copies:
        rows, shown, dropped = augmented_rows(experiment, index, augment, fields, f"{path}/augment")
        if rows:
            source = split_sources(data)["train"]
            parts.append(_encode(rows, experiment, keys, {}, source.path, masked=True))
        counts["augmented"] = len(rows)

    total = sum(counts.values())
    ids = {key: [t for part in parts for t in part[key]] for key in keys}
    # the examples without gold labels get the task's "unlabelled" label (of their word count)
    first_key = keys[0]
    lengths = [len(t) for t in ids[first_key][counts["train"]:]]
    fill = task.unlabelled(lengths)
    labels = task.concat_labels([train.labels, fill]) if counts["train"] else fill
    labelled = torch.zeros(total, dtype=torch.bool)
    labelled[:counts["train"]] = True

    cap = transfer.get("max_examples")
    if cap and total > cap:
        generator = torch.Generator().manual_seed(_seed(values, augment, transfer))
        first = counts["train"]
        if first >= cap:
            kept = torch.randperm(first, generator=generator)[:cap]
        else:
            others = torch.randperm(total - first, generator=generator)[:cap - first] + first
            kept = torch.cat([torch.arange(first), others])
        kept = kept.sort().values
        positions = kept.tolist()
        ids = {key: [seqs[i] for i in positions] for key, seqs in ids.items()}
        labels, labelled = task.select_labels(labels, kept), labelled[kept]
        counts = {"train": int((kept < counts["train"]).sum()),
                  "files": int(((kept >= counts["train"]) & (kept < counts["train"] + counts["files"])).sum()),
                  "augmented": int((kept >= counts["train"] + counts["files"]).sum())}

    split = EncodedSplit("transfer", train.file, ids, labels, None,
                         {key: train.pad_index[key] for key in keys}, {key: train.input_types[key] for key in keys},
                         task)
    if not bool(labelled.all()):
        split.labelled = labelled
    return TransferSet(split, counts, shown, time.perf_counter() - started, dropped)


def _seed(values: dict, augment: dict | None, transfer: dict | None = None) -> int:
    """augment.seed, else transfer.seed, else the config's seed."""
    for seed in ((augment or {}).get("seed"), (transfer or {}).get("seed")):
        if seed is not None:
            return seed
    return values["seed"]


def augmented_rows(experiment, index: int, augment: dict, fields: list[str], path: str
                   ) -> tuple[list[Row], list[tuple[dict, dict]], int]:
    """The augmented copies of the train examples as rows of logical fields (the mask as
    :data:`MASK`), a few (original, copy) pairs to show, and how many duplicate copies were dropped."""
    values = experiment.config.values
    file = experiment.config.file
    stage = values["stages"][index]
    source = split_sources(values["data"])["train"]
    train_rows = read_split(source)
    texts = [{name: field_value(row, name, source.fields) for name in fields} for row in train_rows]
    perturbed = augment.get("fields") or fields
    options = AugmentOptions(augment["mask"], augment["swap"], augment["ngram"], augment["max_ngram"])
    neighbours = {}
    if options.swap > 0:
        neighbours = word_neighbours(experiment, augment.get("teacher") or stage["teachers"][0],
                                     [text[name] for text in texts for name in perturbed], augment["neighbours"],
                                     file, f"{path}/teacher" if augment.get("teacher") else f"{path}/swap")
    augmenter = Augmenter(options, neighbours, MASK)
    rng = random.Random(_seed(values, augment, stage.get("transfer")))
    unique = augment["unique"]
    wanted = augment["show"]
    rows: list[Row] = []
    shown: list[tuple[dict, dict]] = []
    dropped = 0
    for row, text in zip(train_rows, texts):
        words = {name: split_words(text[name]) for name in perturbed}
        seen = {tuple(" ".join(words[name]) for name in perturbed)} if unique else None
        for _ in range(augment["copies"]):
            copy = dict(text)
            for name in perturbed:
                copy[name] = " ".join(augmenter.words(words[name], rng))
            if seen is not None:
                signature = tuple(copy[name] for name in perturbed)
                if signature in seen:
                    dropped += 1
                    continue
                seen.add(signature)
            rows.append(Row(copy, row.file, row.line))
            if len(shown) < wanted and (not shown or shown[-1][0] is not text) and _word_changes(words, copy):
                shown.append((text, copy))
    return rows, shown, dropped


def _word_changes(words: dict[str, list[str]], copy: dict[str, str]) -> bool:
    """Whether a copy shows masks or swaps (some word changed, every field as long as before):
    the kind of copy worth showing in the log."""
    changed = [copy[name].split(" ") for name in words]
    return (all(len(c) == len(w) for c, w in zip(changed, words.values()))
            and any(c != w for c, w in zip(changed, words.values())))


def word_neighbours(experiment, teacher: str, texts: list[str], k: int, file: str | None, path: str
                    ) -> dict[str, list[str]]:
    """word -> its ``k`` nearest words (in ``teacher``'s input-embedding space) among the words of ``texts``."""
    words = list(dict.fromkeys(word for text in texts for word in split_words(text)))
    found = teacher_word_vectors(experiment, teacher, words)
    if found is None:
        raise ConfigError(f"teacher '{teacher}' has no input-embedding matrix (a PretrainedEncoder, or an Embedding "
                          f"over one of its inputs) to find the nearest words for swaps; set swap to 0 or name "
                          f"another teacher", file, path)
    vectors, counts = found
    return neighbour_table(words, vectors, counts, k)


def _shown_text(text: str) -> str:
    return text.replace(MASK, SHOWN_MASK)


def log_transfer_set(built: TransferSet, stage: dict, log=print) -> None:
    counts = built.counts
    total = sum(counts.values())
    parts = [f"{counts['train']:,} train (labelled)"] if stage["transfer"]["train"] else []
    if stage["transfer"].get("files"):
        parts.append(f"{counts['files']:,} from {len(stage['transfer']['files'])} file(s)")
    augment = stage["transfer"].get("augment")
    if augment and augment["copies"]:
        detail = f"{augment['copies']} copies per train example"
        if built.dropped:
            detail += f", {built.dropped:,} duplicates dropped"
        parts.append(f"{counts['augmented']:,} augmented ({detail})")
    cap = stage["transfer"].get("max_examples")
    capped = f", capped at {cap:,}" if cap and total >= cap else ""
    log(f"stage '{stage['name']}': transfer set of {total:,} examples: {', '.join(parts)}{capped} "
        f"({built.seconds:.1f} s)")
    if augment and augment["copies"] and built.shown:
        log(f"  augmentation: mask {augment['mask']:g}, swap {augment['swap']:g} (among {augment['neighbours']} "
            f"nearest words), n-gram {augment['ngram']:g} (n <= {augment['max_ngram']}); e.g.")
        for original, copy in built.shown:
            for name in original:
                if original[name] != copy[name] or len(original) == 1:
                    log(f"    {name}: {original[name]!r} -> {_shown_text(copy[name])!r}")

"""Sequence-level knowledge distillation (Kim & Rush 2016): train on the teacher's translations.

A seq2seq stage whose transfer set says ::

    "transfer": {"generate": {"teacher": "teacher", "beam": 5, "include_gold": false}}

has the teacher decode every source sentence of the train split once (batched, longest first,
with a progress bar) and trains on the pairs (source, teacher output) instead of (source, gold):
the teacher's output becomes both the decoder's prefix and its labels, so the gold-label losses
(``CrossEntropy``) learn the teacher's translations, and a loss that reads the teacher per
position (word-level KD) reads it along the teacher's own outputs (SeqKD + word).

Options (``generate``): ``teacher`` (default: the stage's only teacher; any model trained by an
earlier stage or taken from a run), ``beam`` (1 is greedy search), ``length_penalty``,
``max_length_a`` and ``max_length_b`` (each defaults to the task's ``generation`` setting),
``batch_size`` (sentences per decoding batch, default: the stage's ``eval_batch_size``) and
``include_gold`` (false; true trains on the gold pairs and the teacher's pairs, twice as many
examples). A teacher output that is empty (only ``<eos>``) teaches nothing and is left out,
counted in the log.

**Vocabularies.** The outputs are stored as text, decoded with the teacher's target tokenizer,
and encoded again with the student's target vocabulary when the stage starts. Usually both are
the task's subword vocabularies. A teacher taken from a run trained with other vocabularies keeps
its own (:mod:`blocks.tasks.seq2seq`): it reads the sources encoded with its source vocabulary and
its outputs are decoded with its target vocabulary, so a student with a smaller vocabulary learns
from it through the text.

**Storage.** The decoded set is kept as readable text under the teacher cache's folder (the
config's ``cache_dir``, else ``RUN/cache``) ::

    generated/<key>/
      outputs.jsonl   one line per train example, in order: {"source": ..., "output": ..., "score": ...}
      meta.json       the key and what went into it, the number of lines, the file's size and SHA-256

``score`` is the teacher's log-probability of the output (beam search: divided by the length
penalty). ``<key>`` is a SHA-256 over the teacher's encoded source inputs (every example's ids,
in order), the teacher's config and weights, the subword vocabularies, and the decoding settings,
so other stages, seeds and resumed runs that would decode the same outputs reuse the file.
Opening it checks ``meta.json`` and the file's size and checksum: a stale set (another key: the
log says what changed) or a corrupt one (truncated, edited, missing) is decoded again, with a
``rebuilding generated transfer set: <reason>`` line; in a run's own folder a stale set is
removed. Runs that share a ``cache_dir`` and start side by side decode once (the teacher
cache's lock).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from blocks.data.batching import sorted_batches
from blocks.data.dataset import EncodedSplit, field_value, read_split, split_sources
from blocks.data.readers import Row
from blocks.engine.checkpoint import atomic_write_json
from blocks.engine.teacher_cache import build_lock, config_digest, data_digest, key_of, weights_digest
from blocks.errors import ConfigError, TrainingError, did_you_mean

FORMAT = 1
FOLDER = "generated"  # inside the teacher cache's folder
OUTPUTS = "outputs.jsonl"
META = "meta.json"
_CHUNK = 1 << 24


# -- the config ---------------------------------------------------------------------------------
def generate_options(stage: dict) -> dict | None:
    """A stage's ``transfer.generate`` object, or None."""
    return (stage.get("transfer") or {}).get("generate")


def generating_teacher(stage: dict) -> str | None:
    """The model that decodes: ``generate.teacher``, else the stage's only teacher."""
    options = generate_options(stage) or {}
    if options.get("teacher"):
        return options["teacher"]
    return stage["teachers"][0] if len(stage["teachers"]) == 1 else None


def check_generate_config(values: dict, index: int, file: str | None) -> None:
    """What the schema cannot say about ``stages[index].transfer.generate``."""
    from blocks.tasks import task_class

    stage = values["stages"][index]
    transfer = stage.get("transfer") or {}
    options = transfer.get("generate")
    if options is None:
        return
    path = f"/stages/{index}/transfer/generate"
    task_type = values["task"]["type"]
    if not getattr(task_class(task_type, file), "generates", False):
        raise ConfigError(f"sequence-level KD decodes the training sources with a teacher, which needs a task "
                          f"that generates (seq2seq); this is a {task_type} task", file, path)
    for key in ("files", "augment", "max_examples"):
        if transfer.get(key):
            raise ConfigError(f"a generated transfer set is the teacher's translations of the train split; it "
                              f"does not combine with \"{key}\" (remove one of them)", file,
                              f"/stages/{index}/transfer/{key}")
    if not transfer.get("train", True):
        raise ConfigError("the teacher decodes the train split's sources, so \"train\" stays true "
                          "(generate.include_gold says whether the gold pairs are kept too)", file,
                          f"/stages/{index}/transfer/train")
    teacher = generating_teacher(stage)
    where = f"{path}/teacher"
    if teacher is None:
        listed = ", ".join(stage["teachers"]) or "none"
        raise ConfigError(f"name the model that decodes the sources (\"teacher\"): the stage has other than one "
                          f"teacher ({listed})", file, path)
    models = values["models"]
    if teacher not in models:
        raise ConfigError(f"model '{teacher}' is not defined{did_you_mean(teacher, models)} (models: "
                          f"{', '.join(models)})", file, where)
    if teacher == stage["train"]:
        raise ConfigError(f"model '{teacher}' is the model this stage trains; the translations come from a "
                          f"teacher", file, where)
    trained_before = any(s["train"] == teacher for s in values["stages"][:index])
    if not trained_before and "run" not in models[teacher]:
        raise ConfigError(f"model '{teacher}' is not trained before this stage (by an earlier stage, or taken "
                          f"from a run)", file, where)


def decoding_settings(task, options: dict):
    """The teacher's decoding: the stage's ``generate`` options over the task's ``generation``."""
    from blocks.generation import GenerationSettings

    merged = {**task.generation, **{k: v for k, v in options.items()
                                    if k in ("beam", "length_penalty", "max_length_a", "max_length_b")}}
    return GenerationSettings("beam" if merged["beam"] > 1 else "greedy", beam_size=merged["beam"],
                              length_penalty=merged["length_penalty"], max_len_a=merged["max_length_a"],
                              max_len_b=merged["max_length_b"])


def describe_generate(experiment, index: int) -> str:
    """``blocks validate``'s line on a generated transfer set."""
    stage = experiment.config["stages"][index]
    options = generate_options(stage)
    settings = decoding_settings(experiment.task, options)
    gold = " + the gold pairs" if options.get("include_gold") else ""
    return (f"transfer set: the {len(experiment.splits['train']):,} train sources decoded by "
            f"'{generating_teacher(stage)}' ({_describe(settings)}; made when the stage starts){gold}")


def _describe(settings) -> str:
    strategy = f"beam {settings.beam_size}" if settings.strategy == "beam" else "greedy"
    return (f"{strategy}, length penalty {settings.length_penalty:g}, at most {settings.max_len_a:g} + "
            f"{settings.max_len_b:g} x source length tokens")


# -- the key --------------------------------------------------------------------------------------
def generation_components(experiment, teacher: str, split, settings) -> dict:
    """Everything the teacher's outputs depend on (hashed into the key, kept in meta.json)."""
    vocabularies = experiment.task.vocabularies_of(teacher)
    tokenizers = json.dumps([vocabularies.source.to_json(), vocabularies.target.to_json()])
    return {
        "format": FORMAT,
        "data": data_digest(split, source_inputs(experiment, teacher, split)),
        "teacher": {"weights": weights_digest(experiment.models[teacher]),
                    "config": config_digest(experiment.config["models"][teacher])},
        "tokenizer": hashlib.sha256(tokenizers.encode()).hexdigest(),
        "decoding": {"strategy": settings.strategy, "beam": settings.beam_size,
                     "length_penalty": settings.length_penalty, "length_penalty_form": settings.length_penalty_form,
                     "max_length_a": settings.max_len_a, "max_length_b": settings.max_len_b},
    }


def source_inputs(experiment, teacher: str, split) -> dict[str, str]:
    """The teacher's inputs that read the source (input name -> the split's key)."""
    return {name: key for name, key in experiment.model_inputs[teacher].items()
            if split.input_types[key] == "source"}


def _what_changed(old: dict, new: dict, teacher: str) -> str:
    changes = []
    if old.get("data") != new["data"]:
        changes.append("the training sources changed")
    if old.get("teacher", {}).get("config") != new["teacher"]["config"]:
        changes.append(f"the config of teacher '{teacher}' changed")
    elif old.get("teacher", {}).get("weights") != new["teacher"]["weights"]:
        changes.append(f"the weights of teacher '{teacher}' changed")
    if old.get("tokenizer") != new["tokenizer"]:
        changes.append("the subword vocabularies changed")
    if old.get("decoding") != new["decoding"]:
        changes.append("the decoding settings changed")
    if old.get("format") != new["format"]:
        changes.append(f"it was written in another format ({old.get('format')})")
    return "; ".join(changes) or "it was built for other outputs"


# -- decoding ---------------------------------------------------------------------------------------
@dataclass
class Decoded:
    """The teacher's outputs for every train example, in order."""

    sources: list[str]
    outputs: list[str]
    scores: list[float]


def decode_sources(experiment, teacher: str, split, settings, batch_size: int, device: torch.device,
                   progress: bool = True) -> tuple[list[list[int]], list[float]]:
    """The teacher's generated ids and scores for every example of ``split``: batches of similar
    source lengths, longest first, the teacher in eval mode (its mode and device restored after)."""
    model = experiment.models[teacher]
    keys = source_inputs(experiment, teacher, split).values()
    view = EncodedSplit("generate", split.file, {key: split.ids[key] for key in keys}, None, None,
                        {key: split.pad_index[key] for key in keys}, {key: split.input_types[key] for key in keys},
                        experiment.task)
    tokens: list = [None] * len(split)
    scores = [0.0] * len(split)
    first = next(iter(model.parameters()), None)
    previous = first.device if first is not None else device
    training = model.training
    model.to(device).eval()
    bar = tqdm(total=len(split), desc="teacher decoding", unit="ex", leave=False, disable=not progress,
               dynamic_ncols=True)
    try:
        with torch.inference_mode():
            for index in sorted_batches(view.lengths, batch_size):
                result = experiment.task.generate_batch(experiment, teacher, view.collate(index).to(device), settings)
                for position, ids, score in zip(index.tolist(), result.tokens, result.scores.tolist()):
                    tokens[position], scores[position] = ids, score
                bar.update(len(index))
    finally:
        bar.close()
        model.train(training)
        model.to(previous)
    return tokens, scores


def train_sources(experiment) -> list[str]:
    """The source sentences of the train split, as read (for the readable file)."""
    source = split_sources(experiment.config["data"])["train"]
    rows = read_split(source)
    texts = [field_value(row, experiment.task.source, source.fields) for row in rows]
    if len(texts) != len(experiment.splits["train"]):
        raise TrainingError(f"the train file {source.path} changed while the run started ({len(texts):,} "
                            f"examples, {len(experiment.splits['train']):,} when read first)")
    return texts


# -- files --------------------------------------------------------------------------------------------
class InvalidSet(Exception):
    """The generated set on disk cannot be used (message: why)."""


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_valid(folder: Path, key: str, components: dict, examples: int) -> tuple[dict, Decoded]:
    """The meta.json and contents of a usable set in ``folder``; InvalidSet saying what is wrong."""
    meta_path, outputs = folder / META, folder / OUTPUTS
    if not meta_path.is_file():
        raise InvalidSet(f"{meta_path} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        recorded = (meta["bytes"], meta["sha256"], meta["examples"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise InvalidSet(f"{meta_path} is corrupt") from None
    if meta.get("key") != key or meta.get("components") != components:
        raise InvalidSet(f"{folder} was decoded from other sources, teacher weights, vocabularies or settings "
                         f"(key {meta.get('key')}, expected {key})")
    if not outputs.is_file():
        raise InvalidSet(f"{outputs} is missing")
    size, (expected, checksum, count) = outputs.stat().st_size, recorded
    if size != expected:
        raise InvalidSet(f"{outputs} is {'truncated' if size < expected else 'longer than recorded'} "
                         f"({size:,} of {expected:,} bytes)")
    if _file_sha256(outputs) != checksum:
        raise InvalidSet(f"{outputs} does not match its checksum (edited or corrupt)")
    if count != examples:
        raise InvalidSet(f"{meta_path} records {count:,} examples, the train split has {examples:,}")
    sources, texts, scores = [], [], []
    with open(outputs, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            sources.append(record["source"])
            texts.append(record["output"])
            scores.append(record["score"])
    if len(texts) != examples:
        raise InvalidSet(f"{outputs} holds {len(texts):,} lines, not {examples:,}")
    return meta, Decoded(sources, texts, scores)


def _write(folder: Path, decoded: Decoded, key: str, components: dict, teacher: str, seconds: float) -> dict:
    """Write outputs.jsonl (fsynced) and then meta.json into ``folder``; the meta."""
    digest, size = hashlib.sha256(), 0
    with open(folder / OUTPUTS, "wb") as handle:
        for source, output, score in zip(decoded.sources, decoded.outputs, decoded.scores):
            line = (json.dumps({"source": source, "output": output, "score": round(score, 4)},
                               ensure_ascii=False) + "\n").encode("utf-8")
            handle.write(line)
            digest.update(line)
            size += len(line)
        handle.flush()
        os.fsync(handle.fileno())
    meta = {"format": FORMAT, "key": key, "teacher": teacher, "components": components,
            "examples": len(decoded.outputs), "bytes": size, "sha256": digest.hexdigest(),
            "decode_seconds": round(seconds, 3), "built": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_json(folder / META, meta)
    return meta


def _stale_sets(root: Path, key: str, teacher: str) -> list[tuple[Path, dict]]:
    """The other sets in ``root`` that teacher ``teacher`` decoded (with their meta.json)."""
    found = []
    if not root.is_dir():
        return found
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or folder.name.startswith(".") or folder.name == key:
            continue
        try:
            meta = json.loads((folder / META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("teacher") == teacher:
            found.append((folder, meta))
    return found


@dataclass
class GeneratedSet:
    """An opened generated transfer set: where it is, its meta.json, its contents, and whether
    this stage decoded it (False: reused)."""

    folder: Path
    meta: dict
    decoded: Decoded
    built: bool


def open_or_generate(experiment, index: int, cache_root: Path, shared: bool, device: torch.device,
                     progress: bool = True, log=print) -> GeneratedSet:
    """Stage ``index``'s generated set from ``cache_root/generated/<key>``, decoded first where needed."""
    stage = experiment.config["stages"][index]
    options = generate_options(stage)
    teacher = generating_teacher(stage)
    split = experiment.splits["train"]
    settings = decoding_settings(experiment.task, options)
    components = generation_components(experiment, teacher, split, settings)
    key = key_of(components)
    root = Path(cache_root) / FOLDER
    folder = root / key
    try:
        meta, decoded = read_valid(folder, key, components, len(split))
        log(f"generated transfer set: reusing {folder} ({len(split):,} outputs of '{teacher}')")
        return GeneratedSet(folder, meta, decoded, False)
    except InvalidSet as problem:
        reason = str(problem) if folder.exists() else None
    with build_lock(root, key, log):
        try:  # another process may have decoded it while this one waited
            meta, decoded = read_valid(folder, key, components, len(split))
            log(f"generated transfer set: reusing {folder}, decoded meanwhile by another process")
            return GeneratedSet(folder, meta, decoded, False)
        except InvalidSet:
            pass
        stale = _stale_sets(root, key, teacher)
        if reason is None and stale:
            reason = _what_changed(stale[0][1].get("components", {}), components, teacher)
        if not shared:
            for old, _ in stale:
                shutil.rmtree(old, ignore_errors=True)
        if reason:
            log(f"rebuilding generated transfer set: {reason}")
        log(f"stage '{stage['name']}': teacher '{teacher}' decodes the {len(split):,} train sources "
            f"({_describe(settings)}) into {folder}")
        started = time.perf_counter()
        ids, scores = decode_sources(experiment, teacher, split, settings,
                                     options.get("batch_size") or stage["eval_batch_size"], device, progress)
        decoded = Decoded(train_sources(experiment), experiment.task.translations(ids, teacher), scores)
        seconds = time.perf_counter() - started
        staging = root / f".building-{key}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            meta = _write(staging, decoded, key, components, teacher, seconds)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return GeneratedSet(folder, meta, decoded, True)


# -- the stage's split ----------------------------------------------------------------------------------
def generated_split(experiment, index: int, keys: list[str], cache_root: Path, shared: bool,
                    device: torch.device, progress: bool = True, log=print) -> EncodedSplit:
    """The split stage ``index`` trains on: (source, teacher output) pairs, plus the gold pairs
    with ``include_gold``; ``keys`` are the encoded inputs its models read."""
    stage = experiment.config["stages"][index]
    task, train = experiment.task, experiment.splits["train"]
    generated = open_or_generate(experiment, index, cache_root, shared, device, progress, log)
    outputs = generated.decoded.outputs
    kept = [i for i, text in enumerate(outputs) if text.strip()]
    if not kept:
        raise TrainingError(f"teacher '{generating_teacher(stage)}' generated only empty outputs "
                            f"({generated.folder / OUTPUTS}); is it trained?")
    texts = [outputs[i] for i in kept]
    label_field = experiment.config["data"]["label"]
    labels = task.parse_labels([Row({label_field: text}, str(generated.folder / OUTPUTS), i + 1)
                                for i, text in zip(kept, texts)], label_field, {})
    ids = {}
    for key in keys:
        if train.input_types[key] == "target":  # the decoder's prefix: <bos> and the teacher's output
            ids[key] = task.encode_input("target", texts, None)[0]
        else:
            ids[key] = [train.ids[key][i] for i in kept]
    include_gold = bool(generate_options(stage).get("include_gold"))
    if include_gold:
        ids = {key: [train.ids[key][i] for i in range(len(train))] + ids[key] for key in keys}
        labels = task.concat_labels([train.labels, labels])
    split = EncodedSplit("transfer", train.file, ids, labels, None, {key: train.pad_index[key] for key in keys},
                         {key: train.input_types[key] for key in keys}, task)
    mean_output = sum(len(t) for t in labels[-len(kept):]) / len(kept)
    mean_gold = sum(len(t) for t in train.labels) / max(len(train), 1)
    empty = len(outputs) - len(kept)
    what = "decoded in" if generated.built else "reused; decoded in"
    log(f"stage '{stage['name']}': transfer set of {len(split):,} examples: {len(kept):,} translations by "
        f"'{generating_teacher(stage)}'" + (f" ({empty:,} empty outputs left out)" if empty else "")
        + (f" + {len(train):,} gold pairs" if include_gold else "")
        + f"; mean {mean_output:.1f} target tokens per output vs {mean_gold:.1f} gold ({what} "
        f"{generated.meta.get('decode_seconds', 0):.1f} s; {generated.folder / OUTPUTS})")
    return split

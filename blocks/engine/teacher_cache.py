"""Teacher outputs computed once and kept on disk, instead of running the teachers every step.

Frozen teachers run in eval mode, so their outputs on the (unchanging) training set are the same
every epoch. When a stage caches (``"cache_teachers"``: ``"auto"``, the default, or ``true``), the trainer asks each loss
block which teacher nodes it reads (:meth:`blocks.distill.losses.Loss.teacher_nodes`), computes
those values once for every training example and stores them, one cache per teacher, in ::

    RUN/cache/<key>/
      meta.json                      key, what went into it, shapes, dtypes, byte sizes, checksums
      00-<teacher>-<node>.values.bin one raw little-endian file per node ...
      01-<teacher>-<node>.values.bin
      01-<teacher>-<node>.mask.bin   ... sequence nodes also keep their mask (uint8) and the
      01-<teacher>-<node>.offsets.bin    [N+1] int64 offsets of each example's positions

The files are memory-mapped (``torch.from_file``), so several processes read the same pages.
Each training step slices them with the batch's example indexes and hands the losses the same
structure a teacher forward gives: ``outputs[teacher][node]`` is a ``[batch, ...]`` tensor, or a
:class:`blocks.values.Sequence` ``[batch, length, ...]`` with its mask, in the dtype the teacher
produced.

``<key>`` is a SHA-256 over: the encoded training inputs the teacher reads (every example's ids
and lengths, in order), the teacher's config and weights (``state_dict`` bytes), the requested
nodes and the storage policy (``cache_dtype``, ``precision``, device type). Any change gives a
new key, so a cache is reused across epochs, stages and resumes exactly when it is still valid.
The teacher's name is not part of the key: a teacher keeps its cache under another name, and a
stage with several teachers reuses the cache each of them got when it taught alone.
Opening a cache checks ``meta.json`` (the key and what went into it) and every file's size and
SHA-256; a truncated, altered or foreign file is never used: the line ``rebuilding teacher
cache: <reason>`` is logged and the cache is built again. Runs that share a cache folder
(``cache_dir``) and start side by side build each cache once: the first takes a lock
(``.lock-<key>``, hidden like the unfinished ``.building-*`` folders), the others wait for it and
then reuse its cache.

Storage: a teacher's output node (its logits) is stored as float32 whatever ``cache_dtype``
says; other nodes (hidden states) as float16 under ``"cache_dtype": "float16"`` (the default; a
value beyond float16's range keeps float32, bfloat16 values stay bfloat16). Sequence nodes are
stored flattened: for each example its positions up to its last real one, with the mask.

**A generating teacher's decoder (seq2seq).** Its output node holds per-position logits over the
whole target vocabulary, ``[positions, V]``: for Multi30k's 29,000 training pairs (439,014 target
positions with the recipes' 8,000-piece BPE) that is 7.0 GB as float16, so it is never cached as
such. The cache keeps, per target position, the ``k`` most likely tokens under the full
softmax at temperature 1 (``"cache_top_k"`` of the stage, default 8, part of the key; 0 is
refused): their ids as int32 (``<node>.values.bin``) and their log-probabilities as float16
(``<node>.log_probs.bin``), 6 bytes per kept token, with the usual mask and offsets: 49 bytes per
target position at k = 8, 21.7 MB for Multi30k (``tools/measure_topk_cache.py``). Reading
gives a :class:`blocks.values.TopKLogProbs` (``indices`` int64, ``log_probs`` float32, ``mask``)
on the device instead of the :class:`Sequence` a teacher forward gives.

A loss renormalises the truncated distribution over the k kept tokens: the teacher's target at
temperature T is ``log_softmax(log_probs / T)`` over the k entries (the probability mass outside
them, typically a few percent, is dropped and the k kept tokens share it in proportion), and the
student's log-probabilities at those ids come from its full softmax, ``log_softmax(z_s / T)``
gathered at ``indices``. ``KD`` then computes ``T² · Σ_k p_t,k (log p_t,k − log q_s,k)`` per
position: the exact KL divergence when the teacher's mass lies in its top k, and otherwise the
divergence to the renormalised top-k distribution (for a peaked translation model, top 8 keep
nearly all of it).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from blocks.data.batching import sorted_batches
from blocks.engine.checkpoint import atomic_write_json
from blocks.engine.distributed import SINGLE, Distributed
from blocks.engine.evaluation import autocast
from blocks.errors import ConfigError, TrainingError
from blocks.values import Sequence, TagScores, TopKLogProbs

#: The per-teacher constants of a CRF node's value, stored once (its emissions are a sequence).
_CRF_CONSTANTS = ("transitions", "start", "end")

FORMAT = 2  # 2: one cache per teacher, keyed without the teacher's name
_CHUNK = 1 << 24  # bytes per write / hash read
DEFAULT_TOP_K = 8  # next-token log-probabilities kept per position of a generating teacher's decoder


@dataclass
class CacheRequest:
    """What a stage asks of the teacher cache: the teachers' ``nodes`` on ``split``, computed on
    ``device`` at ``precision`` and stored as ``cache_dtype`` in ``RUN/cache`` (``run_root``) or in a
    folder runs share (``shared_root``, the config's ``cache_dir``)."""

    experiment: object
    split: object
    nodes: dict[str, list[str]]  # teacher -> node names (see requested_nodes)
    run_root: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    cache_dtype: str = "float16"
    batch_size: int = 64  # examples per teacher forward while building
    shared_root: Path | None = None
    progress: bool = True
    log: object = print
    dist: Distributed = field(default_factory=lambda: SINGLE)
    top_k: int = DEFAULT_TOP_K  # the stage's cache_top_k: what a generating teacher's decoder keeps

    @property
    def root(self) -> Path:
        """The caches' folder: the config's ``cache_dir``, else ``RUN/cache``."""
        return Path(self.shared_root) if self.shared_root is not None else Path(self.run_root) / "cache"

    def components(self, teacher: str) -> dict:
        return cache_components(self.experiment, self.split, teacher, self.nodes[teacher], self.cache_dtype,
                                self.precision, self.device, self.top_k)


# -- what the losses read ---------------------------------------------------------------------
def requested_nodes(losses, teachers: list[str]) -> dict[str, list[str]] | None:
    """teacher -> sorted node names the loss blocks read; None when a loss cannot say.

    Loss blocks derived from :class:`blocks.distill.losses.Loss` declare what they read with
    ``teacher_nodes()``; a loss module without that method makes the stage run its teachers in
    the loop (None).
    """
    found: dict[str, set[str]] = {}
    for _, loss in losses:
        declare = getattr(loss, "teacher_nodes", None)
        if declare is None:
            return None
        for teacher, node in declare():
            if teacher not in teachers:
                raise TrainingError(f"{type(loss).__name__} reads teacher '{teacher}', which is not a teacher of "
                                    f"this stage ({', '.join(teachers) or 'none'})")
            found.setdefault(teacher, set()).add(node)
    return {teacher: sorted(nodes) for teacher, nodes in sorted(found.items())}


class CachedOutputs(dict):
    """One teacher's cached node values; reading a node the losses did not declare says so."""

    def __init__(self, teacher: str, values: dict):
        super().__init__(values)
        self.teacher = teacher

    def __missing__(self, node):
        raise TrainingError(
            f"a loss read node '{node}' of teacher '{self.teacher}', which no loss block declared in "
            f"teacher_nodes() (cached: {', '.join(self) or 'none'}); declare it in the loss block's "
            f"teacher_nodes(), or set \"cache_teachers\": false in the stage")


# -- the key ------------------------------------------------------------------------------------
def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of a tensor (CPU, contiguous), without numpy."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return b""
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    raw = flat.view(torch.uint8)
    out = bytearray(raw.numel())
    torch.frombuffer(out, dtype=torch.uint8).copy_(raw)
    return bytes(out)


def data_digest(split, inputs: dict[str, str]) -> str:
    """SHA-256 of a model's encoded inputs in ``split`` (``inputs``: the model's input name -> the
    split's key for it): every example's ids and shape, in order."""
    digest = hashlib.sha256()
    digest.update(f"examples {len(split)}\n".encode())
    for name, key in sorted(inputs.items()):
        sequences = split.ids[key]
        digest.update(f"input {name} {split.input_types[key]} pad {split.pad_index[key]}\n".encode())
        digest.update(json.dumps([list(t.shape) for t in sequences], separators=(",", ":")).encode())
        if sequences:
            digest.update(_tensor_bytes(torch.cat([torch.as_tensor(t).reshape(-1).long() for t in sequences])))
    return digest.hexdigest()


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state_dict: names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name} {tensor.dtype} {list(tensor.shape)}\n".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def config_digest(model_config: dict) -> str:
    """SHA-256 of what a model's config says about the values it computes: its graph and inputs,
    without where it came from (``run``) or the name its word vocabularies got in this config
    (the ids they give are in the data digest)."""
    kept = {key: value for key, value in model_config.items() if key not in ("run", "model", "description")}
    kept["inputs"] = {name: {k: v for k, v in definition.items() if k != "vocab"}
                      for name, definition in model_config.get("inputs", {}).items()}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def cache_components(experiment, split, teacher: str, nodes: list[str], cache_dtype: str, precision: str,
                     device: torch.device, top_k: int = DEFAULT_TOP_K) -> dict:
    """Everything one teacher's cached values depend on (hashed into the key, kept in meta.json);
    ``top_k`` is part of it when a node is stored as top-k log-probabilities."""
    policy = {"cache_dtype": cache_dtype, "precision": precision, "device": device.type}
    if top_k_node(experiment, teacher) in nodes:
        policy["top_k"] = checked_top_k(top_k)
    return {
        "format": FORMAT,
        "data": data_digest(split, experiment.model_inputs[teacher]),
        "teacher": {"weights": weights_digest(experiment.models[teacher]),
                    "config": config_digest(experiment.config["models"][teacher])},
        "nodes": sorted(nodes),
        "policy": policy,
    }


# -- top-k log-probabilities of a generating teacher ------------------------------------------------
_FULL_DISTRIBUTION = ("cache_top_k 0 would cache the full next-token distribution at every target position "
                      "(vocabulary size values per target token: about 7 GB for Multi30k's training set even as "
                      "float16), "
                      "which the cache refuses; keep the k most likely tokens (cache_top_k >= 1, default 8), or "
                      "set \"cache_teachers\": false to run the teacher every step")


def top_k_node(experiment, teacher: str) -> str | None:
    """The node of ``teacher`` whose cached values are top-k log-probabilities: the decoder's
    per-position logits over the target vocabulary, in a task that generates; else None."""
    if not getattr(experiment.task, "generates", False):
        return None
    return experiment.models[teacher].output_name


def checked_top_k(top_k: int) -> int:
    if not isinstance(top_k, int) or top_k < 1:
        raise TrainingError(_FULL_DISTRIBUTION if top_k == 0 else f"cache_top_k must be a positive integer, got "
                                                                  f"{top_k!r}")
    return top_k


def check_cache_top_k(values: dict, index: int, file: str | None) -> None:
    """``stages[index].cache_top_k`` 0 is refused when the config is checked (see :data:`_FULL_DISTRIBUTION`)."""
    if values["stages"][index].get("cache_top_k", DEFAULT_TOP_K) == 0:
        raise ConfigError(_FULL_DISTRIBUTION, file, f"/stages/{index}/cache_top_k")


def top_k_log_probs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices, log_probs)`` of the ``k`` most likely classes of each row of ``logits``
    ``[..., V]``: int32 indices and float16 log-probabilities under the full softmax (at T = 1)."""
    log_probs, indices = torch.log_softmax(logits.float(), dim=-1).topk(min(k, logits.shape[-1]), dim=-1)
    return indices.to(torch.int32), log_probs.to(torch.float16)


def key_of(components: dict) -> str:
    return hashlib.sha256(json.dumps(components, sort_keys=True).encode()).hexdigest()[:32]


# -- files ----------------------------------------------------------------------------------------
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64, "int64": torch.int64, "int32": torch.int32, "uint8": torch.uint8,
           "bool": torch.bool}


def _dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPES:
        raise TrainingError(f"cannot cache teacher values of dtype {dtype}")
    return name


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:60]


def _write_tensor(path: Path, tensor: torch.Tensor) -> dict:
    """Write a tensor's raw bytes; its file record (name, dtype, shape, bytes, sha256)."""
    tensor = tensor.detach().to("cpu").contiguous()
    digest = hashlib.sha256()
    flat = tensor.reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    step = max(1, _CHUNK // max(flat.element_size(), 1))
    with open(path, "wb") as handle:
        for start in range(0, flat.numel(), step):
            data = _tensor_bytes(flat[start:start + step])
            handle.write(data)
            digest.update(data)
        handle.flush()
        os.fsync(handle.fileno())
    return {"name": path.name, "dtype": _dtype_name(tensor.dtype), "shape": list(tensor.shape),
            "bytes": tensor.numel() * tensor.element_size(), "sha256": digest.hexdigest()}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def _map(folder: Path, record: dict) -> torch.Tensor:
    """A file as a read-only, memory-mapped tensor (copy-on-write: the file never changes)."""
    dtype = _DTYPES[record["dtype"]]
    storage_dtype = torch.uint8 if dtype == torch.bool else dtype
    numel = math.prod(record["shape"])
    if numel == 0:
        return torch.empty(record["shape"], dtype=dtype)
    tensor = torch.from_file(str(folder / record["name"]), shared=False, size=numel, dtype=storage_dtype)
    tensor = tensor.view(record["shape"])
    return tensor.bool() if dtype == torch.bool else tensor


def _size(count: int) -> str:
    return f"{count / 1e6:,.1f} MB" if count >= 1e6 else f"{count / 1e3:,.1f} kB"


class InvalidCache(Exception):
    """The cache on disk cannot be used (message: why)."""


# -- building -----------------------------------------------------------------------------------
class _Collector:
    """Gathers one (teacher, node)'s values for every example, in example order."""

    def __init__(self, teacher: str, node: str, size: int, is_output: bool, top_k: int | None = None):
        self.teacher, self.node, self.size, self.is_output = teacher, node, size, is_output
        self.top_k = top_k  # keep the k most likely classes per position (a generating teacher's decoder)
        self.kind = None
        self.dtype = None
        self.vectors: torch.Tensor | None = None
        self.rows: list = [None] * size  # sequences: per example (values [n, ...], mask [n])
        self.log_prob_rows: list = [None] * size  # top-k: per example, log-probabilities [n, k]
        self.constants: dict[str, torch.Tensor] = {}  # a CRF node: transitions, start, end

    def add(self, value, index: torch.Tensor) -> None:
        if self.top_k is not None and isinstance(value, Sequence):
            self.kind = "top_k"
            self.dtype = self.dtype or value.values.dtype
            indices, log_probs = top_k_log_probs(value.values, self.top_k)
            self._add_rows(Sequence(indices, value.mask), index, log_probs)
            return
        if isinstance(value, TagScores):
            if not self.constants:
                self.constants = {name: getattr(value, name).detach().to("cpu", torch.float32).clone()
                                  for name in _CRF_CONSTANTS}
            self.kind = self.kind or "tag_scores"
            self.dtype = self.dtype or value.emissions.dtype
            self._add_rows(Sequence(value.emissions, value.mask), index)
            return
        if isinstance(value, Sequence):
            kind = "sequence"
        elif isinstance(value, torch.Tensor) and value.dim() >= 1:
            kind = "vector"
        else:
            raise TrainingError(f"cannot cache node '{self.node}' of teacher '{self.teacher}': its value is a "
                                f"{type(value).__name__}; set \"cache_teachers\": false in the stage")
        if self.kind is None:
            self.kind = kind
            self.dtype = (value.values if kind == "sequence" else value).dtype
        if kind == "vector":
            value = value.detach().to("cpu")
            if self.vectors is None:
                self.vectors = torch.zeros((self.size, *value.shape[1:]), dtype=value.dtype)
            self.vectors[index] = value
            return
        self._add_rows(value, index)

    def _add_rows(self, value: Sequence, index: torch.Tensor, log_probs: torch.Tensor | None = None) -> None:
        values, mask = value.values.detach().to("cpu"), value.mask.detach().to("cpu")
        positions = torch.arange(1, mask.shape[1] + 1)
        kept = (mask.long() * positions).max(dim=1).values if mask.shape[1] else torch.zeros(len(index), dtype=torch.long)
        if log_probs is not None:
            log_probs = log_probs.detach().to("cpu")
        for row, (example, count) in enumerate(zip(index.tolist(), kept.tolist())):
            self.rows[example] = (values[row, :count].clone(), mask[row, :count].clone())
            if log_probs is not None:
                self.log_prob_rows[example] = log_probs[row, :count].clone()

    def storage_dtype(self, cache_dtype: str, values: torch.Tensor) -> torch.dtype:
        if not self.dtype.is_floating_point:
            return self.dtype
        if self.is_output or cache_dtype == "float32":
            return torch.float32 if self.dtype != torch.float64 else torch.float64
        if self.dtype in (torch.float16, torch.bfloat16):
            return self.dtype
        if values.numel() and bool((~torch.isfinite(values.to(torch.float16)) & torch.isfinite(values)).any()):
            return torch.float32  # beyond float16's range: keep full precision
        return torch.float16

    def write(self, folder: Path, number: int, cache_dtype: str) -> dict:
        stem = f"{number:02d}-{_safe(self.teacher)}-{_safe(self.node)}"
        entry = {"teacher": self.teacher, "node": self.node, "kind": self.kind,
                 "value_dtype": _dtype_name(self.dtype)}
        if self.kind == "vector":
            dtype = self.storage_dtype(cache_dtype, self.vectors)
            entry["files"] = {"values": _write_tensor(folder / f"{stem}.values.bin", self.vectors.to(dtype))}
            return entry
        counts = torch.tensor([row[0].shape[0] for row in self.rows], dtype=torch.long)
        offsets = torch.zeros(len(self.rows) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(counts, 0)
        trailing = next((tuple(row[0].shape[1:]) for row in self.rows if row[0].dim() >= 1), ())
        values = torch.cat([row[0] for row in self.rows]) if self.rows else torch.zeros((0, *trailing))
        mask = torch.cat([row[1] for row in self.rows]).to(torch.uint8)
        dtype = torch.int32 if self.kind == "top_k" else self.storage_dtype(cache_dtype, values)
        entry["files"] = {"values": _write_tensor(folder / f"{stem}.values.bin", values.to(dtype)),
                          "mask": _write_tensor(folder / f"{stem}.mask.bin", mask),
                          "offsets": _write_tensor(folder / f"{stem}.offsets.bin", offsets)}
        for name, tensor in self.constants.items():
            entry["files"][name] = _write_tensor(folder / f"{stem}.{name}.bin", tensor)
        if self.kind == "top_k":  # values: the indices of the k kept classes; here their log-probabilities
            log_probs = torch.cat(self.log_prob_rows).to(torch.float16)
            entry["files"]["log_probs"] = _write_tensor(folder / f"{stem}.log_probs.bin", log_probs)
            entry["top_k"] = int(log_probs.shape[1])
        return entry


@torch.no_grad()
def compute(experiment, split, nodes: dict[str, list[str]], device: torch.device, precision: str,
            batch_size: int, progress: bool = True, top_k: int = DEFAULT_TOP_K) -> list[_Collector]:
    """Run the teachers once over ``split`` (eval mode, no_grad); the requested values of every
    example (a generating teacher's decoder logits as their ``top_k`` log-probabilities)."""
    collectors = []
    for teacher, names in nodes.items():
        output = experiment.models[teacher].output_name
        kept = top_k_node(experiment, teacher)
        collectors += [_Collector(teacher, node, len(split), node == output,
                                  checked_top_k(top_k) if node == kept else None) for node in names]
    states = {}
    for teacher in nodes:
        model = experiment.models[teacher]
        states[teacher] = model.training
        model.eval()
    bar = tqdm(total=len(split), desc="teacher cache", unit="ex", leave=False, disable=not progress,
               dynamic_ncols=True)
    try:
        for index in sorted_batches(split.lengths, batch_size):
            batch = split.collate(index).to(device)
            with autocast(device, precision):
                values = {teacher: experiment.model_values(teacher, batch) for teacher in nodes}
            for collector in collectors:
                teacher_values = values[collector.teacher]
                if collector.node not in teacher_values:
                    raise TrainingError(f"teacher '{collector.teacher}' has no node '{collector.node}'")
                collector.add(teacher_values[collector.node], index)
            bar.update(len(index))
    finally:
        bar.close()
        for teacher, training in states.items():
            experiment.models[teacher].train(training)
    return collectors


# -- the cache ----------------------------------------------------------------------------------
@dataclass
class _Entry:
    node: str
    kind: str
    value_dtype: torch.dtype
    values: torch.Tensor
    mask: torch.Tensor | None = None
    offsets: torch.Tensor | None = None
    constants: dict | None = None  # a CRF node: transitions, start, end
    log_probs: torch.Tensor | None = None  # top-k: the log-probabilities of the kept classes (values: indices)


class TeacherCache:
    """One teacher's opened (validated, memory-mapped) cache; :meth:`outputs` gives a batch's values."""

    def __init__(self, folder: Path, meta: dict, teacher: str):
        self.folder, self.meta, self.teacher = folder, meta, teacher
        self.key = meta["key"]
        self.entries: list[_Entry] = []
        for record in meta["entries"]:
            files = record["files"]
            entry = _Entry(record["node"], record["kind"], _DTYPES[record["value_dtype"]],
                           _map(folder, files["values"]))
            if record["kind"] in ("sequence", "tag_scores", "top_k"):
                entry.mask = _map(folder, files["mask"])
                entry.offsets = _map(folder, files["offsets"]).clone()  # small: keep in memory
            if record["kind"] == "top_k":
                entry.log_probs = _map(folder, files["log_probs"])
            if record["kind"] == "tag_scores":
                entry.constants = {name: _map(folder, files[name]).clone() for name in _CRF_CONSTANTS}
            self.entries.append(entry)

    @property
    def size_bytes(self) -> int:
        return sum(f["bytes"] for record in self.meta["entries"] for f in record["files"].values())

    def outputs(self, index: torch.Tensor, device: torch.device) -> dict[str, dict]:
        """{teacher: {node: value}} for the examples ``index`` (what a teacher forward would give)."""
        index = index.to("cpu")
        values = {}
        for entry in self.entries:
            if entry.kind == "vector":
                values[entry.node] = entry.values[index].to(device=device, dtype=entry.value_dtype, non_blocking=True)
            elif entry.kind == "tag_scores":
                emissions = self._sequence(entry, index, device)
                values[entry.node] = TagScores(emissions.values, emissions.mask,
                                               *(entry.constants[name].to(device) for name in _CRF_CONSTANTS))
            elif entry.kind == "top_k":
                indices = self._sequence(entry, index, device, torch.long)
                log_probs = self._sequence(entry, index, device, torch.float32, entry.log_probs)
                values[entry.node] = TopKLogProbs(indices.values, log_probs.values, indices.mask)
            else:
                values[entry.node] = self._sequence(entry, index, device)
        return {self.teacher: CachedOutputs(self.teacher, values)}

    @staticmethod
    def _sequence(entry: _Entry, index: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None,
                  stored: torch.Tensor | None = None) -> Sequence:
        """The examples ``index`` of a sequence entry, padded: its values (or ``stored``, another
        file of the entry with one row per position) as ``dtype`` (default: the teacher's)."""
        stored = entry.values if stored is None else stored
        dtype = dtype or entry.value_dtype
        starts = entry.offsets[index]
        counts = entry.offsets[index + 1] - starts
        batch = len(index)
        length = max(1, int(counts.max())) if batch else 1
        trailing = tuple(stored.shape[1:])
        values = torch.zeros((batch, length, *trailing), dtype=dtype)
        mask = torch.zeros((batch, length), dtype=torch.bool)
        total = int(counts.sum())
        if total:
            rows = torch.repeat_interleave(torch.arange(batch), counts)
            first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
            columns = torch.arange(total) - first
            source = torch.repeat_interleave(starts, counts) + columns
            values[rows, columns] = stored[source].to(dtype)
            mask[rows, columns] = entry.mask[source].bool()
        return Sequence(values.to(device, non_blocking=True), mask.to(device, non_blocking=True))


class TeacherCaches:
    """The caches of a stage's teachers, one per teacher, read together."""

    def __init__(self, caches: list[TeacherCache]):
        self.caches = caches
        self.teachers = [cache.teacher for cache in caches]

    @property
    def size_bytes(self) -> int:
        return sum(cache.size_bytes for cache in self.caches)

    def outputs(self, index: torch.Tensor, device: torch.device) -> dict[str, dict]:
        """teacher -> {node: value} for the examples ``index``."""
        return {teacher: values for cache in self.caches for teacher, values in cache.outputs(index, device).items()}


def _validate(folder: Path, key: str, components: dict, checksums: bool) -> dict:
    """meta.json of a usable cache, or InvalidCache saying what is wrong."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise InvalidCache(f"{meta_path} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        entries = meta["entries"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise InvalidCache(f"{meta_path} is corrupt") from None
    if meta.get("format") != FORMAT:
        raise InvalidCache(f"{folder} was written in another format ({meta.get('format')})")
    if meta.get("key") != key or meta.get("components") != components:
        raise InvalidCache(f"{folder} was built for other data, teacher weights or outputs "
                           f"(key {meta.get('key')}, expected {key})")
    if sorted(str(e.get("node")) for e in entries) != sorted(components["nodes"]):
        raise InvalidCache(f"{meta_path} does not list the requested teacher nodes")
    for entry in entries:
        for record in entry["files"].values():
            path = folder / record["name"]
            if not path.is_file():
                raise InvalidCache(f"{path} is missing")
            size = path.stat().st_size
            expected = math.prod(record["shape"]) * _element_size(record["dtype"])
            if record["bytes"] != expected:
                raise InvalidCache(f"{meta_path} is inconsistent for {record['name']}")
            if size != record["bytes"]:
                what = "truncated" if size < record["bytes"] else "longer than recorded"
                raise InvalidCache(f"{path} is {what} ({size:,} of {record['bytes']:,} bytes)")
            if checksums and _file_sha256(path) != record["sha256"]:
                raise InvalidCache(f"{path} does not match its checksum (altered or from another cache)")
    return meta


def _element_size(dtype_name: str) -> int:
    dtype = _DTYPES.get(dtype_name)
    if dtype is None:
        raise InvalidCache(f"unknown dtype {dtype_name!r} in meta.json")
    return torch.empty((), dtype=dtype).element_size()


def _what_changed(old_meta: dict, new: dict, teacher: str) -> str | None:
    """Why an existing cache of the same teacher (by name, in a run's own cache folder) and the same
    nodes no longer fits; None when it is another teacher's or still fits."""
    old = old_meta.get("components", {})
    if old_meta.get("format") != FORMAT:
        return f"it was written in an older cache format ({old_meta.get('format')})"
    if old_meta.get("teacher") != teacher or old.get("nodes") != new["nodes"]:
        return None
    changes = []
    if old.get("data") != new["data"]:
        changes.append("the training inputs changed")
    if old.get("teacher", {}).get("config") != new["teacher"]["config"]:
        changes.append(f"the config of teacher '{teacher}' changed")
    elif old.get("teacher", {}).get("weights") != new["teacher"]["weights"]:
        changes.append(f"the weights of teacher '{teacher}' changed")
    if old.get("policy") != new["policy"]:
        changes.append("the cache dtype, precision, device or cache_top_k changed")
    return "; ".join(changes) or None


def cache_folders(root: Path) -> list[Path]:
    """The caches in ``root``: its folders, without the hidden lock files and unfinished builds."""
    if not Path(root).is_dir():
        return []
    return [f for f in sorted(Path(root).iterdir()) if f.is_dir() and not f.name.startswith(".")]


def _readable_metas(root: Path) -> list[tuple[Path, dict]]:
    """(folder, meta.json) of each cache in ``root`` whose meta.json can be read."""
    found = []
    for folder in cache_folders(root):
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict):
            found.append((folder, meta))
    return found


def _stale_caches(root: Path, components: dict, teacher: str) -> list[tuple[Path, str]]:
    """Caches in a run's ``root`` that teacher ``teacher`` left and that no longer fit, with what changed."""
    found = []
    for folder, old in _readable_metas(root):
        reason = None if old.get("key") == key_of(components) else _what_changed(old, components, teacher)
        if reason:
            found.append((folder, reason))
    return found


def _mention_old_formats(root: Path, log) -> None:
    """Say so when a shared cache folder holds caches this version no longer reads (it never
    deletes another run's files: the user does)."""
    old = [folder for folder, meta in _readable_metas(root) if meta.get("format") != FORMAT]
    if old:
        size = sum(f.stat().st_size for folder in old for f in folder.rglob("*") if f.is_file())
        log(f"teacher cache: {len(old)} cache(s) in {root} were written in an older format and are no longer "
            f"read ({_size(size)}); delete them to free the space")


def _build(request: CacheRequest, key: str, components: dict, teacher: str) -> Path:
    root, split, batch_size = request.root, request.split, request.batch_size
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".building-{key}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        started = time.perf_counter()
        collectors = compute(request.experiment, split, {teacher: components["nodes"]}, request.device,
                             request.precision, batch_size, request.progress, request.top_k)
        entries = [c.write(staging, number, request.cache_dtype) for number, c in enumerate(collectors)]
        meta = {"format": FORMAT, "key": key, "teacher": teacher, "components": components, "examples": len(split),
                "entries": entries, "build_batch_size": batch_size,
                "build_seconds": round(time.perf_counter() - started, 3),
                "built": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_json(staging / "meta.json", meta)
        target = root / key
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


@contextmanager
def build_lock(root: Path, key: str, log):
    """Hold an exclusive lock on building cache ``key`` in ``root``, across processes.

    Runs that share a ``cache_dir`` (the seeds of one experiment, started side by side) would
    otherwise all compute the same teacher outputs, and the last to finish would replace the
    folder the first ones are reading. The first takes the lock and builds; the others wait, then
    find the cache valid. Where ``fcntl`` is missing (Windows) there is no lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux or macOS
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".lock-{key}", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"teacher cache: waiting for another process that is building {root / key}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _validate_or_build(request: CacheRequest, key: str, components: dict, teacher: str) -> dict:
    """Under the build lock: the cache another process finished while this one waited, or a new build."""
    root, log, shared = request.root, request.log, request.shared_root is not None
    folder = root / key
    try:
        meta = _validate(folder, key, components, checksums=True)
        log(f"teacher cache: reusing {folder} ({meta['examples']:,} examples), built meanwhile by another process")
        return meta
    except InvalidCache as problem:
        if folder.exists():
            log(f"rebuilding teacher cache: {problem}")
        else:
            stale = [] if shared else _stale_caches(root, components, teacher)
            for old, reason in stale:
                shutil.rmtree(old, ignore_errors=True)
            if shared:
                _mention_old_formats(root, log)
            if stale:
                log(f"rebuilding teacher cache: {stale[0][1]}")
            else:
                described = ", ".join(f"{teacher}.{node}" for node in components["nodes"])
                log(f"building teacher cache of {described} for {len(request.split):,} examples in {folder}")
    started = time.perf_counter()
    _build(request, key, components, teacher)
    meta = _validate(folder, key, components, checksums=False)
    log(f"teacher cache built in {time.perf_counter() - started:.1f} s "
        f"({_size(TeacherCache(folder, meta, teacher).size_bytes)})")
    return meta


def _reuse(root: Path, key: str, components: dict, log) -> dict:
    """The metadata of the valid cache ``root/key``, checksums verified; InvalidCache when there is none."""
    meta = _validate(root / key, key, components, checksums=True)
    log(f"teacher cache: reusing {root / key} ({meta['examples']:,} examples)")
    return meta


def open_existing(request: CacheRequest) -> TeacherCaches | None:
    """The valid caches of the requested teacher nodes if every teacher has one on disk, else None.

    Nothing is built: a stage too short to pay for a cache still reads the ones an earlier stage
    or run (in a shared ``cache_dir``) left behind.
    """
    root = request.root
    caches = []
    for teacher in request.nodes:
        components = request.components(teacher)
        key = key_of(components)
        try:
            caches.append(TeacherCache(root / key, _validate(root / key, key, components, checksums=True), teacher))
        except InvalidCache:
            return None
    for cache in caches:
        request.log(f"teacher cache: reusing {cache.folder} ({cache.meta['examples']:,} examples)")
    return TeacherCaches(caches)


def open_or_build(request: CacheRequest) -> TeacherCaches:
    """The valid cache of each requested teacher's nodes, built first where needed.

    With several processes, rank 0 checks (and if needed builds) each cache while the others wait
    at a barrier; then every rank opens it. A ``shared_root`` replaces ``RUN/cache`` by a folder
    shared between runs (the config's ``cache_dir``): a cache with the same key is reused from
    there, and caches of other runs in it are never removed as stale.
    """
    root, dist, log = request.root, request.dist, request.log
    caches = []
    for teacher in request.nodes:
        components = request.components(teacher)
        key = key_of(components)
        folder = root / key
        if dist.is_main:
            try:
                meta = _reuse(root, key, components, log)
            except InvalidCache:
                with build_lock(root, key, log):
                    meta = _validate_or_build(request, key, components, teacher)
        dist.barrier()
        if not dist.is_main:
            try:
                meta = _validate(folder, key, components, checksums=False)
            except InvalidCache as problem:
                raise TrainingError(f"process {dist.rank} cannot read the teacher cache rank 0 built: {problem}; "
                                    f"multi-node runs need the run directory on a shared file system") from None
        caches.append(TeacherCache(folder, meta, teacher))
    return TeacherCaches(caches)

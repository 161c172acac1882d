"""Checkpoints: one safetensors file with tensors and a JSON state, written atomically. No pickles.

A checkpoint file is a standard `safetensors <https://huggingface.co/docs/safetensors>`_ file
(readable by ``safetensors.safe_open``) whose header metadata holds

* ``"format_version"``: ``"1"``;
* ``"distilblocks_state"``: the JSON encoding of the ``state`` dict given to
  :func:`save_checkpoint`;
* ``"sha256"``: a SHA-256 over the tensors' names, dtypes, shapes and offsets, the state and
  every data byte (see :func:`_checksum`), verified by :func:`load_checkpoint`, so a flipped
  byte anywhere in a tensor is reported instead of resumed. Files written before the checksum
  existed have none and are read without the check.

The file is serialised here in pure torch (the ``safetensors.torch.save`` helper needs numpy,
which DistilBlocks does not depend on), so any tensor layout is accepted: non-contiguous tensors,
views and tensors sharing storage are each written as their own contiguous copy.

Optimizer state and random-number-generator state are split into tensors (stored in the file)
and JSON-able metadata (to be stored in ``state``) by :func:`optimizer_to_tensors` and
:func:`rng_to_tensors`; their inverses rebuild them exactly.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import random
import struct
import sys
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any

import torch

from blocks.errors import CheckpointError

FORMAT_VERSION = 1
STATE_KEY = "distilblocks_state"
VERSION_KEY = "format_version"
CHECKSUM_KEY = "sha256"

# safetensors dtype names
_DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, attr)
    for name, attr in (("F64", "float64"), ("F32", "float32"), ("F16", "float16"), ("BF16", "bfloat16"),
                       ("I64", "int64"), ("I32", "int32"), ("I16", "int16"), ("I8", "int8"),
                       ("U64", "uint64"), ("U32", "uint32"), ("U16", "uint16"), ("U8", "uint8"),
                       ("BOOL", "bool"), ("C64", "complex64"), ("F8_E4M3", "float8_e4m3fn"),
                       ("F8_E5M2", "float8_e5m2"), ("F8_E8M0", "float8_e8m0fnu"))
    if hasattr(torch, attr)
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_MAX_HEADER = 100_000_000  # as in safetensors


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


# ----------------------------------------------------------------------------------------------
# atomic writes


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one.

    The data goes to a temporary file in the same folder (created if needed), is flushed and
    fsync'ed, then renamed over ``path`` with :func:`os.replace`. On any error the temporary file
    is removed and ``path`` is left as it was.
    """
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise NotADirectoryError(errno.ENOTDIR, f"{file_in_the_way(path)} is a file, not a folder", str(path)) from None
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        with suppress(OSError):
            os.chmod(temporary, _FILE_MODE)  # mkstemp makes the file private (0600)
        os.replace(temporary, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_folder(folder)


def file_in_the_way(path: str | os.PathLike) -> Path | None:
    """The file among ``path``'s folders (``a/b`` when ``a/b`` is a file and ``path`` is ``a/b/c.txt``),
    which makes ``path`` impossible to write; None when there is none."""
    for folder in Path(path).parents:
        if folder.exists():
            return None if folder.is_dir() else folder
    return None


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) atomically, see :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON (UTF-8, trailing newline) atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------------
# the safetensors format


def _check_byte_order() -> None:
    if sys.byteorder != "little":  # pragma: no cover
        raise RuntimeError("DistilBlocks checkpoints need a little-endian machine")


def _serialize(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[bytearray, dict, int]:
    """The bytes of a safetensors file holding ``tensors`` and ``metadata``, its header and the
    offset of its data."""
    _check_byte_order()
    prepared: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if not isinstance(key, str) or not key or key == "__metadata__":
            raise ValueError(f"invalid checkpoint tensor name {key!r}")
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"checkpoint entry '{key}' is a {type(tensor).__name__}, not a tensor")
        if tensor.layout != torch.strided:
            raise TypeError(f"checkpoint tensor '{key}' is sparse; convert it with .to_dense()")
        if tensor.dtype not in _NAMES:
            raise TypeError(f"checkpoint tensor '{key}' has dtype {tensor.dtype}, which safetensors cannot store")
        prepared[key] = tensor.detach()
    # Largest element size first so that every tensor starts aligned (as safetensors does).
    order = sorted(prepared, key=lambda k: (-prepared[k].element_size(), k))
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for key in order:
        tensor = prepared[key]
        size = tensor.numel() * tensor.element_size()
        header[key] = {"dtype": _NAMES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
    encoded = _encode_header(header)
    start = 8 + len(encoded)
    out = bytearray(start + offset)
    out[:start] = struct.pack("<Q", len(encoded)) + encoded
    if offset:
        target = torch.frombuffer(out, dtype=torch.uint8)
        for key in order:
            tensor = prepared[key]
            if tensor.numel() == 0:
                continue
            begin, end = header[key]["data_offsets"]
            flat = tensor.to("cpu").contiguous().reshape(-1).view(torch.uint8)
            target[start + begin:start + end].copy_(flat)
    return out, header, start


def _encode_header(header: dict) -> bytes:
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return encoded + b" " * (-len(encoded) % 8)


def _checksum(entries: dict, state: str, data: memoryview) -> str:
    """SHA-256 over a file's tensor entries (names, dtypes, shapes, offsets), its state and its data."""
    digest = hashlib.sha256()
    digest.update(json.dumps({k: v for k, v in entries.items() if k != "__metadata__"}, sort_keys=True,
                             separators=(",", ":")).encode("utf-8"))
    digest.update(state.encode("utf-8"))
    digest.update(data)
    return digest.hexdigest()


class _Corrupt(Exception):
    """The file is not a readable safetensors file (message: why)."""


def _parse(data: bytearray) -> tuple[dict[str, torch.Tensor], dict[str, str] | None, dict, int]:
    """(tensors, metadata, header entries, data offset) of a safetensors file's bytes; raises _Corrupt."""
    _check_byte_order()
    if len(data) < 8:
        raise _Corrupt(f"the file has only {len(data)} bytes" if data else "the file is empty")
    (header_size,) = struct.unpack("<Q", bytes(data[:8]))
    if header_size > _MAX_HEADER:
        raise _Corrupt("it does not start with a safetensors header")
    if 8 + header_size > len(data):
        raise _Corrupt(f"its header needs {header_size} bytes but only {len(data) - 8} follow")
    try:
        header = json.loads(bytes(data[8:8 + header_size]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _Corrupt("its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _Corrupt("its header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and (not isinstance(metadata, dict)
                                 or not all(isinstance(v, str) for v in metadata.values())):
        raise _Corrupt("its metadata is not a mapping of strings")
    start, available = 8 + header_size, len(data) - 8 - header_size
    spans = []
    for key, entry in header.items():
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape = [int(s) for s in entry["shape"]]
            begin, end = (int(o) for o in entry["data_offsets"])
            if any(s < 0 for s in shape) or not 0 <= begin <= end or not isinstance(entry["shape"], list):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise _Corrupt(f"the header entry of tensor '{key}' is invalid") from None
        element = dtype.itemsize
        if end - begin != math.prod(shape) * element:
            raise _Corrupt(f"tensor '{key}' has {end - begin} bytes for shape {shape} of {dtype}")
        spans.append((begin, end, key, dtype, shape))
    spans.sort()
    position = 0
    for begin, end, key, _, _ in spans:
        if begin != position:
            raise _Corrupt(f"the data of tensor '{key}' does not follow the previous tensor's")
        position = end
    if position > available:
        raise _Corrupt(f"its tensors need {position} bytes of data but only {available} are there")
    if position < available:
        raise _Corrupt(f"{available - position} unexpected bytes follow its tensors")
    tensors: dict[str, torch.Tensor] = {}
    for begin, end, key, dtype, shape in spans:
        if begin == end:
            tensors[key] = torch.empty(shape, dtype=dtype)
            continue
        element = dtype.itemsize
        if (start + begin) % element == 0:
            flat = torch.frombuffer(data, dtype=dtype, count=(end - begin) // element, offset=start + begin)
        else:  # misaligned (a file from another writer): copy into aligned memory
            flat = torch.frombuffer(data, dtype=torch.uint8, count=end - begin,
                                    offset=start + begin).clone().view(dtype)
        tensors[key] = flat.reshape(shape)
    return tensors, metadata, header, start


# ----------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], state: dict) -> None:
    """Write ``tensors`` and the JSON-able ``state`` to one safetensors file, atomically.

    Tensors may live on any device and have any layout (they are copied to the CPU, contiguous).
    ``state`` is stored as JSON in the file's metadata under ``"distilblocks_state"``; it must be
    JSON-serialisable (a TypeError says which value is not). An existing file at ``path`` is
    replaced only once the new one is complete.
    """
    try:
        encoded_state = json.dumps(state)
    except (TypeError, ValueError) as error:
        raise TypeError(f"checkpoint state is not JSON-serialisable: {error}") from None
    # The checksum covers the data, which is laid out after the header that holds it: the file is
    # built with a placeholder of the same length, then the header is written again.
    metadata = {VERSION_KEY: str(FORMAT_VERSION), STATE_KEY: encoded_state, CHECKSUM_KEY: "0" * 64}
    out, header, start = _serialize(tensors, metadata)
    header["__metadata__"][CHECKSUM_KEY] = _checksum(header, encoded_state, memoryview(out)[start:])
    encoded = _encode_header(header)
    assert 8 + len(encoded) == start
    out[8:start] = encoded
    atomic_write_bytes(path, out)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(tensors, state)``.

    Tensors are moved to ``map_location``. On the CPU they share one buffer with the file's
    bytes (no copy); they are writable.

    Raises:
        CheckpointError: the file is missing or unreadable, truncated or corrupt (its checksum
            does not match), or was not
            written by DistilBlocks (or by a newer version); the message starts with the path.
    """
    where = str(path)
    try:
        with open(path, "rb") as file:
            data = bytearray(file.read())
    except FileNotFoundError:
        raise CheckpointError("no such checkpoint file", where) from None
    except IsADirectoryError:
        raise CheckpointError("is a folder, not a checkpoint file", where) from None
    except OSError as error:
        raise CheckpointError(f"the checkpoint cannot be read: {error.strerror or error}", where) from None
    try:
        tensors, metadata, header, start = _parse(data)
    except _Corrupt as error:
        raise CheckpointError(f"the checkpoint is truncated or corrupt: {error}", where) from None
    if not metadata or STATE_KEY not in metadata:
        raise CheckpointError(f"the checkpoint was not written by DistilBlocks"
                              f" (a safetensors file without '{STATE_KEY}' metadata)", where)
    try:
        version = int(metadata.get(VERSION_KEY, ""))
    except ValueError:
        raise CheckpointError(f"the checkpoint is truncated or corrupt: bad format version"
                              f" {metadata.get(VERSION_KEY)!r}", where) from None
    if version > FORMAT_VERSION:
        raise CheckpointError(f"the checkpoint was written by a newer DistilBlocks (format version {version};"
                              f" this version reads up to {FORMAT_VERSION})", where)
    if CHECKSUM_KEY in metadata and metadata[CHECKSUM_KEY] != _checksum(header, metadata[STATE_KEY],
                                                                        memoryview(data)[start:]):
        raise CheckpointError("the checkpoint is corrupt: its contents do not match the checksum written with "
                              "it (damaged on disk or changed since)", where)
    try:
        state = json.loads(metadata[STATE_KEY])
    except ValueError:
        raise CheckpointError("the checkpoint is truncated or corrupt: its state is not valid JSON", where) from None
    if not isinstance(state, dict):
        raise CheckpointError("the checkpoint is truncated or corrupt: its state is not a JSON object", where)
    if torch.device(map_location).type != "cpu":
        tensors = {key: tensor.to(map_location) for key, tensor in tensors.items()}
    return tensors, state


def read_checkpoint_state(path: str | os.PathLike) -> dict:
    """The JSON state of a checkpoint, read from its header alone (no tensor data is read or
    verified: :func:`load_checkpoint` does that). Raises CheckpointError like it."""
    where = str(path)
    try:
        with open(path, "rb") as file:
            prefix = file.read(8)
            if len(prefix) < 8:
                raise CheckpointError("the checkpoint is truncated or corrupt: the file is too short", where)
            (size,) = struct.unpack("<Q", prefix)
            if size > _MAX_HEADER:
                raise CheckpointError("the checkpoint is truncated or corrupt: no safetensors header", where)
            header = json.loads(file.read(size).decode("utf-8"))
        state = json.loads(header["__metadata__"][STATE_KEY])
    except FileNotFoundError:
        raise CheckpointError("no such checkpoint file", where) from None
    except OSError as error:
        raise CheckpointError(f"the checkpoint cannot be read: {error.strerror or error}", where) from None
    except (ValueError, KeyError, TypeError):
        raise CheckpointError("the checkpoint is truncated or corrupt: its header is unreadable", where) from None
    if not isinstance(state, dict):
        raise CheckpointError("the checkpoint is truncated or corrupt: its state is not a JSON object", where)
    return state


# ----------------------------------------------------------------------------------------------
# nested structures with tensors: JSON plus a flat tensor dict

_MARKERS = ("__tensor__", "__tuple__", "__dict__")


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        name, n = key, 1
        while name in tensors:
            n += 1
            name = f"{key}#{n}"
        tensors[name] = value.detach()
        return {"__tensor__": name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not any(m in value for m in _MARKERS):
            return {k: _encode(v, f"{key}.{k}", tensors) for k, v in value.items()}
        return {"__dict__": [[_encode(k, f"{key}.key", tensors), _encode(v, f"{key}.{k}", tensors)]
                             for k, v in value.items()]}
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint (at '{key}')")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and "__tensor__" in value:
            name = value["__tensor__"]
            if name not in tensors:
                raise CheckpointError(f"the checkpoint has no tensor '{name}'")
            return tensors[name]
        if len(value) == 1 and "__tuple__" in value:
            return tuple(_decode(v, tensors) for v in value["__tuple__"])
        if len(value) == 1 and "__dict__" in value:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__dict__"]}
        return {k: _decode(v, tensors) for k, v in value.items()}
    return value


def optimizer_to_tensors(optimizer_state_dict: dict, prefix: str = "optimizer"
                         ) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors and JSON-able metadata.

    Tensors are named after their place, e.g. ``optimizer.state.3.exp_avg`` (``prefix`` first);
    everything else (param_groups, python numbers, None, tuples, integer keys) is in the metadata,
    exactly enough for :func:`optimizer_from_tensors` to rebuild an equal state dict (same
    dtypes, e.g. Adam's float32 ``step`` tensors).
    """
    tensors: dict[str, torch.Tensor] = {}
    meta = {"state_dict": _encode(optimizer_state_dict, prefix, tensors)}
    return tensors, meta


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The optimizer state dict saved by :func:`optimizer_to_tensors`.

    ``tensors`` may hold other entries too (a whole checkpoint's tensors); only those named in
    ``meta`` are used. Raises CheckpointError (without a file) if one of them is missing.
    """
    return _decode(meta["state_dict"], tensors)


def rng_to_tensors(prefix: str = "rng") -> tuple[dict[str, torch.Tensor], dict]:
    """The current random state: torch CPU and CUDA generators (tensors) and Python ``random``.

    Returns ``({"rng.torch": ..., "rng.cuda.0": ...}, meta)`` with ``meta`` JSON-able.
    """
    tensors = {f"{prefix}.torch": torch.get_rng_state()}
    cuda = 0
    if torch.cuda.is_available():
        states = torch.cuda.get_rng_state_all()
        cuda = len(states)
        for i, state in enumerate(states):
            tensors[f"{prefix}.cuda.{i}"] = state
    version, internal, gauss = random.getstate()
    meta = {"prefix": prefix, "cuda_devices": cuda, "python": [version, list(internal), gauss]}
    return tensors, meta


def rng_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Restore the random state saved by :func:`rng_to_tensors`.

    CUDA states are restored on as many devices as both the saved run and this machine have
    (none when CUDA is not available here).
    """
    prefix = meta.get("prefix", "rng")
    try:
        torch.set_rng_state(tensors[f"{prefix}.torch"].to("cpu", torch.uint8))
        saved_cuda = int(meta.get("cuda_devices", 0))
        if saved_cuda and torch.cuda.is_available():
            for i in range(min(saved_cuda, torch.cuda.device_count())):
                torch.cuda.set_rng_state(tensors[f"{prefix}.cuda.{i}"].to("cpu", torch.uint8), i)
        version, internal, gauss = meta["python"]
        random.setstate((version, tuple(internal), gauss))
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"the checkpoint's random state cannot be restored: {error}") from None

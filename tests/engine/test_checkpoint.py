"""Checkpoints: safetensors files with a JSON state, atomic writes, optimizer and RNG state."""
from __future__ import annotations

import json
import os
import random
import struct
import warnings

import pytest
import torch

from blocks.engine import checkpoint
from blocks.engine.checkpoint import (atomic_write_bytes, atomic_write_json, atomic_write_text,
                                      load_checkpoint, optimizer_from_tensors, optimizer_to_tensors,
                                      rng_from_tensors, rng_to_tensors, save_checkpoint)
from blocks.engine.optim import build_optimizer, build_schedule
from blocks.errors import CheckpointError


def sample_tensors() -> dict[str, torch.Tensor]:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    return {
        "weight": base,
        "row": base[1],                      # shares storage with "weight"
        "transposed": base.t(),              # not contiguous
        "half": torch.tensor([1.5, -2.0], dtype=torch.float16),
        "brain": torch.tensor([3.25], dtype=torch.bfloat16),
        "ids": torch.tensor([[1, 2], [3, 2**40]], dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "bytes": torch.tensor([0, 255], dtype=torch.uint8),
        "scalar": torch.tensor(7.0, dtype=torch.float64),
        "empty": torch.zeros(0, 5),
        "grad": torch.ones(2, requires_grad=True) * 2,
    }


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].shape == b[key].shape, key
        assert torch.equal(a[key].detach(), b[key]), key


def test_round_trip(tmp_path):
    path = tmp_path / "step-10.safetensors"
    state = {"step": 10, "loss": 0.25, "nan": float("nan"), "names": ["a", "b"], "nested": {"x": None}}
    tensors = sample_tensors()
    save_checkpoint(path, tensors, state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "buffer is not writable"
        loaded, loaded_state = load_checkpoint(path)
    assert_same(tensors, loaded)
    assert loaded_state["step"] == 10 and loaded_state["names"] == ["a", "b"] and loaded_state["nested"] == {"x": None}
    assert loaded_state["nan"] != loaded_state["nan"]
    loaded["weight"] += 1  # writable
    assert loaded["weight"][0, 0] == 1
    loaded, _ = load_checkpoint(str(path), map_location=torch.device("cpu"))
    assert_same(tensors, loaded)


def test_file_is_standard_safetensors(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    path = tmp_path / "c.safetensors"
    tensors = sample_tensors()
    save_checkpoint(path, tensors, {"epoch": 2})
    with safetensors.safe_open(str(path), framework="pt") as file:
        metadata = file.metadata()
        assert metadata["format_version"] == "1"
        assert json.loads(metadata["distilblocks_state"]) == {"epoch": 2}
        assert_same(tensors, {key: file.get_tensor(key) for key in file.keys()})


def test_reads_files_written_by_safetensors(tmp_path):
    pytest.importorskip("numpy")  # safetensors.torch.save needs numpy
    from safetensors.torch import save_file

    tensors = {"a": torch.randn(3, 5), "b": torch.tensor([1, 2, 3], dtype=torch.int16),
               "c": torch.tensor([0.5], dtype=torch.bfloat16)}
    path = tmp_path / "theirs.safetensors"
    save_file(tensors, str(path), metadata={"distilblocks_state": '{"ok": true}', "format_version": "1"})
    loaded, state = load_checkpoint(path)
    assert_same(tensors, loaded)
    assert state == {"ok": True}


def test_overwrite_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    path = tmp_path / "run" / "last.safetensors"  # the folder is created
    save_checkpoint(path, {"x": torch.ones(3)}, {"n": 1})
    save_checkpoint(path, {"x": torch.zeros(3)}, {"n": 2})
    assert os.listdir(path.parent) == ["last.safetensors"]
    assert load_checkpoint(path)[1] == {"n": 2}

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"x": torch.full((3,), 5.0)}, {"n": 3})
    monkeypatch.undo()
    assert os.listdir(path.parent) == ["last.safetensors"]  # temporary file removed
    assert load_checkpoint(path)[1] == {"n": 2}  # old checkpoint intact


def test_atomic_text_and_json(tmp_path):
    atomic_write_text(tmp_path / "notes.txt", "héllo\n")
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "héllo\n"
    atomic_write_json(tmp_path / "m.json", {"f1": 0.5, "name": "é"})
    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8")) == {"f1": 0.5, "name": "é"}
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(os.listdir(tmp_path)) == ["b.bin", "m.json", "notes.txt"]
    if os.name == "posix":  # not the private 0600 of a temporary file
        assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o666 & ~checkpoint._umask()


def test_state_must_be_json(tmp_path):
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(tmp_path / "c.safetensors", {}, {"bad": object()})
    assert not list(tmp_path.iterdir())


def test_missing_file(tmp_path):
    path = tmp_path / "nothing.safetensors"
    with pytest.raises(CheckpointError, match="no such checkpoint file") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value) and error.value.file == str(path)
    with pytest.raises(CheckpointError, match="folder"):
        load_checkpoint(tmp_path)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, sample_tensors(), {"step": 3})
    data = path.read_bytes()
    header = 8 + struct.unpack("<Q", data[:8])[0]
    for length in (0, 5, 8, header // 2, header, header + 7, len(data) - 1):
        cut = tmp_path / f"cut-{length}.safetensors"
        cut.write_bytes(data[:length])
        with pytest.raises(CheckpointError, match="is truncated or corrupt") as error:
            load_checkpoint(cut)
        assert str(cut) in str(error.value), length


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(bytes(random.Random(0).randrange(256) for _ in range(1000)))
    with pytest.raises(CheckpointError, match="is truncated or corrupt") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)
    # a plausible header size but not JSON
    path.write_bytes(struct.pack("<Q", 8) + b"not json" + b"\x00" * 8)
    with pytest.raises(CheckpointError, match="is truncated or corrupt"):
        load_checkpoint(path)
    # valid JSON, nonsense entries
    header = json.dumps({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 4)
    with pytest.raises(CheckpointError, match="is truncated or corrupt"):
        load_checkpoint(path)
    # trailing bytes after the data
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, {"x": torch.ones(2)}, {})
    path.write_bytes(good.read_bytes() + b"extra")
    with pytest.raises(CheckpointError, match="is truncated or corrupt"):
        load_checkpoint(path)


def test_not_a_distilblocks_checkpoint(tmp_path):
    path = tmp_path / "plain.safetensors"
    path.write_bytes(checkpoint._serialize({"x": torch.ones(2)}, {})[0])
    with pytest.raises(CheckpointError, match="was not written by DistilBlocks") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)
    path.write_bytes(checkpoint._serialize({"x": torch.ones(2)},
                                           {"distilblocks_state": "{}", "format_version": "99"})[0])
    with pytest.raises(CheckpointError, match="newer DistilBlocks"):
        load_checkpoint(path)


def test_a_flipped_byte_anywhere_in_the_data_is_caught_by_the_checksum(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.arange(64, dtype=torch.float32), "b": torch.ones(3, dtype=torch.int64)},
                    {"step": 7})
    good = path.read_bytes()
    (header_size,) = struct.unpack("<Q", good[:8])
    assert json.loads(good[8:8 + header_size])["__metadata__"]["sha256"] != "0" * 64
    for position in (8 + header_size, len(good) // 2 + 4, len(good) - 1):  # first, middle and last data byte
        damaged = bytearray(good)
        damaged[position] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError, match="do not match the checksum") as error:
            load_checkpoint(path)
        assert str(error.value).startswith(str(path))
    path.write_bytes(good)
    assert load_checkpoint(path)[1] == {"step": 7}


def test_a_changed_shape_or_state_is_caught_by_the_checksum(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.zeros(4, 8)}, {"step": 12})
    good = path.read_bytes()
    for old, new in ((b'"shape":[4,8]', b'"shape":[8,4]'), (b'\\"step\\": 12', b'\\"step\\": 13')):
        assert old in good, old
        path.write_bytes(good.replace(old, new))
        with pytest.raises(CheckpointError, match="do not match the checksum"):
            load_checkpoint(path)


def test_a_file_without_a_checksum_is_still_read(tmp_path):
    path = tmp_path / "old.safetensors"
    path.write_bytes(checkpoint._serialize({"x": torch.ones(2)},
                                           {"distilblocks_state": '{"a": 1}', "format_version": "1"})[0])
    tensors, state = load_checkpoint(path)
    assert state == {"a": 1} and torch.equal(tensors["x"], torch.ones(2))


# ----------------------------------------------------------------------------------------------
# optimizer state


def train(model: torch.nn.Module, optimizer, steps: int, schedule=None, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 4, generator=generator)
        y = torch.randn(8, 3, generator=generator)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()


@pytest.mark.parametrize("config", [{"type": "adam", "lr": 0.01}, {"type": "adamw", "lr": 0.01},
                                    {"type": "sgd", "lr": 0.1, "momentum": 0.9},
                                    {"type": "sgd", "lr": 0.1}])
def test_optimizer_resumes_exactly(tmp_path, config):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    optimizer = build_optimizer(model.parameters(), config)
    schedule = build_schedule(optimizer, {"type": "linear", "warmup": 2}, 20)
    train(model, optimizer, 4, schedule)

    optimizer_tensors, optimizer_meta = optimizer_to_tensors(optimizer.state_dict())
    model_tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {**model_tensors, **optimizer_tensors},
                    {"optimizer": optimizer_meta, "schedule": schedule.state_dict()})

    tensors, state = load_checkpoint(path)
    torch.manual_seed(1)  # different initial weights
    resumed = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    resumed.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    resumed_optimizer = build_optimizer(resumed.parameters(), config)
    resumed_schedule = build_schedule(resumed_optimizer, {"type": "linear", "warmup": 2}, 20)
    resumed_optimizer.load_state_dict(optimizer_from_tensors(tensors, state["optimizer"]))
    resumed_schedule.load_state_dict(state["schedule"])

    train(model, optimizer, 3, schedule, seed=1)
    train(resumed, resumed_optimizer, 3, resumed_schedule, seed=1)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)  # bitwise
    assert resumed_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_optimizer_tensor_names_and_dtypes():
    p = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([p], lr=0.1)
    p.sum().backward()
    optimizer.step()
    state_dict = optimizer.state_dict()
    tensors, meta = optimizer_to_tensors(state_dict)
    assert set(tensors) == {"optimizer.state.0.step", "optimizer.state.0.exp_avg", "optimizer.state.0.exp_avg_sq"}
    json.dumps(meta)  # JSON-able
    rebuilt = optimizer_from_tensors(tensors, json.loads(json.dumps(meta)))
    assert list(rebuilt["state"]) == [0]  # integer keys again
    step = rebuilt["state"][0]["step"]
    assert step.dtype == state_dict["state"][0]["step"].dtype and step.shape == torch.Size([])
    assert rebuilt["param_groups"][0]["betas"] == (0.9, 0.999)  # a tuple again
    assert rebuilt["param_groups"] == state_dict["param_groups"]
    # SGD without momentum keeps a None buffer
    sgd = torch.optim.SGD([p], lr=0.1)
    sgd.step()
    tensors, meta = optimizer_to_tensors(sgd.state_dict(), prefix="opt")
    assert optimizer_from_tensors(tensors, json.loads(json.dumps(meta))) == sgd.state_dict()


def test_missing_optimizer_tensor():
    p = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([p])
    p.sum().backward()
    optimizer.step()
    tensors, meta = optimizer_to_tensors(optimizer.state_dict())
    del tensors["optimizer.state.0.exp_avg"]
    with pytest.raises(CheckpointError, match="optimizer.state.0.exp_avg"):
        optimizer_from_tensors(tensors, meta)


# ----------------------------------------------------------------------------------------------
# random state


def test_rng_round_trip(tmp_path):
    torch.manual_seed(123)
    random.seed(456)
    torch.rand(3)
    random.gauss(0, 1)  # leaves a cached gauss_next in Python's state
    tensors, meta = rng_to_tensors()
    path = tmp_path / "rng.safetensors"
    save_checkpoint(path, tensors, {"rng": meta})
    expected_torch, expected_python = torch.rand(5), [random.random(), random.gauss(0, 1)]

    torch.manual_seed(0)
    random.seed(0)
    tensors, state = load_checkpoint(path)
    rng_from_tensors(tensors, state["rng"])
    assert torch.equal(torch.rand(5), expected_torch)
    assert [random.random(), random.gauss(0, 1)] == expected_python
    assert tensors["rng.torch"].dtype == torch.uint8


def test_rng_missing_state():
    tensors, meta = rng_to_tensors()
    with pytest.raises(CheckpointError, match="random state"):
        rng_from_tensors({}, meta)

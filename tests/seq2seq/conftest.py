"""Fixtures for the sequence-to-sequence building blocks: Multi30k from the shared data, when present."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def multi30k() -> Path:
    """The Multi30k folder of DISTILBLOCKS_DATA, else of ``shared/data`` next to the repository."""
    env = os.environ.get("DISTILBLOCKS_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    folder = root / "multi30k"
    if not (folder / "train.en").is_file():
        pytest.skip(f"Multi30k not found at {folder} (set DISTILBLOCKS_DATA to the data folder)")
    return folder


@pytest.fixture(autouse=True)
def one_thread():
    """These tests run many tiny tensor operations, for which extra threads only add overhead
    (tenfold and more on a loaded 2-core machine); the previous setting is restored after each."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

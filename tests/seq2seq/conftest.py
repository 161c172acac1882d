"""Fixtures for the sequence-to-sequence building blocks: Multi30k from the shared data, when present."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def multi30k() -> Path:
    """The Multi30k folder of DISTILBLOCKS_DATA, else of ``shared/data`` next to the repository."""
    env = os.environ.get("DISTILBLOCKS_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    folder = root / "multi30k"
    if not (folder / "train.en").is_file():
        pytest.skip(f"Multi30k not found at {folder} (set DISTILBLOCKS_DATA to the data folder)")
    return folder

"""Fixtures for the data-layer tests: the shared real datasets, when present."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_data_dir() -> Path:
    """DISTILBLOCKS_DATA if set, else ``shared/data`` next to the repository."""
    env = os.environ.get("DISTILBLOCKS_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    folder = shared_data_dir()
    if not folder.is_dir():
        pytest.skip(f"real datasets not found at {folder} (set DISTILBLOCKS_DATA to their folder)")
    return folder

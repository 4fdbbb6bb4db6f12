"""Shared fixtures: seeded RNG, the shared reference data folder, small structures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

#: ../shared/data beside the checkout (CI has it; a user's clone may not)
SHARED_DATA = Path(os.environ.get("ML4M_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data folder {SHARED_DATA} is absent (set ML4M_SHARED_DATA)")
    return SHARED_DATA


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path

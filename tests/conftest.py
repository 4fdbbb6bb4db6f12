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


@pytest.fixture(scope="session")
def write_rattled_cu():
    """:func:`rattled_cu_files`, for tests in any folder."""
    return rattled_cu_files


def rattled_cu_files(folder: Path, n: int = 6) -> None:
    """``folder/start.extxyz``: a 32-atom fcc Cu cell (a = 3.61 A); ``folder/init.extxyz``:
    ``n`` copies rattled by 0.05, 0.07, ... A, labelled by EMT (energy, forces, stress)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.io import write

    atoms = bulk("Cu", cubic=True, a=3.61).repeat(2)
    frames = []
    for k in range(n):
        a = atoms.copy()
        a.rattle(0.05 + 0.02 * k, seed=k)
        a.calc = EMT()
        a.get_potential_energy(), a.get_forces(), a.get_stress()
        frames.append(a)
    write(folder / "init.extxyz", frames)
    write(folder / "start.extxyz", atoms)

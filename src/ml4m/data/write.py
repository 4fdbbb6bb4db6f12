"""Writing datasets to extended XYZ, atomically."""

from __future__ import annotations

import os

import ase.io

from ml4m._fileio import atomic_path
from ml4m.data.frames import Dataset

__all__ = ["write_extxyz"]


def write_extxyz(dataset: Dataset, path: str | os.PathLike) -> None:
    """Write frames with their labels (ASE's standard keys) to an extxyz file.

    The file appears only when complete (written to a temporary file, then renamed).

    Parameters
    ----------
    dataset : Dataset
        Frames to write; energy (eV), forces (eV/Angstrom) and stress
        (eV/Angstrom^3) go under ``energy``, ``forces`` and ``stress``.
    path : str or PathLike
        Output file.
    """
    with atomic_path(path) as tmp:
        ase.io.write(tmp, dataset.to_atoms(with_labels=True), format="extxyz")

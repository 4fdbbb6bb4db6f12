"""Writing datasets, and selections of a structure file's frames, to extended XYZ,
atomically."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import ase.io

from ml4m._fileio import atomic_path
from ml4m.data.frames import Dataset
from ml4m.errors import DataError

__all__ = ["write_extxyz", "copy_frames"]


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


def copy_frames(source: str | os.PathLike, selections: Mapping[str | os.PathLike, Sequence[int]],
                format: str | None = None) -> None:
    """Write selected frames of a structure file to extxyz files as ASE reads them.

    Everything a frame carries is kept: its labels under the file's own keys, every
    per-atom array (e.g. a cheaper method's forces for delta learning) and every info
    key; a :class:`~ml4m.data.frames.Frame` holds only the labels ml4m reads. One pass
    over ``source``; each file appears only when complete.

    Parameters
    ----------
    source : str or PathLike
        Any structure file ASE reads.
    selections : mapping
        Output file to the 0-based indices of its frames in ``source``, in the order to
        write them (an index may appear in several outputs).
    format : str, optional
        ASE format of ``source`` (default: from its name).

    Raises
    ------
    DataError
        ``source`` has fewer frames than an index asks.
    """
    wanted: dict[int, list[tuple[str, int]]] = {}
    picked: dict[str, list] = {}
    for target, indices in selections.items():
        key = os.fspath(target)
        picked[key] = [None] * len(indices)
        for k, i in enumerate(indices):
            wanted.setdefault(int(i), []).append((key, k))
    n = -1
    for n, atoms in enumerate(ase.io.iread(source, index=":", format=format)):
        for key, k in wanted.get(n, ()):
            picked[key][k] = atoms
    beyond = [i for i in wanted if i > n or i < 0]
    if beyond:
        raise DataError(f"has {n + 1} frames; frame {max(beyond, key=abs)} was selected",
                        os.fspath(source))
    for key, frames in picked.items():
        with atomic_path(Path(key)) as tmp:
            ase.io.write(tmp, frames, format="extxyz")

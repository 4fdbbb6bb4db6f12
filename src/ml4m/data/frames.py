"""Frames and datasets: atomic structures with their reference labels.

A :class:`Frame` is one structure with optional labels in ASE units; a
:class:`Dataset` is an ordered collection of frames that remembers where each one came
from (file and frame index) so that any later error can name it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import chemical_symbols

__all__ = ["Frame", "Dataset", "LABELS"]

#: the per-structure labels ml4m knows, in the order they are reported
LABELS: tuple[str, ...] = ("energy", "forces", "stress")


@dataclass
class Frame:
    """One atomic structure and its reference labels.

    Parameters
    ----------
    numbers : ndarray of shape (n_atoms,), int
        Atomic numbers.
    positions : ndarray of shape (n_atoms, 3), Angstrom
        Cartesian positions.
    cell : ndarray of shape (3, 3), Angstrom
        Cell vectors as rows (ASE convention). Zero rows are allowed along
        non-periodic directions.
    pbc : ndarray of shape (3,), bool
        Periodic boundary conditions per cell vector.
    energy : float, optional
        Total energy, eV.
    forces : ndarray of shape (n_atoms, 3), optional
        Forces, eV/Angstrom.
    stress : ndarray of shape (6,), optional
        Stress in Voigt order (xx, yy, zz, yz, xz, xy), eV/Angstrom^3, with the sign of
        ASE's ``get_stress``.
    info : dict
        Per-structure metadata (``config_type``, ``T_K``, scalar properties, ...).
    source : tuple of (str, int), optional
        File name and 0-based frame index this frame was read from.
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    source: tuple[str, int] | None = None

    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return len(self.numbers)

    @property
    def volume(self) -> float:
        """Cell volume in Angstrom^3 (0 for a degenerate or absent cell)."""
        return float(abs(np.linalg.det(self.cell)))

    def has(self, label: str) -> bool:
        """Whether the frame carries ``label`` (one of :data:`LABELS`)."""
        return getattr(self, label) is not None

    def where(self) -> str:
        """``'file, frame k'`` for messages, or ``'frame'`` when the source is unknown."""
        if self.source is None:
            return "frame"
        return f"{self.source[0]}, frame {self.source[1]}"

    @classmethod
    def from_atoms(cls, atoms: Atoms, **labels: Any) -> Frame:
        """Build a frame from ASE atoms and explicitly given labels.

        Parameters
        ----------
        atoms : ase.Atoms
            Structure; its calculator, if any, is ignored here (see
            :func:`ml4m.data.read_frames` for label discovery).
        **labels
            ``energy`` (eV), ``forces`` (eV/Angstrom), ``stress`` (eV/Angstrom^3),
            ``info`` (dict), ``source``.
        """
        return cls(
            numbers=np.asarray(atoms.numbers, dtype=np.int64).copy(),
            positions=np.asarray(atoms.positions, dtype=np.float64).copy(),
            cell=np.asarray(atoms.cell[:], dtype=np.float64).copy(),
            pbc=np.asarray(atoms.pbc, dtype=bool).copy(),
            energy=labels.get("energy"),
            forces=labels.get("forces"),
            stress=labels.get("stress"),
            info=dict(labels.get("info", {})),
            source=labels.get("source"),
        )

    def to_atoms(self, with_labels: bool = True) -> Atoms:
        """Convert to ASE atoms; labels are attached as a SinglePointCalculator.

        Parameters
        ----------
        with_labels : bool, default=True
            Attach energy/forces/stress so that ``atoms.get_potential_energy()``
            returns the reference values and extxyz writes them under ASE's keys.
        """
        atoms = Atoms(
            numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc
        )
        atoms.info.update(self.info)
        if with_labels:
            results = {}
            if self.energy is not None:
                results["energy"] = self.energy
                results["free_energy"] = self.energy
            if self.forces is not None:
                results["forces"] = self.forces
            if self.stress is not None:
                results["stress"] = self.stress
            if results:
                atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms


class Dataset(Sequence):
    """An ordered collection of :class:`Frame` objects.

    Indexing with an int returns a frame; with a slice, a list or an index array it
    returns a new dataset sharing the frames.

    Parameters
    ----------
    frames : iterable of Frame
        The frames, in order.
    """

    def __init__(self, frames: Iterable[Frame]) -> None:
        self.frames: list[Frame] = list(frames)

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[Frame]:
        return iter(self.frames)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, (int, np.integer)):
            return self.frames[int(index)]
        if isinstance(index, slice):
            return Dataset(self.frames[index])
        return Dataset(self.frames[int(i)] for i in np.asarray(index).ravel())

    def __add__(self, other: Dataset) -> Dataset:
        return Dataset(self.frames + list(other.frames))

    def __repr__(self) -> str:
        return f"Dataset(n_frames={len(self)}, n_atoms={self.n_atoms}, species={self.species})"

    @property
    def n_atoms(self) -> int:
        """Total number of atoms over all frames."""
        return int(sum(len(f) for f in self.frames))

    @property
    def species(self) -> list[str]:
        """Chemical symbols present, sorted by atomic number."""
        zs = sorted({int(z) for f in self.frames for z in np.unique(f.numbers)})
        return [chemical_symbols[z] for z in zs]

    @property
    def atomic_numbers(self) -> np.ndarray:
        """Sorted unique atomic numbers present."""
        return np.array(
            sorted({int(z) for f in self.frames for z in np.unique(f.numbers)}), dtype=np.int64
        )

    def species_counts(self) -> dict[str, int]:
        """Number of atoms of each species, keyed by chemical symbol."""
        counts: Counter[int] = Counter()
        for f in self.frames:
            zs, ns = np.unique(f.numbers, return_counts=True)
            counts.update(dict(zip(zs.tolist(), ns.tolist())))
        return {chemical_symbols[z]: counts[z] for z in sorted(counts)}

    def label_counts(self) -> dict[str, int]:
        """Number of frames carrying each label of :data:`LABELS`."""
        return {lab: sum(f.has(lab) for f in self.frames) for lab in LABELS}

    def to_atoms(self, with_labels: bool = True) -> list[Atoms]:
        """All frames as ASE atoms (see :meth:`Frame.to_atoms`)."""
        return [f.to_atoms(with_labels) for f in self.frames]

    def info_values(self, key: str, default: Any = None) -> list[Any]:
        """The value of ``info[key]`` for every frame (``default`` where absent)."""
        return [f.info.get(key, default) for f in self.frames]

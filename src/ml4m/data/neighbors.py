"""Neighbour lists through vesin, for one frame or many frames at once.

Periodic, open and mixed boundary conditions are supported, including cells smaller
than the cutoff, where an atom sees its own periodic images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sys

import numpy as np
from ase import Atoms

from ml4m.data.frames import Frame
from ml4m.errors import ConfigError

__all__ = ["NeighborList", "neighbor_list", "batched_neighbor_list", "shortest_distances",
           "pair_inner_radii"]


@dataclass(frozen=True)
class NeighborList:
    """Pairs ``(i, j)`` within a cutoff, with their geometry.

    Attributes
    ----------
    i, j : ndarray of shape (n_pairs,), int64
        Centre and neighbour atom indices (global indices for batched lists).
    shifts : ndarray of shape (n_pairs, 3), int64
        Periodic image of ``j``: ``r_ij = r_j + shifts @ cell - r_i``.
    vectors : ndarray of shape (n_pairs, 3), Angstrom
        ``r_ij`` from atom i to the image of atom j.
    distances : ndarray of shape (n_pairs,), Angstrom
        ``|r_ij|``.
    cutoff : float
        Cutoff radius, Angstrom.
    """

    i: np.ndarray
    j: np.ndarray
    shifts: np.ndarray
    vectors: np.ndarray
    distances: np.ndarray
    cutoff: float

    def __len__(self) -> int:
        return len(self.i)


def _vesin():
    """Import vesin lazily, without letting it import PyTorch.

    vesin imports torch (about a second and 200 MB) when it is installed, only to accept
    torch tensors; ml4m passes numpy arrays. If torch is not loaded yet, it is hidden
    while vesin is imported, so data-only commands start fast and stay small.
    """
    if "vesin" in sys.modules or "torch" in sys.modules:
        import vesin

        return vesin
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` fail
    try:
        import vesin
    finally:
        del sys.modules["torch"]
    return vesin


def _geometry(frame: Frame | Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(frame, Atoms):
        return frame.positions, np.asarray(frame.cell[:]), np.asarray(frame.pbc)
    return frame.positions, frame.cell, frame.pbc


def neighbor_list(
    frame: Frame | Atoms, cutoff: float, full_list: bool = True
) -> NeighborList:
    """All pairs within ``cutoff`` of one structure.

    Parameters
    ----------
    frame : Frame or ase.Atoms
        The structure.
    cutoff : float
        Cutoff radius, Angstrom (> 0).
    full_list : bool, default=True
        Both ``(i, j)`` and ``(j, i)`` when True; each pair once when False.

    Returns
    -------
    NeighborList
        Pairs sorted by ``i`` (then ``j``), with shifts, vectors and distances.
    """
    if not np.isfinite(cutoff) or cutoff <= 0:
        raise ConfigError(f"cutoff must be a finite, positive number of Angstrom, got {cutoff}")
    positions, cell, pbc = _geometry(frame)
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    box = np.ascontiguousarray(cell, dtype=np.float64)
    calculator = _vesin().NeighborList(cutoff=float(cutoff), full_list=full_list, sorted=True)
    i, j, s, d, v = calculator.compute(
        points=positions, box=box, periodic=[bool(p) for p in pbc], quantities="ijSdD"
    )
    return NeighborList(
        i=i.astype(np.int64),
        j=j.astype(np.int64),
        shifts=s.astype(np.int64),
        vectors=v,
        distances=d,
        cutoff=float(cutoff),
    )


def batched_neighbor_list(
    frames: Sequence[Frame | Atoms], cutoff: float, full_list: bool = True
) -> tuple[NeighborList, np.ndarray]:
    """Neighbour lists of many frames concatenated, with global atom indices.

    Parameters
    ----------
    frames : sequence of Frame or ase.Atoms
        The structures.
    cutoff : float
        Cutoff radius, Angstrom.
    full_list : bool, default=True
        See :func:`neighbor_list`.

    Returns
    -------
    nl : NeighborList
        Pairs of all frames; ``i`` and ``j`` index the concatenated atoms.
    pair_frame : ndarray of shape (n_pairs,), int64
        Frame index of each pair.
    """
    parts = []
    frame_of_pair = []
    offset = 0
    for k, frame in enumerate(frames):
        nl = neighbor_list(frame, cutoff, full_list)
        parts.append((nl.i + offset, nl.j + offset, nl.shifts, nl.vectors, nl.distances))
        frame_of_pair.append(np.full(len(nl), k, dtype=np.int64))
        offset += len(frame)
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return (
            NeighborList(empty, empty, np.zeros((0, 3), np.int64), np.zeros((0, 3)),
                         np.zeros(0), float(cutoff)),
            empty,
        )
    i, j, s, v, d = (np.concatenate(x) for x in zip(*parts))
    return NeighborList(i, j, s, v, d, float(cutoff)), np.concatenate(frame_of_pair)


def shortest_distances(frames: Sequence[Frame | Atoms], cutoff: float = 3.0) -> dict[str, float]:
    """The shortest distance of every element pair in a set of structures.

    Parameters
    ----------
    frames : sequence of Frame or ase.Atoms
        The structures (periodic images count).
    cutoff : float, default=3.0
        Largest distance looked at, Angstrom; pairs never closer are left out.

    Returns
    -------
    dict
        ``{"C-H": 0.99, ...}`` in Angstrom, keys ``"A-B"`` with the lighter element first:
        where the radial basis of each pair may start (ACE's ``pair_r_in``, a little below).
    """
    from ase.data import chemical_symbols

    best: dict[tuple[int, int], float] = {}
    for frame in frames:
        nl = neighbor_list(frame, cutoff, full_list=False)
        if not len(nl):
            continue
        z = np.asarray(frame.numbers)
        a, b = np.minimum(z[nl.i], z[nl.j]), np.maximum(z[nl.i], z[nl.j])
        key = a * 1000 + b
        order = np.lexsort((nl.distances, key))
        first = np.flatnonzero(np.r_[True, np.diff(key[order]) != 0])
        for k in order[first]:
            pair = (int(a[k]), int(b[k]))
            best[pair] = min(best.get(pair, np.inf), float(nl.distances[k]))
    return {f"{chemical_symbols[p]}-{chemical_symbols[q]}": d for (p, q), d in sorted(best.items())}


def pair_inner_radii(frames: Sequence[Frame | Atoms], margin: float = 0.25,
                     cutoff: float = 3.0) -> dict[str, float]:
    """Where each element pair's radial basis may start: ``margin`` below its shortest
    distance in ``frames`` (:func:`shortest_distances`), Angstrom, rounded to 1 mA and
    at least 0; ACE's ``pair_r_in``."""
    return {k: round(max(d - margin, 0.0), 3) for k, d in shortest_distances(frames, cutoff).items()}

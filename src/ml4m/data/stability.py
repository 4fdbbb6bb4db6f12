"""Whether a trajectory stays physical: bonds kept, no atoms pressed together.

The criteria of the MD stability protocol (issue #21, ``benchmarks/md_stability.py``)
and of the basis search's MD probe: a structure is unstable when

* a bond of the starting structure (a pair closer than ``BONDED`` x the sum of the
  covalent radii; molecules only: atoms of a periodic solid or liquid change
  neighbours) is longer than ``bond_factor`` x its starting length, or
* two atoms (periodic images included) are closer than ``close_factor`` x the shortest
  distance of their element pair in the training frames (pairs absent there: the
  shortest of any pair).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, covalent_radii

from ml4m.data.neighbors import neighbor_list

__all__ = ["Instability", "StabilityCheck", "bonds"]

#: a pair closer than this many times its covalent-radii sum is a bond
BONDED = 1.2


def bonds(atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
    """The bonds of a molecule: atoms ``i < j`` closer than ``BONDED`` x the sum of their
    covalent radii (no periodic images)."""
    d = atoms.get_all_distances()
    radii = covalent_radii[atoms.numbers]
    return np.nonzero(np.triu(d < BONDED * (radii[:, None] + radii[None, :]), k=1))


@dataclass(frozen=True)
class Instability:
    """How a structure left the stable range: ``kind`` (``'bond'`` or ``'close'``), the
    two atoms, their distance and the limit it crossed (Angstrom)."""

    kind: str
    i: int
    j: int
    distance: float
    limit: float

    def __str__(self) -> str:
        what = "bond stretched" if self.kind == "bond" else "atoms too close"
        return (f"{what}: atoms {self.i}-{self.j} at {self.distance:.2f} A "
                f"(limit {self.limit:.2f} A)")


class StabilityCheck:
    """The bond and close-contact criteria for a structure that keeps its atoms.

    Each check costs one neighbour search within the largest contact limit
    (:func:`ml4m.data.neighbors.neighbor_list`: reused within an MD run's
    :func:`~ml4m.data.neighbors.verlet_reuse` block) and the lengths of the watched
    bonds, not all pairs.

    Parameters
    ----------
    start : ase.Atoms
        The starting structure (its bonds are the ones watched).
    shortest : dict
        Shortest training distance per element pair, ``{"C-H": 1.02, ...}`` (Angstrom;
        :func:`ml4m.data.shortest_distances`).
    bond_factor : float, default=1.5
        A bond fails beyond this many times its starting length.
    close_factor : float, default=0.7
        A pair fails below this many times its shortest training distance.
    """

    def __init__(self, start: Atoms, shortest: dict[str, float], bond_factor: float = 1.5,
                 close_factor: float = 0.7) -> None:
        z = start.numbers
        if start.pbc.any():  # a solid or liquid: neighbours change, only contacts are watched
            self.i = self.j = np.zeros(0, dtype=int)
        else:
            self.i, self.j = bonds(start)
        self.max_bond = bond_factor * self._lengths(start)
        floor = close_factor * min(shortest.values(), default=0.0)
        self.limits = np.full((119, 119), floor)
        for pair, r in shortest.items():
            a, b = (atomic_numbers[s] for s in pair.split("-"))
            self.limits[a, b] = self.limits[b, a] = close_factor * r
        self.reach = float(self.limits[np.ix_(z, z)].max(initial=0.0))

    def _lengths(self, atoms: Atoms) -> np.ndarray:
        """Lengths of the watched bonds (molecules only: no periodic images), Angstrom."""
        return np.linalg.norm(atoms.positions[self.j] - atoms.positions[self.i], axis=1)

    def __call__(self, atoms: Atoms) -> Instability | None:
        """The first criterion ``atoms`` (the same atoms, moved) breaks, or ``None``: the
        most stretched bond, else the contact deepest below its limit."""
        if len(self.i):
            ratio = self._lengths(atoms) / self.max_bond
            k = int(np.argmax(ratio))
            if ratio[k] > 1.0:
                return Instability("bond", int(self.i[k]), int(self.j[k]),
                                   float(ratio[k] * self.max_bond[k]), float(self.max_bond[k]))
        if self.reach <= 0.0:
            return None
        nl = neighbor_list(atoms, self.reach, full_list=False)
        limit = self.limits[atoms.numbers[nl.i], atoms.numbers[nl.j]]
        ratio = nl.distances / np.where(limit > 0, limit, np.inf)
        if not len(ratio) or ratio.min() >= 1.0:
            return None
        k = int(np.argmin(ratio))
        return Instability("close", int(min(nl.i[k], nl.j[k])), int(max(nl.i[k], nl.j[k])),
                           float(nl.distances[k]), float(limit[k]))

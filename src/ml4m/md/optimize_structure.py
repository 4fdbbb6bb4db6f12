"""Degrees of freedom of a structure, set and then held through a relaxation.

Three kinds (:class:`Dof`):

* ``torsion`` of atoms ``[a, b, c, d]``, deg: the side of the bond ``b-c`` holding ``c``
  and ``d`` turns about that bond (``Atoms.set_dihedral`` with a mask of that side);
* ``distance`` of atoms ``[a, b]``, Angstrom: the side holding ``b`` moves along ``a-b``;
* ``site`` of adsorbate atoms ``[a, ...]``: fractional coordinates (along the first two
  cell vectors) of atom ``a``; the whole adsorbate moves in the surface plane.

A side is found in the molecular graph (bonds between atoms closer than the sum of ASE's
natural cutoffs) with the bond ``a-b`` (or ``b-c``) broken: the atoms connected to the
moving atom. A bond inside a ring has no side and is refused. In the relaxation that
follows, torsions and distances are held by ASE's ``FixInternals``, a site by a
``FixedLine`` of its anchor atom along the surface normal, and the atoms of ``fix`` by
``FixAtoms``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from ml4m.errors import ConfigError

__all__ = ["DOF_KINDS", "Dof", "apply_dofs", "bond_graph", "constraints_for", "measure_dofs",
           "moving_side"]

#: kinds of degree of freedom and the number of atoms each names (None: one or more)
DOF_KINDS = {"torsion": 4, "distance": 2, "site": None}


@dataclass(frozen=True)
class Dof:
    """One degree of freedom (see the module docstring).

    Attributes
    ----------
    kind : {'torsion', 'distance', 'site'}
    atoms : tuple of int
        Atom indices (0-based).
    low, high : tuple of float
        Range of each of its dimensions: deg for a torsion, Angstrom for a distance,
        fractions of the first two cell vectors for a site (two dimensions).
    """

    kind: str
    atoms: tuple[int, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]

    @property
    def dim(self) -> int:
        return len(self.low)

    @property
    def periodic(self) -> tuple[bool, ...]:
        """A full turn of a torsion, and a whole cell vector of a site, close on itself."""
        if self.kind == "torsion":
            return (abs(self.high[0] - self.low[0] - 360.0) < 1e-9,)
        if self.kind == "site":
            return tuple(abs(h - lo - 1.0) < 1e-9 for lo, h in zip(self.low, self.high))
        return (False,)

    @property
    def labels(self) -> list[str]:
        """Names of its dimensions, e.g. ``torsion(1,6,7,8)`` (as in output files)."""
        name = f"{self.kind}({','.join(map(str, self.atoms))})"
        return [f"{name}.{c}" for c in "xy"] if self.kind == "site" else [name]


def bond_graph(atoms: Atoms) -> list[set[int]]:
    """Neighbours of each atom: pairs closer than the sum of ASE's natural cutoffs."""
    from ase.neighborlist import NeighborList, natural_cutoffs

    nl = NeighborList(natural_cutoffs(atoms), self_interaction=False, bothways=True)
    nl.update(atoms)
    return [set(nl.get_neighbors(i)[0].tolist()) for i in range(len(atoms))]


def moving_side(graph: list[set[int]], fixed: int, moving: int) -> np.ndarray:
    """Atoms connected to ``moving`` once the bond ``fixed-moving`` (if any) is broken.

    Returns
    -------
    ndarray of bool, shape (n_atoms,)

    Raises
    ------
    ConfigError
        ``fixed`` is reached too (the two atoms share a ring or a fragment).
    """
    seen = np.zeros(len(graph), dtype=bool)
    seen[moving] = True
    stack = [moving]
    while stack:
        i = stack.pop()
        for j in graph[i]:
            if not seen[j] and not (i == moving and j == fixed):
                seen[j] = True
                stack.append(j)
    if seen[fixed]:
        raise ConfigError(f"atoms {fixed} and {moving} are joined by another path (a ring or "
                          "one fragment): no side of them can move alone")
    return seen


def _side(graph: list[set[int]], dof: Dof) -> np.ndarray:
    """The atoms that setting ``dof`` moves (ConfigError naming it when ill-posed)."""
    a = dof.atoms
    if dof.kind == "site":
        mask = np.zeros(len(graph), dtype=bool)
        mask[list(a)] = True
        return mask
    fixed, moving = (a[1], a[2]) if dof.kind == "torsion" else (a[0], a[1])
    if dof.kind == "torsion" and moving not in graph[fixed]:
        raise ConfigError(f"{dof.labels[0]}: atoms {fixed} and {moving} are not bonded")
    try:
        side = moving_side(graph, fixed, moving)
    except ConfigError as exc:
        raise ConfigError(f"{dof.labels[0]}: {exc}") from None
    if dof.kind == "torsion" and (side[a[0]] or not side[a[3]]):
        raise ConfigError(f"{dof.labels[0]}: atom {a[0]} must lie on the side of {a[1]} and "
                          f"atom {a[3]} on the side of {a[2]}")
    return side


def apply_dofs(atoms: Atoms, dofs: Sequence[Dof], values: Sequence[float]) -> None:
    """Set ``dofs`` of ``atoms`` (in place) to ``values`` (flat, one per dimension).

    Raises
    ------
    ConfigError
        A torsion about a bond that is not one or lies in a ring; a distance between
        atoms of one ring or fragment; a site on a structure without a periodic surface
        cell.
    """
    graph = bond_graph(atoms)
    values = list(values)
    for dof in dofs:
        vals, values = values[:dof.dim], values[dof.dim:]
        mask = _side(graph, dof)
        a = dof.atoms
        if dof.kind == "torsion":
            atoms.set_dihedral(*a, float(vals[0]), mask=mask)
        elif dof.kind == "distance":
            atoms.set_distance(a[0], a[1], float(vals[0]), fix=0,
                               indices=np.flatnonzero(mask).tolist())
        else:
            target = np.array([vals[0], vals[1]]) @ _surface_vectors(atoms)
            shift = np.append(target - atoms.positions[a[0], :2], 0.0)
            atoms.positions[mask] += shift


def _surface_vectors(atoms: Atoms) -> np.ndarray:
    """The in-plane (x, y) parts of the first two cell vectors, Angstrom (2, 2)."""
    cell = atoms.cell[:]
    if not (atoms.pbc[0] and atoms.pbc[1]) or abs(np.linalg.det(cell[:2, :2])) < 1e-6:
        raise ConfigError("a 'site' needs a surface cell periodic along its first two vectors, "
                          "which span the x-y plane")
    return cell[:2, :2]


def measure_dofs(atoms: Atoms, dofs: Sequence[Dof]) -> np.ndarray:
    """The current values of ``dofs`` (flat, one per dimension; torsions in
    [-180, 180) deg)."""
    out: list[float] = []
    for dof in dofs:
        a = dof.atoms
        if dof.kind == "torsion":
            out.append((atoms.get_dihedral(*a) + 180.0) % 360.0 - 180.0)
        elif dof.kind == "distance":
            out.append(float(atoms.get_distance(a[0], a[1])))
        else:
            frac = np.linalg.solve(_surface_vectors(atoms).T, atoms.positions[a[0], :2])
            out.extend(float(f) for f in frac)
    return np.array(out)


def constraints_for(dofs: Sequence[Dof], values: Sequence[float], fix: Sequence[int] = ()
                    ) -> list:
    """ASE constraints holding ``dofs`` at ``values`` and the atoms ``fix`` in place."""
    from ase.constraints import FixAtoms, FixedLine, FixInternals

    bonds, dihedrals, lines = [], [], []
    values = list(values)
    for dof in dofs:
        vals, values = values[:dof.dim], values[dof.dim:]
        if dof.kind == "torsion":
            dihedrals.append([float(vals[0]), list(dof.atoms)])
        elif dof.kind == "distance":
            bonds.append([float(vals[0]), list(dof.atoms)])
        else:
            lines.append(FixedLine(dof.atoms[0], [0.0, 0.0, 1.0]))
    out: list = []
    if fix:
        out.append(FixAtoms(indices=list(fix)))
    if bonds or dihedrals:
        out.append(FixInternals(bonds=bonds or None, dihedrals_deg=dihedrals or None))
    return out + lines

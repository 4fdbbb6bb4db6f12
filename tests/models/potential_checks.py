"""Checks of a potential: central finite differences of its energy against its forces and
stress, and the symmetries of energy and forces."""

from __future__ import annotations

import numpy as np
import pytest

#: strains checked: (row, column) of the deformation and the Voigt index of the stress
STRAINS = (((0, 0), 0), ((1, 2), 3))


def assert_forces_are_energy_gradients(model, atoms, components, h: float = 1e-5,
                                       rel: float = 1e-6, abs: float = 1e-9) -> None:
    """``F[a, c] = -(E(r + h) - E(r - h)) / 2h`` for each ``(a, c)`` of ``components``."""
    pred = model.predict([atoms])
    for a, c in components:
        e = []
        for s in (h, -h):
            x = atoms.copy()
            x.positions[a, c] += s
            e.append(model.predict([x]).energy[0])
        assert pred.forces[a, c] == pytest.approx(-(e[0] - e[1]) / (2 * h), rel=rel, abs=abs)


def assert_stress_is_strain_derivative(model, atoms, h: float = 1e-5, rel: float = 1e-6,
                                       abs: float = 1e-10) -> None:
    """``sigma_v = dE/d(eps) / V`` for a normal and a shear strain (``STRAINS``)."""
    pred = model.predict([atoms])
    for (p, q), v in STRAINS:
        e = []
        for s in (h, -h):
            eps = np.eye(3)
            eps[p, q] += s
            eps[q, p] += s if p != q else 0
            x = atoms.copy()
            x.set_cell(atoms.cell @ eps, scale_atoms=True)
            e.append(model.predict([x]).energy[0])
        fd = (e[0] - e[1]) / (2 * h) / atoms.get_volume() / (1 if p == q else 2)
        assert pred.stress[0, v] == pytest.approx(fd, rel=rel, abs=abs)


def assert_invariant_and_equivariant(model, atoms, shift: float = 1.3) -> None:
    """The energy is unchanged and the forces rotate with a random rotation of positions
    and cell, a translation by ``shift`` (Angstrom) and a permutation of the atoms, to
    float64 rounding: 1e-10 eV per atom for the energy (a sum over the atoms in another
    order; the sparse GP's differed by 2e-12 eV on 32 atoms of an AMD EPYC), 1e-10
    eV/Angstrom for the forces."""
    ref = model.predict([atoms])
    rot = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))[0]
    moved = atoms.copy()
    moved.set_cell(atoms.cell @ rot.T)
    moved.positions = atoms.positions @ rot.T + shift
    perm = np.random.default_rng(6).permutation(len(atoms))
    got = model.predict([moved[perm]])
    assert got.energy[0] == pytest.approx(ref.energy[0], rel=1e-12, abs=1e-10 * len(atoms))
    np.testing.assert_allclose(got.forces, (ref.forces @ rot.T)[perm], atol=1e-10)

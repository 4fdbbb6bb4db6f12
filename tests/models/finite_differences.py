"""Central finite differences of a potential's energy, checked against its forces and stress."""

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

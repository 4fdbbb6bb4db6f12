"""The stability criteria: a stretched bond and a close contact are caught, named and
measured; a structure that moves within the limits passes."""

from __future__ import annotations

import numpy as np
from ase import Atoms

from ml4m.data.stability import StabilityCheck


def _water() -> Atoms:
    return Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])


def test_a_stretched_bond_is_caught_at_its_limit():
    start = _water()
    check = StabilityCheck(start, {"H-O": 0.9, "H-H": 1.4}, bond_factor=1.5)
    moved = start.copy()
    moved.positions[1, 0] = 0.96 * 1.49  # just inside 1.5 x the O-H bond
    assert check(moved) is None
    moved.positions[1, 0] = 0.96 * 1.51
    bad = check(moved)
    assert bad.kind == "bond" and {bad.i, bad.j} == {0, 1}
    assert bad.limit == np.float64(1.5 * 0.96)
    assert "bond stretched" in str(bad) and "0-1" in str(bad)


def test_a_close_contact_is_caught_per_element_pair():
    start = Atoms("H2O", positions=[[0, 0, 0], [3.0, 0, 0], [10, 0, 0]])  # no bonds
    check = StabilityCheck(start, {"H-H": 1.5, "H-O": 0.9}, close_factor=0.7)
    moved = start.copy()
    moved.positions[1] = [1.06, 0, 0]  # H-H at 1.06 A: above 0.7 x 1.5 = 1.05
    assert check(moved) is None
    moved.positions[1] = [1.04, 0, 0]
    bad = check(moved)
    assert bad.kind == "close" and {bad.i, bad.j} == {0, 1}
    assert abs(bad.limit - 1.05) < 1e-12 and abs(bad.distance - 1.04) < 1e-12


def test_periodic_structures_watch_contacts_through_the_boundary_not_bonds():
    start = Atoms("Cu2", positions=[[0, 0, 0], [1.8, 1.8, 0]], cell=[3.6, 3.6, 3.6], pbc=True)
    check = StabilityCheck(start, {"Cu-Cu": 2.3})
    moved = start.copy()
    moved.positions[1] = [1.8, 1.8, 1.8]  # neighbours change freely in a solid or liquid
    assert check(moved) is None
    moved.positions[1] = [3.5, 0, 0]  # 0.1 A from its neighbour's image
    bad = check(moved)
    assert bad.kind == "close" and abs(bad.distance - 0.1) < 1e-9

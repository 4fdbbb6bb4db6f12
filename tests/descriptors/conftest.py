"""Small structures and helpers shared by the descriptor tests."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from ml4m.descriptors import ACE, ACSF, MBTR, SOAP

SPECIES = ["Cu", "Au"]

#: one small, fast configuration of every family, exercising all function types
FACTORIES = {
    "acsf": lambda: ACSF(SPECIES, r_cut=4.0, g2_params=[(0.5, 2.0), (0.1, 0.0)],
                         g3_params=[1.3], g4_params=[(0.01, 2.0, -1.0), (0.02, 1.0, 1.0)],
                         g5_params=[(0.01, 3.0, 1.0)], ani_params=[(0.5, 4.0, 0.8, 2.5)]),
    "soap": lambda: SOAP(SPECIES, r_cut=4.0, n_max=3, l_max=3, sigma=0.5),
    "soap_normalized": lambda: SOAP(SPECIES, r_cut=4.0, n_max=3, l_max=2, normalize=True),
    "ace": lambda: ACE(SPECIES, r_cut=4.0, n_max=2, l_max=2, correlation_order=4,
                       total_degree=7),
    # per-order truncation and the short-range distance transform of the radial basis
    # (inner radius below the structures' shortest distance)
    "ace_r0": lambda: ACE(SPECIES, r_cut=4.0, n_max=4, l_max=2, correlation_order=3,
                          total_degree=[6, 6, 5], r0=1.2, r_in=1.2),
    # radial functions of their own for some element pairs (stacked radial tables)
    "ace_pairs": lambda: ACE(SPECIES, r_cut=4.0, n_max=4, l_max=2, correlation_order=3,
                             total_degree=[6, 6, 5], r0=1.2, r_in=1.2,
                             pair_r_in={"Au-Cu": 1.0, "Au-Au": 1.5}, pair_r0={"Cu-Cu": 0.8}),
    # element-agnostic channels for the four-body functions
    "ace_agnostic": lambda: ACE(SPECIES, r_cut=4.0, n_max=3, l_max=2, correlation_order=3,
                                total_degree=[6, 6, 6], agnostic_from=3),
    "mbtr": lambda: MBTR(SPECIES, r_cut=4.0, n_grid=16, sigma=0.3),
}


@pytest.fixture(params=sorted(FACTORIES))
def descriptor(request):
    return FACTORIES[request.param]()


def alloy(seed: int = 0, repeat=(2, 2, 2), rattle: float = 0.12) -> Atoms:
    """Rattled fcc CuAu (periodic, 8 * prod(repeat)... atoms of a cubic cell)."""
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat(repeat)
    atoms.numbers[rng.random(len(atoms)) < 0.4] = 79
    atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
    return atoms


def cluster(seed: int = 1) -> Atoms:
    """A small open CuAu cluster."""
    rng = np.random.default_rng(seed)
    pos = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 1, 1)).positions
    pos = pos + rng.normal(scale=0.15, size=pos.shape)
    numbers = np.where(rng.random(len(pos)) < 0.5, 29, 79)
    return Atoms(numbers=numbers, positions=pos, pbc=False)


def dense_position_gradient(res, n_rows: int, n_atoms: int) -> np.ndarray:
    """(rows, atoms, 3, F) dense array from the sparse gradient layout."""
    out = np.zeros((n_rows, n_atoms, 3, res.gradients.shape[-1]))
    np.add.at(out, (res.gradient_row, res.gradient_atom), res.gradients)
    return out


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| relative to max |b|."""
    scale = max(np.abs(b).max(), 1e-300)
    return float(np.abs(a - b).max() / scale)

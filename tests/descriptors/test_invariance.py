"""Symmetries every descriptor must have (float64, 1e-10)."""

from __future__ import annotations

import numpy as np
from ase.build import bulk
from scipy.spatial.transform import Rotation

from .conftest import alloy, cluster

TOL = 1e-10


def _close(a, b):
    scale = max(np.abs(a).max(), 1.0)
    np.testing.assert_allclose(a, b, rtol=0, atol=TOL * scale)


def test_rotation_translation_periodic(descriptor):
    atoms = alloy()
    ref = descriptor.compute(atoms).features
    R = Rotation.random(random_state=7).as_matrix()
    moved = atoms.copy()
    moved.set_cell(atoms.cell[:] @ R.T, scale_atoms=True)
    moved.positions += np.array([0.37, -1.3, 2.9])
    _close(descriptor.compute(moved).features, ref)


def test_rotation_translation_open(descriptor):
    atoms = cluster()
    ref = descriptor.compute(atoms).features
    R = Rotation.random(random_state=11).as_matrix()
    moved = atoms.copy()
    moved.positions = atoms.positions @ R.T + np.array([5.0, -2.0, 0.3])
    _close(descriptor.compute(moved).features, ref)
    assert np.abs(ref).max() > 0  # not trivially zero


def test_permutation_of_like_atoms(descriptor):
    atoms = alloy(seed=3)
    ref = descriptor.compute(atoms)
    perm = np.random.default_rng(5).permutation(len(atoms))
    res = descriptor.compute(atoms[perm])
    if descriptor.average:
        _close(res.features, ref.features)
    else:
        _close(res.features, ref.features[perm])
        assert np.array_equal(res.numbers, ref.numbers[perm])


def test_supercell_identical(descriptor):
    atoms = alloy(seed=4, repeat=(1, 1, 1))
    ref = descriptor.compute(atoms).features
    big = descriptor.compute(atoms.repeat((2, 2, 2))).features
    if descriptor.average:
        _close(big, ref)
    else:
        _close(big, np.tile(ref, (8, 1)))


def test_small_cell_sees_own_images(descriptor):
    """A 1-atom primitive fcc cell (r_cut > cell size) equals its 4-atom cubic cell."""
    prim = bulk("Au", "fcc", a=4.0)
    cubic = bulk("Au", "fcc", a=4.0, cubic=True)
    a = descriptor.compute(prim).features
    b = descriptor.compute(cubic).features
    assert np.abs(a).max() > 0
    if descriptor.average:
        _close(a, b)
    else:
        _close(np.tile(a, (4, 1)), b)


def test_n_jobs_and_order(descriptor):
    frames = [alloy(seed=s, repeat=(1, 1, 1)) for s in range(4)] + [cluster()]
    serial = descriptor.compute(frames)
    threaded = descriptor.compute(frames, n_jobs=2)
    np.testing.assert_array_equal(serial.features, threaded.features)
    np.testing.assert_array_equal(serial.frame, threaded.frame)
    rows = 5 if descriptor.average else sum(len(f) for f in frames)
    assert serial.features.shape == (rows, descriptor.n_features)
    assert len(descriptor.feature_names()) == descriptor.n_features
    assert len(set(descriptor.feature_names())) == descriptor.n_features


def test_isolated_atom_and_2d_slab(descriptor):
    """No neighbours: local features vanish; a slab with a zero third cell vector works."""
    from ase import Atoms
    from ase.build import fcc111

    res = descriptor.compute(Atoms("CuAu", positions=[[0, 0, 0], [30, 0, 0]]), gradients=True)
    if descriptor.name != "mbtr":
        assert np.abs(res.features).max() < 1e-20
    assert np.abs(res.gradients).max() < 1e-20
    slab = fcc111("Cu", size=(2, 2, 3), a=3.7)
    slab.cell[2] = 0.0
    slab.pbc = [True, True, False]
    ref = descriptor.compute(slab).features
    moved = slab.copy()
    moved.positions += [0.3, 0.2, 5.0]
    _close(descriptor.compute(moved).features, ref)
    big = descriptor.compute(slab.repeat((2, 1, 1))).features  # first copy = original
    _close(big if descriptor.average else big[:len(slab)], ref)

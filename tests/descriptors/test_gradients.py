"""Analytic position and strain derivatives equal central finite differences."""

from __future__ import annotations

import numpy as np
from ase import Atoms

from ml4m.data.frames import Frame
from ml4m.descriptors import SOAP

from .conftest import alloy, cluster, dense_position_gradient, rel_err

H = 1e-5
TOL = 1e-6


def _fd_positions(desc, atoms, atom):
    out = []
    for x in range(3):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, x] += H
        minus.positions[atom, x] -= H
        out.append((desc.compute(plus).features - desc.compute(minus).features) / (2 * H))
    return np.stack(out, axis=1)  # (rows, 3, F)


def _fd_strain(desc, atoms, a, b):
    def at(eps):
        s = atoms.copy()
        E = np.eye(3)
        E[a, b] += eps
        s.set_cell(atoms.cell[:] @ E.T, scale_atoms=True)
        return desc.compute(s).features
    return (at(H) - at(-H)) / (2 * H)


def test_position_gradients_periodic(descriptor):
    atoms = alloy(seed=2, repeat=(1, 1, 1))  # 4 atoms, many self-images
    res = descriptor.compute(atoms, gradients=True)
    dense = dense_position_gradient(res, len(res.features), len(atoms))
    for atom in (0, 3):
        assert rel_err(dense[:, atom], _fd_positions(descriptor, atoms, atom)) < TOL


def test_position_gradients_open(descriptor):
    atoms = cluster()
    res = descriptor.compute(atoms, gradients=True)
    dense = dense_position_gradient(res, len(res.features), len(atoms))
    atom = 5
    assert rel_err(dense[:, atom], _fd_positions(descriptor, atoms, atom)) < TOL
    # translation invariance: derivatives sum to zero over atoms
    assert np.abs(dense.sum(axis=1)).max() < 1e-9 * max(np.abs(dense).max(), 1.0)


def test_strain_gradients(descriptor):
    atoms = alloy(seed=6, repeat=(1, 1, 1))
    res = descriptor.compute(atoms, gradients=True)
    for a, b in ((0, 0), (0, 1), (2, 1)):
        assert rel_err(res.strain_gradients[:, a, b], _fd_strain(descriptor, atoms, a, b)) < TOL


def test_multi_frame_gradient_indices():
    desc = SOAP(["Cu", "Au"], r_cut=3.5, n_max=2, l_max=2)
    frames = [alloy(seed=1, repeat=(1, 1, 1)), cluster()]
    res = desc.compute(frames, gradients=True)
    single = desc.compute(frames[1], gradients=True)
    sel = res.gradient_row >= 4
    np.testing.assert_allclose(res.gradients[sel], single.gradients)
    np.testing.assert_array_equal(res.gradient_atom[sel] - 4, single.gradient_atom)
    assert res.gradient_atom[~sel].max() < 4


def test_smooth_at_cutoff(descriptor):
    """Value and first derivative go to zero as a neighbour reaches r_cut.

    A Cu-Au pair 2.5 A apart stays fixed; a third atom leaves atom 0 along y (it is
    then out of range of atom 1). Normalised SOAP is checked on atoms 0 and 1 only: the
    leaving atom loses its only neighbour, where a normalised vector must jump (0/0).
    """
    r_cut = descriptor.r_cut
    rows = [0, 1] if descriptor.name == "soap" and descriptor.normalize else slice(None)

    def trimer(r):
        return Atoms("CuAuCu", positions=[[0, 0, 0], [2.5, 0, 0], [0, r, 0]], pbc=False)

    far = descriptor.compute(trimer(r_cut + 1.0)).features[rows]
    near = descriptor.compute(trimer(r_cut - 1e-4), gradients=True)
    mid = descriptor.compute(trimer(0.7 * r_cut), gradients=True)
    scale = np.abs(mid.features[rows] - far).max()
    assert scale > 0
    assert np.abs(near.features[rows] - far).max() < 1e-6 * scale

    def moving(res):
        keep = np.isin(res.gradient_row, np.arange(len(res.features))[rows])
        return res.gradients[(res.gradient_atom == 2) & keep]

    assert np.abs(moving(near)).max() < 1e-3 * np.abs(moving(mid)).max()
    at = descriptor.compute(trimer(r_cut), gradients=True)
    np.testing.assert_allclose(at.features[rows], far, atol=1e-14)
    assert np.abs(moving(at)).max(initial=0.0) < 1e-12


def test_gradient_layouts_agree():
    """The unique-pair fast path and the general (images) path give the same numbers."""
    from ml4m.data.neighbors import neighbor_list
    from ml4m.descriptors.base import _reduce_pair_gradients

    desc = SOAP(["Cu", "Au"], r_cut=4.0, n_max=2, l_max=2)
    atoms = alloy(seed=8, repeat=(3, 3, 3))  # 11.1 A cell > 2 r_cut: no repeated pairs
    nl = neighbor_list(atoms, desc.r_cut)
    _, g = desc._frame_features(desc._check_frame(Frame.from_atoms(atoms), 0), nl, True)
    n = len(atoms)
    out = []
    for fast in (True, False):
        row, atom, grads, strain = _reduce_pair_gradients(nl, g, n, allow_fast=fast)
        dense = np.zeros((n, n, 3, g.shape[-1]))
        np.add.at(dense, (row, atom), grads)
        out.append((len(row), dense, strain))
    assert out[0][0] == len(nl.i) + n  # the fast layout: every pair plus one self entry
    np.testing.assert_allclose(out[0][1], out[1][1], atol=1e-12)
    np.testing.assert_allclose(out[0][2], out[1][2], atol=1e-12)
    # spare rows after the pairs take the self entries in place; strain=False skips strain
    spare = np.concatenate([g, np.full((n, 3, g.shape[-1]), np.nan)])
    ref = _reduce_pair_gradients(nl, g, n)
    for fast in (True, False):
        for strain in (True, False):
            got = _reduce_pair_gradients(nl, spare, n, allow_fast=fast, strain=strain)
            want = ref if fast else _reduce_pair_gradients(nl, g, n, allow_fast=False)
            for a, b in zip(got[:3], want[:3]):
                np.testing.assert_array_equal(a, b)
            if strain:
                np.testing.assert_array_equal(got[3], want[3])
            else:
                assert got[3] is None

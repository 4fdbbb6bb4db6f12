"""Vector-Jacobian products equal the contraction of the full gradients."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, molecule

from ml4m.data import Frame
from ml4m.descriptors import make_descriptor

CASES = {
    "ace": dict(r_cut=4.0, n_max=3, l_max=2, correlation_order=4, total_degree=9),
    "soap": dict(r_cut=4.0, n_max=3, l_max=3),
    "acsf": dict(r_cut=4.0),
}


def _frames():
    alloy = bulk("Cu", cubic=True, a=3.6).repeat((2, 1, 1))
    alloy.symbols[[1, 4]] = "Au"
    alloy.rattle(0.1, seed=2)
    small = bulk("Au", "fcc", a=4.0)  # one atom: sees only its own images
    mol = molecule("CH3CH2OH")
    mol.symbols[[0]] = "Cu"
    mol.symbols[[2]] = "Au"
    return [Frame.from_atoms(a) for a in (alloy, small, mol)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_vjp_matches_full_gradients(name, rng):
    frames = _frames()
    desc = make_descriptor(name, species=[1, 6, 8, 29, 79], **CASES[name])
    res = desc.compute(frames, gradients=True)
    W = rng.normal(size=res.features.shape)
    grad, strain = desc.vjp(frames, W)
    # reference: contract the sparse per-(row, atom) gradients with the row weights
    ref = np.zeros_like(grad)
    np.add.at(ref, res.gradient_atom, np.einsum("gxf,gf->gx", res.gradients, W[res.gradient_row]))
    np.testing.assert_allclose(grad, ref, rtol=1e-9, atol=1e-11)
    ref_strain = np.zeros((len(frames), 3, 3))
    np.add.at(ref_strain, res.frame, np.einsum("rabf,rf->rab", res.strain_gradients, W))
    np.testing.assert_allclose(strain, ref_strain, rtol=1e-9, atol=1e-11)

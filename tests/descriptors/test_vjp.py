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


def _assert_vjp_matches_gradients(desc, frames, rng):
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


@pytest.mark.parametrize("name", sorted(CASES))
def test_vjp_matches_full_gradients(name, rng):
    frames = _frames()
    desc = make_descriptor(name, species=[1, 6, 8, 29, 79], **CASES[name])
    _assert_vjp_matches_gradients(desc, frames, rng)


@pytest.mark.parametrize("name", sorted(CASES))
def test_features_and_vjp_with_feature_dependent_weights(name):
    """The one-pass path equals compute() then vjp() for weights that depend on X."""
    frames = _frames()
    desc = make_descriptor(name, species=[1, 6, 8, 29, 79], **CASES[name])
    X = desc.compute(frames).features
    offsets = np.cumsum([0] + [len(f) for f in frames])

    def weight_fn(Xk, k):
        return np.tanh(Xk) * (k + 1)  # nonlinear in the features, different per frame

    W = np.concatenate([weight_fn(X[offsets[k]:offsets[k + 1]], k) for k in range(len(frames))])
    grad, strain = desc.vjp(frames, W)
    X2, grad2, strain2 = desc.features_and_vjp(frames, weight_fn)
    np.testing.assert_allclose(X2, X, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad2, grad, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(strain2, strain, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,agnostic", [("ace", 0), ("ace", 3), ("soap", 0), ("acsf", 0)])
def test_energies_with_species_weights_equal_features_and_vjp(name, agnostic, rng):
    """energies_and_vjp (ACE: bilinear forms, B never formed) equals the features path
    with the same per-species weights: energies, forces and strain."""
    frames = _frames()
    extra = {"agnostic_from": agnostic} if agnostic else {}
    desc = make_descriptor(name, species=[1, 6, 8, 29, 79], **CASES[name], **extra)
    W = rng.normal(size=(desc.n_species, desc.n_features))
    idx = [np.searchsorted(desc.species, f.numbers) for f in frames]
    X, grad, strain = desc.features_and_vjp(frames, lambda X, k: W[idx[k]])
    e, grad2, strain2 = desc.energies_and_vjp(frames, W)
    np.testing.assert_allclose(e, np.einsum("nf,nf->n", X, W[np.concatenate(idx)]),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad2, grad, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(strain2, strain, rtol=1e-9, atol=1e-11)


def test_product_basis_adjoint_and_jacobian_agree(rng):
    """The adjoint of the contraction equals W contracted with the Jacobian entries (two
    code paths), and the Jacobian satisfies Euler's identity for products of degree nu."""
    desc = make_descriptor("ace", species=[29, 79], r_cut=4.0, n_max=3, l_max=3,
                           correlation_order=4, total_degree=9)
    K, LM = desc.n_species * desc.n_max, (desc.l_max + 1) ** 2
    A = rng.normal(size=(5, K, LM))
    W = rng.normal(size=(5, desc.n_features))
    pb = desc.product_basis
    f, k, lm = pb.entries
    J = np.zeros((5, desc.n_features, K, LM))  # (rows, F, K, LM) from the sparse entries
    np.add.at(J, (slice(None), f, k, lm), pb.jacobian_entries(A))
    np.testing.assert_allclose(desc.product_basis.adjoint(A, W), np.einsum("rf,rfkm->rkm", W, J), rtol=1e-10,
                               atol=1e-12)
    # every B_f is homogeneous of degree nu in A (Euler): sum_km A dB_f/dA = nu B_f
    nu = np.array([len(combo) for combo, _ in desc._basis])
    np.testing.assert_allclose(np.einsum("rkm,rfkm->rf", A, J), nu * desc.product_basis.products(A),
                               rtol=1e-10, atol=1e-12)


def test_fixed_weight_energy_equals_products_and_adjoint(rng):
    """With one weight vector for every row, the bilinear-form path gives sum_f c_f B_f
    and its gradient without forming B (order 4, two species: every kind of function)."""
    desc = make_descriptor("ace", species=[29, 79], r_cut=4.0, n_max=3, l_max=3,
                           correlation_order=4, total_degree=9)
    pb = desc.product_basis
    A = rng.normal(size=(6, desc.n_species * desc.n_max, (desc.l_max + 1) ** 2))
    c = rng.normal(size=desc.n_features)
    e, G = pb.energy_and_adjoint(A, c)
    np.testing.assert_allclose(e, pb.products(A) @ c, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(G, pb.adjoint(A, np.tile(c, (6, 1))), rtol=1e-10, atol=1e-12)
    # the forms kept per weight vector follow its values: other weights in turn, the same
    # array changed in place, more vectors than are kept
    B = pb.products(A)
    for w in [rng.normal(size=desc.n_features) for _ in range(pb.FORMS_CACHED + 2)] + [c, c]:
        np.testing.assert_allclose(pb.energy_and_adjoint(A, w)[0], B @ w, rtol=1e-10, atol=1e-12)
        w *= -2.0
        np.testing.assert_allclose(pb.energy_and_adjoint(A, w)[0], B @ w, rtol=1e-10, atol=1e-12)
    assert len(pb._forms_cache) == pb.FORMS_CACHED


def test_large_frame_path_recomputes_pair_values(monkeypatch):
    """Frames with more pairs than are kept recompute the per-pair values: same result."""
    import ml4m.descriptors.ace as ace_module

    frames = _frames()
    desc = make_descriptor("ace", species=[1, 6, 8, 29, 79], **CASES["ace"])
    W = [np.cos(np.arange(len(f) * desc.n_features)).reshape(len(f), -1) for f in frames]
    kept = desc.features_and_vjp(frames, lambda X, k: W[k])
    monkeypatch.setattr(ace_module, "_KEEP_PAIRS", 0)
    monkeypatch.setattr(ace_module, "_VJP_CHUNK", 7)  # several chunks per frame
    recomputed = desc.features_and_vjp(frames, lambda X, k: W[k])
    for a, b in zip(kept, recomputed):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("agnostic", [0, 3])
@pytest.mark.parametrize("chunk", [None, 8])
def test_per_feature_gradients_match_the_vjp(monkeypatch, rng, agnostic, chunk):
    """The per-feature gradients (one sparse product per centre and neighbour species)
    contracted with weights equal the adjoint path, with and without element-agnostic
    channels, and when a centre's pairs straddle two blocks (``chunk``: 8 pairs a block)."""
    import ml4m.descriptors.ace as ace_module

    if chunk is not None:
        monkeypatch.setattr(ace_module, "_CHUNK", chunk)
    frames = _frames()
    desc = make_descriptor("ace", species=[1, 6, 8, 29, 79], r_cut=4.0, n_max=3, l_max=2,
                           correlation_order=3, total_degree=[6, 6, 6], agnostic_from=agnostic)
    _assert_vjp_matches_gradients(desc, frames, rng)


@pytest.mark.parametrize("keep_pairs", [True, False])
def test_pair_radial_tables_in_the_vjp_and_the_gradients(monkeypatch, rng, keep_pairs):
    """With radial functions of their own for some element pairs (stacked tables), the
    adjoint path (pair values kept, or recomputed chunk by chunk) equals the per-feature
    gradients contracted with the weights."""
    import ml4m.descriptors.ace as ace_module

    if not keep_pairs:
        monkeypatch.setattr(ace_module, "_KEEP_PAIRS", 0)
        monkeypatch.setattr(ace_module, "_VJP_CHUNK", 7)
    desc = make_descriptor("ace", species=[1, 6, 8, 29, 79], r_cut=4.0, n_max=3, l_max=2,
                           correlation_order=3, total_degree=[6, 6, 6], r_in=0.5, r0=1.0,
                           pair_r_in={"H-C": 0.8, "Cu-Au": 1.5, "O-H": 0.6}, pair_r0={"C-C": 1.4})
    assert len(desc._pair_radii) == 5
    _assert_vjp_matches_gradients(desc, _frames(), rng)

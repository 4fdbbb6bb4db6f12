"""Exact updates of linear and sparse-GP potentials: update(new) equals a refit on old + new."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

import ml4m
from ml4m.data import Dataset, Frame, default_dataset
from ml4m.errors import DataError, NotFittedError
from ml4m.models.kernel import SparseGPPotential
from ml4m.models.linear import LinearACE

E0 = {"Cu": -0.05}


def _descriptor(kind: str):
    from ml4m.descriptors import make_descriptor

    if kind == "ace":
        return make_descriptor("ace", species=["Cu"], r_cut=4.0, n_max=4, l_max=2,
                               correlation_order=3)
    return make_descriptor("soap", species=["Cu"], r_cut=4.0, n_max=3, l_max=3)


@pytest.fixture(scope="module")
def sets():
    ds = default_dataset()
    return list(ds[:40:4]), list(ds[1:40:8])


def _assert_same_posterior(a, b, frames, rtol, coef_rtol=None):
    """Same predictions, sigmas and coefficients (relative to the largest). A weak prior
    leaves the Gram matrix's near-null directions (condition ~1e16 here at the evidence
    alpha) to rounding: coefficients there may differ by more than the predictions."""
    scale = np.max(np.abs(b.coef_))
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=0, atol=(coef_rtol or rtol) * scale)
    pa, pb = a.predict(frames, uncertainty=True), b.predict(frames, uncertainty=True)
    np.testing.assert_allclose(pa.forces, pb.forces, rtol=0, atol=rtol * np.abs(pb.forces).max())
    np.testing.assert_allclose(pa.forces_sigma, pb.forces_sigma, rtol=rtol)
    np.testing.assert_allclose(pa.energy, pb.energy, rtol=rtol)


def test_update_equals_refit_with_fixed_hyperparameters(sets):
    old, new = sets
    kw = {"e0": E0, "alpha": 10.0, "beta": 2.0, "uncertainty": "posterior"}
    updated = LinearACE(_descriptor("ace"), **kw).fit(old).update(new)
    refit = LinearACE(_descriptor("ace"), **kw).fit(old + new)
    _assert_same_posterior(updated, refit, new, 1e-8)
    assert updated.normal_equations_.rows == refit.normal_equations_.rows


def test_update_keeps_evidence_hyperparameters_of_the_first_fit(sets):
    old, new = sets
    model = LinearACE(_descriptor("ace"), e0=E0, uncertainty="posterior").fit(old)
    alpha, beta = model.regression_.alpha_, model.regression_.beta_
    model.update(new)
    assert (model.regression_.alpha_, model.regression_.beta_) == (alpha, beta)
    refit = LinearACE(_descriptor("ace"), e0=E0, alpha=alpha, beta=beta,
                      uncertainty="posterior").fit(old + new)
    _assert_same_posterior(model, refit, new, 1e-5, coef_rtol=1e-4)
    # reoptimise: the evidence over all rows, as a fit with free hyperparameters does
    model.update([], reoptimise=True)  # no frames: nothing changes
    assert model.regression_.alpha_ == alpha
    again = LinearACE(_descriptor("ace"), e0=E0, uncertainty="posterior").fit(old)
    again.update(new, reoptimise=True)
    free = LinearACE(_descriptor("ace"), e0=E0, uncertainty="posterior").fit(old + new)
    assert again.regression_.alpha_ == pytest.approx(free.regression_.alpha_, rel=1e-3)
    _assert_same_posterior(again, free, new, 1e-4, coef_rtol=1e-2)


def test_sparse_gp_update_equals_refit_on_the_same_sparse_points(sets):
    """Per-quantity noise groups, fixed sparse points. A kernel matrix with eigenvalues
    near 1e-7 (more, flatter sparse points) turns rounding of the sums (1e-16) into 1e-3
    of the coefficients: this set is conditioned so that 1e-6 tests the update itself."""
    old, new = sets
    kw = {"n_sparse": 10, "zeta": 4, "linear_baseline": False, "e0": E0, "alpha": 10.0,
          "beta": [1.0, 0.5, 2.0], "uncertainty": "posterior"}
    gp = SparseGPPotential(_descriptor("soap"), **kw).fit(old).update(new)
    assert len(gp.regression_.betas_) == 3  # energies, forces, stresses
    refit = SparseGPPotential(_descriptor("soap"), **kw)
    refit._make_kernel_map = lambda train: gp._kernel()  # the first fit's sparse points
    refit.fit(old + new)
    _assert_same_posterior(gp, refit, new, 1e-6)


def test_update_state_survives_the_model_file(sets, tmp_path):
    old, new = sets
    model = LinearACE(_descriptor("ace"), e0=E0).fit(old)  # calibrated: error models kept
    model.save(tmp_path / "m.ml4m")
    params, arrays = model.update_state()
    np.savez(tmp_path / "neq.npz", **arrays)
    loaded = ml4m.load(tmp_path / "m.ml4m")
    with pytest.raises(NotFittedError, match="no normal equations"):
        loaded.update(new)
    with np.load(tmp_path / "neq.npz", allow_pickle=False) as z:
        loaded.restore_update_state(params, dict(z))
    model.update(new)
    loaded.update(new)
    _assert_same_posterior(loaded, model, new, 1e-12)
    with pytest.raises(DataError, match="gram_shared"):
        loaded.restore_update_state(params, {k: v for k, v in arrays.items() if k != "gram_shared"})


def test_update_refuses_unknown_species_and_unlabelled_frames(sets):
    old, _ = sets
    model = LinearACE(_descriptor("ace"), e0=E0, uncertainty="posterior").fit(old)
    gold = bulk("Au", cubic=True)
    with pytest.raises(DataError, match="not known to this model"):
        model.update([Frame.from_atoms(gold, energy=0.0, forces=np.zeros((4, 3)))])
    with pytest.raises(DataError, match="no energy"):
        model.update(Dataset([Frame.from_atoms(bulk("Cu", cubic=True))]))


def test_baselined_update_widens_the_core_and_equals_a_refit(sets):
    """Inside the repulsive core (ml4m fit's default): a new frame closer than any before
    lowers the core's radius; update equals a refit of core and model on old + new."""
    from ase.calculators.emt import EMT

    from ml4m.models.baseline import Baselined, PairRepulsion

    old, new = sets
    atoms = new[0].to_atoms(with_labels=False)
    d = atoms.get_distances(0, range(1, len(atoms)), mic=True)
    k = 1 + int(np.argmin(d))
    atoms.set_distance(0, k, 0.9 * d.min(), fix=0.5, mic=True)
    atoms.calc = EMT()
    squeezed = Frame.from_atoms(atoms, energy=atoms.get_potential_energy(),
                                forces=atoms.get_forces(), stress=atoms.get_stress())
    kw = {"e0": E0, "alpha": 10.0, "beta": 2.0, "uncertainty": "posterior"}
    updated = Baselined(LinearACE(_descriptor("ace"), **kw), PairRepulsion()).fit(old)
    r_before = updated.baseline_.r_in_["Cu-Cu"]
    updated.update(new + [squeezed])
    refit = Baselined(LinearACE(_descriptor("ace"), **kw), PairRepulsion()).fit(
        old + new + [squeezed])
    assert updated.baseline_.r_in_["Cu-Cu"] == pytest.approx(refit.baseline_.r_in_["Cu-Cu"])
    assert updated.baseline_.r_in_["Cu-Cu"] < r_before
    _assert_same_posterior(updated.model_, refit.model_, new + [squeezed], 1e-8)
    np.testing.assert_allclose(updated.predict([squeezed]).forces,
                               refit.predict([squeezed]).forces, rtol=0, atol=1e-8)

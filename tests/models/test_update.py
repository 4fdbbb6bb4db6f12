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


def _rattled(n: int, scale: float, seed: int) -> list[Frame]:
    """``n`` EMT-labelled fcc Cu cells (32 atoms) rattled by ``scale`` Angstrom."""
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
        atoms.positions += rng.normal(scale=scale, size=atoms.positions.shape)
        atoms.calc = EMT()
        frames.append(Frame.from_atoms(atoms, energy=atoms.get_potential_energy(),
                                       forces=atoms.get_forces()))
    return frames


def _calibration(model, frames) -> float:
    """Observed force RMSE over the RMS predicted force sigma (1: calibrated)."""
    pred = model.predict(frames, uncertainty=True)
    ref = np.concatenate([f.forces for f in frames])
    return float(np.sqrt(np.mean((pred.forces - ref) ** 2) / np.mean(pred.forces_sigma ** 2)))


def test_reoptimised_update_refits_the_error_models_on_what_it_had_not_seen():
    """Each calibrated update keeps the residuals and posterior sigmas of its frames as
    the model predicted them before learning them; a re-optimisation refits the error
    models on them. Fitted on cold cells (0.02 A rattles) and updated with hot ones
    (0.15 A): the cold error model extrapolates the hot cells' sigma by orders of
    magnitude; refitted at each update, it is calibrated on further hot cells."""
    cold, hot, test = _rattled(12, 0.02, 0), _rattled(12, 0.15, 1), _rattled(6, 0.15, 2)
    fitted = LinearACE(_descriptor("ace"), e0=E0).fit(cold)
    assert fitted.error_model_ is not None and fitted.prequential_ is None
    before = fitted.predict(hot[:4])
    kept = LinearACE(_descriptor("ace"), e0=E0).fit(cold)
    for k in range(0, 12, 4):
        kept.update(hot[k:k + 4])
    store = kept.prequential_
    ref = np.concatenate([f.forces for f in hot[:4]])
    # kept: the prediction before the frames were learnt, not after
    np.testing.assert_allclose(store.atoms[0][:128], np.sum((before.forces - ref) ** 2, 1),
                               rtol=1e-8)
    assert not np.allclose(store.atoms[0][:128],
                           np.sum((kept.predict(hot[:4]).forces - ref) ** 2, 1), rtol=0.1)
    assert store.n_atoms == 12 * 32 and store.n_frames == 12
    np.testing.assert_array_equal(kept.error_model_.coef_, fitted.error_model_.coef_)
    assert abs(np.log10(_calibration(kept, test))) > 3  # far out of the cold model's range

    refit = LinearACE(_descriptor("ace"), e0=E0).fit(cold)
    for k in range(0, 12, 4):
        refit.update(hot[k:k + 4], reoptimise=True)
    assert 1 / 1.5 < _calibration(refit, test) < 1.5
    assert not np.allclose(refit.error_model_.coef_, fitted.error_model_.coef_)


def test_prequential_residuals_survive_the_update_state(tmp_path):
    cold, hot = _rattled(12, 0.02, 0), _rattled(4, 0.15, 1)
    model = LinearACE(_descriptor("ace"), e0=E0).fit(cold).update(hot[:2])
    model.save(tmp_path / "m.ml4m")
    params, arrays = model.update_state()
    loaded = ml4m.load(tmp_path / "m.ml4m").restore_update_state(params, arrays)
    model.update(hot[2:], reoptimise=True)
    loaded.update(hot[2:], reoptimise=True)
    np.testing.assert_allclose(loaded.error_model_.coef_, model.error_model_.coef_, rtol=1e-10)
    with pytest.raises(DataError, match="prequential_atom_X"):
        loaded.restore_update_state(params, {k: v[:, :3] if k == "prequential_atom_X" else v
                                             for k, v in arrays.items()})


@pytest.mark.parametrize("kind", ["ace", "gp"])
def test_a_fit_too_small_for_error_models_gets_them_from_its_updates(kind):
    """Below 10 frames a calibrated fit warns and keeps the posterior sigma; the updates'
    held-out residuals give it error models at the first re-optimisation."""
    first, more = _rattled(4, 0.05, 3), _rattled(4, 0.05, 4)
    if kind == "ace":
        model = LinearACE(_descriptor("ace"), e0=E0)
    else:
        model = SparseGPPotential(_descriptor("soap"), n_sparse=10, zeta=2, e0=E0)
    with pytest.warns(UserWarning, match="at least 10 training frames"):
        model.fit(first)
    posterior = model.predict(more, uncertainty=True).forces_sigma
    model.update(more[:2])
    assert model.error_model_ is None and model.prequential_.n_frames == 2
    model.update(more[2:], reoptimise=True)
    assert model.error_model_ is not None and model.energy_error_model_ is not None
    from ml4m.models.error_model import ForceErrorModel

    again = ForceErrorModel(1).fit(*model.prequential_.atoms)  # on the 4 updates' atoms
    np.testing.assert_allclose(model.error_model_.coef_, again.coef_, rtol=1e-10)
    sigma = model.predict(more, uncertainty=True).forces_sigma
    assert sigma.shape == posterior.shape and np.all(np.isfinite(sigma))
    assert not np.allclose(sigma, posterior, rtol=0.1)

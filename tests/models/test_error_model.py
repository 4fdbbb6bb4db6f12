"""The heteroscedastic force error model, alone and inside a potential's fit."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from ml4m.data import Dataset, default_dataset
from ml4m.errors import ConfigError
from ml4m.models.error_model import EnergyErrorModel, ForceErrorModel
from ml4m.models.linear import LinearACE


def _synthetic(rng, n=6000):
    """Residual vectors drawn with a known per-atom sigma (species, environment, posterior)."""
    species = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 6)) * np.array([3.0, 1.0, 1.0, 0.5, 0.5, 0.1])
    sigma_post = np.exp(rng.normal(-5.0, 0.5, n))
    force_norm = np.abs(rng.normal(1.0, 0.5, n))
    log_s = -4.0 + 0.3 * species + 0.15 * X[:, 0] + 0.5 * (np.log(sigma_post) + 5.0)
    r = rng.normal(size=(n, 3)) * np.exp(log_s)[:, None]
    return np.sum(r**2, axis=1), sigma_post, force_norm, species, X, np.exp(log_s)


def test_recovers_a_known_heteroscedastic_sigma():
    rng = np.random.default_rng(0)
    r2, sig, fn, species, X, s_true = _synthetic(rng)
    model = ForceErrorModel(n_species=2, n_components=6, ridge=1e-6).fit(r2, sig, fn, species, X)
    # new atoms from the same law
    r2_t, sig_t, fn_t, sp_t, X_t, s_t = _synthetic(np.random.default_rng(1))
    s_pred = model.predict(sig_t, fn_t, sp_t, X_t)
    assert np.max(np.abs(np.log(s_pred / s_t))) < 0.15  # the sigma itself, atom by atom
    assert model.coef_[3] == pytest.approx(0.5, abs=0.05)  # weight of log(posterior sigma)
    # calibrated: E|r|^2 = 3 s^2
    assert np.mean(r2_t / (3 * s_pred**2)) == pytest.approx(1.0, abs=0.05)


def test_constant_sigma_gives_constant_prediction():
    """Homoscedastic residuals: no spurious structure, the scale is the RMS residual."""
    rng = np.random.default_rng(2)
    r2, sig, fn, species, X, _ = _synthetic(rng)
    r2 = np.sum((0.02 * rng.normal(size=(len(r2), 3))) ** 2, axis=1)
    s = ForceErrorModel(2, n_components=6).fit(r2, sig, fn, species, X).predict(sig, fn, species, X)
    assert np.max(np.abs(np.log(s / 0.02))) < 0.1


def test_state_round_trip_and_bad_shapes():
    rng = np.random.default_rng(3)
    r2, sig, fn, species, X, _ = _synthetic(rng, n=500)
    model = ForceErrorModel(2, n_components=4).fit(r2, sig, fn, species, X)
    params, arrays = model.get_state()
    again = ForceErrorModel.from_state(params, arrays)
    np.testing.assert_array_equal(again.predict(sig, fn, species, X), model.predict(sig, fn, species, X))
    with pytest.raises(ConfigError, match="inconsistent shapes"):
        ForceErrorModel.from_state(params, {**arrays, "coef": arrays["coef"][:-1]})
    with pytest.raises(ConfigError, match="at least 10"):
        ForceErrorModel(2).fit(r2[:5], sig[:5], fn[:5], species[:5], X[:5])


def test_energy_error_model_recovers_its_two_scales():
    """Residuals drawn with variance a^2 sigma^2 + b^2 n: maximum likelihood finds a and b."""
    rng = np.random.default_rng(4)
    n_atoms = rng.integers(20, 120, 3000).astype(float)
    sigma = np.exp(rng.normal(-6.0, 1.0, 3000))  # eV
    a, b = 4.0, 2e-4
    residual = rng.normal(size=3000) * np.sqrt(a**2 * sigma**2 + b**2 * n_atoms)
    model = EnergyErrorModel().fit(residual, sigma, n_atoms)
    assert model.scale_ == pytest.approx(a, rel=0.1)
    assert model.per_atom_ == pytest.approx(b, rel=0.1)
    again = EnergyErrorModel.from_state(model.get_state())
    np.testing.assert_array_equal(again.predict(sigma, n_atoms), model.predict(sigma, n_atoms))


def _ace():
    from ml4m.descriptors import make_descriptor

    return make_descriptor("ace", species=["Cu"], r_cut=4.0, n_max=4, l_max=2, correlation_order=3)


@pytest.fixture(scope="module")
def split():
    """Train on every third frame of 17 trajectories; test on 5 other trajectories (the
    honest protocol: frames interleaved with training ones would be easier than the
    held-out trajectories the error model learns from)."""
    ds = default_dataset()
    order = {t: k for k, t in enumerate(dict.fromkeys(f.info["traj"] for f in ds))}
    traj = np.array([order[f.info["traj"]] for f in ds])
    step = np.arange(len(ds)) % 8  # 8 frames per trajectory, stored in order
    train = [f for f, k, s in zip(ds, traj, step) if k % 4 != 2 and s % 3 == 0]
    test = [f for f, k, s in zip(ds, traj, step) if k % 4 == 2 and s % 2 == 0]
    return Dataset(train), Dataset(test)


def test_calibrated_sigma_matches_held_out_errors(split):
    """Same coefficients as the posterior model; force sigma the size of the actual errors."""
    train, test = split
    cal = LinearACE(_ace()).fit(train)
    post = LinearACE(_ace(), uncertainty="posterior").fit(train)
    assert cal.error_model_ is not None and post.error_model_ is None
    p_cal, p_post = cal.predict(test, uncertainty=True), post.predict(test, uncertainty=True)
    # the final fit keeps the held-out fit's hyperparameters: it is the posterior model at
    # those fixed values (same normal equations summed in another order: coefficients in
    # near-null directions may differ, predictions may not) ...
    fixed = LinearACE(_ace(), uncertainty="posterior", alpha=cal.regression_.alpha_,
                      beta=cal.regression_.beta_).fit(train)
    # (Cholesky here, eigendecomposition there: agreement to 0.05 meV/A on forces of ~1 eV/A)
    np.testing.assert_allclose(p_cal.forces, fixed.predict(test).forces, rtol=0, atol=5e-5)  # eV/A
    n_at = np.array([len(f) for f in test])
    np.testing.assert_allclose(p_cal.energy / n_at, fixed.predict(test).energy / n_at, rtol=0,
                               atol=1e-5)  # eV/atom
    # ... and close to the evidence refit on all frames (well inside the error itself: the
    # hyperparameters come from two thirds of the frames)
    f_ref = np.concatenate([f.forces for f in test])
    assert np.abs(p_cal.forces - p_post.forces).max() < 0.1 * np.abs(p_post.forces - f_ref).mean()
    err2 = np.sum((p_cal.forces - np.concatenate([f.forces for f in test])) ** 2, axis=1)
    ratio = np.mean(err2) / np.mean(np.sum(p_cal.forces_sigma**2, axis=1))
    assert 0.5 < ratio < 2.0  # calibrated to a factor of two on unseen frames
    ratio_post = np.mean(err2) / np.mean(np.sum(p_post.forces_sigma**2, axis=1))
    assert ratio_post > 4 * ratio  # the posterior alone is blind to the basis error
    e_err2 = (p_cal.energy - np.array([f.energy for f in test])) ** 2
    e_ratio = np.mean(e_err2) / np.mean(p_cal.energy_sigma**2)
    assert 0.25 < e_ratio < 4.0, e_ratio  # few test frames: a looser band than for forces
    assert np.mean(e_err2) / np.mean(p_post.energy_sigma**2) > 4 * e_ratio


def test_holdout_split_by_trajectory(split):
    train, _ = split

    def relabel(f, **info):  # a copy: the fixture's frames are shared
        return type(f)(**{**f.__dict__, "info": info})

    frames = [relabel(f, traj=f"t{k % 8}") for k, f in enumerate(list(train)[:40])]
    fit, held = LinearACE(_ace()).holdout_split(frames)
    assert {f.info["traj"] for f in held} == {"t2", "t5"}  # every third trajectory, whole
    assert not {f.info["traj"] for f in fit} & {"t2", "t5"}
    frames = [relabel(f) for f in frames]  # no trajectories named: contiguous chunks
    fit, held = LinearACE(_ace()).holdout_split(frames)
    last_third = [k for k in range(len(frames)) if 3 * k >= 2 * len(frames)]
    assert [id(f) for f in held] == [id(frames[k]) for k in last_third]
    assert [id(f) for f in fit] == [id(frames[k]) for k in range(last_third[0])]


def test_too_few_frames_fall_back_to_posterior(split):
    train, _ = split
    with pytest.warns(UserWarning, match="using the posterior sigma"):
        model = LinearACE(_ace()).fit(Dataset(list(train)[:6]))
    assert model.error_model_ is None
    with pytest.raises(ConfigError, match="uncertainty must be"):
        LinearACE(_ace(), uncertainty="bootstrap").fit(train)


def test_per_quantity_noise_warns_when_energies_are_dropped(split):
    """Energies inconsistent with the forces: the evidence gives them up, and says so."""
    from ml4m.models.kernel import SparseGPPotential
    from ml4m.descriptors import make_descriptor

    train, _ = split
    rng = np.random.default_rng(0)
    frames = [dataclasses.replace(f, energy=f.energy + rng.normal(scale=0.5) * len(f)) for f in list(train)[:30]]
    desc = make_descriptor("soap", species=["Cu"], r_cut=4.0, n_max=3, l_max=3)
    with pytest.warns(UserWarning, match="energies are nearly ignored"):
        model = SparseGPPotential(desc, n_sparse=20, zeta=2, sigma_stress=None, uncertainty="posterior",
                                  noise="per_quantity").fit(Dataset(frames))
    assert model.noise_["energy"] > 0.1  # eV/atom: the scale of the corruption, not of EMT
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same fit on the true energies: no warning
        SparseGPPotential(desc, n_sparse=20, zeta=2, sigma_stress=None, uncertainty="posterior",
                          noise="per_quantity").fit(Dataset(list(train)[:30]))


def test_too_few_held_out_atoms_fall_back_to_posterior():
    """Ten single-atom frames: two held-out atoms cannot teach an error model."""
    from ase import Atoms
    from ase.calculators.emt import EMT

    from ml4m.data import Frame

    frames = []
    for k in range(10):
        atoms = Atoms("Cu", positions=[[0, 0, 0]], cell=np.eye(3) * (2.5 + 0.02 * k), pbc=True)
        atoms.calc = EMT()
        frames.append(Frame.from_atoms(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces(),
                                       stress=atoms.get_stress()))
    with pytest.warns(UserWarning, match="held-out atoms"):
        model = LinearACE(_ace()).fit(Dataset(frames))
    assert model.error_model_ is None and model.energy_error_model_ is None


@pytest.mark.parametrize("shape", [(300, 40), (30, 200), (1200, 1000), (1000, 1300)])
def test_leading_components_are_the_singular_vectors(shape):
    """The descriptor projection of the error model: the leading right singular vectors
    (up to sign), from whichever Gram matrix is smaller, or for large matrices by
    subspace iteration (spectrum decaying as descriptors' do)."""
    from ml4m.models.error_model import _leading_components

    rng = np.random.default_rng(1)
    decay = np.linspace(3, 0.1, shape[1]) if shape[1] < 1000 else 3 * np.exp(-np.arange(shape[1]) / 15)
    Z = rng.normal(size=shape) * decay  # distinct singular values
    V = _leading_components(Z, 8)
    _, _, Vt = np.linalg.svd(Z, full_matrices=False)
    np.testing.assert_allclose(np.abs(np.sum(V * Vt[:8].T, axis=0)), 1.0, atol=1e-9)


def test_file_with_another_error_model_input_is_refused(split, tmp_path):
    """A file whose force error model was fitted on another sigma (``local_energy``, written
    for a while on 2026-12-05) is refused naming the file and the key; a file that does
    not say (older) or says ``force_posterior`` loads with the same sigmas."""
    import ml4m
    from ml4m.errors import DataError
    from ml4m.models.serialization import save_model_file

    train, test = split
    model = LinearACE(_ace()).fit(Dataset(list(train)[:40]))
    assert model.error_model_ is not None
    params, arrays = model.get_state()
    assert params["error_model_input"] == "force_posterior"
    sigma = model.predict(test[:2], uncertainty=True).forces_sigma
    older = {k: v for k, v in params.items() if k != "error_model_input"}
    for p in (params, older):
        path = save_model_file(tmp_path / "ok.ml4m", model.kind, p, arrays)
        np.testing.assert_array_equal(ml4m.load(path).predict(test[:2], uncertainty=True)
                                      .forces_sigma, sigma)
    path = save_model_file(tmp_path / "old.ml4m", model.kind,
                           {**params, "error_model_input": "local_energy"}, arrays)
    with pytest.raises(DataError, match=r"old\.ml4m.*params\.error_model_input is 'local_energy'"):
        ml4m.load(path)

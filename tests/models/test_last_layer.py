"""Last-layer posterior (LLPR) of torch potentials: on a network with fixed random features
and labels linear in its last layer plus Gaussian noise of known size, the evidence finds
the noise and the covariance is the analytic Bayesian one; sigmas are the covariance
propagated exactly (finite differences), a low-rank factor never exceeds it; after a short
training the force sigma ranks the held-out force errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from ml4m.data import Frame, default_dataset
from ml4m.errors import ConfigError
from ml4m.models.bpnn import BPNN
from ml4m.models.torch_potential import batch_graph

NOISE = 0.01  # eV per atom


def _cells(n: int, seed: int) -> list[Frame]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=rng.uniform(3.45, 3.75), cubic=True)
        atoms.rattle(0.15, seed=int(rng.integers(1 << 30)))
        out.append(Frame.from_atoms(atoms))
    return out


def _design(model, frames) -> np.ndarray:
    """Per-frame sums of [features, 1], written out independently of the package."""
    rows = []
    for f in frames:
        with torch.no_grad():
            h = model.module_(batch_graph([f], model.cutoff, model.species_))["features"]
        rows.append(np.append(h.numpy().sum(0), len(f)))
    return np.array(rows)


@pytest.fixture(scope="module")
def synthetic():
    """A random-feature BPNN; labels from its last layer moved by a known amount, plus noise."""
    model = BPNN(r_cut=3.5, g2_params=[(0.5, 0.0), (2.0, 2.5), (1.0, 3.0)], hidden=(6,))
    train = _cells(400, 0)
    model.prepare(train)
    m = model.module_
    gen = torch.Generator().manual_seed(3)
    delta = 0.3 * torch.randn(m.weight.shape, generator=gen, dtype=torch.float64)
    rng = np.random.default_rng(4)

    def label(frames):
        with torch.no_grad():
            m.weight += delta
            m.bias += 0.05
        e = model.predict(frames).energy
        with torch.no_grad():
            m.weight -= delta
            m.bias -= 0.05
        return [Frame(f.numbers, f.positions, f.cell, f.pbc,
                      energy=float(x + NOISE * np.sqrt(len(f)) * rng.normal()))
                for f, x in zip(frames, e)]

    return model.fit_last_layer(label(train)), label(train)


def test_evidence_finds_the_noise_and_the_analytic_covariance(synthetic):
    model, train = synthetic
    post = model.last_layer_
    assert post.noise_sigma == pytest.approx(NOISE, rel=0.12)
    Phi = _design(model, train)
    W = 1.0 / np.array([len(f) for f in train])
    expect = np.linalg.inv(post.alpha * np.eye(Phi.shape[1]) + post.beta * (Phi.T * W) @ Phi)
    np.testing.assert_allclose(post.factor @ post.factor.T, expect, rtol=1e-6,
                               atol=1e-9 * np.abs(expect).max())


FORCE_NOISE = 0.02  # eV/Angstrom per component


def test_force_rows_join_the_precision_with_their_own_noise():
    """With force labels, the posterior is Bayesian regression on the energy rows and on
    the force rows ``-d Phi / d r`` (here by finite differences, independently of the
    package), each with its own noise, which the evidence finds."""
    model = BPNN(r_cut=3.5, g2_params=[(0.5, 0.0), (2.0, 2.5), (1.0, 3.0)], hidden=(6,))
    train = _cells(60, 5)
    model.prepare(train)
    m = model.module_
    delta = 0.3 * torch.randn(m.weight.shape, generator=torch.Generator().manual_seed(6),
                              dtype=torch.float64)
    with torch.no_grad():
        m.weight += delta
    shifted = model.predict(train)
    with torch.no_grad():
        m.weight -= delta
    rng = np.random.default_rng(7)
    offsets = shifted.offsets
    labelled = [Frame(f.numbers, f.positions, f.cell, f.pbc,
                      energy=float(e + NOISE * np.sqrt(len(f)) * rng.normal()),
                      forces=shifted.forces[offsets[k]:offsets[k + 1]]
                      + FORCE_NOISE * rng.normal(size=(len(f), 3)))
                for k, (f, e) in enumerate(zip(train, shifted.energy))]
    post = model.fit_last_layer(labelled).last_layer_
    assert post.beta_forces ** -0.5 == pytest.approx(FORCE_NOISE, rel=0.1)
    assert post.noise_sigma == pytest.approx(NOISE, rel=0.3)
    Phi = _design(model, train)
    h, J = 1e-5, []
    for f in train:
        for a in range(len(f)):
            for c in range(3):
                rows = []
                for step in (h, -h):
                    x = f.to_atoms(with_labels=False)
                    x.positions[a, c] += step
                    rows.append(_design(model, [Frame.from_atoms(x)])[0])
                J.append((rows[0] - rows[1]) / (2 * h))
    J = np.array(J)
    W = 1.0 / np.array([len(f) for f in train])
    expect = np.linalg.inv(post.alpha * np.eye(Phi.shape[1]) + post.beta * (Phi.T * W) @ Phi
                           + post.beta_forces * J.T @ J)
    np.testing.assert_allclose(post.factor @ post.factor.T, expect, rtol=1e-4,
                               atol=1e-6 * np.abs(expect).max())


def test_sigmas_propagate_the_covariance_exactly(synthetic):
    model, _ = synthetic
    post = model.last_layer_
    frame = _cells(1, 9)[0]
    pred = model.predict([frame], uncertainty=True)
    Sigma = post.factor @ post.factor.T
    phi = _design(model, [frame])[0]
    assert pred.energy_sigma[0] == pytest.approx(
        post.calibration["energy"] * np.sqrt(phi @ Sigma @ phi), rel=1e-9)
    assert post.calibration["forces"] == 1.0  # no force labels to calibrate on
    h = 1e-5
    for a, c in [(0, 0), (2, 1), (3, 2)]:
        rows = []
        for s in (h, -h):
            x = frame.to_atoms(with_labels=False)
            x.positions[a, c] += s
            rows.append(_design(model, [Frame.from_atoms(x)])[0])
        j = (rows[0] - rows[1]) / (2 * h)
        assert pred.forces_sigma[a, c] == pytest.approx(np.sqrt(j @ Sigma @ j), rel=1e-6)
    atoms = frame.to_atoms(with_labels=False)
    rows = []
    for s in (h, -h):
        x = atoms.copy()
        x.set_cell(atoms.cell @ (np.eye(3) + s * np.diag([0, 1, 0])), scale_atoms=True)
        rows.append(_design(model, [Frame.from_atoms(x)])[0])
    j = (rows[0] - rows[1]) / (2 * h) / atoms.get_volume()
    assert pred.stress_sigma[0, 1] == pytest.approx(np.sqrt(j @ Sigma @ j), rel=1e-6)


def test_low_rank_factor_never_exceeds_the_exact_variance(synthetic):
    """Sigmas from K < D force-variance directions grow with K and stay below the exact
    ones (all D directions of the covariance factor, same data)."""
    model, train = synthetic
    frames = _cells(3, 11)
    low = BPNN.from_state(*model.get_state())
    D = model.last_layer_.factor.shape[0]
    sigmas = []
    for rank in (2, 4, D - 1, D):  # D: the exact variance
        low.uncertainty_rank = rank
        low.fit_last_layer(train)
        assert low.last_layer_.directions.shape[1] == rank
        sigmas.append(low.predict(frames, uncertainty=True).forces_sigma)
    for smaller, larger in zip(sigmas[:-1], sigmas[1:]):
        assert np.all(smaller <= larger * (1 + 1e-9)) and np.mean(smaller) < np.mean(larger)
    assert np.mean(sigmas[-2] ** 2) > 0.9 * np.mean(sigmas[-1] ** 2)


def test_calibration_matches_held_out_errors_and_training_ranks_them():
    """After a short training, the calibrated force sigma has the RMS of the held-out force
    errors and ranks them (Spearman > 0 per atom on frames not used at all)."""
    from scipy.stats import spearmanr

    from ml4m.training import Trainer, TrainSettings

    ds = default_dataset()
    train, valid, test = list(ds[::12]), list(ds[4::16]), list(ds[2::16])
    model = BPNN(r_cut=3.0, hidden=(16, 16), seed=1)
    Trainer(TrainSettings(batch_size=4, lr=5e-3, max_epochs=3, progress=False)).fit(
        model, train, valid)
    assert model.has_uncertainty
    p = model.predict(valid, uncertainty=True)
    err = p.forces - np.concatenate([f.forces for f in valid])
    assert np.sqrt(np.mean(p.forces_sigma ** 2)) == pytest.approx(
        np.sqrt(np.mean(err ** 2)), rel=1e-6)
    p = model.predict(test, uncertainty=True)
    err = np.linalg.norm(p.forces - np.concatenate([f.forces for f in test]), axis=1)
    rho = spearmanr(np.linalg.norm(p.forces_sigma, axis=1), err).statistic
    assert rho > 0.2


class _EnergyOnly(torch.nn.Module):
    """A module that hides its features (energies only)."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, data):
        out = self.inner(data)
        return {"energy": out["energy"], "energies": out["energies"]}


def test_a_module_without_features_has_no_last_layer(synthetic):
    _, train = synthetic
    model = BPNN(r_cut=3.5, hidden=(4,)).prepare(train[:5])
    model.module_ = _EnergyOnly(model.module_)
    with pytest.raises(ConfigError, match="no 'features'"):
        model.fit_last_layer(train[:5])
    assert not model.has_uncertainty


def test_without_last_layer_there_is_no_uncertainty_and_prepare_drops_it(synthetic):
    model, train = synthetic
    fresh = BPNN(r_cut=3.5, hidden=(4,)).prepare(train[:5])
    assert not fresh.has_uncertainty and "forces_sigma" not in fresh.implemented_properties
    with pytest.raises(ConfigError, match="fit_last_layer"):
        fresh.predict(train[:1], uncertainty=True)
    fresh.fit_last_layer(train[:20])
    params, arrays = fresh.get_state()
    assert params["last_layer"]["calibration"].keys() == {"energy", "forces"}
    fresh.prepare(train[:5])
    assert not fresh.has_uncertainty

"""Error metrics: units and the sigma/error rank correlations, on constructed predictions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from ml4m.data import Dataset, Frame
from ml4m.models import Prediction, error_metrics
from ml4m.models.metrics import attainable_spearman


def test_metrics_units_and_rank_correlation(rng):
    n_frames, n_atoms = 6, 4
    frames = []
    for k in range(n_frames):
        f = Frame(np.full(n_atoms, 29), rng.normal(size=(n_atoms, 3)) * 3, np.eye(3) * 10,
                  np.ones(3, bool), energy=float(k), forces=np.zeros((n_atoms, 3)), stress=np.zeros(6))
        frames.append(f)
    # errors grow with the atom index; sigma grows with it too -> rank correlation 1
    scale = np.arange(1, n_frames * n_atoms + 1, dtype=float)
    df = rng.normal(size=(len(scale), 3))
    df *= (scale / np.linalg.norm(df, axis=1))[:, None] * 1e-3  # |error| = scale meV/A
    pred = Prediction(energy=np.arange(n_frames) + 0.004 * n_atoms, forces=df,
                      stress=np.full((n_frames, 6), 0.01), offsets=np.arange(0, 25, 4),
                      energy_sigma=np.ones(n_frames), forces_sigma=np.repeat(scale[:, None], 3, axis=1))
    m = error_metrics(pred, Dataset(frames))
    assert m["energy"]["mae_mev_per_atom"] == pytest.approx(4.0)
    assert m["forces"]["mae_mev_per_a"] == pytest.approx(np.mean(np.abs(df)) * 1000)
    assert m["stress"]["mae_gpa"] == pytest.approx(0.01 * 160.21766, rel=1e-5)
    assert m["uncertainty"]["force_sigma_spearman"] == pytest.approx(1.0)
    assert m["uncertainty"]["energy_sigma_spearman"] is None  # constant sigma: undefined
    # calibration: observed RMSE over RMS predicted sigma (per component)
    rms_sigma = np.sqrt(np.mean(scale**2))  # eV/A: sigma per component = scale
    assert m["uncertainty"]["force_sigma_rms_mev_per_a"] == pytest.approx(rms_sigma * 1000)
    assert m["uncertainty"]["force_rmse_over_sigma"] == pytest.approx(
        np.sqrt(np.mean(df**2)) / rms_sigma)
    # energy: error 4 meV/atom everywhere, sigma 1 eV per frame = 250 meV/atom
    assert m["uncertainty"]["energy_sigma_rms_mev_per_atom"] == pytest.approx(250.0)
    assert m["uncertainty"]["energy_rmse_over_sigma"] == pytest.approx(4.0 / 250.0)


def test_attainable_spearman_matches_the_true_scale():
    # errors s_i * z_i with a known log-normal scale: the estimate from the error norms
    # alone is the Spearman that the true scale reaches, and grows with the scales' spread
    gen = np.random.default_rng(1)
    estimates = []
    for width in (0.3, 0.8):
        s = np.exp(width * gen.standard_normal(20000))
        err = np.linalg.norm(s[:, None] * gen.standard_normal((20000, 3)), axis=1)
        estimates.append(attainable_spearman(err))
        assert estimates[-1] == pytest.approx(spearmanr(s, err).statistic, abs=0.03)
    assert estimates[1] > estimates[0] + 0.2


def test_attainable_spearman_is_zero_at_one_error_scale():
    gen = np.random.default_rng(2)
    err = np.linalg.norm(gen.standard_normal((20000, 3)), axis=1)  # chi_3: one scale
    assert attainable_spearman(err) < 0.1
    assert attainable_spearman(np.full(100, 0.5)) == 0.0  # no spread at all
    assert attainable_spearman(np.zeros(10)) is None


def test_error_metrics_reports_the_attainable_spearman(rng):
    frames = [Frame(np.full(5, 29), rng.normal(size=(5, 3)) * 3, None, np.zeros(3, bool),
                    energy=0.0, forces=np.zeros((5, 3))) for _ in range(40)]
    scale = np.exp(rng.normal(size=200))
    df = scale[:, None] * rng.normal(size=(200, 3))
    pred = Prediction(energy=np.zeros(40), forces=df, stress=np.full((40, 6), np.nan),
                      offsets=np.arange(0, 201, 5), forces_sigma=np.repeat(scale[:, None], 3, 1))
    unc = error_metrics(pred, Dataset(frames))["uncertainty"]
    assert unc["force_sigma_spearman_attainable"] == pytest.approx(
        attainable_spearman(np.linalg.norm(df, axis=1) * 1000))

"""Densities: kNN normalisation, k* against a loop re-implementation, PAk likelihood, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import gammaln
from scipy.stats import multivariate_normal, pearsonr

from ml4m.analysis import (
    NeighborGraph,
    knn_density,
    kstar,
    kstar_density,
    log_ball_volume,
    pak_density,
)
from ml4m.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def gauss():
    X = np.random.default_rng(0).normal(size=(3000, 3))
    return X, NeighborGraph.build(X, 64), multivariate_normal(np.zeros(3)).logpdf(X)


def test_ball_volume():
    assert np.exp(log_ball_volume(2)) == pytest.approx(np.pi)
    assert np.exp(log_ball_volume(3)) == pytest.approx(4 / 3 * np.pi)
    assert np.exp(log_ball_volume(1)) == pytest.approx(2.0)


def test_uniform_density_is_one():
    X = np.random.default_rng(1).uniform(0, 1, size=(4000, 2))
    g = NeighborGraph.build(X, 32, period=1.0)
    for res in (knn_density(g, 2, k=20), kstar_density(g, 2), pak_density(g, 2)):
        # unit-area torus: log density 0 within the errors (mean over points)
        assert abs(np.mean(res.log_density)) < 0.1, res.method
        assert np.std(res.log_density) < 2 * np.mean(res.error) + 0.05


@pytest.mark.parametrize("method", [knn_density, kstar_density, pak_density])
def test_gaussian_log_density(gauss, method):
    X, g, truth = gauss
    res = method(g, 3.0)
    assert res.log_density.shape == (3000,) and np.all(np.isfinite(res.log_density))
    assert pearsonr(res.log_density, truth)[0] > 0.95
    core = np.linalg.norm(X, axis=1) < 1.5  # away from the sparse tails
    assert abs(np.mean(res.log_density[core] - truth[core])) < 0.15
    # the reported errors are of the size of the actual scatter
    resid = (res.log_density - truth)[core]
    assert 0.3 < np.std(resid) / np.mean(res.error[core]) < 3.0


def _kstar_loop(distances, indices, d, thr, k_min=3):
    n, maxk = distances.shape
    out = np.full(n, maxk)
    for i in range(n):
        for k in range(k_min, maxk):
            j = indices[i, k]
            vi, vj = distances[i, k - 1] ** d, distances[j, k - 1] ** d
            stat = -2 * k * (np.log(vi) + np.log(vj) - 2 * np.log(vi + vj) + np.log(4))
            if stat >= thr:
                out[i] = k
                break
    return out


def test_kstar_matches_loop(gauss):
    _, g, _ = gauss
    sub = g.subgraph(40)
    k = kstar(sub, 3.0)
    np.testing.assert_array_equal(k, _kstar_loop(sub.distances, sub.indices, 3.0, 23.92812698))
    assert k.min() >= 3 and k.max() <= 40
    # a lower threshold rejects sooner
    assert np.mean(kstar(sub, 3.0, D_thr=5.0)) < np.mean(k)


def test_pak_maximises_its_likelihood(gauss):
    _, g, _ = gauss
    res = pak_density(g, 3.0)
    d, vd = 3.0, np.exp(log_ball_volume(3.0))
    for i in (0, 5, 77, 1234):
        k = res.k[i]
        r = np.r_[0.0, g.distances[i, :k]]
        v = vd * np.diff(r**d)
        ell = np.arange(1, k + 1)

        def nll(p):
            F, a = p
            return -(k * F + a * k * (k + 1) / 2 - np.sum(v * np.exp(F + a * ell)))

        opt = minimize(nll, x0=[np.log(k / v.sum()), 0.0], method="Nelder-Mead",
                       options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 5000})
        assert res.log_density[i] == pytest.approx(opt.x[0] - np.log(g.n), abs=1e-4)
    kf = res.k.astype(float)
    np.testing.assert_allclose(res.error, np.sqrt((4 * kf + 2) / ((kf - 1) * kf)))


def test_knn_formula(gauss):
    _, g, _ = gauss
    res = knn_density(g, 3.0, k=7)
    i = 11
    expect = np.log(7 / (g.n * 4 / 3 * np.pi * g.distances[i, 6] ** 3))
    assert res.log_density[i] == pytest.approx(expect)
    assert np.all(res.error == pytest.approx(1 / np.sqrt(7)))
    assert res.log_density_mean == pytest.approx(np.mean(res.log_density))
    assert float(gammaln(1)) == 0.0


def test_duplicates_give_finite_densities():
    X = np.random.default_rng(3).normal(size=(500, 2))
    X = np.vstack([X] + [X[:5]] * 12)  # 13 copies of 5 points: more than k_min
    g = NeighborGraph.build(X, 16)
    for res in (knn_density(g, 2.0, k=4), kstar_density(g, 2.0), pak_density(g, 2.0)):
        assert np.all(np.isfinite(res.log_density)) and np.all(np.isfinite(res.error))
        assert res.log_density[:5].min() > np.median(res.log_density)  # copies are dense


def test_bad_parameters(gauss):
    _, g, _ = gauss
    with pytest.raises(ConfigError, match="intrinsic_dim"):
        pak_density(g, 0.0)
    with pytest.raises(ConfigError, match="intrinsic_dim"):
        knn_density(g, float("nan"))
    with pytest.raises(ConfigError, match=r"k = 65 .* maxk = 64 .*--maxk"):
        knn_density(g, 3.0, k=65)
    with pytest.raises(ConfigError, match=r"k_min = 65 .*--maxk"):
        kstar(g, 3.0, k_min=65)
    with pytest.raises(DataError, match="k_star"):
        pak_density(g, 3.0, k_star=np.full(5, 3))
    with pytest.raises(DataError, match="k_star"):
        kstar_density(g, 3.0, k_star=np.full(g.n, 99))

"""Intrinsic dimension on manifolds of known dimension (TwoNN, GRIDE, scaling, decimation)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import embed_linear, embed_nonlinear, hypersphere
from scipy.optimize import minimize_scalar

from ml4m.analysis import NeighborGraph, gride, gride_loglik, id_scaling, twonn, twonn_decimation
from ml4m.errors import ConfigError, DataError

TOL = 3.5  # estimates must lie within TOL returned standard errors of the truth


def _check(X, d, **build):
    g = NeighborGraph.build(X, 8, **build)
    for res in (twonn(g), gride(g, n1=1), gride(g, n1=2)):
        assert res.error > 0
        assert abs(res.estimate - d) < TOL * res.error, (res, d)


@pytest.mark.parametrize("d", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("embed", [embed_linear, embed_nonlinear])
@pytest.mark.parametrize("seed", [0, 1])
def test_hyperspheres(d, embed, seed):
    _check(embed(hypersphere(2500, d, seed), 2 * d + 6, seed), d)


@pytest.mark.parametrize("d", [8, 10])
def test_high_dimensional_spheres_are_close(d):
    # curvature biases TwoNN low when neighbours are not local (N = 3000 on S^10):
    # a documented limitation, so only closeness is required here
    X = embed_nonlinear(hypersphere(3000, d, 0), 2 * d + 6, 0)
    est = twonn(NeighborGraph.build(X, 4)).estimate
    assert abs(est - d) / d < 0.1


@pytest.mark.parametrize("d", [2, 4, 6, 8, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_periodic_hypercubes(d, seed):
    # a uniform hypercube with periodic boundaries: flat and without edges
    X = np.random.default_rng(seed).uniform(0, 2.0, size=(2500, d))
    _check(X, d, period=2.0)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("embed", [embed_linear, embed_nonlinear])
def test_embedded_hypercubes(d, embed):
    X = embed(np.random.default_rng(d).uniform(size=(3000, d)), 3 * d + 4, d)
    _check(X, d)


@pytest.mark.parametrize("d", [2, 5, 8, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_isotropic_gaussian(d, seed):
    X = embed_nonlinear(np.random.default_rng(seed).normal(size=(3000, d)), 2 * d + 6, seed)
    _check(X, d)


def test_swiss_roll():
    from sklearn.datasets import make_swiss_roll

    X, _ = make_swiss_roll(3000, noise=0.0, random_state=0)
    _check(X, 2)


def test_fit_algorithm_close_to_mle():
    g = NeighborGraph.build(hypersphere(3000, 4, 3), 4)
    a, b = twonn(g), twonn(g, algorithm="fit")
    assert abs(a.estimate - b.estimate) < 3 * a.error
    assert abs(b.estimate - 4) < TOL * b.error


def test_gride_maximises_its_likelihood():
    g = NeighborGraph.build(hypersphere(2000, 3, 5), 16)
    mu = g.distances[:, 7] / g.distances[:, 3]
    res = gride(g, n1=4)
    ref = minimize_scalar(lambda d: -gride_loglik(d, mu, 4, 8)[0], bounds=(0.1, 50),
                          method="bounded", options={"xatol": 1e-9})
    assert res.estimate == pytest.approx(ref.x, rel=1e-5)
    # derivatives agree with finite differences
    d, h = 2.7, 1e-4
    ll, dll, d2ll = gride_loglik(d, mu, 4, 8)
    assert dll == pytest.approx((gride_loglik(d + h, mu, 4, 8)[0] - gride_loglik(d - h, mu, 4, 8)[0]) / (2 * h), rel=1e-5)
    assert d2ll == pytest.approx((gride_loglik(d + h, mu, 4, 8)[1] - gride_loglik(d - h, mu, 4, 8)[1]) / (2 * h), rel=1e-4)
    # error from the Fisher information
    assert res.error == pytest.approx(1 / np.sqrt(-gride_loglik(res.estimate, mu, 4, 8)[2]), rel=1e-6)


def test_twonn_censored_mle_formula():
    # Pareto ratios with known d: the censored MLE recovers it
    rng = np.random.default_rng(0)
    mu = rng.pareto(7.0, size=20000) + 1.0  # P(mu) = 7 mu^-8
    r1 = np.ones_like(mu)
    g = NeighborGraph(np.c_[r1, mu], np.c_[np.arange(20000) + 1, np.arange(20000) + 2] % 20000)
    res = twonn(g, fraction=0.8)
    assert abs(res.estimate - 7.0) < 3 * res.error
    assert res.n_used == 16000


def test_id_scaling_is_flat_on_a_flat_manifold():
    X = np.random.default_rng(0).uniform(0, 1, size=(3000, 3))
    sc = id_scaling(NeighborGraph.build(X, 32, period=1.0))
    assert list(sc.n1) == [1, 2, 4, 8, 16]
    assert np.all(np.diff(sc.scale) > 0)
    assert np.all(np.abs(sc.estimate - 3) < TOL * sc.error)


def test_decimation():
    X = np.random.default_rng(1).uniform(0, 1, size=(2000, 2))
    sc = twonn_decimation(X, n_min=200, period=1.0)
    assert list(sc.n1) == [1, 2, 4, 8]
    assert np.all(np.diff(sc.scale) > 0)
    assert np.all(np.abs(sc.estimate - 2) < 0.25)


def test_duplicates_are_skipped_not_nan():
    X = hypersphere(1000, 3, 0)
    X = np.vstack([X, X[:100]])
    g = NeighborGraph.build(X, 8)
    for res in (twonn(g), gride(g), gride(g, n1=2)):
        assert np.isfinite(res.estimate) and np.isfinite(res.error)
        assert abs(res.estimate - 3) < 0.5
    assert twonn(g, fraction=1.0).n_used == 1100  # copies count once: every ratio is defined


def test_bad_parameters():
    g = NeighborGraph.build(hypersphere(200, 2, 0), 8)
    with pytest.raises(ConfigError, match="fraction"):
        twonn(g, fraction=0.0)
    with pytest.raises(ConfigError, match="algorithm"):
        twonn(g, algorithm="magic")
    with pytest.raises(ConfigError, match="n1"):
        gride(g, n1=8)
    with pytest.raises(ConfigError, match="n2"):
        gride(g, n1=2, n2=16)
    all_dup = NeighborGraph(np.zeros((5, 2)), np.tile([1, 2], (5, 1)))
    with pytest.raises(DataError, match=r"duplicate rows or raise maxk \(--maxk\)"):
        twonn(all_dup)

"""ADP and DPC on Gaussian mixtures with a known number of modes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import gaussian_mixture
from sklearn.metrics import adjusted_rand_score

from ml4m.analysis import NeighborGraph, adp, decision_graph, dpc, pak_density, twonn
from ml4m.errors import ConfigError, DataError


def _prepare(X, maxk=50):
    g = NeighborGraph.build(X, maxk)
    return g, pak_density(g, twonn(g).estimate)


@pytest.mark.parametrize("n_modes", [2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adp_finds_the_modes(n_modes, seed):
    X, y = gaussian_mixture(400, n_modes, 2 if n_modes < 4 else 3, 7.0, seed)
    g, den = _prepare(X)
    res = adp(g, den.log_density, den.error, den.k, Z=1.65)
    assert res.n_clusters == n_modes
    assert adjusted_rand_score(y, res.labels) > 0.9
    assert sorted(res.sizes.tolist()) == sorted(np.bincount(res.labels).tolist())
    # each centre is the densest point of its cluster
    for c, p in enumerate(res.centers):
        assert res.labels[p] == c
        assert den.log_density[p] >= np.percentile(den.log_density[res.labels == c], 90)
    # a large Z merges every mode into one
    one = adp(g, den.log_density, den.error, den.k, Z=50.0)
    assert one.n_clusters == 1 and np.all(one.labels == 0)
    assert one.linkage.shape == (0, 4)


def test_saddles_and_topography():
    X, _ = gaussian_mixture(400, 3, 2, 7.0, 0)
    g, den = _prepare(X)
    res = adp(g, den.log_density, den.error, den.k, Z=1.65)
    S = res.saddle_log_density
    np.testing.assert_array_equal(np.isnan(S), np.isnan(S.T))
    np.testing.assert_allclose(np.nan_to_num(S), np.nan_to_num(S.T))
    assert np.all(np.isnan(np.diag(S)))
    touching = ~np.isnan(S)
    assert touching.sum() >= 4  # three modes on a triangle touch pairwise (at least 2 pairs)
    # saddles are lower than both peaks, and are real points of one of the two clusters
    peaks = den.log_density[res.centers]
    for a, b in zip(*np.nonzero(touching)):
        assert S[a, b] < min(peaks[a], peaks[b])
        p = res.saddle_points[a, b]
        assert res.labels[p] in (a, b) and den.log_density[p] == S[a, b]
    assert res.linkage.shape == (2, 4)
    assert np.all(res.linkage[:, 2] >= 0)
    assert res.halo.dtype == bool and 0 < res.halo.sum() < len(X)
    # border points: each has a point of another cluster within its k* neighbourhood
    assert res.border_points.size > 0
    for i in res.border_points[:50]:
        nb = g.indices[i, : den.k[i]]
        assert np.any(res.labels[nb] != res.labels[i])
    assert set(res.saddle_points[res.saddle_points >= 0]) <= set(res.border_points)


def test_single_gaussian_is_one_cluster():
    X = np.random.default_rng(4).normal(size=(1500, 3))
    g, den = _prepare(X)
    assert adp(g, den.log_density, den.error, den.k).n_clusters == 1
    # with no merging at all, noise gives several putative peaks
    assert adp(g, den.log_density, den.error, den.k, Z=0.0).n_clusters > 1


@pytest.mark.parametrize("n_modes", [2, 4])
def test_dpc(n_modes):
    X, y = gaussian_mixture(400, n_modes, 3, 8.0, 7)
    g, den = _prepare(X)
    res = dpc(g, den.log_density, X=X)
    assert res.n_clusters == n_modes
    assert adjusted_rand_score(y, res.labels) > 0.9
    dg = res.decision
    assert dg is not None and np.sum(dg.nearest_higher < 0) == 1
    # delta is the distance to the nearest denser point (checked by brute force)
    rho = den.log_density
    for i in np.random.default_rng(0).choice(len(X), 30, replace=False):
        denser = np.flatnonzero(rho > rho[i])
        if denser.size:
            assert dg.delta[i] == pytest.approx(np.min(np.linalg.norm(X[denser] - X[i], axis=1)))


def test_decision_graph_without_coordinates_is_a_lower_bound():
    X, _ = gaussian_mixture(300, 2, 2, 8.0, 1)
    g, den = _prepare(X, 20)
    exact = decision_graph(g, den.log_density, X)
    approx = decision_graph(g, den.log_density)
    assert np.all(approx.delta <= exact.delta + 1e-12)


def test_bad_inputs():
    X, _ = gaussian_mixture(100, 2, 2, 7.0, 0)
    g, den = _prepare(X, 20)
    with pytest.raises(DataError, match="log_density must have shape"):
        adp(g, den.log_density[:5], den.error, den.k)
    bad = den.log_density.copy()
    bad[3] = np.nan
    with pytest.raises(DataError, match="non-finite"):
        adp(g, bad, den.error, den.k)
    with pytest.raises(ConfigError, match="Z"):
        adp(g, den.log_density, den.error, den.k, Z=-1.0)
    with pytest.raises(DataError, match="k_star"):
        adp(g, den.log_density, den.error, den.k + 100)
    with pytest.raises(DataError, match="non-negative"):
        adp(g, den.log_density, -den.error, den.k)

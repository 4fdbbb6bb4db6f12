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


@pytest.mark.parametrize("n, d, seed", [(300, 5, 0), (200, 4, 3), (150, 6, 1)])
def test_one_density_peak_is_one_cluster(n, d, seed):
    # one blob whose putative peaks touch no other: no border pairs at all (was IndexError)
    X = np.random.default_rng(seed).normal(size=(n, d))
    g, den = _prepare(X)
    for res in (adp(g, den.log_density, den.error, den.k), dpc(g, den.log_density, X=X)):
        assert res.n_clusters == 1 and np.all(res.labels == 0)
        assert res.saddle_log_density.shape == (1, 1) and res.linkage.shape == (0, 4)


def _cluster_both(X, maxk):
    g = NeighborGraph.build(X, maxk)
    den = pak_density(g, 2.0)
    return adp(g, den.log_density, den.error, den.k), dpc(g, den.log_density, X=X)


@pytest.mark.parametrize("maxk", [3, 10])
def test_copies_of_one_point_join_its_cluster(maxk):
    # 50 copies of one point and one point apart: the copies are one point, not 50 peaks
    X = np.r_[np.zeros((50, 2)), np.ones((1, 2))]
    for res in _cluster_both(X, maxk):
        assert res.n_clusters == 1
    rng = np.random.default_rng(0)
    blobs = np.r_[rng.normal(size=(100, 2)), rng.normal(size=(100, 2)) + 12.0]
    X = np.repeat(blobs, 3, axis=0)  # every point three times
    blob = np.repeat([0, 1], 300)
    for res in _cluster_both(X, 30):
        copies = res.labels.reshape(-1, 3)
        assert np.all(copies == copies[:, :1])  # copies share a cluster
        for c in range(res.n_clusters):  # and no cluster spans both blobs
            assert len(set(blob[res.labels == c])) == 1


def test_ties_make_no_spurious_peaks():
    # a regular grid: every density equal; a strict order of the points keeps one peak
    grid = np.stack(np.meshgrid(np.arange(12.0), np.arange(12.0)), -1).reshape(-1, 2)
    for maxk in (3, 10):
        assert _cluster_both(grid, maxk)[0].n_clusters == 1


def test_degenerate_inputs_raise_clear_errors():
    with pytest.raises(DataError, match="need at least 11 points"):
        NeighborGraph.build(np.random.default_rng(0).normal(size=(5, 2)), 10)
    with pytest.raises(DataError, match="identical"):
        NeighborGraph.build(np.ones((50, 3)), 10)
    # two points, 30 copies each: every neighbour is a copy, no density
    X = np.r_[np.zeros((30, 2)), np.ones((30, 2))]
    g = NeighborGraph.build(X, 10)
    with pytest.raises(DataError, match=r"copies .*raise maxk \(--maxk\)"):
        pak_density(g, 2.0)
    # a constant column is harmless: the other columns carry the clusters
    Xc, y = gaussian_mixture(300, 2, 2, 8.0, 2)
    Xc = np.c_[Xc, np.full(len(Xc), 7.0)]
    for res in _cluster_both(Xc, 30):
        assert res.n_clusters == 2 and adjusted_rand_score(y, res.labels) > 0.9

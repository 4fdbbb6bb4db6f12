"""NeighborGraph: exact backends agree with scikit-learn; duplicates; periodic box; bad input."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from ml4m.analysis import NeighborGraph
from ml4m.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(1500, 12)) @ rng.normal(size=(12, 30))


@pytest.mark.parametrize("backend", ["brute", "kdtree"])
def test_exact_backends_match_sklearn(data, backend):
    g = NeighborGraph.build(data, 20, backend=backend)
    d, i = NearestNeighbors(n_neighbors=21, algorithm="brute").fit(data).kneighbors(data)
    np.testing.assert_allclose(g.distances, d[:, 1:], rtol=1e-9, atol=1e-9)
    assert np.mean(g.indices == i[:, 1:]) > 0.999  # only exact ties may swap
    assert g.backend == backend and g.maxk == 20 and g.n == 1500 and g.n_features == 30
    assert np.all(np.diff(g.distances, axis=1) >= 0)


def test_ivf_is_approximate_but_close(data):
    pytest.importorskip("numba")
    g = NeighborGraph.build(data, 10, backend="ivf", nprobe=64)
    exact = NeighborGraph.build(data, 10, backend="brute")
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(g.indices, exact.indices)])
    assert recall > 0.95
    assert np.all(g.distances >= exact.distances - 1e-9)  # never closer than the truth
    # every returned distance is the true distance to the returned point (float64)
    true = np.linalg.norm(data[g.indices] - data[:, None, :], axis=2)
    np.testing.assert_allclose(g.distances, true, rtol=1e-12, atol=1e-12)
    assert np.all(np.diff(g.distances, axis=1) >= 0)
    assert not np.any(g.indices == np.arange(len(data))[:, None])
    srt = np.sort(g.indices, axis=1)
    assert not np.any(srt[:, 1:] == srt[:, :-1])  # the local join never repeats a neighbour
    # the local join only improves the cell search
    from ml4m.analysis._cellknn import cell_knn

    d0, _ = cell_knn(data, 11, 4, refine=(0, 0))
    d1, _ = cell_knn(data, 11, 4)
    assert np.all(d1 <= d0 + 1e-12) and np.any(d1 < d0 - 1e-9)


def test_ivf_probing_every_cell_is_exact(data):
    """With every cell probed the candidate set is the whole data: the exact answer."""
    pytest.importorskip("numba")
    g = NeighborGraph.build(data, 15, backend="ivf", nprobe=10**6)
    exact = NeighborGraph.build(data, 15, backend="brute")
    np.testing.assert_allclose(g.distances, exact.distances, rtol=1e-12, atol=1e-12)


def test_ivf_cells_smaller_than_k_and_duplicates():
    """Cells of ~56 points with k = 80 and one probe: cells widen to k candidates."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(3)
    X = rng.normal(size=(600, 6))
    X = np.vstack([X, X[:30], X[:30]])
    g = NeighborGraph.build(X, 80, backend="ivf", nprobe=1)
    assert not np.any(g.indices == np.arange(len(X))[:, None])
    assert np.all(g.distances[:30, :2] == 0)  # the two copies, never the point itself
    assert np.all(np.isfinite(g.distances))


def test_ivf_kernels_select_the_k_smallest():
    """The selection kernel alone: k smallest of random rows, with exact ties."""
    pytest.importorskip("numba")
    from ml4m.analysis._cellknn import select

    rng = np.random.default_rng(4)
    Y = rng.normal(size=(40, 3))
    Y[20:] = Y[:20]  # exact ties
    Yf = Y.astype(np.float32)
    q = np.arange(10)
    G = Yf[q] @ Yf.T
    csq = np.einsum("ij,ij->i", Yf, Yf)
    d = np.empty((40, 11))
    i = np.empty((40, 11), dtype=np.int64)
    select(G, csq, np.arange(40), q, Y, 12, d, i)
    true = np.sqrt(((Y[q, None, :] - Y[None]) ** 2).sum(-1))
    true_wo_self = np.sort(np.where(np.eye(40)[q] > 0, np.inf, true), 1)[:, :11]
    # the kernel leaves rows unsorted (cell_knn sorts them afterwards)
    np.testing.assert_allclose(np.sort(d[q], 1), true_wo_self, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(d[q], np.take_along_axis(true, i[q], 1), rtol=1e-12)
    assert not np.any(i[q] == q[:, None]) and np.all(d[q].min(1) == 0)  # the duplicate, not self


def test_graph_is_immutable(data):
    g = NeighborGraph.build(data, 5)
    with pytest.raises(ValueError):
        g.distances[0, 0] = 1.0
    with pytest.raises(AttributeError):
        g.maxk = 3  # type: ignore[misc]


@pytest.mark.parametrize("backend", ["brute", "kdtree"])
def test_duplicates_self_excluded_and_zero_distances(backend):
    X = np.random.default_rng(1).normal(size=(300, 4))
    X = np.vstack([X, X[:20], X[:20]])  # each of the first 20 points three times
    g = NeighborGraph.build(X, 6, backend=backend)
    assert not np.any(g.indices == np.arange(len(X))[:, None])
    assert np.all(g.distances[:20, :2] == 0) and np.all(g.distances[:20, 2] > 0)
    f = g.floored_distances()
    assert np.all(np.isfinite(f)) and np.all(f > 0)


def test_periodic_box_matches_minimum_image():
    rng = np.random.default_rng(2)
    X = rng.uniform(0, 3.0, size=(400, 3))
    g = NeighborGraph.build(X + 3.0 * rng.integers(-2, 3, size=X.shape), 5, period=3.0)
    diff = X[:, None, :] - X[None, :, :]
    diff -= 3.0 * np.round(diff / 3.0)
    D = np.sqrt((diff**2).sum(-1))
    np.fill_diagonal(D, np.inf)
    np.testing.assert_allclose(g.distances, np.sort(D, axis=1)[:, :5], atol=1e-9)


def test_subgraph(data):
    g = NeighborGraph.build(data, 10)
    s = g.subgraph(4)
    np.testing.assert_array_equal(s.distances, g.distances[:, :4])
    with pytest.raises(ConfigError, match="maxk"):
        g.subgraph(11)


def test_bad_input():
    X = np.random.default_rng(0).normal(size=(50, 3))
    bad = X.copy()
    bad[17, 1] = np.nan
    with pytest.raises(DataError, match="frame 17") as e:
        NeighborGraph.build(bad, 5)
    assert "non-finite" in str(e.value)
    bad[17, 1] = np.inf
    with pytest.raises(DataError, match="non-finite"):
        NeighborGraph.build(bad, 5)
    with pytest.raises(DataError, match="2-D"):
        NeighborGraph.build(X[:, 0], 5)
    with pytest.raises(DataError, match="at least 51 points"):
        NeighborGraph.build(X, 50)
    with pytest.raises(DataError, match="identical"):
        NeighborGraph.build(np.ones((20, 3)), 5)
    with pytest.raises(DataError, match="empty"):
        NeighborGraph.build(np.zeros((0, 3)), 5)
    with pytest.raises(ConfigError, match="backend"):
        NeighborGraph.build(X, 5, backend="annoy")
    with pytest.raises(ConfigError, match="maxk"):
        NeighborGraph.build(X, 1)
    with pytest.raises(ConfigError, match="period"):
        NeighborGraph.build(X, 5, period=-1.0)
    with pytest.raises(ConfigError, match="kdtree"):
        NeighborGraph.build(X, 5, period=1.0, backend="brute")
    with pytest.raises(DataError, match="same shape|one shape"):
        NeighborGraph(np.zeros((3, 2)), np.zeros((3, 3), dtype=int))


def test_brute_without_faiss_matches_sklearn(data, monkeypatch):
    import ml4m.analysis.graph as graph

    monkeypatch.setattr(graph, "_has_faiss", lambda: False)
    g = NeighborGraph.build(data, 20, backend="brute")
    d, i = NearestNeighbors(n_neighbors=21, algorithm="brute").fit(data).kneighbors(data)
    np.testing.assert_allclose(g.distances, d[:, 1:], rtol=1e-9, atol=1e-9)
    assert np.mean(g.indices == i[:, 1:]) > 0.999


def test_brute_faiss_recomputes_rows_it_cannot_certify(monkeypatch):
    # a tight cluster far from a broad one: float32 rounding at the data's extent
    # exceeds the spacing inside the tight cluster, so those rows must fall back
    pytest.importorskip("faiss")
    import ml4m.analysis.graph as graph

    rng = np.random.default_rng(3)
    X = np.vstack([rng.normal(size=(400, 10)) * 100.0, 1e3 + rng.normal(size=(200, 10)) * 1e-4])
    seen = []
    orig = graph._brute_sklearn
    monkeypatch.setattr(graph, "_brute_sklearn",
                        lambda Y, rows, *a, **k: seen.append(len(rows)) or orig(Y, rows, *a, **k))
    g = NeighborGraph.build(X, 8, backend="brute")
    assert seen and 0 < seen[0] < len(X)
    from scipy.spatial.distance import cdist

    full = cdist(X, X)  # direct differences (sklearn's expansion loses digits here)
    np.fill_diagonal(full, -1.0)
    i = np.argsort(full, axis=1, kind="stable")[:, 1:9]
    np.testing.assert_allclose(g.distances, np.take_along_axis(full, i, 1), rtol=1e-9)
    assert np.mean(g.indices == i) > 0.999


def test_auto_backend_keeps_the_approximate_graph_only_with_high_recall(monkeypatch):
    """``backend='auto'`` measures the approximate search's recall against exact queries:
    a good index is kept (recall reported); one that misses neighbours falls back to the
    exact search."""
    import ml4m.analysis.graph as graph_mod

    pytest.importorskip("numba")
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=8.0, size=(20, 12))
    X = centres[rng.integers(20, size=3000)] + rng.normal(size=(3000, 12))
    monkeypatch.setattr(graph_mod, "AUTO_APPROX_MIN_POINTS", 1000)
    exact = graph_mod.NeighborGraph.build(X, 10, backend="brute")
    good = graph_mod.NeighborGraph.build(X, 10, backend="auto")
    assert good.backend == "ivf" and good.recall >= 0.99
    assert good.recall == pytest.approx(graph_mod.approximate_recall(X, good.indices))
    real_ivf = graph_mod._ivf

    def bad_index(X, maxk, nprobe, progress):  # an index that lost a third of the points
        d, i = real_ivf(X, maxk, nprobe, progress)
        lost = i % 3 == 0
        i = np.where(lost, (i + 1) % len(X), i)
        return d, i

    monkeypatch.setattr(graph_mod, "_ivf", bad_index)
    fallback = graph_mod.NeighborGraph.build(X, 10, backend="auto")
    assert fallback.backend == "brute" and fallback.recall < 0.9
    np.testing.assert_array_equal(np.sort(fallback.indices, 1), np.sort(exact.indices, 1))


def _lattice_graph_indices(X: np.ndarray, maxk: int, last_first: bool) -> np.ndarray:
    """Exact neighbour lists of ``X`` with ties at equal distance broken by index, either
    way round: two correct answers that differ only in which tied points they list."""
    from scipy.spatial.distance import cdist

    full = cdist(X, X)
    np.fill_diagonal(full, np.inf)
    tiebreak = -np.arange(len(X)) if last_first else np.arange(len(X))
    order = np.lexsort((np.broadcast_to(tiebreak, full.shape), full), axis=1)
    return order[:, :maxk]


def test_approximate_recall_counts_tied_neighbours_as_found():
    """On a lattice the k-th neighbour distance is shared by several points: a list that
    holds other tied points than the exact search returned is still exact (recall 1),
    while a list with one farther point in place of a tied one is not."""
    import ml4m.analysis.graph as graph_mod

    g = np.arange(12.0)
    X = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)  # 1728 points
    maxk = 10  # 6 at distance 1, 12 at sqrt(2): the 10th is tied with 8 others
    exact = _lattice_graph_indices(X, maxk, last_first=False)
    other_ties = _lattice_graph_indices(X, maxk, last_first=True)
    assert np.mean(np.sort(exact, 1) == np.sort(other_ties, 1)) < 0.9  # truly different
    assert graph_mod.approximate_recall(X, exact, n_queries=300) == 1.0
    assert graph_mod.approximate_recall(X, other_ties, n_queries=300) == 1.0
    worse = _lattice_graph_indices(X, maxk + 12, last_first=False)
    worse = np.concatenate([worse[:, : maxk - 1], worse[:, -1:]], axis=1)  # a farther 10th
    assert graph_mod.approximate_recall(X, worse, n_queries=len(X)) == pytest.approx(0.9)


def test_approximate_recall_counts_each_point_once_and_never_itself():
    import ml4m.analysis.graph as graph_mod

    X = np.random.default_rng(1).normal(size=(400, 6))
    exact = NeighborGraph.build(X, 8, backend="brute").indices.copy()
    assert graph_mod.approximate_recall(X, exact, n_queries=400) == 1.0
    repeated = exact.copy()
    repeated[:, 1] = repeated[:, 0]  # the nearest listed twice, the second nearest lost
    assert graph_mod.approximate_recall(X, repeated, n_queries=400) == pytest.approx(7 / 8)
    with_self = exact.copy()
    with_self[:, 0] = np.arange(len(X))
    assert graph_mod.approximate_recall(X, with_self, n_queries=400) == pytest.approx(7 / 8)


def test_auto_backend_falls_back_on_data_that_defeats_the_cells(monkeypatch):
    """Uniform noise in 40-D has no structure for k-means cells: with few cells probed
    the approximate search misses most neighbours, the measured recall says so, and the
    graph returned is the exact one."""
    import ml4m.analysis.graph as graph_mod

    pytest.importorskip("numba")
    X = np.random.default_rng(4).uniform(size=(3000, 40))
    monkeypatch.setattr(graph_mod, "AUTO_APPROX_MIN_POINTS", 1000)
    g = graph_mod.NeighborGraph.build(X, 10, backend="auto", nprobe=2)
    assert g.backend == "brute" and g.recall < graph_mod.AUTO_MIN_RECALL
    exact = graph_mod.NeighborGraph.build(X, 10, backend="brute")
    np.testing.assert_array_equal(g.indices, exact.indices)
    approx = graph_mod.NeighborGraph.build(X, 10, backend="ivf", nprobe=2)
    assert graph_mod.approximate_recall(X, approx.indices) == pytest.approx(g.recall)

"""The k-nearest-neighbour graph every estimator of :mod:`ml4m.analysis` consumes.

:class:`NeighborGraph` is immutable and built once (:func:`NeighborGraph.build`); the
estimators take it as an argument. Row ``i`` lists the ``maxk`` nearest neighbours of
point ``i`` *excluding* ``i`` itself, in increasing distance, so ``distances[:, k - 1]``
is the distance to the k-th neighbour.

Backends
--------
``"brute"``
    Exact brute force on the data rotated onto its principal axes with zero-variance
    directions dropped (exact, see ``_reduced``): faiss ``IndexFlatL2`` (float32 BLAS
    and k-selection, about 3x faster than scikit-learn) when faiss is installed, each
    row certified against a bound on the float32 rounding error and recomputed in
    float64 by scikit-learn when not certified; scikit-learn's arg-k-min otherwise.
    A few extra candidates, then distances recomputed in float64 and sorted.
``"kdtree"``
    Exact, :class:`scipy.spatial.cKDTree` on all cores, after an orthogonal rotation
    to the principal axes (distances are unchanged; the tree splits along the
    directions that carry the variance). The only backend with a periodic box.
``"ivf"``
    Approximate, for large N (``_cellknn``): k-means cells of ~56 points; each cell's
    points are compared with the points of the ``nprobe`` cells nearest to it in one
    float32 matrix product, a numba kernel keeps each row's nearest, their distances
    are recomputed exactly in float64, and one local join (neighbours of the first
    neighbours) repairs misses at cell edges. Needs numba (extra ``approx``).
    Recall@100 on the ID-10 benchmark manifold at N = 50,000: 0.992 with the default
    nprobe=160 (a returned distance is always a true distance).
``"auto"``
    ``kdtree`` for a periodic box or at most 8 features; ``brute`` below
    ``AUTO_APPROX_MIN_POINTS`` points; above, ``ivf`` when numba is installed, kept only
    when :func:`approximate_recall` on 256 exact queries is at least ``AUTO_MIN_RECALL``
    (the graph records it), else replaced by ``brute``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ml4m.parallel import thread_map
from ml4m.resources import check_memory
from ml4m.analysis._validation import check_features, check_int
from ml4m.errors import ConfigError, DataError

__all__ = ["NeighborGraph", "knn", "graph_memory"]

Backend = Literal["auto", "brute", "kdtree", "ivf"]
_BACKENDS = ("auto", "brute", "kdtree", "ivf")


@dataclass(frozen=True, eq=False)
class NeighborGraph:
    """Immutable k-nearest-neighbour graph of a data set.

    Parameters
    ----------
    distances : ndarray of shape (n_points, maxk), float64
        Distance from each point to its 1st..maxk-th neighbour (itself excluded),
        non-decreasing along each row.
    indices : ndarray of shape (n_points, maxk), int32 or int64
        Row indices of those neighbours.
    metric : str
        ``"euclidean"`` (the only metric computed here; other names are labels for
        graphs built elsewhere).
    period : ndarray of shape (n_features,) or None
        Box lengths of a periodic box, or None.
    backend : str
        How the graph was computed (``"brute"``, ``"kdtree"``, ``"ivf"``, ``"given"``).
    n_features : int
        Number of features of the data (0 when unknown).
    recall : float or None
        With ``backend="auto"`` on large data: the fraction of the exact neighbours the
        approximate search found on a sample of rows (:func:`approximate_recall`); its
        graph was kept when this is at least ``AUTO_MIN_RECALL``, else replaced by the
        exact search (``backend`` then says ``"brute"``). None when not measured.

    Notes
    -----
    Duplicate points give zero distances; the graph keeps them as they are and the
    estimators document what they do with them (ID estimators skip undefined ratios,
    density estimators floor zero distances, see :meth:`floored_distances`).
    """

    distances: np.ndarray
    indices: np.ndarray
    metric: str = "euclidean"
    period: np.ndarray | None = None
    backend: str = "given"
    n_features: int = 0
    recall: float | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        d = np.asarray(self.distances, dtype=np.float64)
        i = np.asarray(self.indices)
        if d.ndim != 2 or d.shape != i.shape:
            raise DataError(
                f"distances and indices must be 2-D arrays of one shape, got {d.shape} and {i.shape}"
            )
        if d.shape[1] < 2:
            raise ConfigError(f"a neighbour graph needs maxk >= 2, got {d.shape[1]}")
        if not np.all(np.isfinite(d)) or np.any(d < 0):
            raise DataError("neighbour distances must be finite and non-negative")
        if not np.issubdtype(i.dtype, np.integer):
            raise DataError(f"neighbour indices must be integers, got dtype {i.dtype}")
        d.setflags(write=False)
        i = i.view()
        i.setflags(write=False)
        object.__setattr__(self, "distances", d)
        object.__setattr__(self, "indices", i)

    @property
    def n(self) -> int:
        """Number of points."""
        return self.distances.shape[0]

    @property
    def maxk(self) -> int:
        """Number of neighbours per point."""
        return self.distances.shape[1]

    def floored_distances(self) -> np.ndarray:
        """Distances with zeros (duplicate points) replaced by a small positive floor.

        The floor is half the smallest positive distance in the graph, so that
        densities at duplicated points are large but finite.

        Returns
        -------
        ndarray of shape (n_points, maxk)

        Raises
        ------
        DataError
            If every distance is zero (all points identical).
        """
        if self.distances[:, 0].min() > 0:
            return self.distances  # nothing to floor (rows are sorted)
        if not self._cache.get("floor"):
            positive = self.distances[self.distances > 0]
            if positive.size == 0:
                raise DataError(
                    f"every point's maxk = {self.maxk} nearest neighbours are copies of it "
                    "(distance zero): the density is undefined; remove duplicate rows or "
                    "raise maxk (--maxk) above the number of copies")
            self._cache["floor"] = 0.5 * float(positive.min())
        return np.maximum(self.distances, self._cache["floor"])

    def has_duplicates_or_ties(self) -> bool:
        """True when some neighbour distance is zero or equals the previous one in its row."""
        if "ties" not in self._cache:
            d = self.distances
            self._cache["ties"] = bool(np.any(d[:, 0] <= 0) or np.any(d[:, 1:] <= d[:, :-1]))
        return self._cache["ties"]

    def subgraph(self, maxk: int) -> NeighborGraph:
        """The same graph restricted to the first ``maxk`` neighbours of each point."""
        maxk = check_int("maxk", maxk, 2, self.maxk)
        return NeighborGraph(self.distances[:, :maxk], self.indices[:, :maxk], self.metric,
                             self.period, self.backend, self.n_features)

    @classmethod
    def build(
        cls,
        X: np.ndarray,
        maxk: int = 100,
        *,
        backend: Backend = "auto",
        period: float | np.ndarray | None = None,
        nprobe: int = 160,
        progress: Callable[[int, int], None] | None = None,
        max_memory: int | str | None = None,
    ) -> NeighborGraph:
        """Compute the ``maxk`` nearest neighbours of every row of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_points, n_features)
            Data; validated (finite, 2-D, at least ``maxk + 1`` rows, not constant).
        maxk : int, default=100
            Neighbours per point (itself excluded).
        backend : {"auto", "brute", "kdtree", "ivf"}, default="auto"
            See the module docstring.
        period : float or array-like of shape (n_features,), optional
            Periodic box lengths (coordinates are wrapped into the box); kdtree only.
        nprobe : int, default=160
            Cells compared with each cell by the approximate ``ivf`` backend (more:
            higher recall, proportionally slower).
        progress : callable(done, total), optional
            Called as rows are completed.
        max_memory : int or str, optional
            Memory limit (bytes or e.g. ``"4GB"``; default half the available memory):
            a graph whose :func:`graph_memory` exceeds it is refused before the search.

        Returns
        -------
        NeighborGraph

        Raises
        ------
        ConfigError
            Bad parameters, or the graph would exceed ``max_memory``.
        """
        X = check_features(X, min_rows=maxk + 1 if isinstance(maxk, int) else 2)
        maxk = check_int("maxk", maxk, 2, X.shape[0] - 1)
        check_memory(graph_memory(X.shape[0], maxk),
                     f"a neighbour graph of {X.shape[0]:,} points with maxk = {maxk} "
                     "neighbours each (and the densities computed on it)", max_memory,
                     hint="lower maxk (--maxk), analyse fewer points, or raise max_memory "
                          "(--max-memory)")
        if backend not in _BACKENDS:
            raise ConfigError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        box = None
        if period is not None:
            box = np.broadcast_to(np.asarray(period, dtype=np.float64), (X.shape[1],)).copy()
            if not np.all(np.isfinite(box)) or np.any(box <= 0):
                raise ConfigError(f"period (--period) must be positive and finite, got {period!r}")
            if backend not in ("auto", "kdtree"):
                raise ConfigError(f"a periodic box (period, --period) needs backend 'kdtree' "
                                  f"(--backend kdtree or auto), got {backend!r}")
            backend = "kdtree"
        auto = backend == "auto"
        if auto:
            if X.shape[1] <= 8:
                backend = "kdtree"
            elif X.shape[0] >= AUTO_APPROX_MIN_POINTS and _has_numba():
                backend = "ivf"
            else:
                backend = "brute"
        recall = None
        if backend == "kdtree":
            d, i = _kdtree(X, maxk, box)
        else:  # both on the data rotated once onto its principal axes (same distances)
            Y = _reduced(X)
            if backend == "brute":
                d, i = _brute(Y, maxk, progress)
            else:
                d, i = _ivf(Y, maxk, nprobe, progress)
                if auto:  # keep the approximate graph only if it finds the exact neighbours
                    recall = approximate_recall(Y, i, reduced=True)
                    if recall < AUTO_MIN_RECALL:
                        d, i = _brute(Y, maxk, progress)
                        backend = "brute"
        return cls(d, i, "euclidean", box, backend, X.shape[1], recall)


#: ``backend="auto"`` tries the approximate search from this many points (below it the
#: exact search is about as fast: analysis_speed.md, 50,000 points in 50-D, 2.9x)
AUTO_APPROX_MIN_POINTS = 20_000
#: ... and keeps it only when it finds at least this fraction of the exact neighbours
AUTO_MIN_RECALL = 0.99


def approximate_recall(X: np.ndarray, indices: np.ndarray, n_queries: int = 256,
                       seed: int = 0, rtol: float = 1e-9, reduced: bool = False) -> float:
    """Fraction of the exact ``maxk`` nearest neighbours that ``indices`` holds, on a sample.

    Neighbours are compared by distance, not by identity: a listed point counts as found
    when its distance is at most the exact ``maxk``-th neighbour distance (within
    ``rtol``), so among points tied at that distance (lattices, duplicates) any choice is
    right. Each listed point counts once, and the query point itself never counts.

    Parameters
    ----------
    X : ndarray of shape (n_points, n_features)
        The data the graph was built on.
    indices : ndarray of shape (n_points, maxk)
        Neighbours found by an approximate search.
    n_queries : int
        Rows checked against an exact search (their cost: ``n_queries x n_points``
        distances).
    seed : int
        Seed of the sample.
    rtol : float
        Relative tolerance on the ``maxk``-th distance (rounding only: both sides are
        float64 distances of the same coordinates).
    reduced : bool
        ``X`` is already centred and rotated onto its principal axes (as the graph's
        build has it): not done again.

    Returns
    -------
    float
        Found neighbours over ``n_queries x maxk``, in [0, 1].
    """
    n, maxk = indices.shape
    rows = np.sort(np.random.default_rng(seed).choice(n, min(n_queries, n), replace=False))
    Y = np.asarray(X, dtype=np.float64)
    Y = Y if reduced else _reduced(Y)
    exact_d, _ = _brute(Y, maxk, rows=rows)
    idx = np.sort(np.asarray(indices)[rows], axis=1)
    diff = Y[idx] - Y[rows, None, :]
    dist = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    first = np.ones(idx.shape, dtype=bool)  # a point listed twice counts once
    first[:, 1:] = idx[:, 1:] != idx[:, :-1]
    found = first & (idx != rows[:, None]) & (dist <= exact_d[:, -1:] * (1.0 + rtol))
    return float(found.sum() / found.size)


def graph_memory(n_points: int, maxk: int) -> float:
    """Peak memory of a graph of ``n_points x maxk`` neighbours and of the estimators
    that read it, bytes: the search returns ``maxk + 1`` distances (float64) and indices
    (int64) per point and drops each point itself (a copy); the densities and the
    clustering hold about two more float64 arrays and a few masks of that shape."""
    return float(n_points) * (maxk + 1) * 8.0 * 6.0


def knn(X: np.ndarray, maxk: int = 100, **kwargs) -> NeighborGraph:
    """Shortcut for :meth:`NeighborGraph.build` (same parameters)."""
    return NeighborGraph.build(X, maxk, **kwargs)


def _index_dtype(n: int):
    return np.int32 if n < 2**31 - 1 else np.int64


def _drop_self(d: np.ndarray, idx: np.ndarray, maxk: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each point from its own list (or the last entry when absent)."""
    n = idx.shape[0]
    is_self = idx == np.arange(n)[:, None]
    keep = ~is_self
    # keep exactly maxk per row: rows without self lose their farthest entry; rows
    # where self appears twice cannot happen for one query
    extra = keep.sum(1) > maxk
    keep[extra, -1] = False
    d2 = d[keep].reshape(n, -1)[:, :maxk]
    i2 = idx[keep].reshape(n, -1)[:, :maxk]
    return d2, i2


def _kdtree(X: np.ndarray, maxk: int, box: np.ndarray | None):
    from scipy.spatial import cKDTree

    if box is not None:
        Y = np.mod(X, box)
        Y[Y >= box] = 0.0
        tree = cKDTree(Y, boxsize=box)
    else:
        Y = X - X.mean(0)
        # exact rotation onto the principal axes: distances are unchanged
        sample = Y[:: max(1, Y.shape[0] // 20000)]
        _, _, vt = np.linalg.svd(sample, full_matrices=True)
        Y = Y @ vt.T
        tree = cKDTree(Y)
    d, i = tree.query(Y, k=maxk + 1, workers=-1)
    return _drop_self(d, i.astype(_index_dtype(len(X))), maxk)


def _reduced(X: np.ndarray) -> np.ndarray:
    """Centre and rotate onto the principal axes, dropping directions of zero variance.

    Exact: an orthogonal change of basis keeps every distance, and the dropped
    directions carry none (variance below 1e-12 of the largest). Descriptor tables
    are often rank deficient, so this can shrink the distance computations a lot.
    """
    Y = X - X.mean(0)
    w, v = np.linalg.eigh(Y.T @ Y)
    keep = w > max(w.max(), 1e-300) * 1e-12
    return np.ascontiguousarray(Y @ v[:, keep]) if keep.sum() < X.shape[1] else Y


def _brute(Y: np.ndarray, maxk: int, progress=None, rows: np.ndarray | None = None):
    """Exact ``maxk`` nearest neighbours of ``Y[rows]`` (default: every row) in ``Y``
    (:func:`_reduced` data), itself excluded."""
    n = Y.shape[0]
    rows = np.arange(n) if rows is None else np.asarray(rows)
    if _has_faiss():
        return _brute_faiss(Y, maxk, progress, rows)
    kk = min(n, maxk + 1 + min(n - 1 - maxk, 2))  # margin against rounding ties
    return _brute_sklearn(Y, rows, kk, maxk, progress)


def _brute_sklearn(Y: np.ndarray, rows: np.ndarray, kk: int, maxk: int, progress=None):
    """Exact candidates of ``Y[rows]`` in float64 (scikit-learn), then refined."""
    from sklearn.neighbors import NearestNeighbors

    n = Y.shape[0]
    m = len(rows)
    nn = NearestNeighbors(n_neighbors=kk, algorithm="brute", n_jobs=-1).fit(Y)
    out_d = np.empty((m, maxk), dtype=np.float64)
    out_i = np.empty((m, maxk), dtype=_index_dtype(n))
    step = 32768
    for s in range(0, m, step):
        e = min(m, s + step)
        cand = nn.kneighbors(Y[rows[s:e]], return_distance=False).astype(out_i.dtype)
        out_d[s:e], out_i[s:e] = _refine(Y, cand, rows[s:e], maxk)
        if progress is not None:
            progress(e, m)
    return out_d, out_i


def _brute_faiss(Y: np.ndarray, maxk: int, progress, rows: np.ndarray):
    """Exact neighbours of ``Y[rows]``: faiss float32 brute force for candidates,
    certified, float64 refinement.

    faiss ranks by float32 squared distances ``|x|^2 + |y|^2 - 2 x.y`` (BLAS), whose
    error is at most ``bound_i = c eps32 (|y_i| + max_j |y_j|)^2``. A few extra
    candidates are kept; a row is certified exact when the last candidate's float32
    distance minus the bound exceeds the exact float64 distance of the ``maxk``-th
    neighbour (no point outside the list can then be closer). Rows that are not
    certified (rounding-level near ties, or a scale far below the data's extent) are
    recomputed in float64 by scikit-learn.
    """
    import faiss

    n, dim = Y.shape
    m = len(rows)
    kk = min(n, maxk + 1 + 8)
    xf = np.ascontiguousarray(Y, dtype=np.float32)
    index = faiss.IndexFlatL2(dim)
    index.add(xf)
    norms = np.sqrt(np.einsum("ij,ij->i", Y, Y))
    bound = 2.0 * (dim + 8) * float(np.finfo(np.float32).eps) * (norms + norms.max()) ** 2
    out_d = np.empty((m, maxk), dtype=np.float64)
    out_i = np.empty((m, maxk), dtype=_index_dtype(n))
    uncertain = []
    step = 8192
    for s in range(0, m, step):
        e = min(m, s + step)
        q = rows[s:e]
        d2, idx = _faiss_search(index, xf[q], kk)
        out_d[s:e], out_i[s:e] = _refine(Y, idx.astype(out_i.dtype), q, maxk)
        if kk < n:
            ok = d2[:, -1].astype(np.float64) - bound[q] > out_d[s:e, -1] ** 2
            uncertain.append(s + np.flatnonzero(~ok))
        if progress is not None:
            progress(e, m)
    redo = np.concatenate(uncertain) if uncertain else np.empty(0, dtype=np.intp)
    if redo.size:
        kx = min(n, maxk + 1 + min(n - 1 - maxk, 2))
        out_d[redo], out_i[redo] = _brute_sklearn(Y, rows[redo], kx, maxk)
    return out_d, out_i


def _faiss_search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` on all cores with query blocks of 512 x 8192 (smaller than faiss's
    default 4096 x 1024: the distance blocks stay in cache, ~20% faster for k ~ 100).
    Both are process-wide faiss settings: the previous values are restored."""
    import faiss

    cv = faiss.cvar
    saved = (faiss.omp_get_max_threads(), cv.distance_compute_blas_query_bs,
             cv.distance_compute_blas_database_bs)
    try:
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        cv.distance_compute_blas_query_bs, cv.distance_compute_blas_database_bs = 512, 8192
        return index.search(queries, k)
    finally:
        faiss.omp_set_num_threads(saved[0])
        cv.distance_compute_blas_query_bs, cv.distance_compute_blas_database_bs = saved[1:]


def _refine(Y: np.ndarray, cand: np.ndarray, queries: np.ndarray, maxk: int,
            block: int = 256):
    """Exact float64 distances of candidate neighbours; drop self; keep the maxk nearest.

    ``Y`` is the data in any orthonormal basis (distances are the same); row ``r`` of
    ``cand`` holds candidates for point ``queries[r]``. Blocks of rows run on all
    cores (numpy releases the GIL in these loops).
    """
    m = cand.shape[0]
    out_d = np.empty((m, maxk))
    out_i = np.empty((m, maxk), dtype=cand.dtype)

    def work(s: int) -> None:
        e = min(m, s + block)
        c = cand[s:e]
        rows = queries[s:e]
        diff = Y[c] - Y[rows, None, :]
        dist = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
        dist[c == rows[:, None]] = -1.0  # self first, then by exact distance
        order = np.argsort(dist, axis=1, kind="stable")
        dist = np.take_along_axis(dist, order, 1)
        c = np.take_along_axis(c, order, 1)
        sel = np.where(dist[:, :1] < 0, np.arange(1, maxk + 1), np.arange(maxk))
        out_d[s:e] = np.take_along_axis(dist, sel, 1)
        out_i[s:e] = np.take_along_axis(c, sel, 1)

    thread_map(work, range(0, m, block), n_jobs=-1)
    return out_d, out_i


def _importable(module: str) -> bool:
    """Whether an optional dependency (``faiss``, ``numba``) can be imported."""
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _has_faiss() -> bool:
    return _importable("faiss")


def _has_numba() -> bool:
    return _importable("numba")


def _ivf(Y: np.ndarray, maxk: int, nprobe: int, progress=None):
    """Approximate ``maxk`` nearest neighbours of every row of ``Y`` (:func:`_reduced` data)."""
    try:
        from ml4m.analysis._cellknn import cell_knn
    except ImportError as exc:  # pragma: no cover - numba is a dependency of the approx extra
        raise ConfigError("backend 'ivf' needs numba (pip install 'ml4m[approx]')") from exc
    nprobe = check_int("nprobe", nprobe, 1)
    n = Y.shape[0]
    return cell_knn(Y, maxk + 1, nprobe, progress, index_dtype=_index_dtype(n))

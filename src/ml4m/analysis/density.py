"""Point-wise density estimators on a :class:`~ml4m.analysis.graph.NeighborGraph`.

All estimators take the intrinsic dimension as an argument (volumes are measured on
the ``d``-dimensional manifold) and return natural-log densities normalised to one,
``log rho_i = log(k_i / (N V_d r_{i,k_i}^d))`` for the kNN-type estimators, with the
errors of Rodriguez et al., JCTC 14, 1206 (2018):

* :func:`knn_density`: fixed ``k``; error ``1/sqrt(k)``.
* :func:`kstar`: the adaptive neighbourhood size ``k*_i``: the largest ``k`` over which
  the density around ``i`` is constant, by the likelihood-ratio test
  ``D_k = -2 k log(4 V_i V_j / (V_i + V_j)^2) < D_thr`` between the volume of the
  ``k``-neighbour sphere of ``i`` and that of its ``(k+1)``-th neighbour ``j``.
* :func:`kstar_density`: kNN with ``k = k*_i``; error ``1/sqrt(k*)``.
* :func:`pak_density`: point-adaptive k-NN: maximises
  ``L(F, a) = k F + a k(k+1)/2 - sum_l v_l exp(F + a l)`` over the ``k*`` shells of
  volume ``v_l`` around each point (``F`` in closed form, Newton steps in ``a`` for
  all points at once); error ``sqrt((4k+2)/((k-1)k))``.

Zero distances (duplicate points) are floored (see
:meth:`NeighborGraph.floored_distances`): duplicated points get large, finite densities.
"""

from __future__ import annotations

import math

import numpy as np

from ml4m.parallel import thread_map
from ml4m.analysis._validation import check_float, check_int, check_kstar
from ml4m.analysis.graph import NeighborGraph
from ml4m.analysis.results import DensityResult
from ml4m.errors import ConfigError

__all__ = ["log_ball_volume", "knn_density", "kstar", "kstar_density", "pak_density",
           "D_THR_DEFAULT"]

#: chi-square threshold of the k* test (p = 1e-6, one degree of freedom)
D_THR_DEFAULT = 23.92812698


def log_ball_volume(d: float) -> float:
    """Natural log of the volume of the unit ball in ``d`` dimensions."""
    return 0.5 * d * np.log(np.pi) - math.lgamma(0.5 * d + 1.0)


def _check_dim(graph: NeighborGraph, intrinsic_dim) -> float:
    return check_float("intrinsic_dim", intrinsic_dim, 0.0, low_open=True)


def _knn_formula(graph: NeighborGraph, d: float, k: np.ndarray, method: str) -> DensityResult:
    r = graph.floored_distances()
    rk = r[np.arange(graph.n), k - 1]
    logd = np.log(k) - np.log(graph.n) - log_ball_volume(d) - d * np.log(rk)
    return DensityResult(method, logd, 1.0 / np.sqrt(k), k, d)


def _within_graph(graph: NeighborGraph, name: str, value, what: str) -> int:
    """An integer neighbour count of at least 1 that the graph holds; the error names the
    parameter and the graph's ``maxk`` (``--maxk`` of ``ml4m analyze``) to raise."""
    value = check_int(name, value, 1)
    if value > graph.maxk:
        raise ConfigError(
            f"{what} uses {name} = {value} neighbours, but the neighbour graph holds only "
            f"maxk = {graph.maxk} per point: raise maxk (--maxk) to at least {value} or "
            f"lower {name}")
    return value


def knn_density(graph: NeighborGraph, intrinsic_dim: float, *,
                k: int | None = None) -> DensityResult:
    """kNN density estimate with a fixed number of neighbours.

    Parameters
    ----------
    graph : NeighborGraph
    intrinsic_dim : float
        Dimension of the manifold (e.g. from :func:`~ml4m.analysis.twonn`).
    k : int, optional
        Neighbours defining the volume (``1 <= k <= graph.maxk``); default
        ``min(10, graph.maxk)``.

    Returns
    -------
    DensityResult
    """
    d = _check_dim(graph, intrinsic_dim)
    k = min(10, graph.maxk) if k is None else _within_graph(graph, "k", k, "the kNN density")
    return _knn_formula(graph, d, np.full(graph.n, k, dtype=np.int64), "knn")


def kstar(graph: NeighborGraph, intrinsic_dim: float, *, D_thr: float = D_THR_DEFAULT,
          k_min: int | None = None) -> np.ndarray:
    """Adaptive neighbourhood sizes ``k*`` by the likelihood-ratio test.

    Parameters
    ----------
    graph : NeighborGraph
    intrinsic_dim : float
    D_thr : float, default=23.928
        Threshold of the test statistic (chi-square, p = 1e-6).
    k_min : int, optional
        Smallest ``k`` tested (and smallest ``k*``); default ``min(3, graph.maxk)``.

    Returns
    -------
    ndarray of shape (n_points,), int
        ``k*_i``: the first ``k >= k_min`` whose test fails, or ``graph.maxk`` when
        none does.
    """
    d = _check_dim(graph, intrinsic_dim)
    D_thr = check_float("D_thr", D_thr, 0.0, low_open=True)
    k_min = min(3, graph.maxk) if k_min is None else _within_graph(
        graph, "k_min", k_min, "the k* test of the adaptive densities (kstar, pak)")
    r = graph.floored_distances()
    logr = np.log(r)
    ks = np.arange(k_min, graph.maxk)
    out = np.full(graph.n, graph.maxk, dtype=np.int64)
    if ks.size == 0:
        return out
    # The statistic -2 k (log 4 + lt - 2 log(1 + e^lt)), lt = d log(r_j / r_i), equals
    # 4 k log cosh(lt / 2), so "stat >= D_thr" is |lt| >= 2 arccosh(exp(D_thr / 4k)):
    # one threshold per k, no transcendental function per point.
    a = D_thr / (4.0 * ks)
    thr = 2.0 * np.log(np.exp(a) + np.sqrt(np.expm1(2.0 * a))) / d

    def work(s: int) -> None:
        # columns in chunks, only for rows whose test has not failed yet (k* is
        # usually far below maxk, so most rows stop in the first chunk)
        rows = np.arange(s, min(graph.n, s + 4096))
        for c0 in range(0, ks.size, 16):
            c1 = min(ks.size, c0 + 16)
            kc = ks[c0:c1]
            j = graph.indices[rows, k_min + c0:k_min + c1]  # the (k+1)-th neighbour, k in kc
            fail = np.abs(logr[j, kc - 1] - logr[rows, k_min - 1 + c0:k_min - 1 + c1]) >= thr[c0:c1]
            first = np.argmax(fail, axis=1)
            anyf = fail[np.arange(rows.size), first]
            out[rows[anyf]] = kc[first[anyf]]
            rows = rows[~anyf]
            if rows.size == 0:
                break

    thread_map(work, range(0, graph.n, 4096), n_jobs=-1)
    return out



def _resolve_kstar(graph, d, k_star) -> np.ndarray:
    if k_star is None:
        return kstar(graph, d)
    return check_kstar(k_star, graph.n, graph.maxk)


def kstar_density(graph: NeighborGraph, intrinsic_dim: float, *,
                  k_star: np.ndarray | None = None) -> DensityResult:
    """kNN density with the adaptive ``k = k*_i`` of each point.

    Parameters
    ----------
    graph : NeighborGraph
    intrinsic_dim : float
    k_star : ndarray of shape (n_points,), optional
        Precomputed :func:`kstar` (computed from ``graph`` and ``intrinsic_dim`` if omitted).

    Returns
    -------
    DensityResult
    """
    d = _check_dim(graph, intrinsic_dim)
    return _knn_formula(graph, d, _resolve_kstar(graph, d, k_star), "kstar")


def _pak_chunk(r: np.ndarray, k: np.ndarray, d: float, max_iter: int = 60,
               tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Maximise the PAk likelihood for a block of points; return (F', log r_k).

    ``F`` is eliminated in closed form (``exp F = k / S0(a)``, ``S0 = sum_l v_l e^{a l}``),
    leaving the concave profile likelihood ``-k log S0(a) + a k(k+1)/2``, maximised by
    Newton steps in ``a`` for all points at once (steps clipped to 0.5).
    """
    m, kmax = r.shape[0], int(k.max())
    rows = np.arange(m)
    rk = r[rows, k - 1]
    x = np.minimum(r[:, :kmax] / rk[:, None], 1.0)
    v = np.diff(x**d, axis=1, prepend=0.0)  # shell volumes in units of V_d r_k^d
    ell = np.arange(1, kmax + 1, dtype=np.float64)
    v[ell[None, :] > k[:, None]] = 0.0
    kf = k.astype(np.float64)
    target = (kf + 1) / 2.0  # optimum: the v e^{a l}-weighted mean of l equals (k+1)/2
    a = np.zeros(m)
    active = np.arange(m)
    for _ in range(max_iter):
        if active.size == 0:
            break
        w = v[active] * np.exp(np.outer(a[active], ell))
        s0 = w.sum(1)
        mean = (w @ ell) / s0
        var = (w @ (ell * ell)) / s0 - mean * mean
        grad = target[active] - mean  # derivative of the profile likelihood / k
        ok = var > 1e-14
        step = np.where(ok, grad / np.where(ok, var, 1.0), 0.0)
        step = np.clip(step, -0.5, 0.5)
        a[active] += step
        active = active[np.abs(step) > tol]
    F = np.log(kf) - np.log((v * np.exp(np.outer(a, ell))).sum(1))
    return F, np.log(rk)


def pak_density(graph: NeighborGraph, intrinsic_dim: float, *,
                k_star: np.ndarray | None = None) -> DensityResult:
    """Point-adaptive k-NN (PAk) log-density.

    Parameters
    ----------
    graph : NeighborGraph
    intrinsic_dim : float
    k_star : ndarray of shape (n_points,), optional
        Precomputed :func:`kstar` (computed from ``graph`` and ``intrinsic_dim`` if omitted).

    Returns
    -------
    DensityResult
        ``log_density`` is ``F_i - log N`` (``F`` the fitted log-density at the point),
        ``error`` the asymptotic ``sqrt((4k+2)/((k-1)k))``.
    """
    d = _check_dim(graph, intrinsic_dim)
    k = _resolve_kstar(graph, d, k_star)
    r = graph.floored_distances()
    logd = np.empty(graph.n)

    def work(s: int) -> None:  # each point's fit is independent: blocks run on all cores
        e = min(graph.n, s + 4096)
        F, logrk = _pak_chunk(r[s:e], k[s:e], d)
        logd[s:e] = F - log_ball_volume(d) - d * logrk

    thread_map(work, range(0, graph.n, 4096), n_jobs=-1)
    logd -= np.log(graph.n)
    kf = k.astype(np.float64)
    err = np.sqrt((4 * kf + 2) / (np.maximum(kf - 1, 1) * kf))
    return DensityResult("pak", logd, err, k, d)

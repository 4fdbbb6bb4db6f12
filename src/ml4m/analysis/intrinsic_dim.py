"""Intrinsic-dimension estimators on a :class:`~ml4m.analysis.graph.NeighborGraph`.

* :func:`twonn`: Facco et al., Sci. Rep. 7, 12140 (2017). The ratio
  ``mu = r2 / r1`` is Pareto distributed, ``P(mu) = d mu^(-d-1)``. The largest
  ``1 - fraction`` of the ratios are treated as censored (only known to exceed the
  cut), which gives the maximum-likelihood estimate
  ``d = n_kept / (sum_kept log mu + n_cut log mu_cut)`` with error ``d / sqrt(n_kept)``.
  ``algorithm="fit"`` is the linear fit of ``-log(1 - F(mu))`` against ``log mu``
  through the origin of the original paper (DADApY's default).
* :func:`gride`: Denti et al., Sci. Rep. 12, 20005 (2022). ``mu = r_{2 n1} / r_{n1}``
  follows a generalised ratio distribution; the likelihood is maximised by safeguarded
  Newton iterations (it is concave in ``d``), error from the observed Fisher
  information.
* :func:`id_scaling`: GRIDE at ``n1 = 1, 2, 4, ...`` (the ID versus scale curve).
* :func:`twonn_decimation`: TwoNN on random subsets of decreasing size (larger scales).

Duplicate points: ranks count *distinct* positive distances (a point and its copies
count once), and points whose ratio is undefined (fewer distinct neighbours than
``n2`` within ``4 n2`` columns) are left out; ``n_used`` in the result says how many
points entered the estimate.
"""

from __future__ import annotations

import math

import numpy as np

from ml4m.analysis._validation import check_choice, check_float, check_int
from ml4m.analysis.graph import NeighborGraph
from ml4m.analysis.results import IDResult, IDScaling
from ml4m.errors import DataError

__all__ = ["twonn", "gride", "id_scaling", "twonn_decimation", "gride_loglik"]


def _distinct_rank_distance(d: np.ndarray, ranks) -> np.ndarray:
    """The ``r``-th distinct positive distance of each row (NaN where a row has fewer)."""
    prev = np.concatenate([np.zeros((d.shape[0], 1)), d[:, :-1]], axis=1)
    new = (d > 0) & (d > prev)
    rank = np.cumsum(new, axis=1)
    out = []
    for r in ranks:
        hit = new & (rank == r)
        pos = np.argmax(hit, axis=1)
        ok = hit[np.arange(d.shape[0]), pos]
        out.append(np.where(ok, d[np.arange(d.shape[0]), pos], np.nan))
    return np.stack(out)


_EQUAL_RATIOS = ("every point's second neighbour is exactly as far as its first (e.g. points "
                 "on a regular grid): the TwoNN intrinsic dimension is undefined; try "
                 "--id gride")


def _nth(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def _ratios(graph: NeighborGraph, n1: int, n2: int) -> tuple[np.ndarray, float]:
    # ranks count distinct positive distances, so duplicated points count once
    # (with no duplicates this is the ordinary n-th neighbour distance)
    if graph.has_duplicates_or_ties():
        cols = graph.distances[:, : min(graph.maxk, 4 * n2)]
        r1, r2 = _distinct_rank_distance(cols, (n1, n2))
    else:  # the common case: ranks are plain columns
        r1, r2 = graph.distances[:, n1 - 1], graph.distances[:, n2 - 1]
    ok = np.isfinite(r1) & np.isfinite(r2)
    mu = r2[ok] / r1[ok]
    if mu.size < 2:
        raise DataError(
            f"the intrinsic dimension needs each point's {_nth(n1)} and {_nth(n2)} distinct "
            f"neighbours, but {graph.n - mu.size} of {graph.n} points have fewer than "
            f"{n2} distinct points among their maxk = {graph.maxk} neighbours (duplicate "
            "points): remove duplicate rows or raise maxk (--maxk)")
    scale = float(np.mean(graph.distances[:, [n1 - 1, n2 - 1]]))
    return mu, scale


def twonn(graph: NeighborGraph, *, fraction: float = 0.9, algorithm: str = "mle") -> IDResult:
    """TwoNN intrinsic dimension.

    Parameters
    ----------
    graph : NeighborGraph
        Needs ``maxk >= 2``.
    fraction : float, default=0.9
        Fraction of the ratios ``r2/r1`` kept; the largest ``1 - fraction`` are
        discarded (treated as censored by ``"mle"``, dropped by ``"fit"``).
    algorithm : {"mle", "fit"}, default="mle"
        Censored maximum likelihood, or the linear fit through the origin.

    Returns
    -------
    IDResult
        ``estimate``, ``error`` (one standard deviation), ``scale`` (mean distance
        of the first two neighbours), ``n_used``.
    """
    fraction = check_float("fraction", fraction, 0.0, 1.0, low_open=True)
    check_choice("algorithm", algorithm, ("mle", "fit"))
    mu, scale = _ratios(graph, 1, 2)
    logmu = np.sort(np.log(mu))
    n = logmu.size
    n_kept = max(2, int(n * fraction))
    if algorithm == "mle":
        n_cut = n - n_kept
        denom = logmu[:n_kept].sum() + (n_cut * logmu[n_kept] if n_cut else 0.0)
        if denom <= 0:
            raise DataError(_EQUAL_RATIOS)
        d = n_kept / denom
        err = d / np.sqrt(n_kept)
    else:
        x = logmu[:n_kept]
        y = -np.log1p(-np.arange(1, n_kept + 1) / n) if n_kept < n else \
            -np.log1p(-np.arange(1, n_kept + 1) / (n + 1))
        sxx = float(x @ x)
        if sxx <= 0:
            raise DataError(_EQUAL_RATIOS)
        d = float(x @ y) / sxx
        err = d / np.sqrt(n_kept)
    return IDResult("twonn", float(d), float(err), scale, n_kept)


def gride_loglik(d: np.ndarray | float, mu: np.ndarray, n1: int, n2: int):
    """Log-likelihood of GRIDE and its first two derivatives in ``d``.

    Parameters
    ----------
    d : float or ndarray
        Intrinsic dimension(s) at which to evaluate.
    mu : ndarray
        Ratios ``r_{n2} / r_{n1}`` (all > 1 when ``n2 - n1 > 1``).
    n1, n2 : int
        Neighbour ranks, ``n2 > n1``.

    Returns
    -------
    tuple of float
        ``(loglik, dloglik, d2loglik)``.
    """
    d = float(d)
    logmu = np.log(mu)
    a = n2 - n1
    n = mu.size
    log_beta = math.lgamma(a) + math.lgamma(n1) - math.lgamma(n2)
    # log(mu^d - 1) = d log mu + log(1 - mu^-d), stable for large d log mu
    x = d * logmu
    one_m = -np.expm1(-x)  # 1 - mu^-d
    ll = n * np.log(d) - ((n2 - 1) * d + 1) * logmu.sum() - n * log_beta
    dll = n / d - (n2 - 1) * logmu.sum()
    d2ll = -n / d**2
    if a > 1:
        with np.errstate(divide="ignore"):
            ll += (a - 1) * np.sum(x + np.log(one_m))
        w = logmu / one_m  # log mu * mu^d / (mu^d - 1)
        dll += (a - 1) * np.sum(w)
        d2ll -= (a - 1) * np.sum(w * w * np.exp(-x))
    return float(ll), float(dll), float(d2ll)


def _gride_mle(mu: np.ndarray, n1: int, n2: int, d_max: float = 1000.0) -> tuple[float, float]:
    """Maximise the (concave) GRIDE likelihood: Newton steps kept inside a bracket."""
    logmu = np.log(mu)
    lo, hi = 1e-6, d_max
    d = min(max(mu.size / max(logmu.sum() * (n2 - 1), 1e-300), 1e-3), d_max / 2)
    for _ in range(200):
        _, g, h = gride_loglik(d, mu, n1, n2)
        if g > 0:
            lo = d
        else:
            hi = d
        step = -g / h if h < 0 else 0.0
        new = d + step
        if not (lo < new < hi) or step == 0.0:
            new = 0.5 * (lo + hi) if hi < d_max else min(2 * d, d_max)
        if abs(new - d) <= 1e-10 * max(1.0, d):
            d = new
            break
        d = new
    _, _, h = gride_loglik(d, mu, n1, n2)
    return d, 1.0 / np.sqrt(-h) if h < 0 else np.inf


def gride(graph: NeighborGraph, *, n1: int = 1, n2: int | None = None) -> IDResult:
    """GRIDE intrinsic dimension from the ratios of the ``n2``-th and ``n1``-th neighbours.

    Parameters
    ----------
    graph : NeighborGraph
        Needs ``maxk >= n2``.
    n1 : int, default=1
        Rank of the nearer neighbour.
    n2 : int, optional
        Rank of the farther neighbour (default ``2 * n1``).

    Returns
    -------
    IDResult
        ``estimate``, ``error`` (from the Fisher information), ``scale`` (mean of
        the ``n1``-th and ``n2``-th neighbour distances), ``n_used``.
    """
    n1 = check_int("n1", n1, 1, graph.maxk - 1)
    n2 = 2 * n1 if n2 is None else n2
    n2 = check_int("n2", n2, n1 + 1, graph.maxk)
    mu, scale = _ratios(graph, n1, n2)
    d, err = _gride_mle(mu, n1, n2)
    return IDResult("gride", d, float(err), scale, int(mu.size))


def id_scaling(graph: NeighborGraph, *, max_rank: int | None = None) -> IDScaling:
    """GRIDE at scales ``n1 = 1, 2, 4, ...`` with ``n2 = 2 n1 <= max_rank``.

    Parameters
    ----------
    graph : NeighborGraph
    max_rank : int, optional
        Largest neighbour rank used (default: ``graph.maxk``).

    Returns
    -------
    IDScaling
        Arrays ``n1``, ``estimate``, ``error`` and ``scale`` (mean neighbour
        distance of each estimate), from small to large scale.
    """
    max_rank = graph.maxk if max_rank is None else check_int("max_rank", max_rank, 2, graph.maxk)
    ranks = []
    n1 = 1
    while 2 * n1 <= max_rank:
        ranks.append(n1)
        n1 *= 2
    res = [gride(graph, n1=r) for r in ranks]
    return IDScaling(
        "gride",
        np.array(ranks),
        np.array([r.estimate for r in res]),
        np.array([r.error for r in res]),
        np.array([r.scale for r in res]),
    )


def twonn_decimation(
    X: np.ndarray, *, n_min: int = 20, fraction: float = 0.9, algorithm: str = "mle",
    seed: int = 0, max_repeats: int = 8, **build_kwargs,
) -> IDScaling:
    """TwoNN on random subsets of ``N, N/2, N/4, ...`` points (at least ``n_min``).

    Each level repeats the estimate on disjoint random subsets covering the data and
    reports their mean and the standard error of the mean (the TwoNN error of the
    full set at the first level).

    Parameters
    ----------
    X : array-like of shape (n_points, n_features)
    n_min : int, default=20
        Smallest subset size.
    fraction, algorithm : see :func:`twonn`.
    seed : int, default=0
        Seed of the random subsets.
    max_repeats : int, default=8
        At most this many subsets per level.
    **build_kwargs
        Passed to :meth:`NeighborGraph.build` (e.g. ``backend``, ``period``).

    Returns
    -------
    IDScaling
        ``n1`` holds the decimation factor (1, 2, 4, ...), ``scale`` the mean
        distance of the first two neighbours at that level.
    """
    from ml4m.analysis._validation import check_features

    X = check_features(X, min_rows=3)
    n_min = check_int("n_min", n_min, 3)
    max_repeats = check_int("max_repeats", max_repeats, 1)
    rng = np.random.default_rng(seed)
    n = X.shape[0]
    factors, est, err, scl = [], [], [], []
    factor = 1
    while n // factor >= n_min:
        perm = rng.permutation(n)
        ids, scales = [], []
        for part in np.array_split(perm, factor)[:max_repeats]:
            g = NeighborGraph.build(X[part], 2, **build_kwargs)
            r = twonn(g, fraction=fraction, algorithm=algorithm)
            ids.append(r.estimate)
            scales.append(r.scale)
            if factor == 1:
                first_err = r.error
        factors.append(factor)
        est.append(float(np.mean(ids)))
        err.append(first_err if factor == 1 else float(np.std(ids) / np.sqrt(len(ids))))
        scl.append(float(np.mean(scales)))
        factor *= 2
    return IDScaling("twonn", np.array(factors), np.array(est), np.array(err), np.array(scl))

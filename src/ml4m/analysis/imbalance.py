"""Information imbalance between feature spaces (Glielmo et al., PNAS Nexus 1, pgac039, 2022).

``Delta(A -> B) = 2/N * sum_i r^B_{i, nn_A(i)}``: the mean rank, in space B, of each
point's nearest neighbour in space A, scaled so that 0 means A's neighbours are
B's neighbours and ~1 means A carries no information about B. Ranks start at 1;
ties share the mean rank.
"""

from __future__ import annotations

import numpy as np

from ml4m.analysis._validation import check_features, check_int
from ml4m.analysis.graph import NeighborGraph
from ml4m.analysis.results import ImbalanceResult
from ml4m.errors import DataError

__all__ = ["information_imbalance", "greedy_feature_selection"]


def _subset(n: int, max_points: int | None, seed: int) -> np.ndarray:
    if max_points is None or n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def _nearest(X: np.ndarray) -> np.ndarray:
    return NeighborGraph.build(X, 2).indices[:, 0]


def _ranks_of(B: np.ndarray, j: np.ndarray, block: int = 1024) -> np.ndarray:
    """Rank of point ``j[i]`` among the neighbours of ``i`` in space ``B``."""
    n = B.shape[0]
    sq = np.einsum("ij,ij->i", B, B)
    out = np.empty(n)
    for s in range(0, n, block):
        e = min(n, s + block)
        rows = np.arange(s, e)
        d2 = sq[s:e, None] - 2.0 * B[s:e] @ B.T + sq[None, :]
        d2[np.arange(e - s), rows] = -np.inf  # self is never a neighbour
        t = d2[np.arange(e - s), j[s:e]]
        tol = 1e-12 * np.maximum(np.abs(t), sq[s:e] + sq[j[s:e]])
        less = (d2 < (t - tol)[:, None]).sum(1) - 1  # minus self
        equal = (np.abs(d2 - t[:, None]) <= tol[:, None]).sum(1)  # includes j
        out[s:e] = 1 + less + 0.5 * (equal - 1)
    return out


def information_imbalance(A, B, *, max_points: int | None = 5000, seed: int = 0) -> ImbalanceResult:
    """Information imbalance in both directions between two representations.

    Parameters
    ----------
    A, B : array-like of shape (n_points, n_features_A), (n_points, n_features_B)
        The same points in two feature spaces.
    max_points : int or None, default=5000
        Use a random subset of this many points (cost grows as N^2); None for all.
    seed : int, default=0
        Seed of the subset.

    Returns
    -------
    ImbalanceResult
    """
    A = check_features(A, min_rows=3)
    B = check_features(B, min_rows=3)
    if A.shape[0] != B.shape[0]:
        raise DataError(f"A and B must hold the same points, got {A.shape[0]} and {B.shape[0]} rows")
    if max_points is not None:
        max_points = check_int("max_points", max_points, 3)
    sel = _subset(A.shape[0], max_points, seed)
    A, B = A[sel], B[sel]
    n = A.shape[0]
    ab = 2.0 / n * float(np.mean(_ranks_of(B, _nearest(A))))
    ba = 2.0 / n * float(np.mean(_ranks_of(A, _nearest(B))))
    return ImbalanceResult(ab, ba, n)


def greedy_feature_selection(
    X, target=None, *, n_select: int | None = None, max_points: int | None = 2000, seed: int = 0,
) -> tuple[list[list[int]], np.ndarray]:
    """Greedy search of the feature subset that best predicts a target space.

    Starting from the empty set, add at each step the feature ``f`` of ``X`` that
    minimises ``Delta(X[:, S + [f]] -> target)``.

    Parameters
    ----------
    X : array-like of shape (n_points, n_features)
        Candidate features.
    target : array-like of shape (n_points, n_target), optional
        Target space (default: all of ``X``).
    n_select : int, optional
        Subset size to stop at (default: all features).
    max_points : int or None, default=2000
        Random subset of points used (the target ranks take N^2 memory).
    seed : int, default=0

    Returns
    -------
    subsets : list of list of int
        The best subset of each size 1..n_select (feature indices in order of selection).
    imbalances : ndarray of shape (n_select,)
        ``Delta(subset -> target)`` of each.
    """
    X = check_features(X, min_rows=3)
    T = X if target is None else check_features(target, min_rows=3)
    if T.shape[0] != X.shape[0]:
        raise DataError(f"X and target must hold the same points, got {X.shape[0]} and {T.shape[0]} rows")
    n_select = X.shape[1] if n_select is None else check_int("n_select", n_select, 1, X.shape[1])
    sel = _subset(X.shape[0], None if max_points is None else check_int("max_points", max_points, 3), seed)
    X, T = X[sel], T[sel]
    n = X.shape[0]
    # rank matrix of the target space, ranks from 1 (self at rank 0)
    sq = np.einsum("ij,ij->i", T, T)
    d2 = np.maximum(sq[:, None] - 2.0 * T @ T.T + sq[None, :], 0.0)
    np.fill_diagonal(d2, -1.0)
    order = np.argsort(d2, axis=1, kind="stable")
    rank = np.empty((n, n), dtype=np.int32)
    np.put_along_axis(rank, order, np.arange(n, dtype=np.int32)[None, :], axis=1)
    del d2, order
    chosen: list[int] = []
    subsets, values = [], []
    for _ in range(n_select):
        best, best_val = -1, np.inf
        for f in range(X.shape[1]):
            if f in chosen:
                continue
            try:
                nn = _nearest(X[:, chosen + [f]])
            except DataError:  # constant feature: no neighbour information
                continue
            val = 2.0 / n * float(np.mean(rank[np.arange(n), nn]))
            if val < best_val:
                best, best_val = f, val
        if best < 0:
            break
        chosen.append(best)
        subsets.append(list(chosen))
        values.append(best_val)
    return subsets, np.array(values)

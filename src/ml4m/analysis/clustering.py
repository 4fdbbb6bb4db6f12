"""Density-peak clustering on a :class:`~ml4m.analysis.graph.NeighborGraph`.

* :func:`adp`: Advanced Density Peaks, d'Errico et al., Inf. Sci. 560, 476 (2021).
  With ``g = log rho - error``: putative centres are points whose ``g`` is not
  exceeded inside their ``k*`` neighbourhood and that lie in no ``k*`` neighbourhood
  of a point with larger ``g``; the other points follow, in decreasing ``g``, their
  nearest neighbour that is already assigned. A point ``i`` of cluster ``c`` is a
  border point with ``c'`` when the first point ``j`` of another cluster inside its
  ``k*`` neighbourhood belongs to ``c'`` and no point of ``c`` is nearer to ``j`` than
  ``i``; the saddle between ``c`` and ``c'`` is their border point of largest ``g``.
  Pairs of peaks are merged, the pair with the highest saddle first, while
  ``rho_c - rho_saddle < Z (err_c + err_saddle)`` for either peak; the merged cluster
  keeps the more significant peak. Vectorised with numpy (no loop over points);
  merging uses a heap over the touching pairs.
* :func:`dpc`: Rodriguez & Laio, Science 344, 1492 (2014): the decision graph
  (``rho``, ``delta``), centres where both are large, then assignment to the nearest
  denser point.
* :func:`topography_linkage`: the hierarchy of the peaks from the saddle matrix.
"""

from __future__ import annotations

import heapq

import numpy as np

from ml4m.analysis._validation import check_float, check_kstar, check_vector
from ml4m.analysis.graph import NeighborGraph
from ml4m.analysis.results import ClusterResult, DecisionGraph
from ml4m.errors import DataError

__all__ = ["adp", "dpc", "decision_graph", "topography_linkage"]


def _follow(parent: np.ndarray) -> np.ndarray:
    """Roots of a forest given by parent pointers (roots point to themselves)."""
    root = parent.copy()
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            return root
        root = nxt


def _run_ends(*keys: np.ndarray) -> np.ndarray:
    """Mask of the last entry of every run of equal ``keys`` (sorted arrays, any length)."""
    if len(keys[0]) == 0:
        return np.zeros(0, dtype=bool)
    change = np.zeros(len(keys[0]) - 1, dtype=bool)
    for key in keys:
        change |= key[1:] != key[:-1]
    return np.append(change, True)


def _within_kstar(k: np.ndarray) -> tuple[np.ndarray, int]:
    """Mask of the first ``k*_i`` columns of each row, only as wide as the largest ``k*``."""
    width = int(k.max())
    return np.arange(1, width + 1)[None, :] <= k[:, None], width


def _first_hit(test, n: int, width: int, limit: np.ndarray | None = None,
               chunks: tuple[int, ...] = (8, 32)) -> np.ndarray:
    """Column of the first True of ``test(rows, c0, c1)`` (a boolean array of shape
    (len(rows), c1 - c0) for columns ``c0:c1`` of those rows) in every row, -1 where
    none. Only the first ``limit[i]`` columns of row ``i`` count. Columns come in
    growing chunks and a row leaves once found or past its limit, so a test that is
    usually true in the first columns reads only those."""
    pos = np.full(n, -1, dtype=np.int64)
    rows = np.arange(n)
    edges = [0, *[c for c in chunks if c < width], width]
    for c0, c1 in zip(edges[:-1], edges[1:]):
        if limit is not None:
            rows = rows[limit[rows] > c0]
        if rows.size == 0:
            break
        hit = test(rows, c0, c1)
        if limit is not None:
            hit &= np.arange(c0, c1)[None, :] < limit[rows, None]
        first = np.argmax(hit, axis=1)
        found = hit[np.arange(rows.size), first]
        pos[rows[found]] = c0 + first[found]
        rows = rows[~found]
    return pos


def _rank(g: np.ndarray) -> np.ndarray:
    """Position of each point in decreasing ``g``, ties by index: a strict order, so
    equal densities (duplicate points, a regular grid) do not each make a peak."""
    order = np.argsort(-g, kind="stable")
    rank = np.empty(len(g), dtype=np.int64)
    rank[order] = np.arange(len(g))
    return rank


def _copies(graph: NeighborGraph, rank: np.ndarray) -> np.ndarray:
    """For every point, the densest point it coincides with (itself when it has no copy):
    points at distance zero, linked through the graph, are one point to the clustering."""
    n = graph.n
    rows, cols = np.nonzero(graph.distances <= 0)
    rep = np.arange(n)
    if rows.size == 0:
        return rep
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    links = coo_matrix((np.ones(rows.size), (rows, graph.indices[rows, cols])), shape=(n, n))
    _, group = connected_components(links, directed=False)
    order = np.argsort(rank)
    _, first = np.unique(group[order], return_index=True)
    return order[first][group]


def _modes(graph: NeighborGraph, rank: np.ndarray, k: np.ndarray, rep: np.ndarray):
    """Putative centres, and for removed ones the denser point that covers them
    (denser: smaller ``rank``)."""
    inside, width = _within_kstar(k)
    idx = graph.indices[:, :width]
    higher = _first_hit(lambda r, c0, c1: rank[idx[r, c0:c1]] < rank[r, None], graph.n, width, k)
    cand = (higher < 0) & (rep == np.arange(graph.n))  # a copy is never a peak
    # candidates lying in the k* neighbourhood of a denser point are removed; they are
    # attached to the densest such point
    rows, cols = np.nonzero(inside & cand[idx])
    tgt = idx[rows, cols]
    better = rank[rows] < rank[tgt]
    rows, tgt = rows[better], tgt[better]
    cover = np.full(graph.n, -1, dtype=np.int64)
    if rows.size:
        order = np.lexsort((-rank[rows], tgt))  # by target, then densest last
        last = _run_ends(tgt[order])
        cover[tgt[order][last]] = rows[order][last]
    centers = cand & (cover < 0)
    return centers, cover


def _assign(graph: NeighborGraph, rank: np.ndarray, centers: np.ndarray, cover: np.ndarray,
            rep: np.ndarray):
    """Parent of every point: the point it is a copy of, else the first neighbour
    processed before it (or a centre)."""
    n = graph.n
    idx = graph.indices

    def ok(r, c0, c1):
        j = idx[r, c0:c1]
        return (rank[j] < rank[r, None]) | centers[j]

    first = _first_hit(ok, n, graph.maxk)
    parent = np.where(first >= 0, idx[np.arange(n), np.maximum(first, 0)], -1)
    parent = np.where(parent < 0, cover, parent)
    parent = np.where(rep != np.arange(n), rep, parent)
    parent[centers] = np.flatnonzero(centers)
    # a point with no assigned neighbour and no cover becomes a centre of its own
    orphan = parent < 0
    parent[orphan] = np.flatnonzero(orphan)
    centers = centers | orphan
    return _follow(parent), centers


def _borders(graph: NeighborGraph, k: np.ndarray, root: np.ndarray, centers: np.ndarray):
    """Border points: arrays (point, own cluster root, other cluster root)."""
    n = graph.n
    idx = graph.indices
    first = _first_hit(lambda r, c0, c1: root[idx[r, c0:c1]] != root[r, None], n,
                       int(k.max()), k)
    p1 = np.flatnonzero((first >= 0) & ~centers)
    p2 = idx[p1, first[p1]]
    c = root[p1]
    # p1 is a border point unless a point of c comes before p1 in p2's list
    row = idx[p2]
    stop = (row == p1[:, None]) | (root[row] == c[:, None])
    pos = np.argmax(stop, axis=1)
    hit = stop[np.arange(p1.size), pos]
    border = ~hit | (row[np.arange(p1.size), pos] == p1)
    return p1[border], c[border], root[p2[border]]


def adp(graph: NeighborGraph, log_density, log_density_error, k_star, *,
        Z: float = 1.65) -> ClusterResult:
    """Advanced density-peak clustering (ADP).

    Parameters
    ----------
    graph : NeighborGraph
    log_density, log_density_error : ndarray of shape (n_points,)
        Log-density and its error (e.g. :func:`~ml4m.analysis.pak_density`).
    k_star : ndarray of shape (n_points,), int
        Neighbourhood sizes used for the density (``DensityResult.k``).
    Z : float, default=1.65
        Statistical significance required to keep two peaks apart; larger ``Z``
        merges more.

    Returns
    -------
    ClusterResult
    """
    n = graph.n
    rho = check_vector("log_density", log_density, n)
    err = check_vector("log_density_error", log_density_error, n)
    if np.any(err < 0):
        raise DataError("log_density_error must be non-negative")
    Z = check_float("Z", Z, 0.0)
    k = check_kstar(k_star, n, graph.maxk)
    g = rho - err
    rank = _rank(g)
    rep = _copies(graph, rank)
    centers, cover = _modes(graph, rank, k, rep)
    root, centers = _assign(graph, rank, centers, cover, rep)
    p, c, c2 = _borders(graph, k, root, centers)
    border = (p, c, c2)

    # saddle of each touching pair: its border point of largest g
    a, b = np.minimum(c, c2), np.maximum(c, c2)
    order = np.lexsort((g[p], b, a))
    a, b, p = a[order], b[order], p[order]
    last = _run_ends(a, b)
    a, b, p = a[last], b[last], p[last]

    # merging by a heap over touching pairs, highest saddle first
    peak = {int(x): int(x) for x in np.flatnonzero(centers)}  # cluster id -> peak point
    edges: dict[int, dict[int, int]] = {cid: {} for cid in peak}
    for x, y, s in zip(a.tolist(), b.tolist(), p.tolist()):
        edges[x][y] = s
        edges[y][x] = s
    heap = [(-rho[s], x, y, s) for x, y, s in zip(a.tolist(), b.tolist(), p.tolist())]
    heapq.heapify(heap)
    merged_into = np.arange(n)
    while heap:
        _, x, y, s = heapq.heappop(heap)
        if x not in peak or y not in peak or edges[x].get(y) != s:
            continue  # stale entry
        px, py = peak[x], peak[y]
        sx = (rho[px] - rho[s]) / (err[px] + err[s]) if err[px] + err[s] > 0 else np.inf
        sy = (rho[py] - rho[s]) / (err[py] + err[s]) if err[py] + err[s] > 0 else np.inf
        if not (sx < Z or sy < Z):
            continue
        keep, drop = (x, y) if sx >= sy else (y, x)
        merged_into[drop] = keep
        del peak[drop]
        ed = edges.pop(drop)
        del ed[keep]
        edges[keep].pop(drop, None)
        for o, so in ed.items():
            del edges[o][drop]
            cur = edges[keep].get(o)
            if cur is None or rho[so] > rho[cur]:
                edges[keep][o] = so
                edges[o][keep] = so
        for o, so in edges[keep].items():
            heapq.heappush(heap, (-rho[so], keep, o, so))

    final = _follow(merged_into)
    bp, bc, bc2 = border
    border_points = np.unique(bp[final[bc] != final[bc2]])
    return _finish("adp", final[root], peak, edges, rho, err, Z, border_points)


def _finish(method, root, peak, edges, rho, err, Z, border_points, decision=None) -> ClusterResult:
    cids = sorted(peak, key=lambda cid: -rho[peak[cid]])
    nc = len(cids)
    new = {cid: i for i, cid in enumerate(cids)}
    lut = np.full(root.max() + 1, -1, dtype=np.int64)
    lut[cids] = np.arange(nc)
    labels = lut[root]
    centers = np.array([peak[cid] for cid in cids], dtype=np.int64)
    sad = np.full((nc, nc), np.nan)
    sad_err = np.full((nc, nc), np.nan)
    sad_pt = np.full((nc, nc), -1, dtype=np.int64)
    for cid in cids:
        for o, s in edges.get(cid, {}).items():
            i, j = new[cid], new[o]
            sad[i, j], sad_err[i, j], sad_pt[i, j] = rho[s], err[s], s
    with np.errstate(invalid="ignore"):
        top_saddle = np.nanmax(np.where(np.isnan(sad), -np.inf, sad), axis=1) if nc else sad
    halo = rho < top_saddle[labels] if nc else np.zeros(len(rho), bool)
    return ClusterResult(method, labels, centers, sad, sad_err, sad_pt, halo,
                         topography_linkage(sad, rho[centers]), border_points, Z, decision)


def topography_linkage(saddle_log_density: np.ndarray, peak_log_density: np.ndarray) -> np.ndarray:
    """Hierarchy of density peaks as a SciPy linkage matrix.

    Peaks are joined in order of decreasing saddle log-density (single linkage on
    ``top - saddle``); clusters that never touch join last, above every saddle.

    Parameters
    ----------
    saddle_log_density : ndarray of shape (n_clusters, n_clusters)
        NaN where two clusters do not touch.
    peak_log_density : ndarray of shape (n_clusters,)

    Returns
    -------
    ndarray of shape (n_clusters - 1, 4)
    """
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    nc = len(peak_log_density)
    if nc < 2:
        return np.zeros((0, 4))
    top = float(np.max(peak_log_density))
    dist = top - np.asarray(saddle_log_density, dtype=float)
    finite = np.isfinite(dist)
    far = (np.max(dist[finite]) if finite.any() else 0.0) + 1.0
    dist = np.where(finite, np.maximum(dist, 0.0), far)
    np.fill_diagonal(dist, 0.0)
    return linkage(squareform(dist, checks=False), method="single")


def decision_graph(graph: NeighborGraph, log_density, X: np.ndarray | None = None,
                   max_pairs: int = 2_000_000_000) -> DecisionGraph:
    """Rodriguez-Laio decision graph: ``delta`` = distance to the nearest denser point.

    Parameters
    ----------
    graph : NeighborGraph
    log_density : ndarray of shape (n_points,)
    X : ndarray of shape (n_points, n_features), optional
        Coordinates: points with no denser point among their ``maxk`` neighbours get
        the exact ``delta`` by a search over the denser points. Without ``X`` their
        ``delta`` is a lower bound, the distance to the ``maxk``-th neighbour.
    max_pairs : int, default=2e9
        The exact search is skipped (lower bounds kept) when it would need more than
        this many distances (local maxima times points).

    Returns
    -------
    DecisionGraph
    """
    n = graph.n
    rho = check_vector("log_density", log_density, n)
    rank = _rank(rho)
    top = int(np.argmin(rank))
    denser = rank[graph.indices] < rank[:, None]
    first = np.argmax(denser, axis=1)
    has = denser[np.arange(n), first]
    nh = np.where(has, graph.indices[np.arange(n), first], -1)
    delta = np.where(has, graph.distances[np.arange(n), first], graph.distances[:, -1])
    missing = np.flatnonzero(~has & (rank > 0))
    if X is not None and missing.size and missing.size * n <= max_pairs:
        X = np.asarray(X, dtype=np.float64)
        sq = np.einsum("ij,ij->i", X, X)
        for s in range(0, missing.size, 256):
            rows = missing[s:s + 256]
            d2 = sq[rows, None] - 2.0 * X[rows] @ X.T + sq[None, :]
            d2[rank[None, :] >= rank[rows, None]] = np.inf  # only denser points
            j = np.argmin(d2, axis=1)
            nh[rows] = j
            diff = X[j] - X[rows]
            delta[rows] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    delta[top] = delta[np.arange(n) != top].max() if n > 1 else 0.0
    nh[top] = -1
    return DecisionGraph(rho, delta, nh)


def dpc(graph: NeighborGraph, log_density, *, X: np.ndarray | None = None,
        delta_min: float | None = None, log_density_min: float | None = None,
        log_density_error=None) -> ClusterResult:
    """Density-peak clustering of Rodriguez and Laio (decision graph).

    Parameters
    ----------
    graph : NeighborGraph
    log_density : ndarray of shape (n_points,)
    X : ndarray of shape (n_points, n_features), optional
        Coordinates for exact ``delta`` of local maxima (see :func:`decision_graph`).
    delta_min : float, optional
        Centres need ``delta > delta_min``; default three times the median distance to the
        ``maxk``-th neighbour.
    log_density_min : float, optional
        Centres need ``log_density > log_density_min``; default the median.
    log_density_error : ndarray of shape (n_points,), optional
        Errors, reported with the saddle densities (zeros if omitted).

    Returns
    -------
    ClusterResult
        With ``decision`` set; saddles are computed as in :func:`adp` with the
        neighbourhood of every point taken as its ``maxk`` neighbours.
    """
    n = graph.n
    rho = check_vector("log_density", log_density, n)
    err = np.zeros(n) if log_density_error is None else \
        check_vector("log_density_error", log_density_error, n)
    dg = decision_graph(graph, rho, X)
    dmin = 3.0 * float(np.median(graph.distances[:, -1])) if delta_min is None else \
        check_float("delta_min", delta_min, 0.0)
    rmin = float(np.median(rho)) if log_density_min is None else \
        check_float("log_density_min", log_density_min)
    centers = (dg.delta > dmin) & (rho > rmin)
    centers[np.argmax(rho)] = True
    parent = np.where(centers, np.arange(n), dg.nearest_higher)
    root = _follow(parent)
    k = np.full(n, graph.maxk, dtype=np.int64)
    p, c, c2 = _borders(graph, k, root, centers)
    peak = {int(x): int(x) for x in np.flatnonzero(centers)}
    edges: dict[int, dict[int, int]] = {cid: {} for cid in peak}
    for x, y, s in zip(c.tolist(), c2.tolist(), p.tolist()):
        cur = edges[x].get(y)
        if cur is None or rho[s] > rho[cur]:
            edges[x][y] = s
            edges[y][x] = s
    return _finish("dpc", root, peak, edges, rho, err, float("nan"), np.unique(p), dg)

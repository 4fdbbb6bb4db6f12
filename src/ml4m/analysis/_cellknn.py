"""Approximate k nearest neighbours by cells: k-means cells, BLAS distance blocks, numba selection.

The points are grouped into k-means cells of ~56 points. For each cell, the queries
(its points) are compared with the points of the ``probe`` cells nearest to its
centroid in one float32 matrix product (BLAS); a numba kernel then selects each row's
``k`` smallest entries with a threshold found by counting passes (vectorised) and a
compaction that skips blocks without a hit, and returns exact float64 distances of
the selected points; one local join (neighbours of the first neighbours) then repairs
near neighbours missed at cell edges. Candidates are data points, so every returned
distance is a true distance; a true neighbour is missed only when it lies outside the
probed cells and the join (recall, not accuracy, is what ``probe`` buys).

Needs numba (the ``approx`` extra). Kernels are compiled once and cached on disk.
"""

from __future__ import annotations

import threading

import numba as nb  # this module is imported only when numba is present (graph._ivf)
import numpy as np

_QUERY_ROWS = 64  # query rows per distance block (the block stays in cache for the selection)


@nb.njit(cache=True, nogil=True)
def kselect(bd, bi, m, k):
    """Partial quickselect: the k smallest of bd[:m] (with bi) end in bd[:k]."""
    lo, hi, kk = 0, m - 1, k - 1
    while lo < hi:
        piv = bd[(lo + hi) >> 1]
        i, j = lo, hi
        while i <= j:
            while bd[i] < piv:
                i += 1
            while bd[j] > piv:
                j -= 1
            if i <= j:
                bd[i], bd[j] = bd[j], bd[i]
                bi[i], bi[j] = bi[j], bi[i]
                i += 1
                j -= 1
        if kk <= j:
            hi = j
        elif kk >= i:
            lo = i
        else:
            break

@nb.njit(cache=True, nogil=True, fastmath=True)
def select(G, csq, cid, qrows, Y, k, out_d, out_i, prev=-1.0):
    """Rows of ``G = Q @ X.T`` (squared distance minus |q|^2 is ``csq - 2 G``): the
    ``k`` nearest candidates of each query, written without the query itself as
    ``k - 1`` distances and row indices of ``Y`` (rows left unsorted). ``prev``: a
    squared distance to start the threshold search from (the last row's k-th, returned)."""
    nq, M = G.shape
    B = 8  # compaction block: entries per vectorised hit test
    Mp = (M + B - 1) // B * B
    v = np.empty(Mp, np.float32)
    for t in range(M, Mp):
        v[t] = np.float32(3.0e38)  # padding (finite: fastmath assumes no inf)
    cap = k + k // 2 + 8
    bd = np.empty(cap + B, np.float32)
    bi = np.empty(cap + B, np.int64)
    dim = Y.shape[1]
    ex = np.empty(k, np.float64)
    ei = np.empty(k, np.int64)
    prev = np.float32(prev)
    expo = 2.0
    target = 0.5 * (k + cap)
    for r in range(nq):
        q = qrows[r]
        for t in range(M):
            v[t] = csq[t] - np.float32(2.0) * G[r, t]
        sr = np.float32(0.0)
        for d in range(dim):
            sr += np.float32(Y[q, d] * Y[q, d])
        # threshold on the squared distance with k <= count(d2 < thr) <= cap
        if prev > 0:
            thr = prev
        else:
            thr = np.float32(0.0)
            for t in range(M):
                if v[t] + sr > thr:
                    thr = v[t] + sr
            thr = thr * np.float32(1.0001) + np.float32(1e-30)
        # secant steps on log(count) against log(thr) (count ~ thr^(ID/2) locally),
        # kept inside the bracket [lo, hi] of thresholds with too few / too many
        lo = 0.0
        hi = -1.0
        t_last = -1.0
        c_last = -1
        thr64 = float(thr)
        for _ in range(200):
            tv = np.float32(thr64) - sr
            c = 0
            for t in range(Mp):
                c += v[t] < tv
            if c >= k and c <= cap:
                break
            if c < k:
                lo = thr64
            else:
                hi = thr64
            if hi > 0 and hi - lo <= 1e-6 * hi:
                thr64 = hi  # ties at rounding level: take the upper bracket
                break
            if c > 0 and c_last > 0 and c != c_last and t_last != thr64:
                slope = np.log(c / c_last) / np.log(thr64 / t_last)
                if slope > 0.2:
                    expo = min(slope, 50.0)
            t_last = thr64
            c_last = c
            if c == 0:
                new = thr64 * 4.0 + 1e-30
            else:
                new = thr64 * (target / c) ** (1.0 / expo)
            if hi > 0 and new >= hi:
                new = 0.5 * (lo + hi)
            if new <= lo:
                new = 0.5 * (lo + hi) if hi > 0 else lo * 1.5 + 1e-30
            thr64 = new
        thr = np.float32(thr64)
        if c < k:  # search not converged (never seen): take every candidate
            thr = np.float32(3.0e38) + sr
        tv = thr - sr
        cnt = 0
        for b0 in range(0, Mp, B):
            h = 0
            for t in range(B):
                h += v[b0 + t] < tv
            if h == 0:
                continue
            if cnt + h > cap:  # only after the tie fallback: keep the buffer bounded
                kselect(bd, bi, cnt, k)
                cnt = k
            for t in range(B):
                x = v[b0 + t]
                bd[cnt] = x
                bi[cnt] = b0 + t
                cnt += x < tv
        kselect(bd, bi, cnt, k)
        kth = bd[0]
        for t in range(1, k):
            if bd[t] > kth:
                kth = bd[t]
        prev = kth + sr
        # exact float64 distances of the selected candidates, the query itself left
        # out (or, when k duplicates hide it, the farthest); rows are sorted later
        drop = -1
        for t in range(k):
            p = cid[bi[t]]
            s = 0.0
            for d in range(dim):
                e = Y[p, d] - Y[q, d]
                s += e * e
            ex[t] = s
            ei[t] = p
            if p == q:
                drop = t
        if drop < 0:
            drop = np.argmax(ex)
        u = 0
        for t in range(k):
            if t != drop:
                out_d[q, u] = np.sqrt(ex[t])
                out_i[q, u] = ei[t]
                u += 1
    return prev


@nb.njit(cache=True, nogil=True)
def local_join(rows, Y, nbr, m, L, out_d, out_i, mark):
    """For each row, try the first ``L`` neighbours of its first ``m`` neighbours
    (``nbr``: a read-only copy of the lists); rows of ``out_d`` / ``out_i`` are sorted
    and stay sorted. ``mark`` (n,) is scratch, filled with -1."""
    K = out_d.shape[1]
    dim = Y.shape[1]
    for q in rows:
        mark[q] = q
        for t in range(K):
            mark[out_i[q, t]] = q
        for a in range(m):
            j0 = nbr[q, a]
            for b in range(L):
                j = nbr[j0, b]
                if mark[j] == q:
                    continue
                mark[j] = q
                s = 0.0
                for d in range(dim):
                    e = Y[j, d] - Y[q, d]
                    s += e * e
                dj = np.sqrt(s)
                if dj >= out_d[q, K - 1]:
                    continue
                t = K - 1  # insertion into the sorted row
                while t > 0 and out_d[q, t - 1] > dj:
                    out_d[q, t] = out_d[q, t - 1]
                    out_i[q, t] = out_i[q, t - 1]
                    t -= 1
                out_d[q, t] = dj
                out_i[q, t] = j


def gather(starts: np.ndarray, cells: np.ndarray, Yf: np.ndarray, sqf: np.ndarray):
    """Candidate rows (indices, float32 coordinates, squared norms) of some cells: the
    rows ``starts[j]:starts[j + 1]`` of every cell ``j`` in ``cells``, in that order."""
    lengths = starts[cells + 1] - starts[cells]
    ends = np.cumsum(lengths)
    # row index = the cell's first row + position within the cell
    cid = np.arange(ends[-1], dtype=np.int64) + np.repeat(starts[cells] - ends + lengths, lengths)
    return cid, Yf[cid], sqf[cid]


def kmeans_cells(Y: np.ndarray, n_cells: int, n_iter: int = 5, seed: int = 0,
                 sample: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd k-means on a sample of ``sample * n_cells`` rows, then assign every row.

    Returns
    -------
    centroids : ndarray of shape (n_cells, n_features), float32
    labels : ndarray of shape (n_points,), int64
    """
    rng = np.random.default_rng(seed)
    n = Y.shape[0]
    Yf = np.ascontiguousarray(Y, dtype=np.float32)
    S = Yf[rng.choice(n, size=min(n, sample * n_cells), replace=False)]
    C = S[rng.choice(len(S), size=n_cells, replace=False)].copy()
    for _ in range(n_iter):
        lab = _nearest_cells(C, 1, S)[:, 0]
        counts = np.bincount(lab, minlength=n_cells)
        sums = np.stack([np.bincount(lab, weights=S[:, j], minlength=n_cells)
                         for j in range(S.shape[1])], axis=1)
        empty = counts == 0
        C[~empty] = (sums[~empty] / counts[~empty, None]).astype(np.float32)
        if empty.any():  # re-seed empty cells at random sample points
            C[empty] = S[rng.choice(len(S), size=int(empty.sum()), replace=False)]
    return C, _nearest_cells(C, 1, Yf)[:, 0]


def _nearest_cells(C: np.ndarray, probe: int, Q: np.ndarray | None = None,
                   block: int = 2048) -> np.ndarray:
    """For each row of ``Q`` (default ``C``), the ``probe`` nearest rows of ``C``, nearest
    first, shape (len(Q), probe); blocks of rows on all cores."""
    from ml4m.parallel import thread_map

    Q = C if Q is None else Q
    half = 0.5 * np.einsum("ij,ij->i", C, C)
    out = np.empty((len(Q), probe), dtype=np.int64)

    def work(s: int) -> None:
        g = half - Q[s:s + block] @ C.T  # |q - c|^2 / 2 up to a per-row constant
        if probe == 1:
            out[s:s + block, 0] = np.argmin(g, axis=1)
            return
        part = np.argpartition(g, probe - 1, axis=1)[:, :probe] if probe < len(C) else \
            np.broadcast_to(np.arange(len(C)), g.shape)
        gp = np.take_along_axis(g, part, 1)
        out[s:s + block] = np.take_along_axis(part, np.argsort(gp, axis=1, kind="stable"), 1)

    thread_map(work, range(0, len(Q), block), n_jobs=-1)
    return out


def cell_knn(Y: np.ndarray, k: int, probe: int, progress=None, n_cells: int | None = None,
             index_dtype=np.int64, refine: tuple[int, int] = (4, 32)):
    """Approximate ``k`` nearest neighbours of every row of ``Y`` (the row itself included).

    Parameters
    ----------
    Y : ndarray of shape (n_points, n_features), float64
        Data (any orthonormal basis; distances are Euclidean).
    k : int
        Neighbours per row searched, the row itself included; ``k - 1`` are returned.
    probe : int
        Cells compared with each cell (the nearest by centroid distance).
    progress : callable(done, total), optional
    n_cells : int, optional
        Number of k-means cells (default ``n_points // 56``).
    index_dtype : numpy integer dtype, default=int64
    refine : (int, int), default=(4, 32)
        One local join after the cell search: the first ``L`` neighbours of each row's
        first ``m`` neighbours are candidates too (``(m, L)``; ``(0, 0)`` to skip).
        Cells are searched from the centroid, so a point near the edge of its cell can
        miss near neighbours; its neighbours, searched from their own cells, have them.

    Returns
    -------
    distances : ndarray of shape (n_points, k - 1), float64
        Exact distances, non-decreasing along each row, the row itself excluded (with
        duplicate points, the duplicates are kept at distance 0).
    indices : ndarray of shape (n_points, k - 1)
    """
    from ml4m.parallel import thread_map

    n = Y.shape[0]
    ncells = int(n_cells or max(1, min(n // 56, 65536)))
    C, lab = kmeans_cells(Y, ncells)
    order = np.argsort(lab, kind="stable").astype(np.int64)
    counts = np.bincount(lab, minlength=ncells)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    Ys = np.ascontiguousarray(Y[order])
    Yf = Ys.astype(np.float32)
    sqf = np.einsum("ij,ij->i", Yf, Yf)
    occupied = np.flatnonzero(counts)
    probe = int(min(probe, len(occupied)))
    Co = C[occupied]
    near = occupied[_nearest_cells(Co, probe)]
    out_d = np.empty((n, k - 1), dtype=np.float64)
    out_i = np.empty((n, k - 1), dtype=index_dtype)
    done = [0]

    def work(a: int) -> None:
        c = occupied[a]
        cells = near[a]
        if counts[cells].sum() < k:  # too few candidates: widen to the nearest cells holding k
            order_a = occupied[_nearest_cells(Co, len(Co), Co[a:a + 1])[0]]
            cells = order_a[: int(np.searchsorted(np.cumsum(counts[order_a]), k)) + 1]
        cid, X, csq = gather(starts, cells, Yf, sqf)
        XT = X.T
        prev = -1.0
        # query rows in chunks: each distance block stays in cache for the selection
        for q0 in range(starts[c], starts[c + 1], _QUERY_ROWS):
            q1 = min(starts[c + 1], q0 + _QUERY_ROWS)
            prev = select(Yf[q0:q1] @ XT, csq, cid, np.arange(q0, q1), Ys, k, out_d, out_i, prev)
        done[0] += counts[c]
        if progress is not None and a % 64 == 0:
            progress(done[0], n)

    thread_map(work, range(len(occupied)), n_jobs=-1)

    def sort_rows(s: int) -> None:  # by distance, blocks of rows (no full-size temporaries)
        e = min(n, s + 16384)
        srt = np.argsort(out_d[s:e], axis=1)
        out_d[s:e] = np.take_along_axis(out_d[s:e], srt, 1)
        out_i[s:e] = np.take_along_axis(out_i[s:e], srt, 1)

    thread_map(sort_rows, range(0, n, 16384), n_jobs=-1)
    m, L = (min(int(refine[0]), k - 1), min(int(refine[1]), k - 1)) if refine else (0, 0)
    if m > 0 and L > 0:  # in the cell order: neighbours of neighbours are mostly near in memory
        nbr = out_i.copy()
        scratch = threading.local()  # one mark array per thread, reused over its blocks

        def join(s: int) -> None:
            if not hasattr(scratch, "mark"):
                scratch.mark = np.full(n, -1, dtype=np.int64)
            local_join(np.arange(s, min(n, s + 4096)), Ys, nbr, m, L, out_d, out_i, scratch.mark)

        thread_map(join, range(0, n, 4096), n_jobs=-1)
        del nbr
    # back to the input numbering
    res_d = np.empty_like(out_d)
    res_d[order] = out_d
    res_i = np.empty_like(out_i)
    res_i[order] = order.astype(out_i.dtype)[out_i]
    if progress is not None:
        progress(n, n)
    return res_d, res_i

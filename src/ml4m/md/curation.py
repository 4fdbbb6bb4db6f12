"""Curation: pick a diverse, non-redundant subset of frames from a large pool.

A pool (an extxyz file, any ASE-readable file or a packed store, labelled or not) is read
in chunks; each chunk's per-atom descriptors are reduced at once to one row per frame, so
only the ``(n_frames, n_features)`` table is held (100,000 frames x 500 features take
0.4 GB; :func:`check_curation_memory` refuses more than the memory limit allows).

Frame features
    The row of a frame is its *per-atom energy design row* of a model linear in
    per-species blocks of the descriptor (:class:`ml4m.models.linear.SpeciesBlocks`, as
    linear ACE): for each species ``s`` the sum of the descriptors of its atoms, divided
    by the number of atoms. For one element it is the mean environment; for molecules and
    alloys the environments of different elements are not mixed. Frames are selected as
    wholes (a labelled frame is the unit of a training set).

Environment features (``level="atoms"``)
    One row per atom (its descriptor in its species' block; the frame row is their
    mean). A selector then picks environments, and frames are taken in the order their
    first environment was picked, so a frame holding one rare environment (a vacancy
    neighbour, a surface atom) is picked even when its mean is ordinary. Needs
    ``n_atoms / n_frames`` times the memory of frame rows.

Selectors (all deterministic for a given ``seed``; see :func:`select`)
    ``fps``
        Farthest-point sampling (scikit-matter) on the standardised rows: each pick is
        the frame farthest from those already picked; covers every region, outliers first.
    ``cur``
        CUR: picks the frame of largest leverage on the top singular vector of the
        standardised rows, then orthogonalises the rest to it (the selections of
        scikit-matter's CUR, computed by rank-one updates instead of an SVD per pick). CUR
        can pick at most rank(X) frames with nonzero residual, so it runs in rounds on the
        frames not yet picked.
    ``density``
        Density-aware sampling on the standardised rows with the analysis stage's
        estimates: the point-adaptive kNN log-density (PAk, dimension by TwoNN) and its
        density-peak clusters (ADP). Each cluster receives picks in proportion to
        ``size^(1 - alpha)``, at least one while ``n`` allows, and within a cluster
        frames are drawn without replacement with probability proportional to
        ``rho^-alpha`` (Gumbel-top-k). ``alpha = 0`` is random sampling; ``alpha = 1``
        (default) gives every basin the same share and spreads it evenly over the
        basin's volume: a rare basin is kept however few frames it has, a dense basin
        is thinned. Sampling from the density alone would starve a small, tight basin
        (its density is high); FPS would spend picks on isolated outliers first.
    ``doptimal``
        Greedy maximum information gain for a Bayesian linear model on the frame rows:
        each pick maximises ``log(1 + x^T S x)``, the gain in ``log det`` of the
        posterior precision, with ``S`` the current posterior covariance in units of the
        noise variance. Rank-one updates as a pivoted Cholesky factorisation of
        ``X S0 X^T`` (memory ``n_frames x n_selected``; no ``F x F`` matrix unless a
        covariance is given). ``S0`` is an isotropic prior scaled so that the mean prior
        variance of a frame's energy row is ``prior_scale`` noise variances, or the
        posterior covariance of a fitted linear model (``covariance``). The gains are
        non-increasing.
    ``random``
        Uniform sampling without replacement (the baseline).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from ml4m.data import Frame, LabelKeys, iter_frames, open_store
from ml4m.descriptors import make_descriptor
from ml4m.descriptors.base import Descriptor, parse_species
from ml4m.errors import ConfigError
from ml4m.models.linear.design import SpeciesBlocks, design_rows
from ml4m.resources import check_memory, format_bytes
from ml4m.validation import check_choice, check_float, check_int

__all__ = ["SELECTORS", "PoolFeatures", "Selection", "check_curation_memory", "frame_rows",
           "iter_pool", "linear_model_prior", "pool_features", "pool_species",
           "projection_figure", "resolve_n_select", "select"]

#: selector names accepted by :func:`select` (``ml4m curate --method``)
SELECTORS = ("fps", "cur", "density", "doptimal", "random")


@dataclass(frozen=True)
class PoolFeatures:
    """Feature rows of a pool: one per frame, or one per atomic environment.

    Attributes
    ----------
    features : ndarray of shape (n_rows, n_species * n_descriptor)
        Frame rows: per-atom energy design rows (see the module docstring), in the
        descriptor's units. Atom rows: each atom's descriptor in its species' block
        (zeros elsewhere); a frame's row is the mean of its atoms' rows.
    n_atoms : ndarray of shape (n_frames,), int64
    species : tuple of int
        Atomic numbers, in block order.
    descriptor : dict
        The descriptor's ``settings()`` record.
    frame : ndarray of shape (n_rows,), int64, optional
        Atom rows: the frame of each row; None for frame rows.
    """

    features: np.ndarray
    n_atoms: np.ndarray
    species: tuple[int, ...]
    descriptor: dict[str, Any] = field(default_factory=dict)
    frame: np.ndarray | None = None

    @property
    def n_frames(self) -> int:
        """Frames in the pool."""
        return len(self.n_atoms)

    def __len__(self) -> int:
        return self.n_frames


@dataclass(frozen=True)
class Selection:
    """The frames a selector picked.

    Attributes
    ----------
    method : str
    indices : ndarray of shape (n_selected,), int64
        Row indices of the pool, in the order picked (a prefix of an ``fps`` or
        ``doptimal`` selection is itself that method's selection of fewer frames).
    scores : ndarray of shape (n_selected,)
        Per pick: ``fps`` the distance to the frames picked before (standardised units;
        inf for the first), ``doptimal`` the information gain in nats, ``density`` the
        log-density of the frame, ``cur`` and ``random`` NaN.
    """

    method: str
    indices: np.ndarray
    scores: np.ndarray


# ---- reading the pool ---------------------------------------------------------------------

def iter_pool(path: str | os.PathLike, keys: LabelKeys | None = None,
              format: str | None = None) -> Iterator[Frame]:
    """Frames of a pool, one at a time: a store folder (``ml4m data pack``) or a file.

    Raises
    ------
    DataError
        Unreadable file or store, naming it and the frame.
    """
    if Path(path).is_dir():
        yield from open_store(path)
    else:
        yield from iter_frames(path, keys=keys, format=format)


def _chunks(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    it = iter(frames)
    while chunk := list(islice(it, size)):
        yield chunk


def pool_species(path: str | os.PathLike, keys: LabelKeys | None = None,
                 format: str | None = None) -> tuple[tuple[int, ...], int, int]:
    """Sorted atomic numbers present in a pool, its number of frames and of atoms (one
    pass over a file, validating it; a store answers from its arrays)."""
    if Path(path).is_dir():
        store = open_store(path)
        return (tuple(int(z) for z in np.unique(store.array("numbers"))), len(store),
                store.n_atoms)
    zs: set[int] = set()
    n = atoms = 0
    for frame in iter_pool(path, keys, format):
        zs.update(int(z) for z in np.unique(frame.numbers))
        n += 1
        atoms += len(frame)
    return tuple(sorted(zs)), n, atoms


def check_curation_memory(n_rows: int, n_features: int, n_select: int, method: str,
                          max_memory: int | str | None = None) -> None:
    """Refuse a curation whose tables would exceed the memory limit.

    Counts the feature rows (frames, or atoms with ``level="atoms"``), their
    standardised copy and the selector's own arrays: ``density`` a 100-neighbour graph
    per row, ``doptimal`` an ``(n_rows, n_select)`` factor, 8 bytes per number.

    Raises
    ------
    ConfigError
        The estimate exceeds ``max_memory`` (default: half the available memory).
    """
    need = 8.0 * n_rows * (2 * n_features + 4)
    if method == "density":
        need += 16.0 * n_rows * min(100, n_rows)
    elif method == "doptimal":
        need += 8.0 * n_rows * (n_select + 2)
    check_memory(need, f"curation of {n_rows:,} rows x {n_features:,} features "
                 f"({format_bytes(8.0 * n_rows * n_features)} of rows)", max_memory,
                 hint="use a smaller descriptor (--n-max, --l-max) or raise --max-memory")


def pool_features(
    path: str | os.PathLike, descriptor: Descriptor | str = "ace", *,
    keys: LabelKeys | None = None, format: str | None = None, chunk_frames: int = 256,
    n_jobs: int | None = 1, max_memory: int | str | None = None, feature_map: Any = None,
    level: str = "frames", **settings: Any,
) -> PoolFeatures:
    """Per-frame feature rows of a pool, streamed in chunks.

    Parameters
    ----------
    path : str or PathLike
        Pool: a structure file or a packed store folder.
    descriptor : Descriptor or str, default='ace'
        A descriptor, or a family name built with ``settings`` (``r_cut``, ``n_max``,
        ``l_max``, ``species``; species default to those of the pool).
    keys : LabelKeys, optional
        Label keys of the file (labels are not needed here).
    format : str, optional
        ASE format when the extension does not tell.
    chunk_frames : int, default=256
        Frames whose descriptors are held at once.
    n_jobs : int, default=1
        Worker threads over the frames of a chunk.
    max_memory : int or str, optional
        Memory limit (default half the available memory).
    feature_map : FeatureMap, optional
        A fitted linear model's map (``model.fmap_``, see :func:`linear_model_prior`):
        rows in its feature space; default one block of the descriptor per species.
    level : {'frames', 'atoms'}, default='frames'
        One row per frame, or one per atomic environment (:func:`select` then picks
        environments and takes the frames in the order their first environment was
        picked); atom rows need ``n_atoms / n_frames`` times the memory.

    Returns
    -------
    PoolFeatures

    Raises
    ------
    DataError
        Unreadable pool, or a frame with an element the descriptor does not know.
    ConfigError
        Bad descriptor settings; a table that would not fit ``max_memory``.
    """
    chunk_frames = check_int("chunk_frames", chunk_frames, low=1)
    check_choice("level", level, ("frames", "atoms"))
    if isinstance(descriptor, str):
        species = settings.pop("species", None)
        if species is None:
            species, n_frames, n_atoms_total = pool_species(path, keys, format)
            desc = make_descriptor(descriptor, species, **settings)
            check_curation_memory(n_atoms_total if level == "atoms" else n_frames,
                                  desc.n_species * desc.n_features, 1, "fps", max_memory)
        else:
            desc = make_descriptor(descriptor, parse_species(species), **settings)
    else:
        desc = descriptor
    if desc.average:
        raise ConfigError("curation needs per-atom descriptors (average=False)")
    blocks = feature_map or SpeciesBlocks(desc.n_species, desc.n_features)
    lookup = np.full(max(desc.species) + 1, -1, dtype=np.int64)
    lookup[list(desc.species)] = np.arange(desc.n_species)
    rows, counts, frames = [], [], []
    start = 0
    for chunk in _chunks(iter_pool(path, keys, format), chunk_frames):
        res = desc.compute(chunk, n_jobs=n_jobs, max_memory=max_memory)
        n_atoms = np.array([len(f) for f in chunk], dtype=np.int64)
        sidx = lookup[res.numbers]  # compute() refused elements outside desc.species
        if level == "atoms":
            rows.append(blocks.transform(res.features, sidx))
            frames.append(res.frame + start)
        else:
            energy = design_rows(res, blocks, sidx, len(chunk), np.zeros(len(chunk)),
                                 forces=False, stress=False).energy
            rows.append(energy / n_atoms[:, None])
        counts.append(n_atoms)
        start += len(chunk)
    return PoolFeatures(np.concatenate(rows), np.concatenate(counts), tuple(desc.species),
                        desc.settings(), np.concatenate(frames) if level == "atoms" else None)


def frame_rows(pool: PoolFeatures) -> np.ndarray:
    """One row per frame: the pool's rows, or the mean of each frame's atom rows."""
    if pool.frame is None:
        return pool.features
    import scipy.sparse as sp

    mean = sp.csr_matrix((1.0 / pool.n_atoms[pool.frame], (pool.frame, np.arange(len(pool.frame)))),
                         shape=(pool.n_frames, len(pool.frame)))
    return np.asarray(mean @ pool.features)


def linear_model_prior(model: Any) -> tuple[Descriptor, Any, np.ndarray]:
    """What ``doptimal`` needs to start from a fitted linear potential's posterior.

    Parameters
    ----------
    model : LinearPotential
        A fitted linear ACE or sparse GP potential (:mod:`ml4m.models.linear`).

    Returns
    -------
    descriptor : Descriptor
        The model's descriptor (give it to :func:`pool_features`).
    feature_map : FeatureMap
        The model's feature map (``feature_map`` of :func:`pool_features`).
    covariance : ndarray of shape (n_features, n_features)
        Posterior covariance of the coefficients divided by the fitted energy noise
        variance (eV/atom squared): the ``covariance`` of :func:`select`.

    Raises
    ------
    ConfigError
        Not a fitted linear potential.
    """
    from ml4m.models.baseline import Baselined
    from ml4m.models.linear import LinearPotential

    if isinstance(model, Baselined):  # a repulsive core around the linear model
        model = getattr(model, "model_", model.model)
    if not isinstance(model, LinearPotential) or not hasattr(model, "coef_"):
        raise ConfigError(f"doptimal starts from a fitted linear potential (linear ACE or sparse "
                          f"GP), got {type(model).__name__}")
    noise = float(getattr(model, "noise_", {}).get("energy", model.sigma_energy))
    return model.descriptor, model.fmap_, np.asarray(model.covariance_) / noise**2


# ---- selectors ----------------------------------------------------------------------------

def resolve_n_select(n: int | float | str, n_pool: int) -> int:
    """Frames to select: an integer count, or a fraction in (0, 1] of the pool (a float).

    Raises
    ------
    ConfigError
        Not a positive count or fraction, or more frames than the pool holds.
    """
    if isinstance(n, str):
        text = n.strip()
        try:
            n = int(text)
        except ValueError:
            try:
                n = float(text)
            except ValueError:
                raise ConfigError(f"n must be a frame count or a fraction in (0, 1], got {text!r}")
    if isinstance(n, float):
        frac = check_float("n (a fraction of the pool)", n, 0.0, 1.0, low_open=True)
        count = max(1, int(round(frac * n_pool)))
    else:
        count = check_int("n", n, low=1)
    if count > n_pool:
        raise ConfigError(f"n = {count} frames asked for, but the pool holds only {n_pool}")
    return count


def _standardized(X: np.ndarray) -> np.ndarray:
    """Columns centred and scaled to unit variance; constant columns dropped."""
    X = np.asarray(X, dtype=np.float64)
    std = X.std(axis=0)
    keep = std > 1e-12 * max(1.0, float(np.abs(X).max(initial=0.0)))
    return (X[:, keep] - X[:, keep].mean(axis=0)) / std[keep]


def _fps(Z: np.ndarray, n: int, rng: np.random.Generator) -> Selection:
    """Farthest point sampling from a random first row: each pick is the row farthest
    from those picked before (a running minimum of squared distances, one pass of the
    rows per pick); scores are those distances (inf for the first). Rows already picked
    are never picked again, so duplicate rows give distinct indices (score 0)."""
    if Z.shape[1] == 0:  # every frame alike: any subset is as diverse as another
        return _random(Z, n, rng)
    idx = np.empty(n, dtype=np.int64)
    scores = np.empty(n)
    min_d2 = np.full(len(Z), np.inf)
    j = int(rng.integers(len(Z)))
    for t in range(n):
        idx[t], scores[t] = j, min_d2[j]
        diff = Z - Z[j]
        np.minimum(min_d2, np.einsum("ij,ij->i", diff, diff), out=min_d2)
        min_d2[j] = -np.inf  # never picked twice, even among duplicate rows
        j = int(np.argmax(min_d2))
    return Selection("fps", idx, np.sqrt(scores))


def _top_eigenvector(M: np.ndarray) -> np.ndarray:
    from scipy.linalg import eigh

    return eigh(M, subset_by_index=[len(M) - 1, len(M) - 1])[1][:, 0]


def _cur(Z: np.ndarray, n: int, rng: np.random.Generator) -> Selection:
    """CUR by leverage on the top singular vector, orthogonalising after each pick (the
    rule of scikit-matter's ``CUR(k=1, recompute_every=1)`` on ``Z.T``, whose full SVD
    per pick was 9 minutes for 100 of 1,000 3BPA frames). When frames outnumber features
    the residual rows ``R`` and ``C = R^T R`` are updated by the projector
    ``P = I - z z^T / |z|^2`` of the picked row ``z`` (``R P``, ``P C P``), else the Gram
    matrix (``G -= g g^T / g_jj``). A residual spent (all picks so far span the rows)
    starts a new round on the frames not yet picked."""
    if Z.shape[1] == 0:
        return _random(Z, n, rng)
    dual = Z.shape[1] > len(Z)
    tiny = 1e-12 * float(np.einsum("ij,ij->", Z, Z)) / len(Z)
    taken = np.zeros(len(Z), dtype=bool)
    idx = np.zeros(n, dtype=np.int64)
    fresh = True
    for t in range(n):
        if fresh:  # a new round on the residual of the frames left
            R = np.where(taken[:, None], 0.0, Z)
            if dual:
                G = R @ R.T
            else:
                C, norms = R.T @ R, np.einsum("ij,ij->i", R, R)
        if dual:
            lev = _top_eigenvector(G) ** 2
        else:
            lev = (R @ _top_eigenvector(C)) ** 2
        j = int(np.argmax(np.where(taken, -1.0, lev)))
        idx[t], taken[j] = j, True
        if dual:
            g = G[:, j].copy()
            if g[j] > tiny:
                G -= np.outer(g, g) / g[j]
            fresh = g[j] <= tiny or bool(np.all(np.diag(G)[~taken] <= tiny))
        else:
            z = R[j].copy()
            zz = float(z @ z)
            if zz > tiny:
                r, w = R @ z, C @ z
                R -= np.outer(r, z / zz)
                C += (float(z @ w) / zz * np.outer(z, z) - np.outer(w, z) - np.outer(z, w)) / zz
                norms -= r * r / zz
            fresh = zz <= tiny or bool(np.all(norms[~taken] <= tiny))
    return Selection("cur", idx, np.full(n, np.nan))


def _quotas(sizes: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """Picks per cluster: proportional to ``size^(1 - alpha)``, at least one per cluster
    while ``n`` allows, never more than a cluster holds (largest remainders)."""
    quota = np.zeros(len(sizes), dtype=np.int64)
    order = np.argsort(-sizes, kind="stable")
    quota[order[:min(n, len(sizes))]] = 1
    while quota.sum() < n:
        room = quota < sizes
        want = np.where(room, sizes.astype(float) ** (1.0 - alpha), 0.0)
        left = n - int(quota.sum())
        share = left * want / want.sum()
        add = np.minimum(np.floor(share).astype(np.int64), sizes - quota)
        if add.sum() == 0:  # hand out the remainder one by one, largest share first
            add[int(np.argmax(np.where(room, share, -1.0)))] = 1
        quota += add
    return quota


def _density(Z: np.ndarray, n: int, rng: np.random.Generator, alpha: float) -> Selection:
    from ml4m.analysis import NeighborGraph, adp, pak_density, twonn

    if len(Z) < 4 or Z.shape[1] == 0:
        raise ConfigError(f"density selection needs at least 4 distinct frames, got {len(Z)}")
    graph = NeighborGraph.build(Z, maxk=min(100, len(Z) - 1))
    rho = pak_density(graph, twonn(graph).estimate)
    labels = adp(graph, rho.log_density, rho.error, rho.k).labels
    sizes = np.bincount(labels)
    quota = _quotas(sizes, n, alpha)
    keys = -alpha * rho.log_density + rng.gumbel(size=len(Z))
    picked = [members[np.argsort(-keys[members], kind="stable")[:q]]
              for members, q in ((np.flatnonzero(labels == c), q) for c, q in enumerate(quota))]
    idx = np.concatenate(picked).astype(np.int64)
    idx = idx[np.argsort(-keys[idx], kind="stable")]
    return Selection("density", idx, rho.log_density[idx])


def _doptimal(X: np.ndarray, n: int, prior_scale: float,
              covariance: np.ndarray | None) -> Selection:
    X = np.asarray(X, dtype=np.float64)
    if covariance is None:
        scale = prior_scale * len(X) / max(float(np.einsum("ij,ij->", X, X)), 1e-300)

        def column(j: int) -> np.ndarray:
            return scale * (X @ X[j])

        diag = scale * np.einsum("ij,ij->i", X, X)
    else:
        S = np.asarray(covariance, dtype=np.float64)
        if S.shape != (X.shape[1], X.shape[1]):
            raise ConfigError(f"covariance must have shape {(X.shape[1],) * 2} (the frame rows' "
                              f"features), got {S.shape}")
        XS = X @ S

        def column(j: int) -> np.ndarray:
            return XS @ X[j]

        diag = np.einsum("ij,ij->i", XS, X)
    V = np.zeros((len(X), n))
    idx = np.zeros(n, dtype=np.int64)
    gains = np.zeros(n)
    taken = np.zeros(len(X), dtype=bool)
    for t in range(n):
        d = np.where(taken, -np.inf, diag)
        j = int(np.argmax(d))
        idx[t], gains[t], taken[j] = j, np.log1p(max(d[j], 0.0)), True
        # posterior covariance of the rows after adding row j: K - k_j k_j^T / (1 + K_jj)
        v = (column(j) - V[:, :t] @ V[j, :t]) / np.sqrt(1.0 + max(d[j], 0.0))
        V[:, t] = v
        diag = diag - v * v
    return Selection("doptimal", idx, gains)


def _random(Z: np.ndarray, n: int, rng: np.random.Generator) -> Selection:
    idx = rng.permutation(len(Z))[:n].astype(np.int64)
    return Selection("random", idx, np.full(n, np.nan))


def select(features: np.ndarray | PoolFeatures, n: int, method: str = "fps", *, seed: int = 0,
           alpha: float = 1.0, prior_scale: float = 1.0,
           covariance: np.ndarray | None = None) -> Selection:
    """Pick ``n`` distinct frames of a pool (see the module docstring for the methods).

    Parameters
    ----------
    features : ndarray of shape (n_frames, n_features) or PoolFeatures
        One row per frame (:func:`pool_features`).
    n : int
        Frames to pick, ``1 <= n <= n_frames``.
    method : {'fps', 'cur', 'density', 'doptimal', 'random'}, default='fps'
    seed : int, default=0
        Seeds the random choices (FPS's first frame, the density and random draws);
        ``cur`` and ``doptimal`` have none.
    alpha : float, default=1.0
        ``density``: exponent of the inverse density (0 random, 1 uniform coverage).
    prior_scale : float, default=1.0
        ``doptimal``: mean prior variance of a frame's row, in noise variances.
    covariance : ndarray of shape (n_features, n_features), optional
        ``doptimal``: prior covariance in noise-variance units (e.g. a fitted linear
        model's posterior divided by its noise variance) instead of the isotropic one.

    Returns
    -------
    Selection

    Raises
    ------
    ConfigError
        Unknown method, ``n`` out of range, bad ``alpha``/``prior_scale``/``seed``,
        non-finite features.
    """
    if isinstance(features, PoolFeatures) and features.frame is not None:
        return _select_by_atoms(features, n, method, seed=seed, alpha=alpha,
                                prior_scale=prior_scale, covariance=covariance)
    X = features.features if isinstance(features, PoolFeatures) else np.asarray(features, float)
    check_choice("method", method, SELECTORS)
    if X.ndim != 2 or len(X) == 0:
        raise ConfigError(f"features must be a non-empty 2-D table (frames x features), "
                          f"got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ConfigError("features contain NaN or infinite values")
    n = check_int("n", n, low=1, high=len(X))
    rng = np.random.default_rng(check_int("seed", seed, low=0))
    alpha = check_float("alpha", alpha, low=0.0)
    prior_scale = check_float("prior_scale", prior_scale, low=0.0, low_open=True)
    if method == "doptimal":
        return _doptimal(X, n, prior_scale, covariance)
    Z = _standardized(X)
    if method == "fps":
        return _fps(Z, n, rng)
    if method == "cur":
        return _cur(Z, n, rng)
    if method == "density":
        return _density(Z, n, rng, alpha)
    return _random(Z, n, rng)


def _select_by_atoms(pool: PoolFeatures, n: int, method: str, **options: Any) -> Selection:
    """Frames in the order their first environment is picked: environments are picked
    (``select`` on the atom rows), doubling their number until ``n`` frames are hit."""
    n = check_int("n", n, low=1, high=pool.n_frames)
    m = n
    while True:
        sel = select(pool.features, min(m, len(pool.features)), method, **options)
        frames, first = np.unique(pool.frame[sel.indices], return_index=True)
        if len(frames) >= n or m >= len(pool.features):
            break
        m *= 2
    order = np.sort(first)[:n]
    return Selection(method, pool.frame[sel.indices[order]], sel.scores[order])


# ---- the picture --------------------------------------------------------------------------

def projection_figure(features: np.ndarray, indices: np.ndarray, title: str = ""):
    """First two principal components of the standardised pool, picked frames on top
    (:func:`ml4m.analysis.plots.projection_figure`)."""
    from ml4m.analysis.plots import projection_figure as pca_figure

    return pca_figure(_standardized(features), highlight=np.asarray(indices), title=title)

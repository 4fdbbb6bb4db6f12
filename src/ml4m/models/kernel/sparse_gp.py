"""Sparse Gaussian-process potential (GAP / FLARE style) with predictive variance.

Local energies are ``e_i = sum_m alpha_m k(X_i, X_m)`` over ``M`` representative
(sparse) environments ``X_m`` of the same species, with the normalised dot-product
kernel ``k(x, y) = (x . y / |x| |y|)^zeta``. With the prior ``alpha ~ N(0, (a K_mm)^-1)``
this is the subset-of-regressors / Nystrom sparse GP: a Bayesian linear model on the
features ``phi_m(X_i) = k(X_i, X_m)``, fitted on energies, forces and stresses through the
kernel's derivatives (chain rule through the descriptor's gradients). The signal and
noise precisions are set by maximising the marginal likelihood; the posterior gives the
variance of every predicted energy and force.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from ml4m.data.frames import Frame
from ml4m.data.split import evenly_spaced
from ml4m.errors import ConfigError, DataError
from ml4m.models.linear.design import SumMap
from ml4m.models.linear.potential import LinearPotential
from ml4m.models.registry import register_model
from ml4m.validation import (
    check_array,
    check_bool,
    check_int,
    each,
    fail,
    int_from,
    one_of,
    optional,
)

__all__ = ["DotProductKernelMap", "SparseGPPotential", "select_sparse_points"]


def _column_mask(columns: tuple[np.ndarray | None, ...] | None, n_features: int) -> np.ndarray | None:
    """(S, F) ones on each species' columns (``None`` entry: all), or None when all read all."""
    if columns is None or all(c is None for c in columns):
        return None
    mask = np.zeros((len(columns), n_features))
    for s, c in enumerate(columns):
        mask[s, slice(None) if c is None else np.asarray(c, dtype=np.int64)] = 1.0
    return mask


def _normalise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norm = np.linalg.norm(X, axis=1)
    norm = np.where(norm > 0, norm, 1.0)
    return X / norm[:, None], norm


@dataclass
class DotProductKernelMap:
    """``phi_m(X) = (x_hat . s_hat_m)^zeta`` for sparse points of the same species.

    ``columns``: per species, the descriptor columns its kernel reads (``None``: all),
    e.g. the columns of that species' linear block: ``x`` is then the row restricted to
    them (the other columns are zero in ``sparse``), and only their gradients are read.
    """

    sparse: np.ndarray  # (M, F), unit rows
    sparse_species: np.ndarray  # (M,)
    zeta: int
    chunk: int = 4096
    columns: tuple[np.ndarray | None, ...] | None = None
    #: a species' rows join its sparse points in the gradient product (``G . xhat_row``
    #: from the same GEMM) while they number at most this fraction of the points; more
    #: rows, and one pass of ``einsum`` over the gradients is cheaper
    own_rows_fraction: ClassVar[float] = 0.25

    def __post_init__(self) -> None:
        mask = _column_mask(self.columns, self.sparse.shape[1])
        # per species, fixed by the sparse points: built once, read by every row thread
        n_species = int(self.sparse_species.max(initial=-1)) + 1
        # the columns any species reads: when few, gradients are cut to them once, before
        # the per-species row gathers (a kernel on a degree subset: 828 of 5,187 on 3BPA)
        self._union = None
        if self.columns is not None and all(c is not None for c in self.columns[:n_species]):
            union = np.unique(np.concatenate([np.asarray(c) for c in self.columns[:n_species]]))
            if len(union) <= 0.5 * self.sparse.shape[1]:
                self._union = union
        self._parts = [self._species_part(s) for s in range(n_species)]
        # values and cosines on the read columns only: the others are zero in every
        # restricted row and sparse point (an MD step's GEMMs shrink from all F columns)
        cut = slice(None) if self._union is None else self._union
        self._sparse_read = np.ascontiguousarray(self.sparse[:, cut])
        # each row restricted to its species' columns (zeros elsewhere), on the read columns
        self._mask_read = None if mask is None else mask[:, cut]

    @property
    def n_features(self) -> int:
        return len(self.sparse)

    def _cos(self, X: np.ndarray, species: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cosines to the same-species sparse points (0 to the others), the unit rows on
        the read columns (``_union`` when cut, else all) and the rows' norms."""
        if self._union is not None:
            X = X[:, self._union]
        xhat, norm = _normalise(X if self._mask_read is None else X * self._mask_read[species])
        cos = xhat @ self._sparse_read.T
        cos[species[:, None] != self.sparse_species[None, :]] = 0.0
        return cos, xhat, norm

    def transform(self, X: np.ndarray, species: np.ndarray) -> np.ndarray:
        cos, _, _ = self._cos(X, species)
        return cos**self.zeta

    def kernel_matrix(self) -> np.ndarray:
        """``K_mm`` between the sparse points (block diagonal over species)."""
        return self.transform(self.sparse, self.sparse_species)

    def input_gradient(self, X, species, coef):
        """``sum_m c_m zeta cos^(zeta-1) (s_m - cos x_hat) / |X|`` per row (same-species m)."""
        cos, xhat, norm = self._cos(X, species)
        same = species[:, None] == self.sparse_species[None, :]
        a = np.where(same, self.zeta * cos ** (self.zeta - 1), 0.0) * coef[None, :]
        # xhat and the sparse rows are zero outside a row's columns: so is the gradient
        g = (a @ self._sparse_read - np.sum(a * cos, axis=1)[:, None] * xhat) / norm[:, None]
        if self._union is None:
            return g
        out = np.zeros((len(X), self.sparse.shape[1]))
        out[:, self._union] = g
        return out

    def _species_part(self, s: int) -> tuple[slice | np.ndarray, np.ndarray | None, np.ndarray] | None:
        """Sparse columns of species ``s``, the descriptor columns it reads (``None``: all),
        and its sparse rows on those columns (contiguous); ``None`` without sparse points."""
        cols = np.flatnonzero(self.sparse_species == s)
        if len(cols) == 0:
            return None
        block = slice(cols[0], cols[-1] + 1) if np.all(np.diff(cols) == 1) else cols
        read = None if self.columns is None else self.columns[s]
        S = self.sparse[block] if read is None else self.sparse[block][:, read]
        if self._union is not None:  # positions in the cut gradients
            read = np.searchsorted(self._union, read)
        return block, read, np.ascontiguousarray(S)

    def reduce_gradients(self, X, species, rows, grads, target):
        """Kernel gradients, species by species: a row sees only its species' sparse points.

        Only the gradient columns a species reads enter its products: ``xhat`` and the
        sparse rows are zero outside them."""
        cos, xhat, norm = self._cos(X, species)
        n_out, k = target.shape[0], grads.shape[1]
        out = np.zeros((n_out, k, self.n_features))
        target = sp.csc_matrix(target)
        if self._union is not None:  # xhat is on the cut columns already
            grads = np.take(grads, self._union, axis=2)
        row_species = species[rows]
        for s in np.unique(row_species):
            parts = self._parts[int(s)] if s < len(self._parts) else None
            if parts is None:
                continue
            block, read, S = parts
            n_m, cos_s = len(S), cos[:, block]
            entries = np.flatnonzero(row_species == s)
            for start in range(0, len(entries), self.chunk):
                idx = entries[start:start + self.chunk]
                r = rows[idx]
                G = np.take(grads, idx, axis=0) if read is None else grads[idx][:, :, read]
                G = G.reshape(-1, G.shape[-1])  # (c k, F_s)
                own, which = np.unique(r, return_inverse=True)
                x_own = xhat[own] if read is None else xhat[own][:, read]
                if len(own) <= self.own_rows_fraction * n_m:
                    # G . s_m and G . xhat_r in one (c k, F_s) x (F_s, M + rows) product: the
                    # rows' own columns cost less than a separate pass over G
                    GS = (G @ np.concatenate([S, x_own]).T).reshape(len(idx), k, -1)
                    Gi = GS[np.arange(len(idx)), :, n_m + which]
                    GS = GS[:, :, :n_m]
                else:
                    GS = (G @ S.T).reshape(len(idx), k, -1)
                    Gi = np.einsum("ckf,cf->ck", G.reshape(len(idx), k, -1), x_own[which])
                c = cos_s[r]
                dcos = (GS - c[:, None, :] * Gi[:, :, None]) / norm[r][:, None, None]
                dphi = self.zeta * c[:, None, :] ** (self.zeta - 1) * dcos
                out[:, :, block] += (target[:, idx] @ dphi.reshape(len(idx), -1)).reshape(n_out, k, -1)
        return out


def select_sparse_points(X: np.ndarray, n: int, method: str = "fps", seed: int = 0) -> np.ndarray:
    """Indices of ``n`` representative rows of ``X`` (unit-normalised internally).

    Parameters
    ----------
    X : ndarray of shape (n_rows, F)
        Candidate environments.
    n : int
        Number to select (all rows if fewer).
    method : {'fps', 'cur', 'random'}
        Farthest-point sampling in the kernel's metric, CUR leverage scores of the top
        singular vectors, or uniform random.
    seed : int
        Seed (start point of FPS; draws of CUR and random).
    """
    n = min(n, len(X))
    rng = np.random.default_rng(seed)
    xhat, _ = _normalise(X)
    if method == "random":
        return np.sort(rng.choice(len(X), size=n, replace=False))
    if method == "cur":
        k = min(n, min(xhat.shape))
        _, _, vt = np.linalg.svd(xhat.T, full_matrices=False)
        lev = np.sum(vt[:k] ** 2, axis=0)
        return np.sort(rng.choice(len(X), size=n, replace=False, p=lev / lev.sum()))
    if method != "fps":
        raise ConfigError(f"sparse selection must be 'fps', 'cur' or 'random', got {method!r}")
    # distances in float32: each step is one pass over the rows (memory-bound); half the
    # bytes, and the choice only needs the order of distances
    xhat = xhat.astype(np.float32)
    chosen = [int(rng.integers(len(X)))]
    d = 2.0 - 2.0 * xhat @ xhat[chosen[0]]
    for _ in range(n - 1):
        nxt = int(np.argmax(d))
        chosen.append(nxt)
        d = np.minimum(d, 2.0 - 2.0 * xhat @ xhat[nxt])
    return np.sort(np.array(chosen))


def _check_kernel_columns(name: str, value: Any, **where: Any) -> Any:
    """``'species'``, ``'all'``, or a degree bound (an integer >= 1 or a list of them)."""
    if isinstance(value, str):
        if value not in ("species", "all"):
            raise fail(f"{name} must be 'species', 'all' or a degree bound, got {value!r}",
                       **where)
        return value
    return each(int_from(1), allow_scalar=True)(name, value, **where)


@register_model("sparse_gp", fit_name="gp", descriptor="soap")
class SparseGPPotential(LinearPotential):
    """Sparse GP potential on a descriptor (SOAP or ACE) with uncertainty.

    Parameters
    ----------
    descriptor : Descriptor
        Descriptor with gradients (e.g. ``SOAP``).
    n_sparse : int, default=200
        Sparse environments per species.
    zeta : int, default=4
        Power of the normalised dot-product kernel.
    selection : {'fps', 'cur', 'random'}, default='fps'
        How sparse environments are chosen from the training atoms.
    seed : int, default=0
        Seed of the selection.
    sparse_frames : int, optional
        Choose the sparse environments among the atoms of this many training frames,
        evenly spaced through the set (``None``: all frames). Consecutive MD frames are
        near-duplicates: a subset spans the same environments for a fraction of the
        selection's descriptors and farthest-point passes.
    linear_baseline : bool, default=True
        Add a linear model in the descriptor (one block per species) under the
        kernel, i.e. the kernel ``k_linear + k_zeta`` (as GAP adds a 2-body term under
        SOAP). Without it, sharp kernels on diverse environments (alloys) need far more
        sparse points.
    kernel_columns : {'species', 'all'} or int or list of int, default='species'
        Which descriptor columns a species' kernel reads: those of its linear block
        (``species_degree``; all columns for a species without one), all of them, or
        those of its block inside a degree bound (ACE's ``degree_subset``, one bound per
        correlation order: ``[12, 10, 1, 1]`` keeps the two- and three-body functions,
        the power spectrum that SOAP-GAP's kernel reads). ``'species'`` spares the
        gradients of the columns a smaller block drops (on 3BPA the H, N and O blocks)
        and keeps each kernel on the basis its species supports; a bound makes the
        kernel's gradient products cheap (they scale with the columns read).
    noise : {'per_quantity', 'shared'}, default='per_quantity'
        One noise level per quantity (energies, forces, stresses), each by maximum
        evidence (the marginal likelihood), as GAP/FLARE optimise theirs; ``'shared'``
        keeps the ``sigma_*`` ratios. When the model cannot fit energies and forces
        together, per-quantity evidence may give the energies up (a warning says so;
        measured on the Cu-Au set: energy noise 36 meV/atom); ``'shared'`` keeps them. See
        :class:`~ml4m.models.linear.LinearPotential`.
    **kwargs
        ``e0``, ``sigma_energy``, ``sigma_forces``, ``sigma_stress``, ``alpha``, ``beta``,
        ``uncertainty`` (calibrated force sigma by default), ``species_degree`` (of the
        linear baseline), ``batch_frames`` as in
        :class:`~ml4m.models.linear.LinearPotential`.
    """

    param_checks = {
        **LinearPotential.param_checks, "n_sparse": int_from(1), "zeta": int_from(1),
        "selection": one_of("fps", "cur", "random"), "seed": int_from(0),
        "sparse_frames": optional(int_from(1)), "linear_baseline": check_bool,
        "kernel_columns": _check_kernel_columns,
    }

    def __init__(self, descriptor, n_sparse: int = 200, zeta: int = 4, selection: str = "fps",
                 seed: int = 0, sparse_frames: int | None = None, linear_baseline: bool = True,
                 kernel_columns: str = "species", noise: str = "per_quantity", **kwargs: Any) -> None:
        super().__init__(descriptor, noise=noise, **kwargs)
        self.linear_baseline = linear_baseline
        self.kernel_columns = kernel_columns
        self.n_sparse = n_sparse
        self.zeta = zeta
        self.selection = selection
        self.seed = seed
        self.sparse_frames = sparse_frames

    def _make_feature_map(self, train: Sequence[Frame]):
        kernel = self._make_kernel_map(train)
        return self._with_baseline(kernel)

    def _with_baseline(self, kernel: DotProductKernelMap):
        if not self.linear_baseline:
            return kernel
        return SumMap((self._species_blocks(), kernel))

    def adopt_sparse_points(self, source: SparseGPPotential) -> SparseGPPotential:
        """Take ``source``'s fitted sparse environments as this model's (unfitted) kernel
        map, their rows moved to this descriptor's columns by feature name: a model on a
        larger ACE basis that holds every column ``source``'s kernel reads (same species,
        ``zeta``) then has the same kernel features without a new selection. Sets
        ``fmap_`` (with the linear baseline's blocks when it has one); returns self.

        Raises
        ------
        ConfigError
            A column the kernel reads that this descriptor lacks, or another species list.
        """
        theirs = source._kernel()
        if list(source.species) != list(self.species) or theirs.zeta != int(self.zeta):
            raise ConfigError("sparse points are shared only between models of the same "
                              "species and zeta")
        own_names = self.descriptor.feature_names()
        mine = {name: k for k, name in enumerate(own_names)}
        names = source.descriptor.feature_names()
        columns = self._kernel_columns(self.kernel_columns)
        for s in range(len(self.species)):  # each species' kernel reads the same functions
            read = {names[k] for k in (range(len(names)) if theirs.columns is None
                                       or theirs.columns[s] is None else theirs.columns[s])}
            own = {own_names[k] for k in (range(len(own_names)) if columns is None
                                          or columns[s] is None else columns[s])}
            if read != own:
                raise ConfigError(f"the kernels read different columns: {len(read ^ own)} "
                                  f"function(s) differ, e.g. {sorted(read ^ own)[0]}")
        keep = [k for k, name in enumerate(names) if name in mine]
        sparse = np.zeros((len(theirs.sparse), self.descriptor.n_features))
        sparse[:, [mine[names[k]] for k in keep]] = theirs.sparse[:, keep]
        kernel = DotProductKernelMap(sparse, theirs.sparse_species.copy(), int(self.zeta),
                                     columns=columns)
        self.fmap_ = self._with_baseline(kernel)
        return self

    def _kernel(self) -> DotProductKernelMap:
        return self.fmap_.parts[-1] if isinstance(self.fmap_, SumMap) else self.fmap_

    def _make_kernel_map(self, train: Sequence[Frame]) -> DotProductKernelMap:
        columns = self._kernel_columns(self.kernel_columns)
        pool = list(train)
        if self.sparse_frames is not None and self.sparse_frames < len(pool):
            pool = [pool[k] for k in evenly_spaced(len(pool), self.sparse_frames)]
        res = self.descriptor.compute(pool, gradients=False)
        sidx = self._species_index(pool)
        mask = _column_mask(columns, res.features.shape[1])
        X = res.features if mask is None else res.features * mask[sidx]
        chosen, chosen_species = [], []
        for s in range(len(self.species)):
            rows = np.flatnonzero(sidx == s)
            pick = rows[select_sparse_points(X[rows], int(self.n_sparse), self.selection, self.seed)]
            chosen.append(X[pick])
            chosen_species.append(np.full(len(pick), s))
        sparse, _ = _normalise(np.concatenate(chosen))
        return DotProductKernelMap(sparse, np.concatenate(chosen_species), int(self.zeta), columns=columns)

    def _kernel_columns(self, kind) -> tuple[np.ndarray | None, ...] | None:
        if isinstance(kind, str):
            if kind not in ("species", "all"):
                raise ConfigError(f"kernel_columns must be 'species', 'all' or a degree bound, got {kind!r}")
            return self._species_blocks().columns if kind == "species" else None
        if not hasattr(self.descriptor, "degree_subset"):
            raise ConfigError(f"kernel_columns as a degree bound needs a descriptor with a degree "
                              f"truncation (ACE); {type(self.descriptor).__name__} has none")
        sub = self.descriptor.degree_subset(kind)
        # within each species' block: the kernel never reads a column its species lacks
        return tuple(sub if b is None else np.intersect1d(b, sub) for b in self._species_blocks().columns)

    def _prior(self, phi_sq_mean: np.ndarray, smoothness: float | None = None
               ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        K = self._kernel().kernel_matrix()
        if not self.linear_baseline:
            return K
        n_lin = self.fmap_.parts[0].n_features
        # blockdiag(diag(linear), K_mm) as its two blocks: no (p, p) matrix
        return super()._prior(phi_sq_mean[:n_lin], smoothness), K

    def _feature_map_state(self):
        k = self._kernel()
        return {"kernel_columns": self.kernel_columns}, {"sparse": k.sparse, "sparse_species": k.sparse_species}

    def _restore_feature_map(self, params, arrays):
        """The kernel map of a model file, its sparse points checked against the descriptor
        (a DataError names the entry; :func:`ml4m.load` adds the file)."""
        # files written before kernel_columns existed had kernels on all columns
        self.kernel_columns = params.get("kernel_columns", "all")
        columns = self._kernel_columns(self.kernel_columns)
        for name in ("sparse", "sparse_species"):
            if name not in arrays:
                raise DataError(f"array 'fmap_{name}' is missing")
        sparse = check_array("array 'fmap_sparse'", arrays["sparse"],
                             shape=(None, self.descriptor.n_features), kinds="f")
        species = check_array("array 'fmap_sparse_species'", arrays["sparse_species"],
                              shape=(len(sparse),), kinds="iu")
        if species.size and (species.min() < 0 or species.max() >= len(self.species)):
            raise DataError(f"array 'fmap_sparse_species' must index the model's "
                            f"{len(self.species)} species, got values in "
                            f"[{species.min()}, {species.max()}]")
        zeta = check_int("params.hyper.zeta", self.zeta, low=1, high=64, error=DataError)
        check_bool("params.hyper.linear_baseline", self.linear_baseline, error=DataError)
        kernel = DotProductKernelMap(sparse, species, zeta, columns=columns)
        return self._with_baseline(kernel)

"""ACE: the atomic cluster expansion basis (one-particle basis A, invariant products B).

One-particle basis, per neighbour species ``a``::

    A_{i, a n l m} = sum_{j in a} f_c(r_ij) R_n(r_ij) Y_lm(r_ij_hat)

with the orthonormal polynomial radial basis ``R_n`` of :mod:`ml4m.descriptors.radial`
(``n = 0 .. n_max - 1``), the smooth cutoff ``f_c`` and ml4m's real spherical harmonics;
``R_n`` may depend on the element pair of ``i`` and ``j`` (``pair_r_in``, ``pair_r0``).
A one-particle function is ``alpha = (l, k)`` with channel ``k = a * n_max + n``.

Rotation-invariant product basis B, correlation order ``nu = 1 .. correlation_order``
(at most 4), coupled with real Clebsch-Gordan tensors ``C`` (:mod:`ml4m.descriptors.coupling`)::

    nu = 1:  B = A_{k, 00}
    nu = 2:  B = sum_m A_{k1, l m} A_{k2, l m}
    nu = 3:  B = sum_M T^{l3}_M(alpha1, alpha2) A_{k3, l3 M},
             T^L_M(alpha1, alpha2) = sum_{m1 m2} C^{l1 l2 L}_{m1 m2 M} A_{k1 l1 m1} A_{k2 l2 m2}
    nu = 4:  B = sum_M T^L_M(alpha1, alpha2) T^L_M(alpha3, alpha4),  for every valid L

Truncation (documented, "total degree"): with ``deg(alpha) = n + 1 + l``, keep the
tuples ``alpha1 <= alpha2 <= ... `` (sorted by ``(l, k)``) with
``sum deg(alpha_t) <= total_degree``, ``l_t <= l_max``, ``sum l_t`` even (invariance under
inversion too) and the triangle conditions; couplings that vanish identically
(``alpha1 = alpha2`` with ``l1 + l2 + L`` odd) are skipped. For repeated channels a
few functions may be linearly dependent (harmless for regularised linear fits).
Feature order: by correlation order, then in the enumeration order above (see
:meth:`ACE.feature_names`).

A linear ACE potential ``E_i = c . B_i`` needs dB/dr and dB/d(strain): both are
analytic (``compute(..., gradients=True)``).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from ml4m.data.neighbors import NeighborList
from ml4m.descriptors.ace_contraction import ProductBasis
from ml4m.descriptors.base import Descriptor, padded_layout
from ml4m.descriptors.radial import HermiteTable, ace_radial_table, stack_tables
from ml4m.descriptors.soap import density_coefficients
from ml4m.descriptors.spherical_harmonics import (
    real_spherical_harmonics,
    spherical_harmonics_vjp,
)
from ml4m.errors import ConfigError

__all__ = ["ACE"]

_CHUNK = 4096  # pairs per block in the per-feature gradient path
_VJP_CHUNK = 16384  # pairs per block in the adjoint (VJP) path
_KEEP_PAIRS = 131072  # pairs whose basis values are kept between A and the VJP


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(s, min(n, s + size)) for s in range(0, n, size)]


@dataclasses.dataclass(frozen=True)
class _Block:
    """Consecutive groups ``groups`` (a slice) whose pairs (sorted by group) are the
    slice ``pairs``; ``slot`` is each pair's row in the padded ``(groups, width)``
    layout."""

    groups: slice
    pairs: slice
    slot: np.ndarray
    width: int

    def pad(self, values: np.ndarray) -> np.ndarray:
        """Per-pair rows ``(p, k)`` as ``(n_groups, width, k)``, zero where no pair."""
        out = np.zeros(((self.groups.stop - self.groups.start) * self.width,) + values.shape[1:])
        out[self.slot] = values
        return out.reshape((-1, self.width) + values.shape[1:])

    def unpad(self, padded: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`pad`: the rows of the real pairs, ``(p, k)``."""
        return padded.reshape((-1,) + padded.shape[2:])[self.slot]


class _PairBlocks:
    """Pairs sorted by group (e.g. centre and neighbour species), cut into blocks of
    whole groups of at most about ``block_pairs`` pairs each (one group at least).

    ``order`` sorts the pairs; :meth:`restore` puts per-pair results back in the
    neighbour list's order.
    """

    def __init__(self, group: np.ndarray, n_groups: int, block_pairs: int):
        self.order, group, rank, _ = padded_layout(group, n_groups)
        counts = np.bincount(group, minlength=n_groups)
        first = np.concatenate([[0], np.cumsum(counts)])
        self.blocks: list[_Block] = []
        g0 = 0
        while g0 < n_groups:
            g1 = int(np.searchsorted(first, first[g0] + block_pairs, side="right")) - 1
            g1 = min(max(g1, g0 + 1), n_groups)
            width = max(int(counts[g0:g1].max()), 1)
            pairs = slice(int(first[g0]), int(first[g1]))
            slot = (group[pairs] - g0) * width + rank[pairs]
            self.blocks.append(_Block(slice(g0, g1), pairs, slot, width))
            g0 = g1

    def __iter__(self):
        return iter(self.blocks)

    def restore(self, values: np.ndarray) -> np.ndarray:
        """Per-pair ``values`` in sorted order, back in the original pair order."""
        out = np.empty_like(values)
        out[self.order] = values
        return out


class ACE(Descriptor):
    """The ACE product basis B (see the module docstring).

    Parameters
    ----------
    species : iterable of str or int
        Elements (symbols or atomic numbers).
    r_cut : float, default=5.0
        Cutoff radius, Angstrom.
    n_max : int, default=4
        Radial functions per species (1..24); with a ``total_degree`` list only the
        pair terms (``nu = 1``) usually reach the top ones.
    l_max : int, default=3
        Largest angular momentum (0..6).
    correlation_order : int, default=3
        Largest body order minus one, ``nu`` (1..4).
    total_degree : int or sequence of int, default=8
        Truncation ``sum (n + 1 + l) <= total_degree`` (1..30); a sequence gives one
        bound per correlation order (``nu = 1, 2, ...``), e.g. ``[14, 10, 7]`` for fine
        radial resolution of the pair terms and a coarser many-body part.
    cutoff_width : float, default=1.0
        Width of the smooth cutoff transition, Angstrom (at most ``r_cut``).
    r0 : float, optional
        Distance transform of the radial basis, Angstrom (``None``: polynomials in
        ``r``). With ``r0`` the polynomials are taken in ``(r0 / (r0 + r))**2``, which
        resolves short distances (bonds) finely and the far tail coarsely; see
        :func:`~ml4m.descriptors.radial.ace_radial_table`.
    r_in : float, default=0.0
        Inner radius, Angstrom: the radial polynomials span ``[r_in, r_cut]`` and are
        constant below it (no force there). Set it a little below the shortest distance
        in the data (molecules: about 0.8 A): otherwise much of the radial resolution
        goes to distances no pair samples, and a fit extrapolates wildly into them. On
        the 3BPA molecule (fit on four conformers, force error on a fifth) ``r_in = 0.8,
        r0 = 1`` cut the force MAE from 96 to 60 meV/A at the same basis.
    pair_r_in, pair_r0 : dict, optional
        ``r_in`` and ``r0`` for some element pairs, e.g. ``{"C-C": 1.1, "C-H": 0.9}``
        (unordered: ``"H-C"`` is the same pair); other pairs keep ``r_in`` and ``r0``. Each
        pair then has its own radial functions, spanning the distances that pair
        samples: a molecule's C-C bonds start near 1.3 A, its C-H ones near 1.0 A
        (:func:`ml4m.data.shortest_distances` gives each pair's shortest distance in a
        training set). On the 3BPA molecule (fit on four conformers, force MAE on a fifth)
        every pair's ``r_in`` 0.25 A below its shortest distance, instead of 0.8 A for all,
        cut the force MAE from 44.7 to 42.3 meV/A at the same basis (0.15 A below: 42.5;
        0.08 A: 43.1).
    agnostic_from : int, default=0
        Correlation order from which the factors are channels of the element-agnostic
        density (all neighbours summed, whatever their species; named ``X``) instead of
        one channel per neighbour species: the high-order functions then number
        ``1 / n_species**nu`` as many at the same degree, so their degree can rise. ``0``:
        every order is element-resolved.
    average : bool, default=False
        One row per frame: the mean of the per-atom vectors.
    """

    name = "ace"

    def __init__(
        self, species: Iterable[str | int], r_cut: float = 5.0, n_max: int = 4, l_max: int = 3,
        correlation_order: int = 3, total_degree: int | Sequence[int] = 8,
        cutoff_width: float = 1.0, r0: float | None = None, r_in: float = 0.0,
        agnostic_from: int = 0, average: bool = False,
        pair_r_in: dict[str, float] | None = None, pair_r0: dict[str, float] | None = None,
    ) -> None:
        super().__init__(species, r_cut, average)
        self.n_max = self._check_int("n_max", n_max, 1, 24)
        self.l_max = self._check_int("l_max", l_max, 0, 6)
        self.correlation_order = self._check_int("correlation_order", correlation_order, 1, 4)
        degs = self._degree_bounds(total_degree)
        self.total_degree: int | list[int] = (degs if isinstance(total_degree, (list, tuple, np.ndarray))
                                              else degs[0])
        self.cutoff_width = min(self._check_positive("cutoff_width", cutoff_width), self.r_cut)
        self.r0 = None if r0 is None else self._check_positive("r0", r0)
        self.r_in = float(r_in)
        self.agnostic_from = self._check_int("agnostic_from", agnostic_from, 0, 4)
        if not 0.0 <= self.r_in < self.r_cut - self.cutoff_width:
            raise ConfigError(f"r_in must lie in [0, r_cut - cutoff_width), got {r_in!r}")
        self.pair_r_in = self._pair_settings("pair_r_in", pair_r_in)
        self.pair_r0 = self._pair_settings("pair_r0", pair_r0)
        for key, v in self.pair_r_in.items():
            if not 0.0 <= v < self.r_cut - self.cutoff_width:
                raise ConfigError(f"pair_r_in[{key!r}] must lie in [0, r_cut - cutoff_width), got {v!r}")
        self._pair_type, self._pair_radii = self._pair_types()
        self._table: HermiteTable | None = None
        self._radial: HermiteTable | None = None
        self._product_basis: ProductBasis | None = None
        self._entry_cache: dict[bytes | None, list] = {}
        self._basis = self._enumerate()

    def settings(self) -> dict[str, Any]:
        """Hyperparameters as a JSON-serialisable dict."""
        out = super().settings()
        out.update(n_max=self.n_max, l_max=self.l_max, correlation_order=self.correlation_order,
                   total_degree=self.total_degree, cutoff_width=self.cutoff_width, r0=self.r0,
                   r_in=self.r_in, agnostic_from=self.agnostic_from)
        if self.pair_r_in:
            out["pair_r_in"] = dict(self.pair_r_in)
        if self.pair_r0:
            out["pair_r0"] = dict(self.pair_r0)
        return out

    # ---- per-pair radial transforms -------------------------------------------------
    def _pair_settings(self, name: str, value: dict[str, float] | None) -> dict[str, float]:
        """``{"A-B": x}`` checked, with keys in a canonical order (species order)."""
        if not value:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must map element pairs such as 'C-H' to distances, got {value!r}")
        sym = self.species_symbols
        out: dict[str, float] = {}
        for key, v in value.items():
            parts = str(key).split("-")
            if len(parts) != 2 or any(p not in sym for p in parts):
                raise ConfigError(f"{name}: {key!r} is not a pair 'A-B' of the species {sym}")
            a, b = sorted(parts, key=sym.index)
            canon = f"{a}-{b}"
            if canon in out:
                raise ConfigError(f"{name}: the pair {canon} is given twice")
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{name}[{key!r}] must be a distance in Angstrom, got {v!r}")
            out[canon] = self._check_positive(f"{name}[{key!r}]", v) if name == "pair_r0" else float(v)
        return out

    def _pair_types(self) -> tuple[np.ndarray, list[tuple[float | None, float]]]:
        """Radial table index of every (centre, neighbour) species pair, (S, S), and the
        ``(r0, r_in)`` of each table; one table when no pair has its own settings."""
        S, sym = self.n_species, self.species_symbols
        radii: list[tuple[float | None, float]] = []
        kind = np.zeros((S, S), dtype=np.int64)
        for a in range(S):
            for b in range(a, S):
                key = f"{sym[a]}-{sym[b]}"
                r = (self.pair_r0.get(key, self.r0), self.pair_r_in.get(key, self.r_in))
                if r not in radii:
                    radii.append(r)
                kind[a, b] = kind[b, a] = radii.index(r)
        return kind, radii

    def _table_coordinates(self, species_index: np.ndarray, nl: NeighborList) -> np.ndarray:
        """Where each pair reads the radial tables: its distance, shifted to its pair's
        segment of the stacked table (the distance itself with one table)."""
        if not self._segment:
            return nl.distances
        t = self._pair_type[species_index[nl.i], species_index[nl.j]]
        return nl.distances + self._segment * t

    # ---- basis enumeration --------------------------------------------------------
    def _enumerate(self) -> list[tuple[tuple[tuple[int, int], ...], int]]:
        """Basis functions as ``(alphas, L)``; ``L`` is the coupling (-1 if unused)."""
        K, n = self.n_species * self.n_max, self.n_max
        degree = self._degree_bounds(self.total_degree)
        out: list[tuple[tuple[tuple[int, int], ...], int]] = []
        for nu in range(1, self.correlation_order + 1):
            # one-particle functions that fit this order's bound, in (l, k) order
            channels = (range(K, K + n) if self.agnostic_from and nu >= self.agnostic_from
                        else range(K))
            alphas = sorted((l, k) for l in range(self.l_max + 1) for k in channels
                            if self._deg((l, k)) <= degree[nu - 1])
            for combo in itertools.combinations_with_replacement(alphas, nu):
                if sum(self._deg(a) for a in combo) > degree[nu - 1]:
                    continue
                ls = [a[0] for a in combo]
                if sum(ls) % 2:
                    continue
                if nu == 1:
                    if ls[0] == 0:
                        out.append((combo, -1))
                elif nu == 2:
                    if ls[0] == ls[1]:
                        out.append((combo, -1))
                elif nu == 3:
                    l1, l2, l3 = ls
                    if abs(l1 - l2) <= l3 <= l1 + l2 and not (combo[0] == combo[1] and l3 % 2):
                        out.append((combo, l3))
                else:
                    l1, l2, l3, l4 = ls
                    for L in range(max(abs(l1 - l2), abs(l3 - l4)), min(l1 + l2, l3 + l4) + 1):
                        if combo[0] == combo[1] and L % 2:
                            continue
                        if combo[2] == combo[3] and L % 2:
                            continue
                        out.append((combo, L))
        return out

    def feature_degrees(self) -> np.ndarray:
        """Polynomial degree ``sum_t (n_t + l_t)`` of every basis function, in column order.

        The measure of roughness a smoothness prior penalises (higher degree: more
        oscillation in distance or angle); constant functions of the radial index
        ``n = 0`` and ``l = 0`` have degree 0.
        """
        return np.array([sum(self._deg(a) - 1 for a in combo) for combo, _ in self._basis], dtype=float)

    def degree_subset(self, total_degree: int | Sequence[int]) -> np.ndarray:
        """Columns of the basis functions inside a smaller truncation.

        Parameters
        ----------
        total_degree : int or sequence of int
            A bound ``sum (n + 1 + l) <= total_degree`` (one per correlation order, as
            the ``total_degree`` parameter) no larger than this basis's own.

        Returns
        -------
        ndarray of int
            Column indices, in column order: the basis that the same ``ACE`` with this
            ``total_degree`` would enumerate (e.g. a smaller basis for centre species
            with few environments; see ``species_degree`` of
            :class:`~ml4m.models.linear.LinearPotential`).
        """
        own, bound = self._degree_bounds(self.total_degree), self._degree_bounds(total_degree)
        if any(b > o for b, o in zip(bound, own)):
            raise ConfigError(f"degree bound {bound} exceeds the basis's total_degree {own}")
        return np.array([f for f, (combo, _) in enumerate(self._basis)
                         if sum(self._deg(a) for a in combo) <= bound[len(combo) - 1]], dtype=np.int64)

    def _degree_bounds(self, total_degree: int | Sequence[int]) -> list[int]:
        """A ``total_degree`` (one bound, or one per correlation order) as one bound per
        order, checked."""
        if isinstance(total_degree, (list, tuple, np.ndarray)):
            degs = [self._check_int("total_degree", t, 1, 30) for t in total_degree]
            if len(degs) != self.correlation_order:
                raise ConfigError(f"total_degree as a list needs one entry per correlation order "
                                  f"({self.correlation_order}), got {len(degs)}")
            return degs
        return [self._check_int("total_degree", total_degree, 1, 30)] * self.correlation_order

    def _deg(self, alpha: tuple[int, int]) -> int:
        l, k = alpha
        return k % self.n_max + 1 + l

    @property
    def n_features(self) -> int:
        """Number of basis functions B after truncation."""
        return len(self._basis)

    @property
    def n_channels(self) -> int:
        """Channels of A: ``n_max`` per species, plus ``n_max`` element-agnostic ones
        when ``agnostic_from`` is set."""
        return (self.n_species + (1 if self.agnostic_from else 0)) * self.n_max

    def _with_agnostic(self, A: np.ndarray) -> np.ndarray:
        """A (rows, S n, LM) with the element-agnostic block (sum over species) appended."""
        if not self.agnostic_from:
            return A
        N, _, LM = A.shape
        return np.concatenate([A, A.reshape(N, self.n_species, self.n_max, LM).sum(axis=1)], axis=1)

    def feature_names(self) -> list[str]:
        """Names such as ``"B3[Cu0l1,Cu1l1,Cu0l2]"`` or ``"B4[...](L=2)"`` in column order."""
        sym = self.species_symbols + ["X"]
        out = []
        for combo, L in self._basis:
            parts = ",".join(f"{sym[k // self.n_max]}{k % self.n_max}l{l}" for l, k in combo)
            out.append(f"B{len(combo)}[{parts}]" + (f"(L={L})" if len(combo) == 4 else ""))
        return out

    @property
    def table(self) -> HermiteTable:
        """Tabulated ``f_c R_n`` (repeated for every ``l``; built on first use)."""
        if self._table is None:
            t = self.radial
            L = self.l_max + 1
            self._table = HermiteTable(t.step, np.repeat(t.values, L, axis=1),
                                       np.repeat(t.derivatives, L, axis=1))
        return self._table

    @property
    def radial(self) -> HermiteTable:
        """Tabulated ``f_c R_n``, one column per ``n`` (built on first use); with per-pair
        settings, one segment of length ``_segment`` per pair table, stacked (read at
        :meth:`_table_coordinates`)."""
        if self._radial is None:
            tables = [ace_radial_table(self.n_max, self.r_cut, self.cutoff_width, r0, r_in)
                      for r0, r_in in self._pair_radii]
            self._radial = tables[0] if len(tables) == 1 else stack_tables(tables)
        return self._radial

    @property
    def _segment(self) -> float:
        """Length of one pair's table in the stacked radial table, Angstrom (0: one table)."""
        k = len(self._pair_radii)
        return 0.0 if k == 1 else self.radial.step * (len(self.radial.values) // k)

    # ---- evaluation ---------------------------------------------------------------
    def _group_basis(self) -> list[tuple[int, tuple[int, ...], int, np.ndarray, np.ndarray]]:
        """Basis functions grouped by ``(nu, (l_1..l_nu), L)``: columns and channels
        (used by the torch back end to evaluate a group at once)."""
        groups: dict[tuple, tuple[list[int], list[list[int]]]] = {}
        for f, (combo, L) in enumerate(self._basis):
            key = (len(combo), tuple(l for l, _ in combo), L)
            cols, ks = groups.setdefault(key, ([], []))
            cols.append(f)
            ks.append([k for _, k in combo])
        return [(nu, ls, L, np.array(cols), np.array(ks))
                for (nu, ls, L), (cols, ks) in groups.items()]

    @property
    def product_basis(self) -> ProductBasis:
        """The vectorised contraction A -> B of this basis (built on first use)."""
        if self._product_basis is None:
            self._product_basis = ProductBasis(self._basis, self.n_channels)
        return self._product_basis

    def _pair_basis_gradients(self, nl: NeighborList, x: np.ndarray, sl: slice):
        """``d phi_{n l m}(r_ij) / d r_ij`` for the pairs ``sl``, shape (p, 3, n_max, LM)
        (``x``: the pairs' :meth:`_table_coordinates`)."""
        n, L = self.n_max, self.l_max + 1
        p = sl.stop - sl.start
        lidx = np.repeat(np.arange(L), 2 * np.arange(L) + 1)
        vec, r = nl.vectors[sl], nl.distances[sl]
        R, dR = self.table(x[sl])
        R = R.reshape(p, n, L)[:, :, lidx]
        dR = dR.reshape(p, n, L)[:, :, lidx]
        Y, dY = real_spherical_harmonics(vec, self.l_max, gradients=True)
        u = vec / r[:, None]
        return dR[:, None] * u[:, :, None, None] * Y[:, None, None, :] + R[:, None] * dY[:, :, None, :]

    def _frame_features_vjp(self, species_index, nl: NeighborList, weight_fn):
        """Features and the pair VJP of one frame (:meth:`_frame_vjp` through B)."""

        def contract(A):
            B, pairs = self.product_basis.products(A, return_pairs=True)
            return B, self.product_basis.adjoint(A, weight_fn(B), pairs)

        return self._frame_vjp(species_index, nl, contract)

    def _frame_energies_vjp(self, species_index, nl: NeighborList, species_weights):
        """``e_i = W_{s_i} . B_i`` and its pair VJP, by the product basis' bilinear forms
        per centre species (:meth:`ProductBasis.energy_and_adjoint`): B never exists."""

        def contract(A):
            e, G = np.zeros(len(A)), np.empty_like(A)
            for s in np.unique(species_index):
                rows = np.flatnonzero(species_index == s)
                e[rows], G[rows] = self.product_basis.energy_and_adjoint(A[rows],
                                                                         species_weights[s])
            return e, G

        return self._frame_vjp(species_index, nl, contract)

    def _frame_vjp(self, species_index, nl: NeighborList, contract):
        """Rows of one frame and their pair VJP from one evaluation of A:
        ``rows, dA = contract(A)`` with ``dA`` the cotangent of A.

        Pairs are grouped by (centre, neighbour species) and padded to the largest
        group of a block of centres, so that both the density ``A = R^T Y`` of each
        group and the per-pair contraction ``R G`` of the VJP are small batched matrix
        products; the per-pair outer product ``R Y`` never exists. The radial values
        and harmonics of up to ``_KEEP_PAIRS`` pairs are kept between the two passes
        (larger frames recompute them block by block).
        """
        n, S, LM = self.n_max, self.n_species, (self.l_max + 1) ** 2
        N = len(species_index)
        blocks = _PairBlocks(nl.i * S + species_index[nl.j], N * S, _VJP_CHUNK)
        x = self._table_coordinates(species_index, nl)[blocks.order]
        vectors, distances = nl.vectors[blocks.order], nl.distances[blocks.order]
        A = np.zeros((N * S, n, LM))
        keep = [] if len(x) <= _KEEP_PAIRS else None
        for b in blocks:
            R, dR = self.radial(x[b.pairs])
            Y, _ = real_spherical_harmonics(vectors[b.pairs], self.l_max)
            Rp = b.pad(R)  # padded once, for A here and for R G in the VJP
            A[b.groups] = np.matmul(Rp.transpose(0, 2, 1), b.pad(Y))
            if keep is not None:
                keep.append((Rp, dR, Y))
        A = self._with_agnostic(A.reshape(N, S * n, LM))
        rows, G = contract(A)
        G = G.reshape(N, -1, n, LM)
        if self.agnostic_from:  # a neighbour feeds its species' channels and the agnostic ones
            G = G[:, :S] + G[:, S:]
        G = G.reshape(N * S, n, LM)
        out = np.empty((len(x), 3))
        for c, b in enumerate(blocks):
            vec = vectors[b.pairs]
            if keep is not None:
                Rp, dR, Y = keep[c]
            else:
                R, dR = self.radial(x[b.pairs])
                Rp, (Y, _) = b.pad(R), real_spherical_harmonics(vec, self.l_max)
            Gb = G[b.groups]
            # d E / d r_ij = (dR G Y) r_ij / r + R G dY: contract the radial index per
            # group first, then the harmonics' own VJP (d phi and d Y never exist)
            H1 = b.unpad(np.matmul(b.pad(dR), Gb))
            H2 = b.unpad(np.matmul(Rp, Gb))
            out[b.pairs] = (np.einsum("pm,pm->p", H1, Y) / distances[b.pairs])[:, None] * vec \
                + spherical_harmonics_vjp(vec, self.l_max, H2)
        return rows, blocks.restore(out)

    def _entry_patterns(self, columns=None) -> list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
        """Per centre species: :meth:`_column_patterns` of its ``columns`` (all when
        ``columns`` or its entry is ``None``), cached per column set."""
        S = self.n_species
        cols = [None] * S if columns is None else list(columns)
        if len(cols) != S:
            raise ValueError(f"gradient_columns: one entry per species ({S}), got {len(cols)}")
        cols = [None if c is None else np.asarray(c, dtype=np.int64) for c in cols]
        keys = [None if c is None else c.tobytes() for c in cols]
        for key, c in zip(keys, cols):
            if key not in self._entry_cache:
                self._entry_cache[key] = self._column_patterns(c)
        return [self._entry_cache[key] for key in keys]

    def _column_patterns(self, columns: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per neighbour species: the Jacobian entries of the features ``columns`` (all
        when ``None``) on that species' channels and the agnostic ones, as the pattern of
        a CSR matrix ``M^T`` of shape (features, n_max * LM): entry indices into the rows
        of :meth:`ProductBasis.jacobian_entries` in CSR order, row pointers, and the
        column (radial ``n`` and ``lm`` slot) of each. Entries that share a (feature,
        slot) add, as in the basis."""
        f, k, lm = self.product_basis.entries
        S, F, n, LM = self.n_species, self.n_features, self.n_max, (self.l_max + 1) ** 2
        slot, sk = (k % n) * LM + lm, k // n
        keep = np.ones(F, dtype=bool)
        if columns is not None:
            keep = np.zeros(F, dtype=bool)
            keep[columns] = True
        out = []
        for s in range(S):
            idx = np.flatnonzero(((sk == s) | (sk == S)) & keep[f])
            idx = idx[np.lexsort((slot[idx], f[idx]))]
            out.append((idx, np.searchsorted(f[idx], np.arange(F + 1)), slot[idx]))
        return out

    def _frame_features(self, species_index, nl: NeighborList, gradients, gradient_columns=None):
        n, S = self.n_max, self.n_species
        x = self._table_coordinates(species_index, nl)
        A = self._with_agnostic(density_coefficients(self.table, n, self.l_max, species_index, S,
                                                     dataclasses.replace(nl, distances=x)))
        B, pairs = self.product_basis.products(A, return_pairs=True)
        if not gradients:
            return B, None
        # per pair p = (i, j): g_p = sum_e dB_{f_e}/dA_i[k_e, lm_e] d phi_{n_e lm_e}(r_p) over
        # the Jacobian entries e on the channels of j's species (and the agnostic ones)
        Jc = self.product_basis.jacobian_entries(A, pairs)
        # one spare row per atom: the self entries go there (see _reduce_pair_gradients)
        g = np.empty((len(nl.i) + len(species_index), 3, self.n_features))
        self._contract_entries(Jc, species_index, nl, x, g, self._entry_patterns(gradient_columns))
        return B, g

    def _contract_entries(self, Jc, species_index, nl: NeighborList, x, g, patterns) -> None:
        """``g`` of every pair as ``d phi_p @ M_{i_p, s_p}``: one sparse (n * LM, features)
        matrix per centre and neighbour species, holding that centre's Jacobian entries
        (one pattern per centre and neighbour species, ``patterns`` from
        :meth:`_entry_patterns`); all pairs of one centre and neighbour species in one
        sparse product."""
        sj = species_index[nl.j]
        N, nLM, F = len(Jc), self.n_max * (self.l_max + 1) ** 2, g.shape[-1]
        bounds = np.searchsorted(nl.i, np.arange(N + 1))  # pairs are sorted by centre
        # one CSR matrix per (centre, neighbour) species pattern, its values swapped per
        # centre: scipy's constructor checks cost more than the product (3BPA: 19 of 62 ms
        # per frame). Local to this call: the row threads never share one
        templates: dict[tuple[int, int], sp.csr_matrix] = {}
        for sl in _chunks(len(nl.i), _CHUNK):
            dphi = self._pair_basis_gradients(nl, x, sl).reshape(sl.stop - sl.start, 3, nLM)
            for i in np.unique(nl.i[sl]):
                a, b = max(bounds[i], sl.start), min(bounds[i + 1], sl.stop)
                for s_ in np.unique(sj[a:b]):
                    sel = np.arange(a, b)[sj[a:b] == s_]
                    idx, indptr, slots = patterns[species_index[i]][s_]
                    MT = templates.get((species_index[i], s_))
                    if MT is None:
                        MT = templates[species_index[i], s_] = sp.csr_matrix(
                            (Jc[i, idx], slots, indptr), shape=(F, nLM))
                    else:
                        MT.data = Jc[i, idx]
                    D = dphi[sel - sl.start].reshape(-1, nLM).T  # (n LM, 3 q)
                    g[sel] = (MT @ D).T.reshape(len(sel), 3, F)

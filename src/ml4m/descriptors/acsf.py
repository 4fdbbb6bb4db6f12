"""Atom-centred symmetry functions (Behler-Parrinello), element resolved, with gradients.

With the cosine cutoff ``f_c(r) = (cos(pi r / r_cut) + 1) / 2`` and sums over the
neighbours ``j`` (radial) or unordered neighbour pairs ``{j, k}`` (angular; every
periodic image is a separate neighbour)::

    G1            = sum_j f_c(r_ij)
    G2(eta, R_s)  = sum_j exp(-eta (r_ij - R_s)**2) f_c(r_ij)
    G3(kappa)     = sum_j cos(kappa r_ij) f_c(r_ij)
    G4(eta, zeta, lambda) = 2**(1-zeta) sum_{j<k} (1 + lambda cos t_ijk)**zeta
                     exp(-eta (r_ij**2 + r_ik**2 + r_jk**2)) f_c(r_ij) f_c(r_ik) f_c(r_jk)
    G5(eta, zeta, lambda) = 2**(1-zeta) sum_{j<k} (1 + lambda cos t_ijk)**zeta
                     exp(-eta (r_ij**2 + r_ik**2)) f_c(r_ij) f_c(r_ik)
    ANI(eta, zeta, theta_s, R_s) = 2**(1-zeta) sum_{j<k} (1 + cos(t'_ijk - theta_s))**zeta
                     exp(-eta ((r_ij + r_ik)/2 - R_s)**2) f_c(r_ij) f_c(r_ik)

with ``t'_ijk = arccos(0.95 cos t_ijk)`` (TorchANI's guard that keeps the gradient
finite for collinear triplets). These are DScribe's definitions and parameter orders
(``eta`` in 1/Angstrom**2, ``kappa`` in 1/Angstrom, ``R_s`` in Angstrom, ``theta_s`` in
radians).

Feature order (DScribe's, ANI appended): for each neighbour species ``b`` (sorted by
atomic number) ``[G1, G2..., G3...]``; then for each species pair ``(b, c)`` in the
order ``(0,0), (1,0), (1,1), (2,0), (2,1), (2,2), ...`` ``[G4..., G5...]``; then for
each species pair in the same order ``[ANI...]``. The centre's species is not encoded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from ml4m.data.neighbors import NeighborList
from ml4m.descriptors.base import Descriptor, padded_layout
from ml4m.descriptors.cutoffs import cosine_cutoff
from ml4m.errors import ConfigError

__all__ = ["ACSF", "DEFAULT_G2", "DEFAULT_G4"]

#: factor on cos(theta) in the ANI angular functions (keeps sin(theta') differentiable)
ANI_GUARD = 0.95

#: used when no parameters at all are given: 8 radial and 6 angular (G4) functions
DEFAULT_G2 = [(eta, 0.0) for eta in (0.003, 0.01, 0.03, 0.06, 0.1, 0.2, 0.4, 1.0)]
DEFAULT_G4 = [(0.005, z, lam) for z in (1.0, 2.0, 4.0) for lam in (-1.0, 1.0)]


def _params(name: str, value: Any, width: int) -> np.ndarray:
    if value is None:
        return np.zeros((0, width))
    arr = np.asarray(value, dtype=np.float64)
    if width == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[1] != width or not np.all(np.isfinite(arr)):
        raise ConfigError(
            f"{name} must be a list of {width}-tuples of finite numbers, got {value!r}")
    return arr


class ACSF(Descriptor):
    """Behler-Parrinello symmetry functions (see the module docstring).

    Parameters
    ----------
    species : iterable of str or int
        Elements (symbols or atomic numbers).
    r_cut : float, default=6.0
        Cutoff radius, Angstrom.
    g2_params : sequence of (eta, R_s), optional
        ``eta`` in 1/Angstrom**2 (>= 0), ``R_s`` in Angstrom.
    g3_params : sequence of kappa, optional
        In 1/Angstrom.
    g4_params, g5_params : sequence of (eta, zeta, lambda), optional
        ``eta`` >= 0 in 1/Angstrom**2, ``zeta`` >= 1, ``lambda`` in {-1, 1}.
    ani_params : sequence of (eta, zeta, theta_s, R_s), optional
        Modified angular functions (ANI/PANNA); ``theta_s`` in radians, ``R_s`` in
        Angstrom.
    average : bool, default=False
        One row per frame: the mean of the per-atom vectors.

    Notes
    -----
    With none of the ``*_params`` given, :data:`DEFAULT_G2` and :data:`DEFAULT_G4` are
    used. G1 is always included (as in DScribe).
    """

    name = "acsf"

    def __init__(
        self, species: Iterable[str | int], r_cut: float = 6.0,
        g2_params: Sequence | None = None, g3_params: Sequence | None = None,
        g4_params: Sequence | None = None, g5_params: Sequence | None = None,
        ani_params: Sequence | None = None, average: bool = False,
    ) -> None:
        super().__init__(species, r_cut, average)
        if all(p is None for p in (g2_params, g3_params, g4_params, g5_params, ani_params)):
            g2_params, g4_params = DEFAULT_G2, DEFAULT_G4
        self.g2 = _params("g2_params", g2_params, 2)
        self.g3 = _params("g3_params", g3_params, 1)[:, 0]
        self.g4 = _params("g4_params", g4_params, 3)
        self.g5 = _params("g5_params", g5_params, 3)
        self.ani = _params("ani_params", ani_params, 4)
        for name, arr in (("g4_params", self.g4), ("g5_params", self.g5)):
            if len(arr) and (np.any(arr[:, 0] < 0) or np.any(arr[:, 1] < 1)
                             or not np.all(np.isin(arr[:, 2], (-1.0, 1.0)))):
                raise ConfigError(f"{name} need eta >= 0, zeta >= 1 and lambda = +-1, "
                                  f"got {arr.tolist()}")
        if len(self.g2) and np.any(self.g2[:, 0] < 0):
            raise ConfigError(f"g2_params need eta >= 0, got {self.g2.tolist()}")
        if len(self.ani) and (np.any(self.ani[:, 0] < 0) or np.any(self.ani[:, 1] < 1)):
            raise ConfigError(f"ani_params need eta >= 0 and zeta >= 1, got {self.ani.tolist()}")

    def settings(self) -> dict[str, Any]:
        """Hyperparameters as a JSON-serialisable dict."""
        out = super().settings()
        out.update(g2_params=self.g2.tolist(), g3_params=self.g3.tolist(),
                   g4_params=self.g4.tolist(), g5_params=self.g5.tolist(),
                   ani_params=self.ani.tolist())
        return out

    @property
    def _n_radial(self) -> int:
        return 1 + len(self.g2) + len(self.g3)

    @property
    def _n_pairs(self) -> int:
        return self.n_species * (self.n_species + 1) // 2

    @property
    def n_features(self) -> int:
        """``S (1 + n_g2 + n_g3) + S (S + 1) / 2 (n_g4 + n_g5 + n_ani)``."""
        return (self.n_species * self._n_radial
                + self._n_pairs * (len(self.g4) + len(self.g5) + len(self.ani)))

    def feature_names(self) -> list[str]:
        """Names such as ``"G2[Cu](eta=0.1,Rs=0)"`` in column order."""
        sym = self.species_symbols
        names = []
        for b in sym:
            names.append(f"G1[{b}]")
            names += [f"G2[{b}](eta={e:g},Rs={r:g})" for e, r in self.g2]
            names += [f"G3[{b}](kappa={k:g})" for k in self.g3]
        pairs = [(sym[c], sym[b]) for b in range(len(sym)) for c in range(b + 1)]
        for b, c in pairs:
            names += [f"G4[{b},{c}](eta={e:g},zeta={z:g},lambda={lam:g})"
                      for e, z, lam in self.g4]
            names += [f"G5[{b},{c}](eta={e:g},zeta={z:g},lambda={lam:g})"
                      for e, z, lam in self.g5]
        for b, c in pairs:
            names += [f"ANI[{b},{c}](eta={e:g},zeta={z:g},theta_s={t:g},Rs={r:g})"
                      for e, z, t, r in self.ani]
        return names

    # ---- radial -------------------------------------------------------------------
    def _radial(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fc, dfc = cosine_cutoff(r, self.r_cut)
        cols, dcols = [fc], [dfc]
        for eta, rs in self.g2:
            e = np.exp(-eta * (r - rs) ** 2)
            cols.append(e * fc)
            dcols.append(e * (dfc - 2.0 * eta * (r - rs) * fc))
        for k in self.g3:
            cols.append(np.cos(k * r) * fc)
            dcols.append(np.cos(k * r) * dfc - k * np.sin(k * r) * fc)
        return np.stack(cols, 1), np.stack(dcols, 1)

    # ---- angular ------------------------------------------------------------------
    def _angular_terms(self, dj, dk, fj, fk, dfj, dots, mask, gradients):
        """Angular functions of neighbour pairs ``(j, k)`` given as broadcastable arrays.

        ``dj, dk``: distances to j and k (Angstrom); ``fj, fk``: their cutoffs; ``dfj``:
        derivative of ``fj``; ``dots = r_ij . r_ik``; ``mask`` zeroes excluded pairs.
        Returns a list of ``(G, dG/dr_ij, dG/dr_jk or None, dG/dcos)`` with ``G`` as a
        factorisation ``(prefactor, X, Y)``, ``G = prefactor * X * Y`` (derivatives only
        with ``gradients``), ``cos`` and ``r_jk``.
        """
        cos = dots / (dj * dk)
        dj2, dk2 = dj * dj, dk * dk
        rjk2 = np.maximum(dj2 + dk2 - 2.0 * dots, 0.0)
        f2 = fj * fk * mask
        rjk = fjk = dfjk = f3 = None
        if len(self.g4):
            rjk = np.sqrt(rjk2)
            fjk, dfjk = cosine_cutoff(rjk, self.r_cut, derivative=gradients)
            f3 = f2 * fjk
        dfj_fk = dfj * fk * mask if gradients else None
        e_pair: dict[float, np.ndarray] = {}
        powers: dict[tuple[float, float], np.ndarray] = {}

        def epair(eta):  # exp(-eta (r_ij^2 + r_ik^2))
            if eta not in e_pair:
                e_pair[eta] = np.exp(-eta * (dj2 + dk2))
            return e_pair[eta]

        def power(lam, zeta):  # (1 + lam cos)^zeta, integer powers by multiplication
            key = (lam, zeta)
            if key not in powers:
                if zeta == 0:
                    powers[key] = np.ones_like(cos)
                elif zeta == 1:
                    powers[key] = 1.0 + lam * cos
                elif float(zeta).is_integer() and zeta <= 32:
                    half = power(lam, float(zeta // 2))
                    sq = half * half
                    if zeta % 2:
                        sq *= power(lam, 1.0)
                    powers[key] = sq
                else:
                    powers[key] = (1.0 + lam * cos) ** zeta
            return powers[key]

        terms = []
        ef: dict[tuple[str, float], tuple[np.ndarray, np.ndarray]] = {}
        for kind, params in (("g4", self.g4), ("g5", self.g5)):
            for eta, zeta, lam in params:
                if (kind, eta) not in ef:
                    E = epair(eta) * np.exp(-eta * rjk2) if kind == "g4" else epair(eta)
                    ef[kind, eta] = (E, E * (f3 if kind == "g4" else f2))
                E, EF = ef[kind, eta]
                pref = 2.0 ** (1.0 - zeta)
                G = (pref, power(lam, zeta), EF)  # G = pref * (1 + lam cos)^zeta * E F
                if not gradients:
                    terms.append((G, None, None, None))
                    continue
                F = f3 if kind == "g4" else f2
                AE = pref * power(lam, zeta) * E
                d_ij = AE * (-2.0 * eta * dj * F + (dfj_fk * fjk if kind == "g4" else dfj_fk))
                d_jk = AE * (-2.0 * eta * rjk * F + f2 * dfjk) if kind == "g4" else None
                d_c = pref * zeta * lam * power(lam, zeta - 1.0) * EF
                terms.append((G, d_ij, d_jk, d_c))
        if len(self.ani):
            cg = ANI_GUARD * cos
            sin = np.sqrt(1.0 - cg * cg)
            rho = 0.5 * (dj + dk)
            for eta, zeta, ts, rs in self.ani:
                base = 1.0 + cg * np.cos(ts) + sin * np.sin(ts)  # 1 + cos(t' - theta_s)
                A = 2.0 ** (1.0 - zeta) * base**zeta
                E = np.exp(-eta * (rho - rs) ** 2)
                G = (1.0, A, E * f2)
                if not gradients:
                    terms.append((G, None, None, None))
                    continue
                dcs = ANI_GUARD * (np.cos(ts) - cg / sin * np.sin(ts))  # d base / d cos t
                dA = 2.0 ** (1.0 - zeta) * zeta * base ** (zeta - 1.0) * dcs
                d_ij = A * (-eta * (rho - rs) * E * f2 + E * dfj_fk)
                terms.append((G, d_ij, None, dA * E * f2))
        return terms, cos, rjk

    def _angular_values(self, v, d, f, spad):
        """``M (C, n_pairs, n_t)``: sums over unordered neighbour pairs of a block of centres."""
        C, B = d.shape
        tj, tk = np.triu_indices(B, k=1)
        dots = np.matmul(v, v.transpose(0, 2, 1))[:, tj, tk]
        one = np.ones(1)
        terms, _, _ = self._angular_terms(d[:, tj], d[:, tk], f[:, tj], f[:, tk], None, dots,
                                          one, False)
        if self.n_species == 1:
            return np.stack([pref * np.einsum("ct,ct->c", x, y) for (pref, x, y), *_ in terms],
                            axis=-1)[:, None, :]
        sj, sk = spad[:, tj], spad[:, tk]
        hi = np.maximum(sj, sk)
        its = hi * (hi + 1) // 2 + np.minimum(sj, sk)
        out = np.empty((C, self._n_pairs, len(terms)))
        for k in range(self._n_pairs):
            w = (its == k).astype(float)
            for t, ((pref, x, y), *_) in enumerate(terms):
                out[:, k, t] = pref * np.einsum("ct,ct,ct->c", x, y, w)
        return out

    def _angular_gradients(self, v, d, f, df, m):
        """``dG (C, B, 3, S, n_t)``: derivative w.r.t. ``r_ij`` of the functions of
        species pair ``(s_j, c)`` (sum over ordered pairs ``k != j`` of species c)."""
        C, B = d.shape
        off = 1.0 - np.eye(B)
        dots = np.matmul(v, v.transpose(0, 2, 1))
        dj, dk = d[:, :, None], d[:, None, :]
        terms, cos, rjk = self._angular_terms(dj, dk, f[:, :, None], f[:, None, :],
                                              df[:, :, None], dots, off, True)
        ua = v / d[:, :, None]
        dcos_a = (ua[:, None, :, :] - cos[..., None] * ua[:, :, None, :]) / dj[..., None]
        if rjk is not None:
            uc = (v[:, None, :, :] - v[:, :, None, :]) / np.where(rjk > 0, rjk, 1.0)[..., None]
        dG = np.empty((C, B, 3, m.shape[2], len(terms)))
        for k, (_, d_ij, d_jk, d_c) in enumerate(terms):
            for x in range(3):
                gx = ua[:, :, None, x] * d_ij + dcos_a[..., x] * d_c
                if d_jk is not None:
                    gx = gx - uc[..., x] * d_jk
                dG[:, :, x, :, k] = np.matmul(gx, m)
        return dG

    def _angular(self, species_index, nl: NeighborList, fc, dfc, X, g):
        """Add the angular functions to ``X (N, F)`` and, if given, ``g (P, 3, F)``."""
        N, S = len(species_index), self.n_species
        order, rows, slot, B = padded_layout(nl.i, N)
        v = np.zeros((N, B, 3))
        v[:, :, 0] = self.r_cut  # padding: a neighbour at r_cut contributes nothing
        v[rows, slot] = nl.vectors[order]
        d = np.full((N, B), self.r_cut)
        d[rows, slot] = nl.distances[order]
        f = np.zeros((N, B))
        f[rows, slot] = fc[order]
        df = np.zeros((N, B))
        df[rows, slot] = dfc[order]
        spad = np.zeros((N, B), dtype=np.int64)
        spad[rows, slot] = species_index[nl.j[order]]
        m = np.zeros((N, B, S))
        m[rows, slot, spad[rows, slot]] = 1.0
        pidx = np.full((N, B), -1)
        pidx[rows, slot] = order
        n_ang, n_ani = len(self.g4) + len(self.g5), len(self.ani)
        base = S * self._n_radial
        cols = {}
        for b in range(S):
            for c in range(b + 1):
                k = b * (b + 1) // 2 + c
                cols[b, c] = cols[c, b] = np.concatenate([
                    base + k * n_ang + np.arange(n_ang),
                    base + self._n_pairs * n_ang + k * n_ani + np.arange(n_ani)])
        step = max(1, 30_000 // (B * B))
        for start in range(0, N, step):
            blk = slice(start, min(N, start + step))
            M = self._angular_values(v[blk], d[blk], f[blk], spad[blk])
            for b in range(S):
                for c in range(b + 1):
                    X[blk, cols[b, c]] += M[:, b * (b + 1) // 2 + c]
            if g is None:
                continue
            dG = self._angular_gradients(v[blk], d[blk], f[blk], df[blk], m[blk])
            pb = pidx[blk]
            for s_ in range(S):
                sel = (pb >= 0) & (spad[blk] == s_)
                pairs = pb[sel]
                for c in range(S):
                    g[pairs[:, None, None], np.arange(3)[None, :, None],
                      cols[s_, c][None, None, :]] += dG[sel][:, :, c, :]

    def _frame_features(self, species_index, nl: NeighborList, gradients, gradient_columns=None):
        N, S, F = len(species_index), self.n_species, self.n_features
        P = len(nl.i)
        sj = species_index[nl.j]
        nr = self._n_radial
        X = np.zeros((N, F))
        g = np.zeros((P, 3, F)) if gradients else None
        rad, drad = self._radial(nl.distances)
        for s_ in range(S):
            sel = np.nonzero(sj == s_)[0]
            cols = slice(s_ * nr, (s_ + 1) * nr)
            X[:, cols] = _segment_sum(nl.i[sel], rad[sel], N)
            if gradients:
                u = nl.vectors[sel] / nl.distances[sel, None]
                g[sel, :, cols] = u[:, :, None] * drad[sel, None, :]
        if len(self.g4) + len(self.g5) + len(self.ani) and P:
            self._angular(species_index, nl, rad[:, 0], drad[:, 0], X, g)
        return X, g


def _segment_sum(index: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """``out[k] = sum of values[index == k]`` for ``k < n`` (values 2-D)."""
    M = sp.csr_matrix((np.ones(len(index)), (index, np.arange(len(index)))),
                      shape=(n, len(index)))
    return np.asarray(M @ values) if len(index) else np.zeros((n, values.shape[1]))

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
from ml4m.descriptors.base import Descriptor
from ml4m.descriptors.cutoffs import cosine_cutoff
from ml4m.errors import ConfigError

__all__ = ["ACSF", "triplets"]

_ANI_GUARD = 0.95

#: used when no parameters at all are given: 8 radial and 6 angular (G4) functions
DEFAULT_G2 = [(eta, 0.0) for eta in (0.003, 0.01, 0.03, 0.06, 0.1, 0.2, 0.4, 1.0)]
DEFAULT_G4 = [(0.005, z, lam) for z in (1.0, 2.0, 4.0) for lam in (-1.0, 1.0)]


def triplets(i: np.ndarray, n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """All unordered pairs of neighbour entries ``(p, q), p < q`` sharing a centre.

    Parameters
    ----------
    i : ndarray of shape (n_pairs,), int
        Centre of each neighbour-list entry, sorted.
    n_atoms : int
        Number of atoms.

    Returns
    -------
    p, q : ndarray of shape (n_triplets,), int64
        Indices into the neighbour list.
    """
    P = len(i)
    cnt = np.bincount(i, minlength=n_atoms)
    start = np.cumsum(cnt) - cnt
    local = np.arange(P) - start[i]
    run = cnt[i] - local - 1
    first = np.repeat(np.arange(P), run)
    run_start = np.cumsum(run) - run
    second = first + 1 + (np.arange(len(first)) - np.repeat(run_start, run))
    return first, second


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
    def _angular(self, p, q, nl: NeighborList, fc, dfc, gradients: bool):
        """Angular values ``(T, n_ang)`` and gradients w.r.t. ``r_ij``, ``r_ik`` ``(T, 3, n_ang)``."""
        a, b = nl.vectors[p], nl.vectors[q]
        rij, rik = nl.distances[p], nl.distances[q]
        c = b - a
        rjk2 = np.einsum("tx,tx->t", c, c)
        rjk = np.sqrt(rjk2)
        cos = np.einsum("tx,tx->t", a, b) / (rij * rik)
        fij, fik = fc[p], fc[q]
        f2 = fij * fik
        fjk, dfjk = cosine_cutoff(rjk, self.r_cut) if len(self.g4) else (None, None)
        e_pair: dict[float, np.ndarray] = {}
        powers: dict[tuple[float, float], np.ndarray] = {}

        def epair(eta):  # exp(-eta (r_ij^2 + r_ik^2))
            if eta not in e_pair:
                e = np.exp(-eta * nl.distances**2)
                e_pair[eta] = e[p] * e[q]
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
                    powers[key] = half * half * (power(lam, 1.0) if zeta % 2 else 1.0)
                else:
                    powers[key] = (1.0 + lam * cos) ** zeta
            return powers[key]

        vals, d_rij, d_rik, d_rjk, d_cos = [], [], [], [], []
        for kind, params in (("g4", self.g4), ("g5", self.g5)):
            for eta, zeta, lam in params:
                pref = 2.0 ** (1.0 - zeta)
                A = pref * power(lam, zeta)
                E = epair(eta)
                F = f2
                if kind == "g4":
                    E = E * np.exp(-eta * rjk2)
                    F = f2 * fjk
                AEF = A * E * F
                vals.append(AEF)
                if not gradients:
                    continue
                fjk_ = fjk if kind == "g4" else 1.0
                d_rij.append(A * E * (-2 * eta * rij * F + dfc[p] * fik * fjk_))
                d_rik.append(A * E * (-2 * eta * rik * F + fij * dfc[q] * fjk_))
                d_rjk.append(A * E * (-2 * eta * rjk * F + f2 * dfjk) if kind == "g4"
                             else np.zeros_like(rij))
                d_cos.append(pref * zeta * lam * power(lam, zeta - 1.0) * E * F)
        if len(self.ani):
            cg = _ANI_GUARD * cos
            sin = np.sqrt(1.0 - cg * cg)
            rho = 0.5 * (rij + rik)
            for eta, zeta, ts, rs in self.ani:
                cshift = cg * np.cos(ts) + sin * np.sin(ts)  # cos(t' - theta_s)
                base = 1.0 + cshift
                A = 2.0 ** (1.0 - zeta) * base**zeta
                E = np.exp(-eta * (rho - rs) ** 2)
                vals.append(A * E * f2)
                if not gradients:
                    continue
                dcshift = _ANI_GUARD * (np.cos(ts) - cg / sin * np.sin(ts))  # d/d cos t
                dA = 2.0 ** (1.0 - zeta) * zeta * base ** (zeta - 1.0) * dcshift
                dE = -eta * (rho - rs) * E  # d/d r_ij = d/d r_ik
                d_rij.append(A * (dE * f2 + E * dfc[p] * fik))
                d_rik.append(A * (dE * f2 + E * fij * dfc[q]))
                d_rjk.append(np.zeros_like(rij))
                d_cos.append(dA * E * f2)
        V = np.stack(vals, 1)
        if not gradients:
            return V, None, None
        D_ij, D_ik, D_jk, D_c = (np.stack(x, 1) for x in (d_rij, d_rik, d_rjk, d_cos))
        ua, ub = a / rij[:, None], b / rik[:, None]
        safe = np.where(rjk > 0, rjk, 1.0)
        uc = c / safe[:, None]
        dcos_a = (ub - cos[:, None] * ua) / rij[:, None]
        dcos_b = (ua - cos[:, None] * ub) / rik[:, None]
        ga = (ua[:, :, None] * D_ij[:, None] - uc[:, :, None] * D_jk[:, None]
              + dcos_a[:, :, None] * D_c[:, None])
        gb = (ub[:, :, None] * D_ik[:, None] + uc[:, :, None] * D_jk[:, None]
              + dcos_b[:, :, None] * D_c[:, None])
        return V, ga, gb

    def _frame_features(self, species_index, nl: NeighborList, gradients):
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
        n_ang = len(self.g4) + len(self.g5)
        n_ani = len(self.ani)
        if n_ang + n_ani == 0 or P == 0:
            return X, g
        p, q = triplets(nl.i, N)
        if not (len(self.g5) or n_ani or gradients):
            # only G4: triplets with r_jk >= r_cut contribute nothing
            c = nl.vectors[q] - nl.vectors[p]
            keep = np.einsum("tx,tx->t", c, c) < self.r_cut**2
            p, q = p[keep], q[keep]
        V, ga, gb = self._angular(p, q, nl, rad[:, 0], drad[:, 0], gradients)
        hi = np.maximum(sj[p], sj[q])
        its = hi * (hi + 1) // 2 + np.minimum(sj[p], sj[q])
        base = S * nr
        for k in range(self._n_pairs):
            sel = np.nonzero(its == k)[0] if S > 1 else slice(None)
            cols = np.concatenate([base + k * n_ang + np.arange(n_ang),
                                   base + self._n_pairs * n_ang + k * n_ani + np.arange(n_ani)])
            X[:, cols] += _segment_sum(nl.i[p[sel]], V[sel], N)
            if gradients:
                for rows, gg in ((p, ga), (q, gb)):
                    g[:, :, cols] += _segment_sum(
                        rows[sel], gg[sel].reshape(-1, 3 * len(cols)), P
                    ).reshape(P, 3, len(cols))
        return X, g


def _segment_sum(index: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """``out[k] = sum of values[index == k]`` for ``k < n`` (values 2-D)."""
    M = sp.csr_matrix((np.ones(len(index)), (index, np.arange(len(index)))),
                      shape=(n, len(index)))
    return np.asarray(M @ values) if len(index) else np.zeros((n, values.shape[1]))

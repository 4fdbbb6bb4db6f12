"""SOAP: the smooth-overlap power spectrum, with analytic position and strain gradients.

The neighbour density of species ``a`` around atom ``i``,
``rho_a(r) = sum_{j in a} f_c(r_ij) exp(-|r - r_ij|**2 / (2 sigma**2))``, is expanded on
the orthonormal radial basis of :mod:`ml4m.descriptors.radial` times real spherical
harmonics (:mod:`ml4m.descriptors.spherical_harmonics`)::

    c_{a n l m}(i) = sum_{j in a} f_c(r_ij) I_nl(r_ij) Y_lm(r_ij_hat)

and the rotation-invariant power spectrum is ::

    p_{(a n) (b n') l}(i) = w sum_m c_{a n l m}(i) c_{b n' l m}(i),   (a, n) <= (b, n')

with ``w = sqrt(2)`` for ``(a, n) != (b, n')`` and 1 otherwise, so that the dot product
of two feature vectors equals that of the full (unsymmetrised) power spectra.
Feature order: ``k = a * n_max + n`` runs over species (sorted by atomic number) then
radial index; columns are ``l``-major: for ``l = 0 .. l_max``, the pairs ``(k1, k2)``
with ``k1 <= k2`` in row-major order.
The centre's own species is not encoded (as DScribe); ``normalize`` divides each vector
by its norm; ``average`` returns the mean over the atoms of each frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ml4m.data.neighbors import NeighborList
from ml4m.descriptors.base import Descriptor, padded_layout
from ml4m.descriptors.radial import HermiteTable, soap_radial_table
from ml4m.descriptors.spherical_harmonics import real_spherical_harmonics

__all__ = ["SOAP", "density_coefficients"]

_CHUNK = 256  # pairs per block in the gradient path (cache-sized work arrays)
_BLOCK = 2048  # neighbour slots per block in density_coefficients


def density_coefficients(
    table: HermiteTable, n_max: int, l_max: int, species_index: np.ndarray,
    n_species: int, nl: NeighborList,
) -> np.ndarray:
    """Density expansion coefficients ``c[i, a * n_max + n, l*l + l + m]``.

    Neighbours are laid out per (centre, species) in a zero-padded block (padding sits
    at ``r_cut``, where every radial function vanishes) and contracted with batched
    matrix products, one per ``l``.

    Parameters
    ----------
    table : HermiteTable
        Radial functions ordered ``n * (l_max + 1) + l`` (``n_max * (l_max+1)`` of them).
    n_max, l_max : int
        Basis sizes.
    species_index : ndarray of shape (n_atoms,), int
        Species channel of every atom.
    n_species : int
        Number of channels.
    nl : NeighborList
        Full neighbour list of the frame.

    Returns
    -------
    ndarray of shape (n_atoms, n_species * n_max, (l_max+1)**2)
    """
    N, S, L = len(species_index), n_species, l_max + 1
    G = N * S
    order, ks, slot, B = padded_layout(nl.i * S + species_index[nl.j], G)
    r_cut = table.step * (len(table.values) - 1)
    dpad = np.full((G, B), r_cut)
    dpad[ks, slot] = nl.distances[order]
    vpad = np.zeros((G, B, 3))
    vpad[ks, slot] = nl.vectors[order]
    vpad[:, :, 2] += dpad == r_cut  # any unit vector for the padding
    c = np.empty((G, n_max, L * L))
    step = max(1, _BLOCK // B)  # groups per block: keeps the work arrays in cache
    for start in range(0, G, step):
        g = slice(start, min(G, start + step))
        ng = g.stop - g.start
        R, _ = table(dpad[g].ravel(), derivative=False)
        R = R.reshape(ng, B, n_max, L).transpose(0, 3, 2, 1)  # (ng, L, n, B)
        Y, _ = real_spherical_harmonics(vpad[g].reshape(-1, 3), l_max)
        Y = Y.reshape(ng, B, L * L)
        for l in range(L):
            m = slice(l * l, (l + 1) * (l + 1))
            c[g, :, m] = np.matmul(R[:, l], Y[:, :, m])
    return c.reshape(N, S * n_max, L * L)


class SOAP(Descriptor):
    """Smooth overlap of atomic positions (power spectrum); see the module docstring.

    Parameters
    ----------
    species : iterable of str or int
        Elements (symbols or atomic numbers).
    r_cut : float, default=5.0
        Cutoff radius, Angstrom.
    n_max : int, default=8
        Number of radial basis functions (1..20).
    l_max : int, default=6
        Largest angular momentum (0..12).
    sigma : float, default=0.5
        Gaussian width of the atom density, Angstrom.
    cutoff_width : float, default=0.5
        Width of the smooth cutoff transition ending at ``r_cut``, Angstrom
        (at most ``r_cut``).
    normalize : bool, default=False
        Divide each feature vector by its Euclidean norm.
    average : bool, default=False
        One row per frame: the mean of the per-atom vectors.
    """

    name = "soap"

    def __init__(
        self, species: Iterable[str | int], r_cut: float = 5.0, n_max: int = 8, l_max: int = 6,
        sigma: float = 0.5, cutoff_width: float = 0.5, normalize: bool = False,
        average: bool = False,
    ) -> None:
        super().__init__(species, r_cut, average)
        self.n_max = self._check_int("n_max", n_max, 1, 20)
        self.l_max = self._check_int("l_max", l_max, 0, 12)
        self.sigma = self._check_positive("sigma", sigma)
        self.cutoff_width = min(self._check_positive("cutoff_width", cutoff_width), self.r_cut)
        self.normalize = bool(normalize)
        self._table: HermiteTable | None = None
        K = self.n_species * self.n_max
        self._k1, self._k2 = np.triu_indices(K)
        self._weight = np.where(self._k1 == self._k2, 1.0, np.sqrt(2.0))[:, None]

    def settings(self) -> dict[str, Any]:
        """Hyperparameters as a JSON-serialisable dict."""
        out = super().settings()
        out.update(n_max=self.n_max, l_max=self.l_max, sigma=self.sigma,
                   cutoff_width=self.cutoff_width, normalize=self.normalize)
        return out

    @property
    def n_features(self) -> int:
        """``K (K + 1) / 2 * (l_max + 1)`` with ``K = n_species * n_max``."""
        K = self.n_species * self.n_max
        return K * (K + 1) // 2 * (self.l_max + 1)

    def feature_names(self) -> list[str]:
        """Names ``"{A}{n}-{B}{n'}-l{l}"`` in column order (module docstring)."""
        sym = self.species_symbols
        lab = [f"{sym[k // self.n_max]}{k % self.n_max}" for k in range(len(sym) * self.n_max)]
        return [f"{lab[a]}-{lab[b]}-l{l}" for l in range(self.l_max + 1)
                for a, b in zip(self._k1, self._k2)]

    @property
    def table(self) -> HermiteTable:
        """The tabulated radial functions (built on first use)."""
        if self._table is None:
            self._table = soap_radial_table(self.n_max, self.l_max, self.r_cut, self.sigma,
                                            self.cutoff_width)
        return self._table

    def _spectrum(self, c: np.ndarray) -> np.ndarray:
        """(N, K, LM) coefficients -> (N, F) power spectrum."""
        N = len(c)
        L = self.l_max + 1
        K = c.shape[1]
        out = np.empty((N, L, len(self._k1)))
        flat = self._k1 * K + self._k2
        for l in range(L):
            blk = c[:, :, l * l:(l + 1) * (l + 1)]
            full = np.matmul(blk, blk.transpose(0, 2, 1)).reshape(N, K * K)
            out[:, l, :] = full[:, flat]
        out *= self._weight[:, 0]
        return out.reshape(N, -1)

    def _frame_features(self, species_index, nl, gradients, gradient_columns=None):
        n, L, S = self.n_max, self.l_max + 1, self.n_species
        c = density_coefficients(self.table, n, self.l_max, species_index, S, nl)
        X = self._spectrum(c)
        if not gradients:
            return self._normalized(X, None, nl)
        P, K, F2 = len(nl.i), S * n, len(self._k1)
        k1, k2 = self._k1, self._k2
        w = self._weight[:, 0]
        g = np.empty((P, 3, L, F2))
        sj = species_index[nl.j]
        for start in range(0, P, _CHUNK):
            sl = slice(start, min(P, start + _CHUNK))
            p = sl.stop - sl.start
            vec, r = nl.vectors[sl], nl.distances[sl]
            R, dR = self.table(r)
            R = R.reshape(p, n, L).transpose(0, 2, 1)  # (p, L, n)
            dR = dR.reshape(p, n, L).transpose(0, 2, 1)
            if S > 1:  # place the neighbour's radial functions in its species block
                Rk, dRk = np.zeros((p, L, S, n)), np.zeros((p, L, S, n))
                Rk[np.arange(p), :, sj[sl], :] = R
                dRk[np.arange(p), :, sj[sl], :] = dR
                R, dR = Rk.reshape(p, L, K), dRk.reshape(p, L, K)
            Y, dY = real_spherical_harmonics(vec, self.l_max, gradients=True)
            Z = np.concatenate([Y[:, None, :], dY], axis=1)  # (p, 4, LM)
            ci = c[nl.i[sl]]  # (p, K, LM)
            # W[p, 0, l, q] = sum_m Y_lm c_{q lm};  W[p, 1 + x, l, q] = sum_m dY_x,lm c_{q lm}
            W = np.empty((p, 4, L, K))
            for l in range(L):
                m = slice(l * l, (l + 1) * (l + 1))
                W[:, :, l, :] = np.matmul(Z[:, :, m], ci[:, :, m].transpose(0, 2, 1))
            YC, dYC = W[:, 0], W[:, 1:]
            # d p_{k1 k2 l} / d r = u (R'_k1 YC_k2 + R'_k2 YC_k1) + R_k1 dYC_k2 + R_k2 dYC_k1
            radial = dR[..., k1] * YC[..., k2] + dR[..., k2] * YC[..., k1]  # (p, L, F2)
            angular = (R[:, None, :, k1] * dYC[..., k2]
                       + R[:, None, :, k2] * dYC[..., k1])  # (p, 3, L, F2)
            u = vec / r[:, None]
            angular += u[:, :, None, None] * radial[:, None]
            angular *= w
            g[sl] = angular
        return self._normalized(X, g.reshape(P, 3, L * F2), nl)

    def _normalized(self, X, g, nl):
        if not self.normalize:
            return X, g
        norm = np.linalg.norm(X, axis=1)
        norm = np.where(norm > 0, norm, 1.0)
        Xn = X / norm[:, None]
        if g is None:
            return Xn, None
        xi = Xn[nl.i]
        proj = np.einsum("pxf,pf->px", g, xi)
        gn = (g - proj[:, :, None] * xi[:, None, :]) / norm[nl.i][:, None, None]
        return Xn, gn

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
radial index; pairs ``(k1, k2)`` with ``k1 <= k2`` in row-major order; ``l`` fastest.
The centre's own species is not encoded (as DScribe); ``normalize`` divides each vector
by its norm; ``average`` returns the mean over the atoms of each frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import scipy.sparse as sp

from ml4m.data.neighbors import NeighborList
from ml4m.descriptors.base import Descriptor
from ml4m.descriptors.radial import HermiteTable, soap_radial_table
from ml4m.descriptors.spherical_harmonics import real_spherical_harmonics

__all__ = ["SOAP", "density_coefficients"]

_CHUNK = 8192


def density_coefficients(
    table: HermiteTable, n_max: int, l_max: int, species_index: np.ndarray,
    n_species: int, nl: NeighborList, gradients: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Density expansion coefficients ``c_{i, a n, lm}`` (and per-pair derivatives).

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
    gradients : bool, default=False
        Also return ``dA[p, x, n, lm] = d (f_c I_nl Y_lm)(r_p) / d r_p[x]``.

    Returns
    -------
    c : ndarray of shape (n_atoms, n_species * n_max, (l_max+1)**2)
    dA : ndarray of shape (n_pairs, 3, n_max, (l_max+1)**2) or None, per Angstrom
    """
    N, S, L = len(species_index), n_species, l_max + 1
    LM = L * L
    lidx = np.repeat(np.arange(L), 2 * np.arange(L) + 1)
    P = len(nl.i)
    key = nl.i * S + species_index[nl.j]
    c = np.zeros((N * S, n_max * LM))
    dA = np.empty((P, 3, n_max, LM)) if gradients else None
    for start in range(0, P, _CHUNK):
        sl = slice(start, min(P, start + _CHUNK))
        vec, r = nl.vectors[sl], nl.distances[sl]
        Rv, dR = table(r)
        Rv = Rv.reshape(-1, n_max, L)[:, :, lidx]
        Y, dY = real_spherical_harmonics(vec, l_max, gradients)
        A = (Rv * Y[:, None, :]).reshape(len(r), -1)
        M = sp.csr_matrix((np.ones(len(r)), (key[sl], np.arange(len(r)))),
                          shape=(N * S, len(r)))
        c += M @ A
        if gradients:
            dR = dR.reshape(-1, n_max, L)[:, :, lidx]
            u = vec / r[:, None]
            dA[sl] = (dR[:, None, :, :] * (u[:, :, None, None] * Y[:, None, None, :])
                      + Rv[:, None, :, :] * dY[:, :, None, :])
    return c.reshape(N, S * n_max, LM), dA


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
        return [f"{lab[a]}-{lab[b]}-l{l}" for a, b in zip(self._k1, self._k2)
                for l in range(self.l_max + 1)]

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
        out = np.empty((N, len(self._k1), L))
        for l in range(L):
            blk = c[:, :, l * l:(l + 1) * (l + 1)]
            full = np.matmul(blk, blk.transpose(0, 2, 1))
            out[:, :, l] = full[:, self._k1, self._k2]
        out *= self._weight
        return out.reshape(N, -1)

    def _frame_features(self, species_index, nl, gradients):
        n, L, S = self.n_max, self.l_max + 1, self.n_species
        c, dA = density_coefficients(self.table, n, self.l_max, species_index, S, nl, gradients)
        X = self._spectrum(c)
        if not gradients:
            return self._normalized(X, None, nl)
        P, K = len(nl.i), S * n
        g = np.empty((P, 3, len(self._k1), L))
        sj = species_index[nl.j]
        for start in range(0, P, _CHUNK // 4):
            sl = slice(start, min(P, start + _CHUNK // 4))
            ci = c[nl.i[sl]]  # (p, K, LM)
            H = np.zeros((len(ci), 3, K, K, L))
            for l in range(L):
                m = slice(l * l, (l + 1) * (l + 1))
                h = np.einsum("pxnm,pqm->pxnq", dA[sl, :, :, m], ci[:, :, m])
                if S == 1:
                    H[:, :, :, :, l] = h
                else:
                    for s in range(S):
                        sel = np.nonzero(sj[sl] == s)[0]
                        H[sel, :, s * n:(s + 1) * n, :, l] = h[sel]
            D = H[:, :, self._k1, self._k2, :] + H[:, :, self._k2, self._k1, :]
            g[sl] = D * self._weight
        return self._normalized(X, g.reshape(P, 3, -1), nl)

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

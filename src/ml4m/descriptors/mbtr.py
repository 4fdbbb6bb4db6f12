"""MBTR-like global descriptor with k = 1 (composition) and k = 2 (distance distributions).

For a structure with ``N`` atoms (periodic images included in the pair sums)::

    k1_a    = (number of atoms of species a) / N
    k2_ab(x_g) = (1 / N) sum_{i<j, {Z_i, Z_j} = {a, b}} f_c(r_ij) g_sigma(x_g - r_ij)

with ``g_sigma`` the normalised Gaussian ``exp(-u**2 / (2 sigma**2)) / (sigma sqrt(2 pi))``
(1/Angstrom), ``f_c`` the smooth cutoff of :mod:`ml4m.descriptors.cutoffs` (transition
width ``cutoff_width``), and ``x_g`` a uniform grid of ``n_grid`` points on ``[0, r_cut]``.
The division by ``N`` makes a periodic cell and any supercell of it identical; with
``normalize=False`` it is left out (``k1`` are then the element counts and ``k2`` the
plain sums over pairs).
Feature order: ``k1`` for species sorted by atomic number, then ``k2`` for species pairs
in the order ``(0,0), (1,0), (1,1), (2,0), ...`` (grid index fastest).

It is computed as the average over atoms of per-atom contributions (own species
one-hot; half of each pair term), so position and strain gradients come from the
common machinery of :class:`~ml4m.descriptors.base.Descriptor`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ml4m.data.neighbors import NeighborList
from ml4m.descriptors.base import Descriptor
from ml4m.descriptors.cutoffs import smooth_cutoff

__all__ = ["MBTR"]


class MBTR(Descriptor):
    """Global k = 1, 2 many-body tensor representation (see the module docstring).

    Parameters
    ----------
    species : iterable of str or int
        Elements (symbols or atomic numbers).
    r_cut : float, default=6.0
        Largest pair distance, Angstrom.
    n_grid : int, default=64
        Grid points of each distance distribution (2..4096).
    sigma : float, default=0.1
        Gaussian broadening, Angstrom.
    cutoff_width : float, default=1.0
        Width of the smooth cutoff transition, Angstrom (at most ``r_cut``).
    normalize : bool, default=True
        Divide by the number of atoms (composition and per-atom distributions).
    """

    name = "mbtr"

    def __init__(
        self, species: Iterable[str | int], r_cut: float = 6.0, n_grid: int = 64,
        sigma: float = 0.1, cutoff_width: float = 1.0, normalize: bool = True,
    ) -> None:
        super().__init__(species, r_cut, average=True)
        self.n_grid = self._check_int("n_grid", n_grid, 2, 4096)
        self.sigma = self._check_positive("sigma", sigma)
        self.cutoff_width = min(self._check_positive("cutoff_width", cutoff_width), self.r_cut)
        self.grid = np.linspace(0.0, self.r_cut, self.n_grid)
        self.normalize = bool(normalize)

    def settings(self) -> dict[str, Any]:
        """Hyperparameters as a JSON-serialisable dict."""
        out = super().settings()
        out.update(n_grid=self.n_grid, sigma=self.sigma, cutoff_width=self.cutoff_width,
                   normalize=self.normalize)
        return out

    @property
    def n_features(self) -> int:
        """``S + S (S + 1) / 2 * n_grid``."""
        S = self.n_species
        return S + S * (S + 1) // 2 * self.n_grid

    def feature_names(self) -> list[str]:
        """``"k1[Cu]"`` then ``"k2[Cu,Cu](x=0.5)"`` in column order."""
        sym = self.species_symbols
        names = [f"k1[{a}]" for a in sym]
        for b in range(len(sym)):
            for c in range(b + 1):
                names += [f"k2[{sym[b]},{sym[c]}](x={x:.4g})" for x in self.grid]
        return names

    def _frame_features(self, species_index, nl: NeighborList, gradients, gradient_columns=None):
        N, S, G = len(species_index), self.n_species, self.n_grid
        X = np.zeros((N, self.n_features))
        X[np.arange(N), species_index] = 1.0
        si, sj = species_index[nl.i], species_index[nl.j]
        hi = np.maximum(si, sj)
        its = hi * (hi + 1) // 2 + np.minimum(si, sj)
        r = nl.distances
        fc, dfc = smooth_cutoff(r, self.r_cut, self.cutoff_width)
        u = (self.grid[None, :] - r[:, None]) / self.sigma
        gauss = np.exp(-0.5 * u * u) / (self.sigma * np.sqrt(2.0 * np.pi))
        vals = 0.5 * fc[:, None] * gauss  # (P, G)
        cols = S + its[:, None] * G + np.arange(G)
        P = len(r)
        flat = (nl.i[:, None] * self.n_features + cols).ravel()
        X += np.bincount(flat, weights=vals.ravel(), minlength=N * self.n_features).reshape(
            N, self.n_features)
        scale = 1.0 if self.normalize else float(N)  # the frame average divides by N
        if scale != 1.0:
            X *= scale
        if not gradients:
            return X, None
        # d vals / d r = 0.5 (dfc g + fc g u / sigma)
        dv = 0.5 * scale * (dfc[:, None] * gauss + fc[:, None] * gauss * u / self.sigma)
        unit = nl.vectors / r[:, None]
        out = np.zeros((P, 3, self.n_features))
        rows = np.arange(P)[:, None, None]
        out[rows, np.arange(3)[None, :, None], cols[:, None, :]] = \
            unit[:, :, None] * dv[:, None, :]
        return X, out

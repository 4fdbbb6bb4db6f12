"""Orthonormal radial basis and tabulated radial functions (cubic Hermite splines).

Radial basis
------------
With ``t = 1 - r / r_cut`` the basis functions are, for ``n = 0 .. n_max - 1``::

    R_n(r) = N_n t**2 P_n^(2,4)(2 t - 1)

where ``P_n^(a,b)`` are Jacobi polynomials. They span the polynomials
``(r_cut - r)**k, k = 2 .. n_max + 1`` (the "polynomial" basis of Caro et al.),
are orthonormal with the radial weight, ``int_0^r_cut r**2 R_n R_m dr = delta_nm``,
and vanish with zero slope at ``r_cut``. (The Jacobi weight ``(1-x)**2 (1+x)**4``
is ``r**2 t**4`` up to a constant, hence the numerically stable construction.)

SOAP radial integral
--------------------
A neighbour at distance ``d`` contributes a Gaussian ``exp(-|r - r_j|**2 / (2 sigma**2))``
to the density; its expansion coefficient on ``R_n(r) Y_lm`` is
``f_c(d) I_nl(d) Y_lm(d_hat)`` with::

    I_nl(d) = 4 pi int_0^r_cut r**2 R_n(r) exp(-(r**2 + d**2) / (2 sigma**2))
              i_l(r d / sigma**2) dr

(``i_l`` the modified spherical Bessel function, ``f_c`` the smooth cutoff). The
products ``f_c I_nl`` and their derivatives are computed by Gauss-Legendre
quadrature on a grid of ``d`` and interpolated by cubic Hermite splines: value and
derivative are exact at the nodes and the derivative returned is the exact
derivative of the interpolant (consistent with finite differences).
"""

from __future__ import annotations

import math
from functools import lru_cache
import numpy as np
from scipy.special import eval_jacobi, ive, roots_legendre

from ml4m.descriptors.cutoffs import smooth_cutoff

__all__ = ["radial_basis", "HermiteTable", "soap_radial_table", "ace_radial_table", "stack_tables"]


def radial_basis(r: np.ndarray, n_max: int, r_cut: float) -> np.ndarray:
    """The orthonormal polynomial radial basis ``R_n(r)`` (see module docstring).

    Parameters
    ----------
    r : ndarray of shape (k,), Angstrom
        Distances in ``[0, r_cut]``.
    n_max : int
        Number of radial functions.
    r_cut : float
        Cutoff radius, Angstrom.

    Returns
    -------
    ndarray of shape (k, n_max)
        ``R_n(r)``, Angstrom**-1.5.
    """
    r = np.asarray(r, dtype=np.float64)
    t = 1.0 - r / r_cut
    x = 2.0 * t - 1.0
    out = np.empty((len(r), n_max))
    for n in range(n_max):
        # norm of P_n^(a,b) on [-1,1]: 2^(a+b+1)/(2n+a+b+1) G(n+a+1)G(n+b+1)/(G(n+a+b+1) n!)
        a, b = 2, 4
        h = (2.0 ** (a + b + 1) / (2 * n + a + b + 1) * math.gamma(n + a + 1)
             * math.gamma(n + b + 1) / (math.gamma(n + a + b + 1) * math.factorial(n)))
        # int_0^rc r^2 t^4 P^2 dr = rc^3 int_0^1 (1-t)^2 t^4 P^2 dt, x = 2t - 1 -> / 2^7
        norm = math.sqrt(h * r_cut**3 / 2.0 ** (a + b + 1))
        out[:, n] = t**2 * eval_jacobi(n, a, b, x) / norm
    return out


class HermiteTable:
    """Cubic Hermite interpolation of many functions on a uniform grid ``[0, r_max]``.

    Parameters
    ----------
    step : float
        Grid spacing, Angstrom.
    values : ndarray of shape (n_nodes, n_functions)
        Function values at the nodes.
    derivatives : ndarray of shape (n_nodes, n_functions)
        First derivatives at the nodes, per Angstrom.
    """

    def __init__(self, step: float, values: np.ndarray, derivatives: np.ndarray) -> None:
        self.step = float(step)
        self.values = values
        self.derivatives = derivatives
        y0, y1 = values[:-1], values[1:]
        m0, m1 = derivatives[:-1] * step, derivatives[1:] * step
        # y(t) = a0 + a1 t + a2 t^2 + a3 t^3 on each interval, t in [0, 1]
        a = (y0, m0, 3 * (y1 - y0) - 2 * m0 - m1, 2 * (y0 - y1) + m0 + m1)
        # one extra all-zero interval past the end: r >= r_max gives exactly 0 (the
        # tabulated functions vanish there), not a rounding residue
        zero = np.zeros((1, values.shape[1]))
        self._a = [np.ascontiguousarray(np.concatenate([x, zero])) for x in a]
        # derivative coefficients (per Angstrom): a1/h, 2 a2/h, 3 a3/h
        self._d = [np.ascontiguousarray(np.concatenate([q * a[q] / step, zero]))
                   for q in (1, 2, 3)]

    @property
    def n_functions(self) -> int:
        """Number of tabulated functions."""
        return self.values.shape[1]

    def __call__(
        self, r: np.ndarray, derivative: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Values and derivatives at distances ``r`` (Angstrom), each ``(len(r), n_functions)``.

        Distances at or beyond the last node give exactly 0 (for functions that vanish
        there, as all tables here do).
        """
        s = np.asarray(r, dtype=np.float64) / self.step
        k = np.minimum(s.astype(np.int64), len(self._a[0]) - 1)
        t = (s - k)[:, None]
        a0, a1, a2, a3 = self._a
        val = a3[k]  # Horner, in place (fancy indexing returns a fresh array)
        val *= t
        val += a2[k]
        val *= t
        val += a1[k]
        val *= t
        val += a0[k]
        if not derivative:
            return val, None
        d1, d2, d3 = self._d
        der = d3[k]
        der *= t
        der += d2[k]
        der *= t
        der += d1[k]
        return val, der


def _quadrature(r_cut: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = roots_legendre(n)
    return 0.5 * r_cut * (x + 1.0), 0.5 * r_cut * w


def _scaled_sph_in(l: int, x: np.ndarray) -> np.ndarray:
    """``exp(-x) i_l(x)`` for ``x > 0``."""
    return np.sqrt(np.pi / (2.0 * x)) * ive(l + 0.5, x)


@lru_cache(maxsize=16)
def soap_radial_table(
    n_max: int, l_max: int, r_cut: float, sigma: float, cutoff_width: float
) -> HermiteTable:
    """Tabulate ``f_c(d) I_nl(d)`` (module docstring) on ``[0, r_cut]``.

    Parameters
    ----------
    n_max, l_max : int
        Radial and angular sizes.
    r_cut : float
        Cutoff radius, Angstrom.
    sigma : float
        Gaussian width of the atom density, Angstrom.
    cutoff_width : float
        Width of the smooth cutoff transition, Angstrom.

    Returns
    -------
    HermiteTable
        Functions ordered ``n * (l_max + 1) + l`` (cached per parameter set; treat as
        read-only).
    """
    n_nodes = max(256, int(math.ceil(60.0 * r_cut / sigma)))
    d = np.linspace(0.0, r_cut, n_nodes + 1)
    rq, wq = _quadrature(r_cut, max(120, int(math.ceil(24.0 * r_cut / sigma))))
    R = radial_basis(rq, n_max, r_cut) * (wq * rq**2)[:, None]  # (q, n)
    s2 = sigma * sigma
    L = l_max + 1
    vals = np.empty((len(d), n_max, L))
    ders = np.empty((len(d), n_max, L))
    for start in range(0, len(d), 128):  # blocks of distances bound the memory
        blk = slice(start, min(len(d), start + 128))
        diff = rq[None, :] - d[blk, None]  # (d, q)
        gauss = 4.0 * np.pi * np.exp(-0.5 * diff**2 / s2)
        x = np.maximum(rq[None, :] * d[blk, None] / s2, 1e-12)
        ivals = [_scaled_sph_in(l, x) for l in range(L + 1)]
        for l in range(L):
            il = ivals[l]
            dil = ((l * ivals[l - 1] if l > 0 else 0.0) + (l + 1) * ivals[l + 1]) / (2 * l + 1) - il
            vals[blk, :, l] = (gauss * il) @ R
            ders[blk, :, l] = (gauss * (diff / s2 * il + rq[None, :] / s2 * dil)) @ R
    fc, dfc = smooth_cutoff(d, r_cut, cutoff_width)
    values = (fc[:, None, None] * vals).reshape(len(d), -1)
    derivs = (dfc[:, None, None] * vals + fc[:, None, None] * ders).reshape(len(d), -1)
    return HermiteTable(step=r_cut / n_nodes, values=values, derivatives=derivs)


def stack_tables(tables: list[HermiteTable]) -> HermiteTable:
    """Tables of the same grid one after another: table ``t`` is read at ``r + t * L``,
    ``L = step * n_nodes`` (its grid length plus one step).

    The interval joining two segments lies beyond the cutoff of the first, where no
    distance falls; past the last segment every function is 0, as in one table.
    """
    step = tables[0].step
    if any(t.step != step or t.values.shape != tables[0].values.shape for t in tables):
        raise ValueError("stacked tables need the same grid and number of functions")
    return HermiteTable(step, np.concatenate([t.values for t in tables]),
                        np.concatenate([t.derivatives for t in tables]))


#: nodes per Angstrom of the ACE radial tables, for up to ``ACE_TABLE_N_MAX`` functions
ACE_TABLE_NODES_PER_A = 300
ACE_TABLE_N_MAX = 24


@lru_cache(maxsize=16)
def ace_radial_table(n_max: int, r_cut: float, cutoff_width: float,
                     r0: float | None = None, r_in: float = 0.0) -> HermiteTable:
    """Tabulate ``f_c(r) R_n(rho(r))`` (no Gaussian smearing) for the ACE one-particle basis.

    Parameters
    ----------
    n_max : int
        Number of radial functions.
    r_cut : float
        Cutoff radius, Angstrom.
    cutoff_width : float
        Width of the smooth cutoff transition, Angstrom.
    r0 : float, optional
        Scale of the distance transform, Angstrom. ``None``: ``rho`` maps ``[r_in, r_cut]``
        linearly onto ``[0, r_cut]`` (``rho = r`` for ``r_in = 0``). Otherwise
        ``u(r) = (r0 / (r0 + r))**2`` and
        ``rho = r_cut (u(r_in) - u) / (u(r_in) - u(r_cut))``, a monotonic map of
        ``[r_in, r_cut]`` onto ``[0, r_cut]`` that stretches short distances: the
        polynomials then resolve bond lengths finely and the far tail coarsely.
    r_in : float, default=0.0
        Inner radius of the transform, Angstrom (below the shortest distance in the
        data): no resolution is spent on ``[0, r_in]``, where ``rho`` stays 0 and the
        radial functions are constant (no force).

    Returns
    -------
    HermiteTable
        ``n_max`` functions.
    """
    # the same nodes for every n_max up to ACE_TABLE_N_MAX: a basis's first functions are
    # then the same numbers in any larger basis (a basis search's nested rungs); finer
    # nodes beyond (degree-n polynomials oscillate n times)
    n_nodes = max(512, int(math.ceil(ACE_TABLE_NODES_PER_A * r_cut
                                     * max(1.0, n_max / ACE_TABLE_N_MAX))))
    d = np.linspace(0.0, r_cut, n_nodes + 1)
    eps = 1e-6

    def rho(r):
        r = np.clip(r, 0.0, None)
        if r0 is None:
            return np.clip(r_cut * (r - r_in) / (r_cut - r_in), 0.0, r_cut)
        u = (r0 / (r0 + r)) ** 2
        u0, uc = (r0 / (r0 + r_in)) ** 2, (r0 / (r0 + r_cut)) ** 2
        return np.clip(r_cut * (u0 - u) / (u0 - uc), 0.0, r_cut)

    def basis(r):
        return radial_basis(rho(r), n_max, r_cut)

    R = basis(d)
    dR = (basis(d + eps) - basis(d - eps)) / (
        np.clip(d + eps, 0, None) - np.clip(d - eps, 0, None))[:, None]
    fc, dfc = smooth_cutoff(d, r_cut, cutoff_width)
    return HermiteTable(step=r_cut / n_nodes, values=fc[:, None] * R,
                        derivatives=dfc[:, None] * R + fc[:, None] * dR)

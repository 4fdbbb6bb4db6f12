"""Clebsch-Gordan coefficients in the real spherical-harmonic basis of ml4m.

``real_clebsch_gordan(l1, l2, L)`` returns the tensor ``C[m1, m2, M]`` such that
``T_M = sum C[m1, m2, M] a_{m1} b_{m2}`` transforms like the real harmonic ``Y_LM`` when
``a`` and ``b`` transform like ``Y_l1`` and ``Y_l2`` (``m`` indices ``0 .. 2l``
for ``m = -l .. l``). Complex coefficients come from Racah's formula; the unitary map
from complex to real harmonics is fitted to :func:`real_spherical_harmonics` itself,
so phase conventions cannot disagree. Tensors are normalised to unit Frobenius norm
with their first non-zero entry positive.
"""

from __future__ import annotations

from functools import lru_cache
from math import factorial, sqrt

import numpy as np
from scipy.special import sph_harm_y

from ml4m.descriptors.spherical_harmonics import real_spherical_harmonics

__all__ = ["clebsch_gordan", "real_clebsch_gordan"]


def clebsch_gordan(j1: int, m1: int, j2: int, m2: int, J: int, M: int) -> float:
    """Complex-basis Clebsch-Gordan coefficient ``<j1 m1 j2 m2 | J M>`` (Racah's formula)."""
    if m1 + m2 != M or not abs(j1 - j2) <= J <= j1 + j2 or abs(M) > J:
        return 0.0
    if abs(m1) > j1 or abs(m2) > j2:
        return 0.0
    f = factorial
    pre = sqrt((2 * J + 1) * f(J + j1 - j2) * f(J - j1 + j2) * f(j1 + j2 - J) / f(j1 + j2 + J + 1))
    pre *= sqrt(f(J + M) * f(J - M) * f(j1 - m1) * f(j1 + m1) * f(j2 - m2) * f(j2 + m2))
    total = 0.0
    for k in range(0, j1 + j2 - J + 1):
        args = (j1 + j2 - J - k, j1 - m1 - k, j2 + m2 - k, J - j2 + m1 + k, J - j1 - m2 + k)
        if min(args) < 0:
            continue
        den = f(k)
        for a in args:
            den *= f(a)
        total += (-1) ** k / den
    return pre * total


@lru_cache(maxsize=None)
def _complex_to_real(l: int) -> np.ndarray:
    """Unitary ``U`` with ``Y_real[m] = sum_mu U[m, mu] Y_complex[mu]``."""
    rng = np.random.default_rng(1234 + l)
    v = rng.normal(size=(8 * (2 * l + 1) + 16, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    yr, _ = real_spherical_harmonics(v, l)
    yr = yr[:, l * l:(l + 1) * (l + 1)]
    theta = np.arccos(np.clip(v[:, 2], -1, 1))
    phi = np.arctan2(v[:, 1], v[:, 0])
    yc = np.stack([sph_harm_y(l, mu, theta, phi) for mu in range(-l, l + 1)], axis=1)
    ut, *_ = np.linalg.lstsq(yc, yr.astype(complex), rcond=None)
    return ut.T


@lru_cache(maxsize=None)
def real_clebsch_gordan(l1: int, l2: int, L: int) -> np.ndarray:
    """Coupling tensor ``(2 l1 + 1, 2 l2 + 1, 2 L + 1)`` in the real basis (module doc).

    Parameters
    ----------
    l1, l2, L : int
        Angular momenta with ``|l1 - l2| <= L <= l1 + l2``.

    Returns
    -------
    ndarray
        Real tensor of unit Frobenius norm (read-only).
    """
    cg = np.zeros((2 * l1 + 1, 2 * l2 + 1, 2 * L + 1))
    for a, m1 in enumerate(range(-l1, l1 + 1)):
        for b, m2 in enumerate(range(-l2, l2 + 1)):
            M = m1 + m2
            if abs(M) <= L:
                cg[a, b, M + L] = clebsch_gordan(l1, m1, l2, m2, L, M)
    u1, u2, uL = _complex_to_real(l1), _complex_to_real(l2), _complex_to_real(L)
    c = np.einsum("Mv,abv,ma,nb->mnM", uL, cg, u1.conj(), u2.conj())
    c = c.real if np.abs(c.real).sum() >= np.abs(c.imag).sum() else c.imag
    c = c / np.linalg.norm(c)
    c[np.abs(c) < 1e-12] = 0.0
    first = c.ravel()[np.flatnonzero(c.ravel())[0]]
    c = c * np.sign(first)
    c.setflags(write=False)
    return c

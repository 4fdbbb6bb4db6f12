"""Cutoff functions: value and first derivative, both zero at and beyond ``r_cut``."""

from __future__ import annotations

import numpy as np

__all__ = ["cosine_cutoff", "smooth_cutoff"]


def cosine_cutoff(
    r: np.ndarray, r_cut: float, derivative: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Behler's cosine cutoff ``f(r) = (cos(pi r / r_cut) + 1) / 2`` for ``r < r_cut``.

    Parameters
    ----------
    r : ndarray, Angstrom
        Distances.
    r_cut : float
        Cutoff radius, Angstrom.
    derivative : bool, default=True
        Also return the derivative (else None).

    Returns
    -------
    f : ndarray
        Cutoff values (exactly 0 for ``r >= r_cut``), dimensionless.
    df : ndarray or None
        ``df/dr``, 1/Angstrom (0 for ``r >= r_cut``).
    """
    arg = np.minimum(np.asarray(r, dtype=np.float64) * (np.pi / r_cut), np.pi)
    f = np.cos(arg)
    f += 1.0
    f *= 0.5
    if not derivative:
        return f, None
    df = np.sin(arg)
    df *= -0.5 * np.pi / r_cut
    df[arg >= np.pi] = 0.0
    return f, df


def smooth_cutoff(
    r: np.ndarray, r_cut: float, width: float
) -> tuple[np.ndarray, np.ndarray]:
    """Step that is 1 below ``r_cut - width`` and falls to 0 at ``r_cut`` as a half cosine.

    Parameters
    ----------
    r : ndarray, Angstrom
        Distances.
    r_cut : float
        Cutoff radius, Angstrom.
    width : float
        Width of the transition region, Angstrom (``0 < width <= r_cut``).

    Returns
    -------
    f : ndarray
        Values in [0, 1], dimensionless.
    df : ndarray
        ``df/dr``, 1/Angstrom; continuous, zero at ``r_cut``.
    """
    r = np.asarray(r, dtype=np.float64)
    start = r_cut - width
    s = np.clip((r - start) / width, 0.0, 1.0)
    f = 0.5 * (1.0 + np.cos(np.pi * s))
    df = np.where((s > 0) & (s < 1), -0.5 * np.pi / width * np.sin(np.pi * s), 0.0)
    return f, df

"""Real spherical harmonics and their Cartesian gradients, for many vectors at once.

Convention
----------
Orthonormal real harmonics on the unit sphere (``integral Y_lm Y_l'm' dOmega =
delta``), without the Condon-Shortley phase, stored flat at index ``l*l + l + m``
for ``m = -l..l``::

    Y_l0  = N_l0 Q_l^0(z)
    Y_lm  = N_lm Q_l^m(z) Re[(x + i y)^m]     m > 0
    Y_l-m = N_lm Q_l^m(z) Im[(x + i y)^m]     m > 0

with ``(x, y, z)`` the unit vector, ``Q_l^m`` the associated Legendre function
divided by ``sin(theta)^m`` (a polynomial in ``z``), ``N_l0 = sqrt((2l+1)/(4 pi))``
and ``N_lm = sqrt((2l+1)/(2 pi) (l-m)!/(l+m)!)``. Everything is a polynomial in the
unit-vector components, so the gradient with respect to the (unnormalised) vector
``r`` is the tangential projection ``(I - u u^T) / |r|`` of the polynomial gradient.
"""

from __future__ import annotations

import math

import numpy as np

from ml4m.errors import ConfigError

__all__ = ["real_spherical_harmonics", "spherical_harmonics_vjp", "lm_index", "n_harmonics"]


def n_harmonics(l_max: int) -> int:
    """Number of harmonics with ``l <= l_max``: ``(l_max + 1)**2``."""
    return (l_max + 1) ** 2


def lm_index(l: int, m: int) -> int:
    """Flat index of ``(l, m)``: ``l*l + l + m``."""
    return l * l + l + m


def _norms(l_max: int) -> np.ndarray:
    out = np.zeros((l_max + 1, l_max + 1))
    for l in range(l_max + 1):
        for m in range(l + 1):
            if m == 0:
                out[l, m] = math.sqrt((2 * l + 1) / (4 * math.pi))
            else:
                out[l, m] = math.sqrt(
                    (2 * l + 1) / (2 * math.pi) * math.factorial(l - m) / math.factorial(l + m)
                )
    return out


def _recursion(u, L: int, gradients: bool):
    """``C_m + i S_m = (x + i y)^m`` and the polynomials ``Q[l][m]`` in ``z`` (with
    ``dQ = dQ/dz`` when ``gradients``) of the unit vectors ``u``, for ``l, m < L``."""
    x, y, z = u[:, 0], u[:, 1], u[:, 2]
    zero, one = z * 0.0, z * 0.0 + 1.0
    # C_m + i S_m = (x + i y)^m
    C, S = [one], [zero]
    for m in range(1, L):
        C.append(x * C[m - 1] - y * S[m - 1])
        S.append(x * S[m - 1] + y * C[m - 1])
    # Q[l][m]: polynomials in z; dQ = dQ/dz
    Q = [[zero] * L for _ in range(L)]
    dQ = [[zero] * L for _ in range(L)]
    for m in range(L):
        qmm = float(np.prod(np.arange(1, 2 * m, 2))) if m else 1.0  # (2m-1)!!
        Q[m][m] = one * qmm
        if m + 1 < L:
            Q[m + 1][m] = (2 * m + 1) * qmm * z
            dQ[m + 1][m] = one * ((2 * m + 1) * qmm)
        for l in range(m + 2, L):
            Q[l][m] = ((2 * l - 1) * z * Q[l - 1][m] - (l + m - 1) * Q[l - 2][m]) / (l - m)
            if gradients:
                dQ[l][m] = ((2 * l - 1) * (Q[l - 1][m] + z * dQ[l - 1][m])
                            - (l + m - 1) * dQ[l - 2][m]) / (l - m)
    return C, S, Q, dQ


def real_spherical_harmonics(
    vectors, l_max: int, gradients: bool = False
):
    """Real spherical harmonics of the directions of ``vectors``.

    Parameters
    ----------
    vectors : ndarray or torch.Tensor of shape (n, 3), Angstrom (any length unit)
        Non-zero vectors; only their direction matters. A torch tensor gives a torch
        result on its device, differentiable by autograd.
    l_max : int
        Largest angular momentum (>= 0).
    gradients : bool, default=False
        Also return the Cartesian gradients with respect to ``vectors`` (numpy only;
        use autograd with torch).

    Returns
    -------
    Y : ndarray of shape (n, (l_max+1)**2)
        ``Y[:, l*l + l + m]``, dimensionless.
    dY : ndarray of shape (n, 3, (l_max+1)**2) or None
        ``dY[:, a, k] = d Y_k / d vectors[:, a]``, 1/Angstrom.
    """
    if int(l_max) != l_max or l_max < 0:
        raise ConfigError(f"l_max must be an integer >= 0, got {l_max!r}")
    l_max = int(l_max)
    is_torch = type(vectors).__module__.startswith("torch")
    if is_torch:
        import torch

        if gradients:
            raise ConfigError("gradients=True is for numpy input; use autograd with torch")
        stack, v = torch.stack, vectors
        r = torch.linalg.vector_norm(v, dim=1)
    else:
        stack, v = np.stack, np.asarray(vectors, dtype=np.float64)
        r = np.sqrt(np.einsum("ij,ij->i", v, v))
    u = v / r[:, None]
    L = l_max + 1
    C, S, Q, dQ = _recursion(u, L, gradients)
    N = _norms(l_max)
    cols = []
    dU = np.zeros((len(u), 3, L * L)) if gradients else None  # d/d(unit vector)
    for l in range(L):
        for m in range(-l, l + 1):
            a = N[l, abs(m)] * Q[l][abs(m)]
            cols.append(a if m == 0 else a * (C[m] if m > 0 else S[-m]))
            if not gradients:
                continue
            idx = l * l + l + m
            da = N[l, abs(m)] * dQ[l][abs(m)]
            k = abs(m)
            if m == 0:
                dU[:, 2, idx] = da
            elif m > 0:
                dU[:, 0, idx] = a * k * C[k - 1]
                dU[:, 1, idx] = -a * k * S[k - 1]
                dU[:, 2, idx] = da * C[k]
            else:
                dU[:, 0, idx] = a * k * S[k - 1]
                dU[:, 1, idx] = a * k * C[k - 1]
                dU[:, 2, idx] = da * S[k]
    Y = stack(cols, 1)
    if not gradients:
        return Y, None
    # project onto the tangent plane and divide by |r|
    radial = np.einsum("na,nak->nk", u, dU)
    dY = (dU - u[:, :, None] * radial[:, None, :]) / r[:, None, None]
    return Y, dY


def spherical_harmonics_vjp(vectors: np.ndarray, l_max: int, weights: np.ndarray) -> np.ndarray:
    """``sum_k weights[:, k] * d Y_k / d vectors``, without forming the gradients.

    The vector-Jacobian product of :func:`real_spherical_harmonics`: equal to
    ``np.einsum("nak,nk->na", dY, weights)`` with ``dY`` from ``gradients=True``, at
    a fraction of its memory traffic (three accumulators instead of ``3 (l_max+1)^2``
    columns per vector).

    Parameters
    ----------
    vectors : ndarray of shape (n, 3), Angstrom
        Non-zero vectors.
    l_max : int
        Largest angular momentum of ``weights``' columns.
    weights : ndarray of shape (n, (l_max+1)**2)
        Cotangents of the harmonics (any unit U).

    Returns
    -------
    ndarray of shape (n, 3)
        U per Angstrom.
    """
    v = np.asarray(vectors, dtype=np.float64)
    r = np.sqrt(np.einsum("ij,ij->i", v, v))
    u = v / r[:, None]
    L = int(l_max) + 1
    C, S, Q, dQ = _recursion(u, L, True)
    N = _norms(L - 1)
    W = np.ascontiguousarray(np.asarray(weights, dtype=np.float64).T)  # (LM, n)
    g = np.zeros((3, len(u)))
    for l in range(L):
        g[2] += (N[l, 0] * dQ[l][0]) * W[l * l + l]
        for k in range(1, l + 1):
            a, da = N[l, k] * Q[l][k], N[l, k] * dQ[l][k]
            wp, wm = W[l * l + l + k], W[l * l + l - k]
            ak = a * k
            g[0] += ak * (C[k - 1] * wp + S[k - 1] * wm)
            g[1] += ak * (C[k - 1] * wm - S[k - 1] * wp)
            g[2] += da * (C[k] * wp + S[k] * wm)
    g -= u.T * np.einsum("an,an->n", u.T, g)  # tangential part
    return (g / r).T

"""Edge bases of the message-passing network: radial Bessel functions with a smooth
envelope, and real spherical harmonics scaled to unit mean square."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ml4m.descriptors.spherical_harmonics import real_spherical_harmonics

__all__ = ["EdgeHarmonics", "RadialBasis", "edge_harmonics"]


class RadialBasis(torch.nn.Module):
    """``B_n(r) = sqrt(2 / r_max) sin(n pi r / r_max) / r * u(r / r_max)``, ``n = 1..n_radial``.

    ``u(d) = 1 - (p+1)(p+2)/2 d^p + p(p+2) d^(p+1) - p(p+1)/2 d^(p+2)`` (``p = 5``) is the
    polynomial envelope of DimeNet: it and its first two derivatives vanish at
    ``r = r_max``, so energies and forces are smooth when a neighbour leaves the cutoff.

    Parameters
    ----------
    r_max : float
        Cutoff radius, Angstrom.
    n_radial : int
        Number of Bessel functions.
    p : int, default=5
        Envelope exponent.
    """

    def __init__(self, r_max: float, n_radial: int, p: int = 5) -> None:
        super().__init__()
        self.r_max, self.p = float(r_max), int(p)
        self.register_buffer("freq", torch.arange(1, n_radial + 1) * math.pi / self.r_max,
                             persistent=False)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """``(E,)`` distances (Angstrom) to ``(E, n_radial)`` basis values (1/Angstrom)."""
        p, c = self.p, math.sqrt(2 / self.r_max)
        d = r / self.r_max
        # c u(d) in Horner form: c + d^p (a + d (b + d e)); few operations on the edges
        a, b, e = (-0.5 * (p + 1) * (p + 2) * c, p * (p + 2) * c, -0.5 * p * (p + 1) * c)
        env = c + d ** p * (a + d * (b + d * e))
        pref = torch.where(d < 1, env, torch.zeros_like(env)) / r
        return torch.sin(r[:, None] * self.freq.to(r.dtype)) * pref[:, None]


@functools.lru_cache(maxsize=None)
def _monomial_tables(l_max: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Monomials of a unit vector ``u`` up to degree ``l_max`` and the matrix that maps
    them to the scaled harmonics of :func:`edge_harmonics`.

    Returns
    -------
    steps : list of (src, axis)
        Degree ``k`` monomials are ``P_{k-1}[:, src] * u[:, axis]`` (each distinct
        exponent triple once, from the first of its lower-degree factors).
    M : ndarray (n_monomials, (l_max+1)**2)
        ``Y = [1, P_1, ..., P_lmax] @ M``, solved by least squares on the sphere in
        float64 (the harmonics are polynomials of degree ``<= l`` in ``u``; on the
        sphere the fit is exact to rounding, and so are the gradients, whose normal
        part the projection of ``u = r / |r|`` removes).
    """
    steps, previous = [], [(0, 0, 0)]
    exponents = [(0, 0, 0)]
    for _ in range(l_max):
        seen: dict[tuple[int, int, int], tuple[int, int]] = {}
        for s, e in enumerate(previous):
            for axis in range(3):
                f = tuple(e[a] + (a == axis) for a in range(3))
                seen.setdefault(f, (s, axis))
        previous = list(seen)
        steps.append((np.array([seen[f][0] for f in previous]),
                      np.array([seen[f][1] for f in previous])))
        exponents += previous
    u = np.random.default_rng(0).normal(size=(max(400, 8 * len(exponents)), 3))
    u /= np.linalg.norm(u, axis=1)[:, None]
    P = np.stack([np.prod(u ** np.array(e), axis=1) for e in exponents], axis=1)
    Y, _ = real_spherical_harmonics(u, l_max)
    M = np.linalg.lstsq(P, Y * math.sqrt(4 * math.pi), rcond=None)[0]
    return steps, M


class EdgeHarmonics(torch.nn.Module):
    """Real spherical harmonics of edge directions, ``(E, (l_max+1)**2)``, dimensionless.

    ml4m's orthonormal harmonics (:mod:`ml4m.descriptors.spherical_harmonics`, index
    ``l*l + l + m``) times ``sqrt(4 pi)``: ``Y_00 = 1`` and each ``l`` block has a mean
    square of ``2l + 1`` over the sphere. Evaluated as monomials of the unit vector times
    a constant matrix (:func:`_monomial_tables`): a few tensor operations instead of the
    recursion's many small ones, which dominate for the few hundred edges of a molecule.
    """

    def __init__(self, l_max: int) -> None:
        super().__init__()
        steps, M = _monomial_tables(l_max)
        self.n_steps = len(steps)
        for k, (src, axis) in enumerate(steps):
            self.register_buffer(f"src{k}", torch.as_tensor(src), persistent=False)
            self.register_buffer(f"axis{k}", torch.as_tensor(axis), persistent=False)
        # kept in float64 and cast at use (a buffer would follow the module's dtype and
        # lose digits on a float32 round trip)
        self._M = M
        self._cast: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def _matrix(self, like: torch.Tensor) -> torch.Tensor:
        """The monomial-to-harmonic matrix in the dtype and on the device of ``like``."""
        key = (like.dtype, like.device)
        if key not in self._cast:
            self._cast[key] = torch.as_tensor(self._M, dtype=like.dtype, device=like.device)
        return self._cast[key]

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        """``(E, 3)`` edge vectors (Angstrom; non-zero) to ``(E, (l_max+1)**2)``."""
        u = vectors / torch.linalg.vector_norm(vectors, dim=1, keepdim=True)
        parts, P = [torch.ones_like(u[:, :1])], torch.ones_like(u[:, :1])
        for k in range(self.n_steps):
            P = P.index_select(1, getattr(self, f"src{k}")) * u.index_select(
                1, getattr(self, f"axis{k}"))
            parts.append(P)
        return torch.cat(parts, dim=1) @ self._matrix(u)


def edge_harmonics(vectors: torch.Tensor, l_max: int) -> torch.Tensor:
    """:class:`EdgeHarmonics` of ``vectors`` (one call; a module keeps its tables)."""
    return EdgeHarmonics(l_max).to(device=vectors.device)(vectors)

"""Edge bases of the message-passing network: radial Bessel functions with a smooth
envelope, and real spherical harmonics scaled to unit mean square."""

from __future__ import annotations

import math

import torch

from ml4m.descriptors.spherical_harmonics import real_spherical_harmonics

__all__ = ["RadialBasis", "edge_harmonics"]


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
        p = self.p
        d = r / self.r_max
        dp = d ** p
        env = (1 - 0.5 * (p + 1) * (p + 2) * dp + p * (p + 2) * dp * d
               - 0.5 * p * (p + 1) * dp * d * d)
        env = torch.where(d < 1, env, torch.zeros_like(env))
        pref = math.sqrt(2 / self.r_max) * env / r
        return torch.sin(r[:, None] * self.freq.to(r.dtype)) * pref[:, None]


def edge_harmonics(vectors: torch.Tensor, l_max: int) -> torch.Tensor:
    """Real spherical harmonics of edge directions, ``(E, (l_max+1)**2)``, dimensionless.

    ml4m's orthonormal harmonics (:mod:`ml4m.descriptors.spherical_harmonics`, index
    ``l*l + l + m``) times ``sqrt(4 pi)``: ``Y_00 = 1`` and each ``l`` block has a mean
    square of ``2l + 1`` over the sphere.
    """
    Y, _ = real_spherical_harmonics(vectors, l_max)
    return Y * math.sqrt(4 * math.pi)

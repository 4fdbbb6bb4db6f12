"""Shared synthetic data sets for the analysis tests (all seeded)."""

from __future__ import annotations

import numpy as np


def hypersphere(n: int, d: int, seed: int) -> np.ndarray:
    """Uniform points on the d-sphere S^d (a d-dimensional manifold) in R^(d+1)."""
    x = np.random.default_rng(seed).normal(size=(n, d + 1))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def embed_linear(Y: np.ndarray, D: int, seed: int) -> np.ndarray:
    """Isometric linear embedding into R^D by a random orthonormal map."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(D, Y.shape[1])))
    return Y @ q.T


def embed_nonlinear(Y: np.ndarray, D: int, seed: int) -> np.ndarray:
    """Smooth non-linear embedding: [Y, 0.3 sin(2 Y) + 0.2 Y^2] rotated into R^D."""
    Z = np.hstack([Y, 0.3 * np.sin(2.0 * Y) + 0.2 * Y**2])
    return embed_linear(Z, D, seed)


def gaussian_mixture(n_per: int, n_modes: int, dim: int, sep: float, seed: int):
    """Isotropic unit Gaussians on the vertices of a simplex-like layout, spacing ``sep``."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((n_modes, dim))
    for m in range(n_modes):  # modes along orthogonal axes, pairwise distance sep
        if m:
            centres[m, m - 1] = sep / np.sqrt(2)
    if n_modes > 1:
        centres[0] = 0.0
    X = np.vstack([c + rng.normal(size=(n_per, dim)) for c in centres])
    return X, np.repeat(np.arange(n_modes), n_per)

"""Isolated-atom reference energies (E0s): given, or fitted by least squares."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from ml4m.data.frames import Dataset
from ml4m.errors import ConfigError, DataError

__all__ = ["composition_matrix", "fit_reference_energies", "resolve_reference_energies"]


def composition_matrix(dataset: Dataset, species: np.ndarray | None = None) -> np.ndarray:
    """Count of each species in each frame.

    Parameters
    ----------
    dataset : Dataset
        Frames.
    species : ndarray of int, optional
        Atomic numbers defining the columns (default: those in ``dataset``).

    Returns
    -------
    ndarray of shape (n_frames, n_species), float
    """
    species = dataset.atomic_numbers if species is None else np.asarray(species)
    col = {int(z): c for c, z in enumerate(species)}
    out = np.zeros((len(dataset), len(species)))
    for r, f in enumerate(dataset):
        zs, ns = np.unique(f.numbers, return_counts=True)
        for z, n in zip(zs, ns):
            if int(z) not in col:
                raise DataError(f"species {chemical_symbols[z]} not among {species.tolist()}", *(f.source or (None, r)))
            out[r, col[int(z)]] = n
    return out


def fit_reference_energies(dataset: Dataset, ridge: float = 1e-8) -> dict[int, float]:
    """Per-species energies ``E0`` that best explain total energies, eV.

    Solves ``min_E0 || E - C @ E0 ||^2`` with ``C`` the composition matrix (a tiny
    ridge keeps it defined when compositions are collinear, e.g. a single element,
    where ``E0`` is the mean energy per atom).

    Parameters
    ----------
    dataset : Dataset
        Frames with energies.
    ridge : float, default=1e-8
        Relative Tikhonov regularisation.

    Returns
    -------
    dict of int to float
        Atomic number to E0 in eV.
    """
    frames = [f for f in dataset if f.energy is not None]
    if not frames:
        raise DataError("cannot fit reference energies: no frame has an energy")
    sub = Dataset(frames)
    C = composition_matrix(sub)
    E = np.array([f.energy for f in frames])
    A = C.T @ C
    A += ridge * np.trace(A) / len(A) * np.eye(len(A))
    e0 = np.linalg.solve(A, C.T @ E)
    return {int(z): float(v) for z, v in zip(sub.atomic_numbers, e0)}


def resolve_reference_energies(
    dataset: Dataset, given: Mapping[str | int, float] | str | None = "fit"
) -> dict[int, float]:
    """E0s from a mapping (symbols or atomic numbers), ``'fit'``, or ``None`` (zeros).

    Parameters
    ----------
    dataset : Dataset
        Frames (for ``'fit'`` and to check species coverage).
    given : mapping, 'fit' or None
        Isolated-atom energies in eV, e.g. ``{"Cu": -0.007}``.

    Returns
    -------
    dict of int to float
    """
    if given is None:
        return {int(z): 0.0 for z in dataset.atomic_numbers}
    if isinstance(given, str):
        if given != "fit":
            raise ConfigError(f"E0s must be a mapping, 'fit' or None, got {given!r}")
        return fit_reference_energies(dataset)
    out: dict[int, float] = {}
    for k, v in given.items():
        z = int(k) if isinstance(k, (int, np.integer)) or str(k).isdigit() else atomic_numbers.get(str(k))
        if z is None:
            raise ConfigError(f"unknown element {k!r} in E0s")
        out[z] = float(v)
    missing = [chemical_symbols[z] for z in dataset.atomic_numbers if int(z) not in out]
    if missing:
        raise ConfigError(f"E0s missing for species {missing}")
    return out

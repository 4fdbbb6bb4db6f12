"""Checks applied to every frame on reading: each failure names file, frame and problem."""

from __future__ import annotations

from typing import Any

import numpy as np
from ase.data import chemical_symbols

from ml4m.data.frames import Frame
from ml4m.errors import DataError

__all__ = ["MIN_DISTANCE", "check_frame", "coerce_labels", "check_consistent_labels"]

#: two atoms closer than this (Angstrom) make a frame invalid
MIN_DISTANCE: float = 0.5
_MAX_Z = len(chemical_symbols) - 1


def coerce_labels(raw: dict[str, Any], n_atoms: int, path: str, index: int) -> dict[str, Any]:
    """Convert raw labels to float arrays of the documented shapes, or raise.

    Parameters
    ----------
    raw : dict
        ``energy`` (scalar), ``forces`` (n_atoms x 3), ``stress`` (6 Voigt or 3x3).
    n_atoms : int
        Number of atoms in the frame.
    path, index : str, int
        File and frame, for the error message.

    Returns
    -------
    dict
        ``energy`` as float (eV), ``forces`` as (n_atoms, 3) array (eV/Angstrom),
        ``stress`` as (6,) Voigt array (eV/Angstrom^3).
    """
    out: dict[str, Any] = {}
    if "energy" in raw:
        e = np.asarray(raw["energy"], dtype=float)
        if e.size != 1:
            raise DataError(f"energy must be a scalar, got shape {e.shape}", path, index)
        if not np.isfinite(e).all():
            raise DataError(f"energy is not finite ({float(e.ravel()[0])})", path, index)
        out["energy"] = float(e.ravel()[0])
    if "forces" in raw:
        f = np.asarray(raw["forces"], dtype=float)
        if f.shape != (n_atoms, 3):
            raise DataError(
                f"forces have shape {f.shape}, expected ({n_atoms}, 3) for {n_atoms} atoms",
                path,
                index,
            )
        bad = ~np.isfinite(f).all(axis=1)
        if bad.any():
            raise DataError(
                f"forces are not finite (NaN or inf) on atom {int(np.argmax(bad))}", path, index
            )
        out["forces"] = f.copy()
    if "stress" in raw:
        s = np.asarray(raw["stress"], dtype=float)
        if s.size == 9:
            m = s.reshape(3, 3)
            s = np.array([m[0, 0], m[1, 1], m[2, 2], m[1, 2], m[0, 2], m[0, 1]])
        if s.shape != (6,):
            raise DataError(
                f"stress has shape {s.shape}, expected 6 (Voigt) or 3x3", path, index
            )
        if not np.isfinite(s).all():
            raise DataError("stress is not finite (NaN or inf)", path, index)
        out["stress"] = s.copy()
    return out


def check_frame(frame: Frame, min_distance: float = MIN_DISTANCE) -> None:
    """Raise :class:`DataError` if ``frame`` is not a valid structure.

    Checks: at least one atom; known elements (1 <= Z <= 118); finite positions and
    cell; a periodic cell of non-zero volume; no two atoms closer than
    ``min_distance`` (periodic images included).

    Parameters
    ----------
    frame : Frame
        The frame to check; its ``source`` names it in the message.
    min_distance : float, default=0.5
        Smallest allowed interatomic distance, Angstrom. ``0`` disables the check.
    """
    path, index = frame.source if frame.source is not None else (None, None)
    n = len(frame.numbers)
    if n == 0:
        raise DataError("structure has no atoms", path, index)
    z = frame.numbers
    bad = (z < 1) | (z > _MAX_Z)
    if bad.any():
        k = int(np.argmax(bad))
        raise DataError(
            f"unknown element on atom {k} (atomic number {int(z[k])})", path, index
        )
    if not np.isfinite(frame.positions).all():
        k = int(np.argmax(~np.isfinite(frame.positions).all(axis=1)))
        raise DataError(f"positions are not finite (NaN or inf) on atom {k}", path, index)
    if not np.isfinite(frame.cell).all():
        raise DataError("cell is not finite (NaN or inf)", path, index)
    if frame.pbc.any():
        periodic_vectors = frame.cell[frame.pbc]
        sv = np.linalg.svd(periodic_vectors, compute_uv=False)
        if sv.min() < 1e-8 * max(1.0, float(sv.max())) or sv.min() < 1e-6:
            raise DataError(
                "periodic cell has zero volume (cell vectors along periodic directions "
                f"are degenerate: pbc={frame.pbc.tolist()})",
                path,
                index,
            )
    if min_distance > 0 and n > 1:
        from ml4m.data.neighbors import neighbor_list

        nl = neighbor_list(frame, cutoff=min_distance, full_list=False)
        if len(nl.distances):
            k = int(np.argmin(nl.distances))
            raise DataError(
                f"atoms {int(nl.i[k])} and {int(nl.j[k])} are {nl.distances[k]:.3f} Angstrom "
                f"apart (closer than {min_distance} Angstrom)",
                path,
                index,
            )


def check_consistent_labels(
    frames: list[Frame], present: dict[str, int], path: str | None = None
) -> None:
    """Raise if a label is present on some frames but missing on others.

    Stress may be missing on frames that are not fully periodic (it is undefined
    there); energy and forces must be on all frames or none.

    Parameters
    ----------
    frames : list of Frame
        Frames read from one source.
    present : dict
        Number of frames carrying each label.
    path : str, optional
        File name for the message.
    """
    for label, count in present.items():
        if count == 0:
            continue
        for f in frames:
            if f.has(label):
                continue
            if label == "stress" and not f.pbc.all():
                continue
            idx = f.source[1] if f.source is not None else None
            src = f.source[0] if f.source is not None else path
            raise DataError(
                f"{label} label missing, but {count} other frame(s) of the data set have it "
                "(partial labels)",
                src,
                idx,
            )

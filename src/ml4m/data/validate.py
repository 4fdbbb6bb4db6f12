"""Checks applied to every frame on reading: each failure names file, frame and problem."""

from __future__ import annotations

from typing import Any

import numpy as np
from ase.data import chemical_symbols

from ml4m.data.frames import Frame
from ml4m.errors import DataError
from ml4m.validation import check_array

__all__ = ["MIN_DISTANCE", "MAX_COORDINATE", "check_frame", "coerce_labels",
           "check_consistent_labels"]

#: two atoms closer than this (Angstrom) make a frame invalid
MIN_DISTANCE: float = 0.5
#: largest accepted absolute Cartesian coordinate or cell entry, Angstrom (0.1 mm). It
#: only refuses absurd values (1e30, a unit mix-up by many orders); atoms far apart but
#: within it (a molecule 1e5 Angstrom from another) are the neighbour list's to handle
MAX_COORDINATE: float = 1e6
_MAX_Z = len(chemical_symbols) - 1


def coerce_labels(
    raw: dict[str, Any],
    n_atoms: int,
    path: str,
    index: int,
    keys: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Convert raw labels to float arrays of the documented shapes, or raise.

    Parameters
    ----------
    raw : dict
        ``energy`` (scalar), ``forces`` (n_atoms x 3), ``stress`` (6 Voigt or 3x3).
    n_atoms : int
        Number of atoms in the frame.
    path, index : str, int
        File and frame, for the error message.
    keys : dict, optional
        The file's key of each label (``{"energy": "REF_energy"}``), named in messages.

    Returns
    -------
    dict
        ``energy`` as float (eV), ``forces`` as (n_atoms, 3) array (eV/Angstrom),
        ``stress`` as (6,) Voigt array (eV/Angstrom^3).

    Raises
    ------
    DataError
        Naming file, frame and key: a value that is not a number (text), of the wrong
        shape, or not finite.
    """
    keys = keys or {}
    where = {"path": path, "frame": index}

    def key(label: str) -> str:
        found = keys.get(label) or (keys.get("virial") if label == "stress" else None)
        return label if found in (None, label) else f"{label} (key {found!r})"

    out: dict[str, Any] = {}
    if "energy" in raw:
        e = check_array(key("energy"), raw["energy"], kinds="fiu", **where)
        if e.size != 1:
            raise DataError(f"{key('energy')} must be a scalar, got shape {e.shape}", **where)
        out["energy"] = float(e.ravel()[0])
    if "forces" in raw:
        f = check_array(key("forces"), raw["forces"], kinds="fiu", finite=False, **where)
        if f.shape != (n_atoms, 3):
            raise DataError(f"{key('forces')} have shape {f.shape}, expected ({n_atoms}, 3) for "
                            f"{n_atoms} atoms", **where)
        bad = ~np.isfinite(f).all(axis=1)
        if bad.any():
            raise DataError(f"{key('forces')} are not finite (NaN or inf) on atom "
                            f"{int(np.argmax(bad))}", **where)
        out["forces"] = f.astype(np.float64)
    if "stress" in raw:
        s = check_array(key("stress"), raw["stress"], kinds="fiu", **where).astype(np.float64)
        if s.size == 9:
            m = s.reshape(3, 3)
            s = np.array([m[0, 0], m[1, 1], m[2, 2], m[1, 2], m[0, 2], m[0, 1]])
        if s.shape != (6,):
            raise DataError(f"{key('stress')} has shape {s.shape}, expected 6 (Voigt) or 3x3",
                            **where)
        out["stress"] = s
    return out


def check_frame(frame: Frame, min_distance: float = MIN_DISTANCE) -> None:
    """Raise :class:`DataError` if ``frame`` is not a valid structure.

    Checks: at least one atom; known elements (1 <= Z <= 118); finite positions and
    cell within :data:`MAX_COORDINATE`; a periodic cell of non-zero volume; no two atoms closer than
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
    if frame.positions.shape != (n, 3):
        raise DataError(f"positions have shape {frame.positions.shape}, expected ({n}, 3)",
                        path, index)
    if not np.isfinite(frame.positions).all():
        k = int(np.argmax(~np.isfinite(frame.positions).all(axis=1)))
        raise DataError(f"positions are not finite (NaN or inf) on atom {k}", path, index)
    far = np.abs(frame.positions).max(axis=1) > MAX_COORDINATE
    if far.any():
        k = int(np.argmax(far))
        raise DataError(f"position of atom {k} {frame.positions[k].tolist()} lies beyond "
                        f"{MAX_COORDINATE:g} Angstrom (wrong units or a corrupted value?)",
                        path, index)
    if frame.cell.shape != (3, 3) or not np.isfinite(frame.cell).all():
        raise DataError(f"cell is not a finite 3x3 matrix: {frame.cell.tolist()}", path, index)
    if np.abs(frame.cell).max() > MAX_COORDINATE:
        raise DataError(f"cell entries exceed {MAX_COORDINATE:g} Angstrom: "
                        f"{frame.cell.tolist()}", path, index)
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

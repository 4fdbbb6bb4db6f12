"""Summary statistics of a dataset (what ``ml4m data info`` prints)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

from ml4m.data.frames import LABELS, Frame

__all__ = ["summarize"]


def summarize(frames: Iterable[Frame]) -> dict[str, Any]:
    """Counts and label statistics of a set of frames, in one pass.

    Parameters
    ----------
    frames : iterable of Frame
        A :class:`Dataset`, a packed store (read frame by frame) or any iterable.

    Returns
    -------
    dict
        ``n_frames``, ``n_atoms``, ``species`` (symbol -> atom count), ``labels``
        (label -> number of frames carrying it), ``energy_per_atom_ev`` (min, max,
        mean, std of E/N over frames with energy), ``force_rms_ev_per_a`` (root mean
        square of all force components, eV/Angstrom), ``force_max_ev_per_a`` (largest
        force norm), ``pressure_gpa`` (min/max of minus the mean normal stress, GPa),
        ``atoms_per_frame`` (min/max), ``config_types`` (type -> frames).
    """
    from ase.data import chemical_symbols

    from ml4m.units import EV_PER_A3_TO_GPA

    e_per_atom, pressure, sizes = [], [], []
    species: Counter[int] = Counter()
    labels = dict.fromkeys(LABELS, 0)
    types: Counter[str] = Counter()
    f_squares, f_count, f_max = 0.0, 0, 0.0
    for f in frames:
        sizes.append(len(f))
        zs, ns = np.unique(f.numbers, return_counts=True)
        species.update(dict(zip(zs.tolist(), ns.tolist())))
        for lab in LABELS:
            labels[lab] += f.has(lab)
        if f.energy is not None:
            e_per_atom.append(f.energy / len(f))
        if f.forces is not None:
            f_squares += float(np.sum(f.forces**2))
            f_count += f.forces.size
            f_max = max(f_max, float(np.linalg.norm(f.forces, axis=1).max()))
        if f.stress is not None:
            pressure.append(-float(np.mean(f.stress[:3])) * EV_PER_A3_TO_GPA)
        if f.info.get("config_type") is not None:
            types[str(f.info["config_type"])] += 1
    out: dict[str, Any] = {
        "n_frames": len(sizes),
        "n_atoms": int(sum(sizes)),
        "species": {chemical_symbols[z]: species[z] for z in sorted(species)},
        "labels": labels,
        "atoms_per_frame": {"min": int(min(sizes)), "max": int(max(sizes))} if sizes else None,
    }
    e = np.array(e_per_atom)
    out["energy_per_atom_ev"] = ({"min": float(e.min()), "max": float(e.max()),
                                  "mean": float(e.mean()), "std": float(e.std())}
                                 if len(e) else None)
    out["force_rms_ev_per_a"] = float(np.sqrt(f_squares / f_count)) if f_count else None
    if f_count:
        out["force_max_ev_per_a"] = f_max
    if pressure:
        out["pressure_gpa"] = {"min": float(min(pressure)), "max": float(max(pressure))}
    if types:
        out["config_types"] = dict(sorted(types.items()))
    return out

"""Summary statistics of a dataset (what ``ml4m data info`` prints)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ml4m.data.frames import Dataset

__all__ = ["summarize"]


def summarize(dataset: Dataset) -> dict[str, Any]:
    """Counts and label statistics of a dataset.

    Parameters
    ----------
    dataset : Dataset
        Frames.

    Returns
    -------
    dict
        ``n_frames``, ``n_atoms``, ``species`` (symbol -> atom count), ``labels``
        (label -> number of frames carrying it), ``energy_per_atom_ev`` (min, max,
        mean, std of E/N over frames with energy), ``force_rms_ev_per_a`` (root mean
        square of all force components, eV/Angstrom), ``force_max_ev_per_a`` (largest
        force norm), ``stress_gpa`` (min/max of the mean normal stress, GPa),
        ``atoms_per_frame`` (min/max), ``config_types`` (type -> frames).
    """
    from ml4m.units import EV_PER_A3_TO_GPA

    e_per_atom = np.array([f.energy / len(f) for f in dataset if f.energy is not None])
    forces = [f.forces for f in dataset if f.forces is not None]
    stress = np.array([f.stress for f in dataset if f.stress is not None])
    sizes = np.array([len(f) for f in dataset])
    out: dict[str, Any] = {
        "n_frames": len(dataset),
        "n_atoms": dataset.n_atoms,
        "species": dataset.species_counts(),
        "labels": dataset.label_counts(),
        "atoms_per_frame": {"min": int(sizes.min()), "max": int(sizes.max())} if len(sizes) else None,
    }
    if len(e_per_atom):
        out["energy_per_atom_ev"] = {
            "min": float(e_per_atom.min()),
            "max": float(e_per_atom.max()),
            "mean": float(e_per_atom.mean()),
            "std": float(e_per_atom.std()),
        }
    else:
        out["energy_per_atom_ev"] = None
    if forces:
        allf = np.concatenate(forces)
        out["force_rms_ev_per_a"] = float(np.sqrt(np.mean(allf**2)))
        out["force_max_ev_per_a"] = float(np.linalg.norm(allf, axis=1).max())
    else:
        out["force_rms_ev_per_a"] = None
    if len(stress):
        p = -stress[:, :3].mean(axis=1) * EV_PER_A3_TO_GPA
        out["pressure_gpa"] = {"min": float(p.min()), "max": float(p.max())}
    types: dict[str, int] = {}
    for t in dataset.info_values("config_type"):
        if t is not None:
            types[str(t)] = types.get(str(t), 0) + 1
    if types:
        out["config_types"] = dict(sorted(types.items()))
    return out

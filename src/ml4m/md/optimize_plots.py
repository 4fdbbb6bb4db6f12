"""The picture of a structure search: energies and the best so far against calls (PNG)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ml4m._fileio import save_figure

__all__ = ["plot_progress"]


def plot_progress(best: np.ndarray, energies: np.ndarray, path: str | os.PathLike,
                  method: str = "") -> Path:
    """Write a PNG of each call's energy and the lowest so far, relative to the lowest
    (meV), against the reference calls.

    Parameters
    ----------
    best, energies : ndarray of shape (calls,)
        Lowest energy so far and each call's energy, eV.
    path : path
        The PNG to write (atomically).
    method : str
        Named in the title.
    """
    from matplotlib.figure import Figure

    energies = np.asarray(energies, dtype=float)
    low = float(np.min(energies))
    calls = np.arange(1, len(energies) + 1)
    fig = Figure(figsize=(6.0, 4.0), dpi=110)
    ax = fig.subplots()
    ax.plot(calls, (energies - low) * 1000.0 + 1.0, ".", color="0.6", label="call")
    ax.step(calls, (np.asarray(best, dtype=float) - low) * 1000.0 + 1.0, where="post",
            label="best so far")
    ax.set_yscale("log")
    ax.set_xlabel("reference calls")
    ax.set_ylabel("E - E_best + 1 meV (meV)")
    ax.set_title(f"ml4m optimize ({method}): best {low:.4f} eV")
    ax.legend(fontsize=8)
    return save_figure(fig, path)

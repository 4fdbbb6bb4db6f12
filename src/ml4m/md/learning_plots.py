"""The picture of a learning run: force sigma and reference calls against MD time (PNG)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ml4m._fileio import save_figure

__all__ = ["plot_history"]


def plot_history(history: dict[str, list], path: str | os.PathLike) -> Path:
    """Write a two-panel PNG: each walker's largest force sigma (eV/Angstrom) with the
    threshold, and the cumulative reference calls, against MD time (ps).

    Parameters
    ----------
    history : dict
        ``time_fs`` (rounds,), ``sigma`` (rounds, walkers), ``threshold`` (rounds,),
        ``calls`` (rounds,), as :class:`~ml4m.md.learning_state.LoopState` keeps it.
    path : path
        The PNG to write (atomically).
    """
    from matplotlib.figure import Figure

    t = np.asarray(history["time_fs"], dtype=float) / 1000.0
    sigma = np.asarray(history["sigma"], dtype=float).reshape(len(t), -1)
    fig = Figure(figsize=(6.5, 5.0), dpi=110)
    top, bottom = fig.subplots(2, 1, sharex=True)
    for k in range(sigma.shape[1]):
        top.plot(t, sigma[:, k], lw=0.8, label=f"walker {k}")
    top.plot(t, history["threshold"], "k--", lw=1.0, label="threshold")
    top.set_ylabel("max force sigma (eV/A)")
    if len(t) and np.all(sigma > 0):
        top.set_yscale("log")
    top.legend(fontsize=7, loc="best")
    bottom.step(t, history["calls"], where="post")
    bottom.set_xlabel("MD time (ps)")
    bottom.set_ylabel("reference calls")
    return save_figure(fig, path)

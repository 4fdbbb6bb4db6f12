"""Plots of a dataset's label distributions (PNG, matplotlib without pyplot)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ml4m._fileio import save_figure
from ml4m.data.frames import Dataset

__all__ = ["plot_label_histograms"]


def plot_label_histograms(dataset: Dataset, outdir: str | os.PathLike) -> list[Path]:
    """Write histograms of energy per atom and force components as PNG files.

    Parameters
    ----------
    dataset : Dataset
        Labelled frames.
    outdir : str or PathLike
        Folder for ``energy_histogram.png`` and ``force_histogram.png``.

    Returns
    -------
    list of Path
        The files written.
    """
    from matplotlib.figure import Figure

    outdir = Path(outdir)
    written = []
    e = np.array([f.energy / len(f) for f in dataset if f.energy is not None])
    groups: dict[str, list[float]] = {}
    for f in dataset:
        if f.energy is not None:
            groups.setdefault(str(f.info.get("config_type", "all")), []).append(f.energy / len(f))
    if len(e):
        fig = Figure(figsize=(6, 4), dpi=120)
        ax = fig.add_subplot()
        bins = np.linspace(e.min(), e.max(), 40) if e.max() > e.min() else 10
        ax.hist(list(groups.values()), bins=bins, stacked=True, label=list(groups))
        ax.set_xlabel("energy per atom (eV)")
        ax.set_ylabel("frames")
        ax.set_title(f"{len(e)} frames")
        if 1 < len(groups) <= 12:
            ax.legend(fontsize=7)
        written.append(save_figure(fig, outdir / "energy_histogram.png"))
    forces = [f.forces for f in dataset if f.forces is not None]
    if forces:
        allf = np.concatenate(forces)
        fig = Figure(figsize=(6, 4), dpi=120)
        ax = fig.add_subplot()
        ax.hist(allf.ravel(), bins=80, color="tab:blue", alpha=0.8, label="components")
        ax.hist(np.linalg.norm(allf, axis=1), bins=80, color="tab:orange", alpha=0.6, label="|F|")
        ax.set_yscale("log")
        ax.set_xlabel("force (eV/Angstrom)")
        ax.set_ylabel("count")
        ax.legend()
        written.append(save_figure(fig, outdir / "force_histogram.png"))
    return written

"""Parity plots of predicted against reference energies and forces, and the basis
search's CV errors against model size (PNG)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ml4m._fileio import atomic_path
from ml4m.data.frames import Dataset
from ml4m.models.base import Prediction

__all__ = ["parity_plots", "search_plot"]


def parity_plots(sets: dict[str, tuple[Dataset, Prediction]], outdir: str | os.PathLike,
                 prefix: str = "") -> list[Path]:
    """Write ``{prefix}parity_energy.png`` and ``{prefix}parity_forces.png``.

    Parameters
    ----------
    sets : dict of name to (Dataset, Prediction)
        E.g. ``{"train": (train, pred_train), "valid": (valid, pred_valid)}``.
    outdir : str or PathLike
        Output folder.
    prefix : str
        File name prefix.
    """
    from matplotlib.figure import Figure

    outdir = Path(outdir)
    written = []
    for what, unit in (("energy", "eV/atom"), ("forces", "eV/A")):
        fig = Figure(figsize=(4.5, 4.5), dpi=120)
        ax = fig.add_subplot()
        lo, hi = np.inf, -np.inf
        for name, (ds, pred) in sets.items():
            if what == "energy":
                n = np.array([len(f) for f in ds])
                ref = np.array([f.energy for f in ds]) / n
                got = pred.energy / n
            else:
                ref = np.concatenate([f.forces for f in ds]).ravel()
                got = pred.forces.ravel()
            mae = np.mean(np.abs(got - ref)) * 1000
            ax.scatter(ref, got, s=4, alpha=0.5, label=f"{name}: MAE {mae:.2f} m{unit}")
            lo, hi = min(lo, ref.min(), got.min()), max(hi, ref.max(), got.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"reference {what} ({unit})")
        ax.set_ylabel(f"predicted {what} ({unit})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = outdir / f"{prefix}parity_{what}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp)
        written.append(path)
    return written


def search_plot(table: list[dict], path: str | os.PathLike) -> Path:
    """CV force and energy RMSE of each basis the search tried against its number of
    coefficients (log-log), each point labelled with the seconds it took; the chosen
    (lowest score) basis circled. Returns ``path``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.0), dpi=120)
    ax = fig.add_subplot()
    p = np.array([row["n_coefficients"] for row in table])
    best = int(np.argmin([row["score"] for row in table]))
    for key, label, axis in (("cv_forces_rmse_mev_per_a", "forces (meV/A)", ax),
                             ("cv_energy_rmse_mev_per_atom", "energy (meV/atom)", ax)):
        y = np.array([np.nan if row[key] is None else row[key] for row in table], dtype=float)
        axis.plot(p, y, "o-", label=f"CV RMSE, {label}")
        axis.plot(p[best], y[best], "o", ms=12, mfc="none", mec="k")
    for row in table:
        ax.annotate(f"{row['seconds']:.0f} s", (row["n_coefficients"],
                    row["cv_forces_rmse_mev_per_a"] or row["cv_energy_rmse_mev_per_atom"]),
                    fontsize=6, textcoords="offset points", xytext=(3, 3))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("coefficients")
    ax.set_ylabel("cross-validation RMSE")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path

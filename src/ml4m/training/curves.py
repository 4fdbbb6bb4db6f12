"""The learning curve of a training run (PNG): loss and errors per epoch."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ml4m._fileio import save_figure

__all__ = ["plot_training_curve"]


def plot_training_curve(history: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write the loss (left) and the energy and force MAEs (right) against the epoch.

    Parameters
    ----------
    history : list of dict
        :attr:`ml4m.training.Trainer.history`.
    path : str or PathLike
        PNG file (written atomically).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=110)
    loss_ax, mae_ax = fig.subplots(1, 2)
    epochs = [r["epoch"] + 1 for r in history]
    for part in ("train", "valid"):
        losses = [r[f"{part}_loss"] for r in history]
        if not all(math.isnan(v) for v in losses):
            loss_ax.plot(epochs, losses, label=part)
        for key, unit, style in (("energy", "meV/atom", "-"), ("forces", "meV/A", "--")):
            values = [r[f"{part}_{key}_mae_mev_per_{'atom' if key == 'energy' else 'a'}"]
                      for r in history]
            if not all(math.isnan(v) for v in values):
                mae_ax.plot(epochs, values, style, label=f"{part} {key} ({unit})")
    loss_ax.set(xlabel="epoch", ylabel="loss", yscale="log", title="weighted loss")
    mae_ax.set(xlabel="epoch", ylabel="MAE", yscale="log", title="errors")
    for ax in (loss_ax, mae_ax):
        if ax.lines:
            ax.legend(fontsize=7)
    return save_figure(fig, path)

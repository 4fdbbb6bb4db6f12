"""Per-epoch logs of a training run: a CSV file, TensorBoard scalars, a progress bar."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import Any

from ml4m._fileio import atomic_path

__all__ = ["RunLog", "HISTORY_COLUMNS"]

#: columns of :attr:`Trainer.history` rows and of the CSV log
HISTORY_COLUMNS = ("epoch", "step", "seconds", "lr", "train_loss", "train_energy_mae_mev_per_atom",
                   "train_forces_mae_mev_per_a", "valid_loss", "valid_energy_mae_mev_per_atom",
                   "valid_forces_mae_mev_per_a")


class RunLog:
    """Where a run reports: the CSV (rewritten whole, atomically, each epoch), TensorBoard
    (when ``torch.utils.tensorboard`` imports), and a rich progress bar on stderr.

    Parameters
    ----------
    csv_path : str, optional
        CSV file; TensorBoard events go to ``{csv_path without suffix}_tb/``.
    progress : bool
        Show the progress bar.
    total_steps : int or None
        Length of the bar (None: a run that ends with its time budget).
    enabled : bool
        False on every data-parallel process but the first (they stay silent).
    """

    def __init__(self, csv_path: str | None, progress: bool, total_steps: int | None,
                 enabled: bool = True) -> None:
        self.csv_path = Path(csv_path) if csv_path and enabled else None
        self._tb = None
        if self.csv_path is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: CSV only
                SummaryWriter = None
            if SummaryWriter is not None:
                folder = self.csv_path.with_name(self.csv_path.stem + "_tb")
                self._tb = SummaryWriter(str(folder))
        self._bar = None
        if progress and enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn)

            self._bar = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                 console=Console(file=sys.stderr), transient=True)
            self._task = self._bar.add_task("train", total=total_steps, status="")
            self._bar.start()

    def step(self, step: int, loss: float) -> None:
        """Advance the bar to ``step``."""
        if self._bar is not None:
            self._bar.update(self._task, completed=step, status=f"loss {loss:.4g}")

    def epoch(self, history: list[dict[str, Any]]) -> None:
        """Write the history (all epochs so far) to the CSV and the last row to TensorBoard."""
        row = history[-1]
        if self._bar is not None:
            text = f"epoch {row['epoch']}: train {row['train_loss']:.4g}"
            if not math.isnan(row["valid_loss"]):
                text += f", valid {row['valid_loss']:.4g}"
            self._bar.update(self._task, status=text)
        if self.csv_path is not None:
            with atomic_path(self.csv_path) as tmp, open(tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(history)
        if self._tb is not None:
            for key in HISTORY_COLUMNS[3:]:
                if not math.isnan(row[key]):
                    self._tb.add_scalar(key, row[key], row["step"])

    def close(self) -> None:
        """Stop the bar and flush TensorBoard."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

"""Calibration of predicted sigmas on held-out frames: one scale per quantity.

A potential's raw sigmas (a committee's spread, a last-layer posterior's standard
deviations) rank its errors but are seldom their size. Each quantity's sigmas are
multiplied by the factor that makes their mean variance equal the mean squared error
over held-out frames (ratio of force RMSE to RMS sigma 1 there), as the last-layer
posterior and the committee both do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ml4m.data.frames import Frame
from ml4m.models.base import Prediction

__all__ = ["held_out_errors", "variance_scale"]


def variance_scale(err: np.ndarray, var: np.ndarray) -> float | None:
    """``sqrt(mean(err^2) / mean(var))``: the factor of the sigmas whose mean variance
    is the mean squared error ``err`` (any unit, that of ``sqrt(var)``); None when there
    are no errors or every variance is zero."""
    err, var = np.asarray(err, float).ravel(), np.asarray(var, float).ravel()
    if not len(err) or not np.mean(var) > 0:
        return None
    return float(np.sqrt(np.mean(err ** 2) / np.mean(var)))


def held_out_errors(frames: Sequence[Frame], pred: Prediction
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Errors and predicted variances on labelled ``frames`` of a prediction with sigmas:
    energy errors (eV, reference minus prediction) and variances per frame with an
    energy, force-component errors (eV/Angstrom) and variances of the atoms of frames
    with forces (empty arrays where none has the label)."""
    e_rows = [k for k, f in enumerate(frames) if f.energy is not None]
    f_rows = [k for k, f in enumerate(frames) if f.forces is not None]
    atoms = (np.concatenate([np.arange(pred.offsets[k], pred.offsets[k + 1]) for k in f_rows])
             if f_rows else np.zeros(0, dtype=int))
    e_err = np.array([frames[k].energy for k in e_rows], dtype=float) - pred.energy[e_rows]
    f_err = (np.concatenate([frames[k].forces for k in f_rows]) - pred.forces[atoms]
             if f_rows else np.zeros((0, 3)))
    return e_err, pred.energy_sigma[e_rows] ** 2, f_err, pred.forces_sigma[atoms] ** 2

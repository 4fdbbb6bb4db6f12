"""Errors of predictions against reference labels, in the units of ``ml4m test``."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import spearmanr

from ml4m.data.frames import Dataset
from ml4m.models.base import Prediction
from ml4m.units import EV_PER_A3_TO_GPA

__all__ = ["attainable_spearman", "error_metrics"]


def _spearman(sigma: np.ndarray, err: np.ndarray) -> float | None:
    if len(sigma) < 3 or np.ptp(sigma) == 0 or np.ptp(err) == 0:
        return None
    return float(spearmanr(sigma, err).statistic)


def attainable_spearman(err_norm: np.ndarray, n_dim: int = 3, draws: int = 8,
                        seed: int = 0) -> float | None:
    """The Spearman correlation that the *true* per-atom error scale would reach with the
    error norms ``err_norm``: an estimate of the most any predicted sigma can reach.

    Each atom's error vector is taken as ``s_i z_i`` with ``z_i ~ N(0, I_n_dim)``, so the
    norm is ``s_i`` times a chi variable with ``n_dim`` degrees of freedom. The spread of
    the unknown scales follows from the moments: ``(1 + CV(e)^2) = (1 + CV(s)^2) (1 +
    CV(chi)^2)``. With ``s`` log-normal of that coefficient of variation, the Spearman
    correlation of ``s`` with ``s * chi`` is averaged over ``draws`` simulations of
    ``len(err_norm)`` atoms (fixed ``seed``). Errors no more spread than one chi variable
    give 0: at a single error scale no sigma can rank the errors.

    Parameters
    ----------
    err_norm : ndarray of shape (n_atoms,)
        Norms of the per-atom force errors (any unit).
    n_dim : int, default=3
        Components per error vector.

    Returns
    -------
    float or None
        ``None`` below 3 atoms or when every norm is zero.
    """
    from scipy.special import gammaln

    e = np.asarray(err_norm, dtype=float)
    if len(e) < 3 or not e.any():
        return None
    chi_mean = np.sqrt(2.0) * np.exp(gammaln((n_dim + 1) / 2) - gammaln(n_dim / 2))
    cv_chi2 = n_dim / chi_mean**2 - 1.0
    cv_s2 = (1.0 + e.var() / e.mean() ** 2) / (1.0 + cv_chi2) - 1.0
    if cv_s2 <= 0:
        return 0.0
    rng = np.random.default_rng(seed)
    width = np.sqrt(np.log1p(cv_s2))
    rhos = []
    for _ in range(draws):
        s = np.exp(width * rng.standard_normal(len(e)))
        chi = np.linalg.norm(rng.standard_normal((len(e), n_dim)), axis=1)
        rhos.append(spearmanr(s, s * chi).statistic)
    return float(np.mean(rhos))


def error_metrics(pred: Prediction, reference: Dataset) -> dict[str, Any]:
    """Energy, force and stress errors (and sigma/error rank correlation).

    Parameters
    ----------
    pred : Prediction
        Model output for ``reference``'s frames, in order.
    reference : Dataset
        Labelled frames.

    Returns
    -------
    dict
        ``{"n_frames", "energy": {"mae_mev_per_atom", "rmse_mev_per_atom"},
        "forces": {"mae_mev_per_a", "rmse_mev_per_a"}, "stress": {"mae_gpa",
        "rmse_gpa"}}``; ``stress`` only when labelled; ``uncertainty``
        (``force_sigma_spearman``, ``energy_sigma_spearman``: Spearman correlation of
        predicted sigma and absolute error; ``force_sigma_spearman_attainable``: the
        estimate of :func:`attainable_spearman`, what the true per-atom error scale would
        reach on these errors; ``force_sigma_rms_mev_per_a`` and
        ``energy_sigma_rms_mev_per_atom``: the RMS predicted sigma per component, and
        ``force_rmse_over_sigma``, ``energy_rmse_over_sigma``: observed RMSE over RMS sigma,
        1 for a calibrated model) when the prediction has sigmas.
    """
    out: dict[str, Any] = {"n_frames": len(reference)}
    n_atoms = np.array([len(f) for f in reference])
    has_e = np.array([f.energy is not None for f in reference])
    if has_e.any():
        e_ref = np.array([f.energy for f in reference if f.energy is not None])
        de = (pred.energy[has_e] - e_ref) / n_atoms[has_e] * 1000.0
        out["energy"] = {"mae_mev_per_atom": float(np.mean(np.abs(de))),
                         "rmse_mev_per_atom": float(np.sqrt(np.mean(de**2)))}
    has_f = np.array([f.forces is not None for f in reference])
    if has_f.any():
        mask = np.repeat(has_f, n_atoms)
        f_ref = np.concatenate([f.forces for f in reference if f.forces is not None])
        df = (pred.forces[mask] - f_ref) * 1000.0
        out["forces"] = {"mae_mev_per_a": float(np.mean(np.abs(df))),
                         "rmse_mev_per_a": float(np.sqrt(np.mean(df**2)))}
    has_s = np.array([f.stress is not None for f in reference])
    if has_s.any():
        s_ref = np.array([f.stress for f in reference if f.stress is not None])
        ds = (pred.stress[has_s] - s_ref) * EV_PER_A3_TO_GPA
        out["stress"] = {"mae_gpa": float(np.mean(np.abs(ds))),
                         "rmse_gpa": float(np.sqrt(np.mean(ds**2)))}
    if pred.forces_sigma is not None or pred.energy_sigma is not None:
        unc: dict[str, Any] = {}
        if pred.forces_sigma is not None and has_f.any():
            sig = pred.forces_sigma[mask]
            # per atom: the norm of the sigma vector against the norm of the error vector
            err = np.linalg.norm(df, axis=1)
            unc["force_sigma_spearman"] = _spearman(np.linalg.norm(sig, axis=1), err)
            unc["force_sigma_spearman_attainable"] = attainable_spearman(err)
            unc["force_sigma_spearman_per_component"] = _spearman(sig.ravel(), np.abs(df).ravel())
            rms = float(np.sqrt(np.mean(sig**2))) * 1000.0
            unc["force_sigma_rms_mev_per_a"] = rms
            unc["force_rmse_over_sigma"] = out["forces"]["rmse_mev_per_a"] / rms if rms > 0 else None
        if pred.energy_sigma is not None and has_e.any():
            sig_e = pred.energy_sigma[has_e] / n_atoms[has_e] * 1000.0
            unc["energy_sigma_spearman"] = _spearman(sig_e, np.abs(de))
            rms = float(np.sqrt(np.mean(sig_e**2)))
            unc["energy_sigma_rms_mev_per_atom"] = rms
            unc["energy_rmse_over_sigma"] = (out["energy"]["rmse_mev_per_atom"] / rms if rms > 0
                                             else None)
        out["uncertainty"] = unc
    return out

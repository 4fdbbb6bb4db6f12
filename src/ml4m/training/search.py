"""Choose a linear ACE basis by cross-validation inside the training set, within a budget.

The candidate bases form a ladder of growing per-order degree bounds (``RUNGS``), all
with the same radial and angular settings, so that every rung's functions are a subset
of the largest rung's (ACE's basis is nested: the same function has the same values in
any basis holding it). One pass over the training frames computes the design rows of
the largest affordable rung and adds them to per-fold normal equations (energy per
atom, forces, stress kept apart); every rung is then a principal sub-matrix of those
sums, so the search costs one pass plus small solves, not a fit per candidate and fold.

For each rung:

1. the evidence (:class:`~ml4m.models.linear.bayesian.BayesianLinearRegression`) on all
   folds gives the prior precision ``alpha`` and the noise precisions ``beta_q``;
2. fold ``k`` is predicted by the posterior mean of the other folds,
   ``c_k = (alpha P + sum_q beta_q (G_q - G_qk))^-1 sum_q beta_q (b_q - b_qk)``, and its
   squared error comes from its own sums, ``c^T G_qk c - 2 c^T b_qk + y^T y_qk``;
3. the score is ``E_rmse / sigma_E + F_rmse / sigma_F`` over all folds (the ``sigma_*``
   are the fit's expected errors).

Folds are groups of frames: ``info['traj']`` (or ``config_type``) when the frames carry
three or more distinct values, else contiguous chunks (MD frames are stored in
trajectory order). The valid file is never read. The ladder stops when the budget is
spent (keeping time for the final fit) or when two rungs in a row score worse than the
best; a larger budget therefore never gives a worse CV score. The largest rung is the
largest whose pass (timed on three frames), CV solves and final fit fit the budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml4m.data.frames import Frame
from ml4m.errors import ConfigError

__all__ = ["RUNGS", "RUNGS_MANY_ELEMENTS", "SearchResult", "ladder", "search_linear_ace", "cv_folds"]

#: ladder of candidate bases: correlation order and degree bound per order, each bound
#: non-decreasing along the ladder (so every rung is nested in every later one); the
#: four-body functions of several elements use the element-agnostic density
RUNGS: tuple[dict[str, Any], ...] = (
    {"correlation_order": 2, "total_degree": [6, 5]},
    {"correlation_order": 3, "total_degree": [7, 6, 5]},
    {"correlation_order": 3, "total_degree": [8, 7, 6]},
    {"correlation_order": 3, "total_degree": [10, 8, 7]},
    {"correlation_order": 3, "total_degree": [12, 10, 8]},
    {"correlation_order": 4, "total_degree": [12, 10, 9, 10]},
    {"correlation_order": 4, "total_degree": [14, 12, 10, 12]},
    {"correlation_order": 4, "total_degree": [16, 12, 11, 15]},
)
#: the ladder for three or more elements, whose element-resolved three-body functions
#: multiply fastest: three-body degree stays at 7 while the radial resolution and the
#: element-agnostic four-body functions grow (3BPA: 5,360 to 8,868 coefficients)
RUNGS_MANY_ELEMENTS: tuple[dict[str, Any], ...] = RUNGS[:4] + (
    {"correlation_order": 4, "total_degree": [12, 9, 7, 10]},
    {"correlation_order": 4, "total_degree": [12, 10, 7, 12]},
    {"correlation_order": 4, "total_degree": [14, 10, 7, 13]},
    {"correlation_order": 4, "total_degree": [16, 10, 8, 15]},
)


def ladder(n_species: int) -> tuple[dict[str, Any], ...]:
    """The candidate bases for ``n_species`` elements."""
    return RUNGS_MANY_ELEMENTS if n_species >= 3 else RUNGS


#: settings shared by every rung (the radial basis spans each pair's sampled distances)
BASE = {"r_cut": 5.0, "l_max": 3, "pair_r_in": "auto"}
#: number of cross-validation folds
N_FOLDS = 3
#: share of the memory limit the per-fold sums may take
MEMORY_SHARE = 0.4
#: flop rate assumed when choosing the largest rung, before any solve is timed, flop/s
ASSUMED_FLOP_RATE = 2e10
#: slowest flop rate assumed when extrapolating the cost of a rung's solves, flop/s
MIN_FLOP_RATE = 2e9


@dataclass
class SearchResult:
    """What the search tried and chose.

    Attributes
    ----------
    descriptor : dict
        ACE settings of the chosen rung (``pair_r_in`` resolved, Angstrom).
    table : list of dict
        One row per rung tried: ``rung``, ``correlation_order``, ``total_degree``,
        ``n_coefficients``, ``cv_energy_rmse_mev_per_atom``, ``cv_forces_rmse_mev_per_a``,
        ``score``, ``seconds``.
    folds : int
        Number of folds.
    pass_seconds : float
        Time of the pass over the training frames, s.
    stopped : str
        Why the ladder stopped.
    """

    descriptor: dict[str, Any]
    table: list[dict[str, Any]] = field(default_factory=list)
    folds: int = N_FOLDS
    pass_seconds: float = 0.0
    stopped: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"descriptor": self.descriptor, "table": self.table, "folds": self.folds,
                "pass_seconds": self.pass_seconds, "stopped": self.stopped}


def cv_folds(frames: list[Frame], n_folds: int = N_FOLDS) -> np.ndarray:
    """Fold index (0 .. n_folds - 1) of every frame: whole groups (``info['traj']`` or
    ``config_type`` when three or more distinct values exist), else contiguous chunks."""
    if len(frames) < n_folds:
        raise ConfigError(f"the basis search needs at least {n_folds} training frames, "
                          f"got {len(frames)}")
    for key in ("traj", "config_type"):
        values = [f.info.get(key) for f in frames]
        if all(v is not None for v in values) and len(set(map(str, values))) >= n_folds:
            order = {v: k for k, v in enumerate(dict.fromkeys(map(str, values)))}
            return np.array([order[str(v)] % n_folds for v in values])
    return np.arange(len(frames)) * n_folds // len(frames)


def _settings(rung: dict[str, Any], pair_r_in, n_species: int) -> dict[str, Any]:
    """ACE settings of ``rung``: ``n_max`` is its first degree bound (every function the
    bounds admit), the four-body functions element-agnostic for several elements."""
    agnostic = 4 if n_species > 1 and rung["correlation_order"] >= 4 else 0
    return {"r_cut": BASE["r_cut"], "l_max": BASE["l_max"], "n_max": rung["total_degree"][0],
            "correlation_order": rung["correlation_order"],
            "total_degree": list(rung["total_degree"]), "agnostic_from": agnostic,
            "pair_r_in": pair_r_in}


def _descriptor(species: list[int], rung: dict[str, Any], pair_r_in):
    from ml4m.descriptors import make_descriptor

    return make_descriptor("ace", species=species, **_settings(rung, pair_r_in, len(species)))


class _Folds:
    """Per-fold normal equations of the largest rung (one accumulator per fold)."""

    def __init__(self, model, frames: list[Frame], folds: np.ndarray, use_f: bool, use_s: bool):
        from ml4m.models.linear.potential import _Accumulator

        sig = {"energy": model.sigma_energy, "forces": model.sigma_forces if use_f else None,
               "stress": model.sigma_stress if use_s else None}
        self.sigmas = sig
        self.acc = []
        for k in range(int(folds.max()) + 1):
            acc = _Accumulator(model.fmap_.n_features, True, sig)
            part = [f for f, fk in zip(frames, folds) if fk == k]
            for block, rows, _, _ in model._block_rows(part, use_f, use_s):
                acc.add(rows, block, model._e0_of(block))
            self.acc.append(acc)
        self.quantities = [q for q in ("energy", "forces", "stress")
                           if sum(a.rows[q] for a in self.acc)]

    def sums(self, q: str, k: int, cols: np.ndarray):
        neq = self.acc[k].neq[q]
        return neq.AtA[np.ix_(cols, cols)], neq.Aty[cols], neq.yty, self.acc[k].rows[q]


def _solve_flops(p: int) -> float:
    """Floating-point operations of one rung's CV: an evidence decomposition and a
    factorisation per fold, each about p^3, and the final fit's two."""
    return (N_FOLDS + 3) * float(p) ** 3


def _sub_equations(G: np.ndarray, b: np.ndarray, yy: float, n: int):
    from ml4m.models.linear.bayesian import NormalEquations

    neq = NormalEquations(len(b))
    neq.AtA = G
    neq.Aty = b.copy()
    neq.yty = yy
    neq.n = n
    return neq


def _cv_rung(folds: _Folds, cols: np.ndarray, prior: np.ndarray, shared: bool = True
             ) -> dict[str, float]:
    """CV RMSE per quantity (eV/atom, eV/A, eV/A^3) of the sub-basis ``cols``; ``shared``:
    one noise scale for all quantities (their relative weights fixed by the sigmas, the
    model's ``noise='shared'``), else one each."""
    import scipy.linalg

    from ml4m.models.linear.bayesian import BayesianLinearRegression

    K = len(folds.acc)
    parts = {q: [folds.sums(q, k, cols) for k in range(K)] for q in folds.quantities}
    total = {q: [sum(p[i] for p in parts[q]) for i in range(4)] for q in folds.quantities}
    P = prior[cols] / prior[cols].mean()
    reg = BayesianLinearRegression(prior=P)
    if shared:
        reg.fit_normal_equations(_sub_equations(*[sum(total[q][i] for q in folds.quantities)
                                                  for i in range(4)]))
        betas = np.full(len(folds.quantities), reg.beta_)
    else:
        reg.fit_groups([_sub_equations(*total[q]) for q in folds.quantities])
        betas = np.broadcast_to(reg.betas_, (len(folds.quantities),))
    sse = dict.fromkeys(folds.quantities, 0.0)
    for k in range(K):
        H = np.diag(reg.alpha_ * P)
        rhs = np.zeros(len(cols))
        for q, beta in zip(folds.quantities, betas):
            G_k, b_k = parts[q][k][0], parts[q][k][1]
            H += beta * (total[q][0] - G_k)
            rhs += beta * (total[q][1] - b_k)
        c = scipy.linalg.cho_solve(scipy.linalg.cho_factor(H, lower=False), rhs)
        for q in folds.quantities:
            G_k, b_k, yy_k, _ = parts[q][k]
            sse[q] += max(0.0, float(c @ G_k @ c - 2.0 * c @ b_k + yy_k))
    # rows carry weight 1 / sigma_q^2: undo it for errors in the labels' units
    return {q: math.sqrt(sse[q] * folds.sigmas[q] ** 2 / max(1, total[q][3]))
            for q in folds.quantities}


def search_linear_ace(frames: list[Frame], budget_s: float, make_model, started: float | None = None,
                      progress=None) -> SearchResult:
    """Pick the ACE rung with the best CV score within ``budget_s`` seconds.

    Parameters
    ----------
    frames : list of Frame
        Training frames (energies and forces; the valid set is never passed).
    budget_s : float
        Seconds for the whole fit, the search and the final fit included.
    make_model : callable
        ``make_model(descriptor)`` -> an unfitted :class:`~ml4m.models.linear.LinearACE`
        with the fit's other settings (E0s, sigmas, prior).
    started : float, optional
        ``time.perf_counter()`` when the fit started (default: now).
    progress : callable, optional
        Called with each table row as it is computed.

    Returns
    -------
    SearchResult
    """
    from ml4m.data import pair_inner_radii
    from ml4m.data.frames import Dataset
    from ml4m.data.reference import resolve_reference_energies
    from ml4m.resources import memory_limit
    from ml4m.training.fit import PAIR_R_IN_MARGIN

    started = time.perf_counter() if started is None else started
    deadline = started + budget_s
    species = sorted({int(z) for f in frames for z in f.numbers})
    rungs = ladder(len(species))
    pair_r_in = pair_inner_radii(frames, PAIR_R_IN_MARGIN)
    folds = cv_folds(frames)
    use_f = all(f.forces is not None for f in frames)
    use_s = any(f.stress is not None for f in frames)
    quantities = 1 + use_f + use_s
    limit = memory_limit()[0]

    # the largest rung whose pass, per-fold sums, CV solves and final fit fit the budget
    # and the memory; every rung's functions are among its own (nested ladder)
    descriptors = [_descriptor(species, rung, pair_r_in) for rung in rungs]
    sizes = [d.n_features * len(species) for d in descriptors]
    e0 = resolve_reference_energies(Dataset(frames), make_model(descriptors[0]).e0)
    probe = frames[:: max(1, len(frames) // 3)][:3]
    top = 0
    for r in range(len(rungs) - 1, -1, -1):
        if N_FOLDS * quantities * 8.0 * sizes[r] ** 2 > MEMORY_SHARE * limit and r > 0:
            continue
        model = make_model(descriptors[r])
        model.e0_ = e0
        model.fmap_ = model._make_feature_map(frames)
        t0 = time.perf_counter()
        for _ in model._block_rows(probe, use_f, use_s):
            pass
        t_pass = (time.perf_counter() - t0) * len(frames) / len(probe)
        need = 2 * t_pass + sum(_solve_flops(q) for q in sizes[:r + 1]) / ASSUMED_FLOP_RATE
        if need <= deadline - time.perf_counter() or r == 0:
            top = r
            break
    t0 = time.perf_counter()
    data = _Folds(model, frames, folds, use_f, use_s)
    result = SearchResult(descriptor={}, folds=int(folds.max()) + 1,
                          pass_seconds=time.perf_counter() - t0)
    names = model.descriptor.feature_names()
    index = {name: j for j, name in enumerate(names)}
    blocks = model.fmap_
    desc_cols = blocks.descriptor_columns
    prior = model._prior(np.ones(blocks.n_features))
    sigma = {"energy": model.sigma_energy, "forces": model.sigma_forces or 1.0,
             "stress": model.sigma_stress or 1.0}
    best, worse, rate = None, 0, None
    result.stopped = "every affordable rung tried"
    for r in range(top + 1):
        keep = np.zeros(len(names), bool)
        keep[[index[n] for n in descriptors[r].feature_names()]] = True
        cols = np.flatnonzero(keep[desc_cols])
        # the final fit repeats the pass and a solve of the chosen size
        need = _solve_flops(len(cols)) / rate + result.pass_seconds if rate else 0.0
        if r > 0 and time.perf_counter() + need > deadline:
            result.stopped = f"budget: rung {r} would end after the budget"
            break
        t0 = time.perf_counter()
        rmse = _cv_rung(data, cols, prior, shared=model.noise == "shared")
        seconds = time.perf_counter() - t0
        # flop rate of this rung's solves, at least MIN_FLOP_RATE: small solves are
        # dominated by overheads that do not grow as p^3
        rate = max(_solve_flops(len(cols)) / max(seconds, 1e-9), MIN_FLOP_RATE)
        score = sum(rmse[q] / sigma[q] for q in ("energy", "forces") if q in rmse)
        row = {"rung": r, "correlation_order": rungs[r]["correlation_order"],
               "total_degree": list(rungs[r]["total_degree"]), "n_coefficients": int(len(cols)),
               "cv_energy_rmse_mev_per_atom": 1000 * rmse["energy"],
               "cv_forces_rmse_mev_per_a": 1000 * rmse["forces"] if "forces" in rmse else None,
               "score": score, "seconds": seconds}
        result.table.append(row)
        if progress is not None:
            progress(row)
        if best is None or score < best["score"]:
            best, worse = row, 0
        else:
            worse += 1
            if worse == 2:
                result.stopped = "two rungs in a row scored worse than the best"
                break
    result.descriptor = _settings(rungs[best["rung"]], pair_r_in, len(species))
    return result

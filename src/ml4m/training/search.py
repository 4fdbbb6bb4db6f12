"""Choose a linear ACE basis by cross-validation inside the training set, within a budget.

The candidate bases form a ladder of growing per-order degree bounds (``RUNGS``; for
three or more elements with smaller bounds for rare centre species and hydrogen,
``species_degree``), all with the same radial and angular settings, so that every rung's
functions are a subset of the largest rung's (ACE's basis is nested: the same function
has the same values in any basis holding it). One pass over the training frames computes
the design rows of the largest affordable rung and adds them to per-fold sums (energy per
atom, forces, stress kept apart: a Gram matrix per fold for the forces, the few energy
and stress rows as rows); every rung is then a principal sub-matrix of those sums, so the
search costs one pass plus small solves, not a fit per candidate and fold. The sums of
all folds are formed once per rung and each fold's system is that total less the fold's
own sums, so the pass keeps one (p, p) matrix per fold, not one per fold and quantity.

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

__all__ = ["RUNGS", "RUNGS_MANY_ELEMENTS", "SearchResult", "cv_folds", "ladder", "search_linear_ace",
           "species_bounds"]

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
#: multiply fastest: three-body degree stays low while the radial resolution and the
#: element-agnostic four-body functions grow; from order 4 on, two kinds of centre
#: species get smaller per-order bounds (``species_degree``): ``rare`` ones (under
#: ``RARE_SHARE`` of the training atoms, whose few environments fix few coefficients) and
#: hydrogen (``light``: one bond, the simplest environments). Every species' bound is
#: non-decreasing along the ladder, so the rungs stay nested.
RUNGS_MANY_ELEMENTS: tuple[dict[str, Any], ...] = RUNGS[:3] + (
    {"correlation_order": 3, "total_degree": [10, 8, 7], "rare": [10, 8, 6]},
    {"correlation_order": 4, "total_degree": [12, 10, 8, 12],
     "light": [12, 10, 7, 10], "rare": [12, 8, 6, 10]},
    {"correlation_order": 4, "total_degree": [12, 10, 9, 13],
     "light": [12, 10, 7, 12], "rare": [12, 8, 6, 10]},
    {"correlation_order": 4, "total_degree": [12, 10, 9, 15],
     "light": [12, 10, 7, 13], "rare": [12, 8, 6, 10]},
    {"correlation_order": 4, "total_degree": [14, 10, 9, 16],
     "light": [14, 10, 7, 14], "rare": [12, 8, 6, 11]},
)
#: share of the training atoms below which a species takes a rung's ``rare`` bounds
RARE_SHARE = 0.1


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
        ``species_degree``, ``n_coefficients``, ``cv_energy_rmse_mev_per_atom``, ``cv_forces_rmse_mev_per_a``,
        ``score``, ``seconds``.
    folds : int
        Number of folds.
    pass_seconds : float
        Time of the pass over the training frames, s.
    stopped : str
        Why the ladder stopped.
    params : dict
        Model parameters of the chosen rung: ``species_degree`` (element symbol -> degree
        bound per order) when some centre species take smaller bounds, else empty.
    """

    descriptor: dict[str, Any]
    table: list[dict[str, Any]] = field(default_factory=list)
    folds: int = N_FOLDS
    pass_seconds: float = 0.0
    stopped: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"descriptor": self.descriptor, "params": self.params, "table": self.table,
                "folds": self.folds, "pass_seconds": self.pass_seconds, "stopped": self.stopped}


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


def species_bounds(rung: dict[str, Any], counts: dict[int, int]) -> dict[str, list[int]]:
    """Per-species degree bounds of ``rung`` (the model's ``species_degree``): its ``rare``
    bounds for species with under ``RARE_SHARE`` of the atoms (``counts``: atomic number ->
    atoms in train), its ``light`` bounds for hydrogen; other species keep the rung's
    ``total_degree`` and are not listed."""
    from ase.data import chemical_symbols

    total = sum(counts.values())
    out = {}
    for z in sorted(counts):
        if "rare" in rung and counts[z] < RARE_SHARE * total:
            out[chemical_symbols[z]] = list(rung["rare"])
        elif "light" in rung and z == 1:
            out[chemical_symbols[z]] = list(rung["light"])
    return out


def _descriptor(species: list[int], rung: dict[str, Any], pair_r_in):
    from ml4m.descriptors import make_descriptor

    return make_descriptor("ace", species=species, **_settings(rung, pair_r_in, len(species)))


class _Sums:
    """Weighted least-squares sums of one quantity in one fold, over the top rung's
    columns: the weighted rows while they are fewer than ``ROWS_SHARE`` of the columns
    (energies and stresses: a few rows per frame), a Gram matrix beyond (forces)."""

    #: most rows kept as rows, as a share of the columns (rows cost n p, a Gram p^2 floats)
    ROWS_SHARE = 0.25

    def __init__(self, p: int) -> None:
        self.p = p
        self.rows: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.neq = None
        self.n = 0

    def add(self, A: np.ndarray, y: np.ndarray, weight: float) -> None:
        """Add rows ``A`` (n, p) with targets ``y`` (n,), each of weight ``weight``."""
        from ml4m.models.linear.bayesian import NormalEquations

        self.n += len(y)
        if self.neq is None and self.n <= self.ROWS_SHARE * self.p:
            sw = math.sqrt(weight)
            self.rows.append(A * sw)
            self.targets.append(np.asarray(y, float) * sw)
            return
        if self.neq is None:  # too many rows: their Gram matrix from now on
            self.neq = NormalEquations(self.p)
            for R, t in zip(self.rows, self.targets):
                self.neq.add(R, t)
            self.rows, self.targets = [], []
        self.neq.add(A, y, weight)

    def _stacked(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.rows:
            return np.zeros((0, self.p)), np.zeros(0)
        if len(self.rows) > 1:
            self.rows, self.targets = [np.concatenate(self.rows)], [np.concatenate(self.targets)]
        return self.rows[0], self.targets[0]

    def gram(self, cols: np.ndarray) -> np.ndarray:
        """The (weighted) Gram matrix on ``cols``; the stored one itself (read only) when
        ``cols`` are all columns in order."""
        if self.neq is not None:
            G = self.neq.AtA
            return G if _all_columns(cols, self.p) else G[np.ix_(cols, cols)]
        R = self._stacked()[0][:, cols]
        return R.T @ R

    def rhs(self, cols: np.ndarray) -> np.ndarray:
        """``A^T W y`` on ``cols``."""
        if self.neq is not None:
            return self.neq.Aty[cols]
        R, t = self._stacked()
        return R[:, cols].T @ t

    @property
    def yty(self) -> float:
        return float(self.neq.yty) if self.neq is not None else float(
            sum(np.dot(t, t) for t in self.targets))

    def sse(self, c: np.ndarray) -> float:
        """Weighted squared error of coefficients ``c`` (p,) on these rows."""
        if self.neq is not None:
            G = self.neq.AtA
            return max(0.0, float(c @ G @ c - 2.0 * c @ self.neq.Aty + self.neq.yty))
        R, t = self._stacked()
        return float(np.sum((R @ c - t) ** 2))


def _all_columns(cols: np.ndarray, p: int) -> bool:
    return len(cols) == p and bool(np.all(cols == np.arange(p)))


class _FoldAccumulator:
    """The rows of a fit's accumulator (energies per atom, forces with rigid motions
    projected out, stresses; weights ``1 / sigma^2``) routed to per-fold :class:`_Sums`."""

    def __init__(self, p: int, sigmas: dict[str, float | None]) -> None:
        from ml4m.models.linear.potential import QUANTITIES, _Accumulator

        self.sigmas = sigmas
        self.rows = dict.fromkeys(QUANTITIES, 0)
        self.phi_sq = np.zeros(p)
        self.n_atoms = 0
        self.sums = {q: _Sums(p) for q in QUANTITIES}
        self._add_rows = _Accumulator.add

    def _add(self, q: str, A: np.ndarray, y: np.ndarray) -> None:
        self.sums[q].add(A, y, 1.0 / self.sigmas[q] ** 2)
        self.rows[q] += len(y)

    def add(self, rows, block, e0) -> None:
        self._add_rows(self, rows, block, e0)  # the fit's own row recipe, into self._add


class _Folds:
    """Per-fold sums of the largest rung: per fold and quantity a :class:`_Sums` (one
    (p, p) Gram matrix per fold for the forces; energy and stress rows as rows when few)."""

    def __init__(self, model, frames: list[Frame], folds: np.ndarray, use_f: bool, use_s: bool):
        sig = {"energy": model.sigma_energy, "forces": model.sigma_forces if use_f else None,
               "stress": model.sigma_stress if use_s else None}
        self.sigmas = sig
        self.acc = []
        for k in range(int(folds.max()) + 1):
            acc = _FoldAccumulator(model.fmap_.n_features, sig)
            part = [f for f, fk in zip(frames, folds) if fk == k]
            for block, rows, _, _ in model._block_rows(part, use_f, use_s):
                acc.add(rows, block, model._e0_of(block))
            self.acc.append(acc)
        self.quantities = [q for q in ("energy", "forces", "stress")
                           if sum(a.rows[q] for a in self.acc)]

    def fold(self, q: str, k: int) -> _Sums:
        return self.acc[k].sums[q]

    def n_rows(self, q: str) -> int:
        return sum(a.rows[q] for a in self.acc)


def _sums_bytes(p: int, n_frames: int, n_atoms: int, use_f: bool, use_s: bool) -> float:
    """Bytes of the per-fold sums of ``p`` columns and of a rung's CV at that size: a Gram
    matrix per fold for each quantity with many rows (rows below ``_Sums.ROWS_SHARE p``),
    then the all-fold sums, a fold's system and a sub-matrix copy."""
    per_fold = [n_frames / N_FOLDS]
    if use_f:
        per_fold.append(3 * n_atoms / N_FOLDS)
    if use_s:
        per_fold.append(6 * n_frames / N_FOLDS)
    floats = sum(N_FOLDS * (p * p if n > _Sums.ROWS_SHARE * p else n * p) for n in per_fold)
    return 8.0 * (floats + 3 * p * p)


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


def _group_sums(folds: _Folds, group: list[str], cols: np.ndarray, skip: int | None = None):
    """Gram matrix (a new array), right-hand side, ``y^T y`` and rows of the quantities
    ``group`` summed over every fold but ``skip``, on ``cols``."""
    G, b, yy, n = None, np.zeros(len(cols)), 0.0, 0
    for k in range(len(folds.acc)):
        if k == skip:
            continue
        for q in group:
            sums = folds.fold(q, k)
            part = sums.gram(cols)
            if G is None:
                G = np.array(part, order="F")
            else:
                G += part
            b += sums.rhs(cols)
            yy += sums.yty
            n += sums.n
    return G, b, yy, n


def _cv_rung(folds: _Folds, cols: np.ndarray, prior: np.ndarray, shared: bool = True
             ) -> dict[str, float]:
    """CV RMSE per quantity (eV/atom, eV/A, eV/A^3) of the sub-basis ``cols``; ``shared``:
    one noise scale for all quantities (their relative weights fixed by the sigmas, the
    model's ``noise='shared'``), else one each.

    The system without fold ``k`` is the all-fold sum less fold ``k``'s sums, so one
    (p, p) sum per noise group is formed for the rung, and one system per fold in turn.
    """
    import scipy.linalg

    from ml4m.models.linear.bayesian import BayesianLinearRegression

    K = len(folds.acc)
    groups = [list(folds.quantities)] if shared else [[q] for q in folds.quantities]
    totals = [_group_sums(folds, g, cols) for g in groups]
    P = prior[cols] / prior[cols].mean()
    reg = BayesianLinearRegression(prior=P)
    if shared:
        reg.fit_normal_equations(_sub_equations(*totals[0]))
    else:
        reg.fit_groups([_sub_equations(*t) for t in totals])
    betas = np.broadcast_to(reg.betas_, (len(groups),))
    sse = dict.fromkeys(folds.quantities, 0.0)
    c_full = np.zeros(len(prior))
    for k in range(K):
        H, rhs = None, np.zeros(len(cols))
        for g, (G, b, _, _), beta in zip(groups, totals, betas):
            part = np.array(G, order="F")  # the rung's system without fold k
            pb = b.copy()
            for q in g:
                part -= folds.fold(q, k).gram(cols)
                pb -= folds.fold(q, k).rhs(cols)
            part *= beta
            if H is None:
                H = part
            else:
                H += part
            rhs += beta * pb
            del part
        H[np.diag_indices_from(H)] += reg.alpha_ * P
        c = scipy.linalg.cho_solve(scipy.linalg.cho_factor(H, lower=False, overwrite_a=True), rhs)
        del H
        c_full[cols] = c
        for q in folds.quantities:
            sse[q] += folds.fold(q, k).sse(c_full)
    # rows carry weight 1 / sigma_q^2: undo it for errors in the labels' units
    return {q: math.sqrt(sse[q] * folds.sigmas[q] ** 2 / max(1, folds.n_rows(q)))
            for q in folds.quantities}


def _rung_columns(model, descriptor, bounds: dict[str, list[int]]) -> np.ndarray:
    """Columns of ``model``'s feature map (the top rung's species blocks) that the rung
    of ``descriptor`` with per-species ``bounds`` holds, in order."""
    from ase.data import chemical_symbols

    names = model.descriptor.feature_names()
    sub = descriptor.feature_names()
    fmap = model.fmap_
    keep = []
    for s, z in enumerate(model.species):
        top = fmap.columns[s] if fmap.columns is not None and fmap.columns[s] is not None \
            else np.arange(fmap.n_descriptor)
        bound = bounds.get(chemical_symbols[int(z)])
        allowed = set(sub) if bound is None else {sub[j] for j in descriptor.degree_subset(bound)}
        keep.append(np.array([names[d] in allowed for d in top], dtype=bool))
    return np.flatnonzero(np.concatenate(keep))


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
        ``make_model(descriptor, species_degree)`` -> an unfitted
        :class:`~ml4m.models.linear.LinearACE` with the fit's other settings (E0s, sigmas,
        prior) and these per-species bounds (``None``: none).
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
    numbers = np.concatenate([f.numbers for f in frames]).astype(int)
    counts = {int(z): int(n) for z, n in zip(*np.unique(numbers, return_counts=True))}
    species = sorted(counts)
    rungs = ladder(len(species))
    bounds = [species_bounds(rung, counts) for rung in rungs]
    pair_r_in = pair_inner_radii(frames, PAIR_R_IN_MARGIN)
    folds = cv_folds(frames)
    use_f = all(f.forces is not None for f in frames)
    use_s = any(f.stress is not None for f in frames)
    limit = memory_limit()[0]

    # the largest rung whose pass, per-fold sums, CV solves and final fit fit the budget
    # and the memory; every rung's functions are among its own (nested ladder)
    descriptors = [_descriptor(species, rung, pair_r_in) for rung in rungs]
    models = [make_model(d, b or None) for d, b in zip(descriptors, bounds)]
    e0 = resolve_reference_energies(Dataset(frames), models[0].e0)
    for model in models:
        model.e0_ = e0
        model.fmap_ = model._make_feature_map(frames)
    sizes = [m.fmap_.n_features for m in models]
    probe = frames[:: max(1, len(frames) // 3)][:3]
    top = 0
    for r in range(len(rungs) - 1, -1, -1):
        memory = _sums_bytes(sizes[r], len(frames), len(numbers), use_f, use_s)
        if memory > MEMORY_SHARE * limit and r > 0:
            continue
        model = models[r]
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
    prior = model._prior(np.ones(model.fmap_.n_features))
    sigma = {"energy": model.sigma_energy, "forces": model.sigma_forces or 1.0,
             "stress": model.sigma_stress or 1.0}
    best, worse, rate = None, 0, None
    result.stopped = "every affordable rung tried"
    for r in range(top + 1):
        cols = _rung_columns(model, descriptors[r], bounds[r])
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
               "total_degree": list(rungs[r]["total_degree"]), "species_degree": bounds[r],
               "n_coefficients": int(len(cols)),
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
    result.params = {"species_degree": bounds[best["rung"]]} if bounds[best["rung"]] else {}
    return result

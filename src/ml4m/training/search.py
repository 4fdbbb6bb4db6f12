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

The prior's shape is chosen once, before the ladder: the exponent of the smoothness
prior (precision ``(1 + degree)^s``, so rough high-degree functions need stronger
evidence) with the largest evidence on a small rung (``SMOOTHNESS_GRID``); every rung
then uses it. Before that, when asked (``r0='auto'``), the radial transform:
polynomials in ``r`` or in ``(r0 / (r0 + r))^2`` (finer near ``r0``, the median
nearest-neighbour distance), by the evidence of a small rung on a subset of the frames
(``R0_SHARE`` of the budget).

Folds are groups of frames: ``info['traj']`` (or ``config_type``) when the frames carry
three or more distinct values, else contiguous chunks (MD frames are stored in
trajectory order). The valid file is never read. The ladder stops when the budget is
spent (keeping time for the final fit) or when two rungs in a row score worse than the
best; a larger budget therefore never gives a worse CV score. The largest rung is the
largest whose pass (descriptors timed on three frames, Gram updates at a measured rate),
CV solves and final fit fit the budget, and with at most ``ROWS_RATIO`` coefficients per
labelled value.

The final fit reuses the sums too: the chosen rung's system on every fold, and on every
fold but the last for the calibrated uncertainty (the last fold is the model's own
held-out group, :meth:`~ml4m.models.linear.LinearPotential.holdout_split`), so only that
fold's frames are described again, for the error models' residuals.

A basis that fits the folds can still blow up in MD where the data thin out. With a
``probe`` (``ml4m fit`` passes :func:`~ml4m.training.probe.md_probe`: 1 ps of Langevin
dynamics at twice the data's temperature), the best rungs by CV score are fitted on all
folds and probed in turn; the first that stays stable is chosen.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml4m.data.frames import Frame
from ml4m.data.split import evenly_spaced, frame_groups
from ml4m.errors import ConfigError
from ml4m.models.linear import LinearPotential
from ml4m.training.fold_sums import FoldSums, Sums, accumulator, cv_rmse, log_evidence

__all__ = ["KERNEL_POINTS", "RUNGS", "RUNGS_MANY_ELEMENTS", "SearchResult", "cv_folds", "kernel_columns",
           "ladder", "search_linear_ace", "species_bounds"]

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
#: number of cross-validation folds: the calibrated fit's groups of frames, so that the
#: last fold is the final fit's held-out group and its sums serve the final fit too
N_FOLDS = LinearPotential.HOLDOUT_GROUPS
#: fewest folds (and training frames) of a search
MIN_FOLDS = 2
#: share of the memory limit the per-fold sums may take
MEMORY_SHARE = 0.4
#: most coefficients a rung may have per labelled value of the training set (energies,
#: force components, stress components): the prior pins the rest, and beyond this the
#: search on a few frames (an active-learning loop's first fits) would spend its budget on
#: bases the data cannot choose between. ethanol_pbe's default (120 frames, 3,360 values)
#: chose 7,606 coefficients (2.3 per value), below the bound
ROWS_RATIO = 4.0
#: a rung's CV solves (an evidence search of about ten Cholesky factorisations, one per
#: fold, the sub-matrix copies) run at about this share of the rate of one Cholesky
#: factorisation of 2,000 columns, both counted as ``_solve_flops`` counts them (p^3 per
#: factorisation); measured in a default fit on 3BPA: rung 5 (8,314 coefficients) 56 s,
#: 62e9 counted flop/s, against 118e9 for the small factorisation in the same process
SOLVE_SHARE = 0.5
#: an MD step (calculator, integrator, the core) against the descriptor's energy and VJP
MD_STEP_OVERHEAD = 1.5
#: slowest flop rate assumed when extrapolating the cost of a rung's solves, flop/s
MIN_FLOP_RATE = 2e9
#: exponents of the smoothness prior (precision ``(1 + degree)^s`` per basis function)
#: among which the evidence chooses, on the largest rung of at most
#: ``SMOOTHNESS_COLUMNS`` coefficients (a few seconds), for every rung
SMOOTHNESS_GRID = (0.0, 1.0, 2.0, 3.0, 4.0)
SMOOTHNESS_COLUMNS = 2000
#: share of the budget the choice of the radial transform may take (two passes of the
#: largest rung of at most ``SMOOTHNESS_COLUMNS`` coefficients over a subset of the frames)
R0_SHARE = 0.08
#: fewest frames the radial transform is chosen on (all of them when there are fewer)
R0_MIN_FRAMES = 30
#: frames whose nearest-neighbour distances give the candidate ``r0``
R0_SAMPLE = 50


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
        Model parameters of the chosen rung: ``smoothness`` (the smoothness prior's
        exponent, when the search chose or was given one), ``species_degree`` (element
        symbol -> degree bound per order) when some centre species take smaller bounds,
        and ``kernel_columns`` for a sparse GP (``make_kernel_model``).
    plan : dict
        How the largest rung was chosen: ``top`` (its index), ``pass_estimate_seconds``
        (its pass as estimated), ``gram_gflops`` and ``solve_gflops`` (the measured
        rates), ``candidates`` (each top tried, largest first: its estimated seconds
        by part and the seconds ``left``), ``smoothness`` (how the prior's exponent was
        chosen: rung, log evidence per exponent), ``r0`` (with ``r0='auto'``: how the radial
        transform was chosen); with a probe, ``md_probe_stable`` (whether the chosen rung
        passed it; ``None`` when the budget allowed none).
    model : LinearPotential or None
        The chosen rung (its sparse GP with ``make_kernel_model``) fitted on every frame
        from the search's own sums (:meth:`~ml4m.models.linear.LinearPotential.fit_from_sums`).
    """

    descriptor: dict[str, Any]
    table: list[dict[str, Any]] = field(default_factory=list)
    folds: int = N_FOLDS
    pass_seconds: float = 0.0
    stopped: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    model: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {"descriptor": self.descriptor, "params": self.params, "table": self.table,
                "folds": self.folds, "pass_seconds": self.pass_seconds, "stopped": self.stopped,
                "plan": self.plan}


def cv_folds(frames: list[Frame], n_folds: int = N_FOLDS) -> np.ndarray:
    """Fold index (0 .. n_folds - 1) of every frame (:func:`ml4m.data.frame_groups`: whole
    trajectories or config types when the frames name three or more, else contiguous
    chunks); with fewer frames than ``n_folds``, one fold per frame (at least
    ``MIN_FOLDS``: an active-learning loop starts from a few frames)."""
    if len(frames) < MIN_FOLDS:
        raise ConfigError(f"the basis search needs at least {MIN_FOLDS} training frames, "
                          f"got {len(frames)}")
    return frame_groups(frames, min(n_folds, len(frames)))


def _settings(rung: dict[str, Any], pair_r_in, n_species: int, r0: float | None = None
              ) -> dict[str, Any]:
    """ACE settings of ``rung``: ``n_max`` is its first degree bound (every function the
    bounds admit), the four-body functions element-agnostic for several elements; ``r0``
    (Angstrom) when the radial polynomials are taken in ``(r0 / (r0 + r))^2``."""
    agnostic = 4 if n_species > 1 and rung["correlation_order"] >= 4 else 0
    out = {"r_cut": BASE["r_cut"], "l_max": BASE["l_max"], "n_max": rung["total_degree"][0],
           "correlation_order": rung["correlation_order"],
           "total_degree": list(rung["total_degree"]), "agnostic_from": agnostic,
           "pair_r_in": pair_r_in}
    if r0 is not None:
        out["r0"] = r0
    return out


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


#: sparse environments of a sparse GP searched with its basis, all species together (each
#: gets its share): on 3BPA 200 per species (800 columns) pushed the affordable basis from
#: rung 6 to rung 5 and the valid force MAE from 27.4 to 30.4 meV/A
KERNEL_POINTS = 200


def kernel_columns(rung: dict[str, Any]) -> list[int]:
    """Degree bounds (one per correlation order of ``rung``) of the functions a sparse GP's
    kernel reads in the search: the two- and three-body functions inside the first rung's
    bounds (a power spectrum, as SOAP's), present with the same values in every rung."""
    first = list(RUNGS[0]["total_degree"])
    return (first + [1] * rung["correlation_order"])[:rung["correlation_order"]]


def _descriptor(species: list[int], rung: dict[str, Any], pair_r_in, r0: float | None = None):
    from ml4m.descriptors import make_descriptor

    return make_descriptor("ace", species=species, **_settings(rung, pair_r_in, len(species), r0))


def _sums_bytes(p: int, n_frames: int, n_atoms: int, use_f: bool, use_s: bool) -> float:
    """Bytes of the per-fold sums of ``p`` columns and of a rung's CV at that size: a Gram
    matrix per fold for each quantity with many rows (rows below ``Sums.ROWS_SHARE p``),
    then the all-fold sums, a fold's system and a sub-matrix copy."""
    per_fold = [n_frames / N_FOLDS]
    if use_f:
        per_fold.append(3 * n_atoms / N_FOLDS)
    if use_s:
        per_fold.append(6 * n_frames / N_FOLDS)
    floats = sum(N_FOLDS * (p * p if n > Sums.ROWS_SHARE * p else n * p) for n in per_fold)
    return 8.0 * (floats + 3 * p * p)


def _gram_rate(p: int) -> float:
    """Measured rate of a Gram update (``B^T B`` of 1,024 rows of up to 2,048 columns; the
    faster of two, the first paying the thread pool's start), counted as the pass counts
    it (``rows x columns^2``), flop/s."""
    m = min(p, 2048)
    B = np.random.default_rng(0).normal(size=(1024, m))
    best = math.inf
    for _ in range(2):
        t0 = time.perf_counter()
        B.T @ B
        best = min(best, time.perf_counter() - t0)
    return 1024.0 * m * m / max(best, 1e-9)


def _solve_rate(p: int) -> float:
    """Rate of a rung's CV solves as planned before any is timed: ``SOLVE_SHARE`` of a
    measured Cholesky factorisation of up to 2,000 columns (the faster of two), counted
    as ``p^3``, flop/s."""
    import scipy.linalg

    m = min(max(p, 64), 2000)
    A = np.random.default_rng(0).normal(size=(m, m))
    A = np.asfortranarray(A @ A.T + m * np.eye(m))
    best = math.inf
    for _ in range(2):
        B = A.copy(order="F")
        t0 = time.perf_counter()
        scipy.linalg.cho_factor(B, overwrite_a=True)
        best = min(best, time.perf_counter() - t0)
    return SOLVE_SHARE * float(m) ** 3 / max(best, 1e-9)


def _md_step_seconds(model, frame: Frame) -> float:
    """Time of one MD step of ``model``'s basis on ``frame``: the energy and forces of a
    linear model (the descriptor's ``energies_and_vjp`` at fixed weights; the faster of
    three) plus the integrator's share, s."""
    d = model.descriptor
    W = np.full((d.n_species, d.n_features), 1e-3)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        d.energies_and_vjp([frame], W)
        best = min(best, time.perf_counter() - t0)
    return MD_STEP_OVERHEAD * best + 2e-4


def _rung_seconds(model, timing: list[Frame], use_f: bool, use_s: bool, n_frames: int,
                  frame: Frame) -> tuple[float, float]:
    """A rung's descriptor time for ``n_frames`` frames (its design rows timed on
    ``timing``, after one untimed block for its set-up) and its MD step on ``frame``,
    seconds."""
    for _ in model._block_rows(timing[:1], use_f, use_s):
        pass
    t0 = time.perf_counter()
    for _ in model._block_rows(timing, use_f, use_s):
        pass
    return (time.perf_counter() - t0) * n_frames / len(timing), _md_step_seconds(model, frame)


def _solve_flops(p: int) -> float:
    """Floating-point operations of one rung's CV: an evidence decomposition and a
    factorisation per fold, each about p^3, and the final fit's two."""
    return (N_FOLDS + 3) * float(p) ** 3


#: most rungs the MD probe tries, best CV score first
MAX_PROBES = 3


def _probe_rungs(result: SearchResult, fitted, probe, md_seconds: float, deadline: float,
                 finish=lambda row: 0.0) -> dict[str, Any] | None:
    """The best-scoring row of ``result.table`` whose model (``fitted(row)``) passes
    ``probe``, trying at most ``MAX_PROBES`` while the budget lasts (a probe costs
    ``md_seconds``, the first probe's measured time after it, and ``finish(row)`` seconds
    must remain after it: the final fit and report of whichever rung is then chosen);
    ``None`` when no probed rung is stable. Notes the outcome in ``result.stopped``."""
    order = sorted(result.table, key=lambda row: row["score"])[:MAX_PROBES]
    for n, row in enumerate(order):
        if time.perf_counter() + md_seconds + finish(row) > deadline:
            result.stopped += f"; MD probe: budget spent after {n} rung(s)"
            result.plan["md_probe_stable"] = None if n == 0 else False
            return None
        outcome = probe(fitted(row))
        row["md_probe"] = outcome.as_dict()
        md_seconds = outcome.seconds
        if outcome.stable:
            result.stopped += f"; MD probe: rung {row['rung']} stable"
            result.plan["md_probe_stable"] = True
            return row
    result.stopped += f"; MD probe: none of {len(order)} rung(s) stable"
    result.plan["md_probe_stable"] = False
    return None


def _rung_columns(model, descriptor, bounds: dict[str, list[int]]) -> np.ndarray:
    """Columns of ``model``'s feature map (the top rung's species blocks) that the rung
    of ``descriptor`` with per-species ``bounds`` holds, in order."""
    from ase.data import chemical_symbols

    names = model.descriptor.feature_names()
    sub = descriptor.feature_names()
    fmap = model.fmap_.parts[0] if hasattr(model.fmap_, "parts") else model.fmap_
    keep = []
    for s, z in enumerate(model.species):
        top = fmap.columns[s] if fmap.columns is not None and fmap.columns[s] is not None \
            else np.arange(fmap.n_descriptor)
        bound = bounds.get(chemical_symbols[int(z)])
        allowed = set(sub) if bound is None else {sub[j] for j in descriptor.degree_subset(bound)}
        keep.append(np.array([names[d] in allowed for d in top], dtype=bool))
    return np.flatnonzero(np.concatenate(keep))


def _small_rung(sizes: list[int]) -> int:
    """Index of the largest rung of at most ``SMOOTHNESS_COLUMNS`` coefficients (0 when
    none is that small): where a prior's shape or the radial transform is chosen."""
    return max((k for k, p in enumerate(sizes) if p <= SMOOTHNESS_COLUMNS), default=0)


def _smoothness_priors(model, grid) -> dict[float, np.ndarray]:
    """The prior precision shape of ``model``'s coefficients for each exponent of
    ``grid``."""
    ones = np.ones(model.fmap_.n_features)
    return {s: model._prior(ones, s) for s in grid}


def _prepared(model, e0, frames: list[Frame]):
    """``model`` (unfitted) with the search's E0s and its feature map for ``frames``."""
    model.e0_ = e0
    model.fmap_ = model._make_feature_map(frames)
    return model


def _smoothness_by_evidence(result: SearchResult, data: FoldSums, model, rung: int,
                            cols: np.ndarray, shared: bool) -> float:
    """The exponent of ``SMOOTHNESS_GRID`` with the largest evidence of the columns
    ``cols`` of ``model``'s sums (rung ``rung``) fitted on every fold;
    ``result.plan['smoothness']`` records the rung, each exponent's log evidence and the
    seconds taken."""
    t0 = time.perf_counter()
    evidence = log_evidence(data, cols, _smoothness_priors(model, SMOOTHNESS_GRID), shared)
    best = max(evidence, key=evidence.get)
    result.plan["smoothness"] = {"rung": rung, "n_coefficients": int(len(cols)),
                                 "log_evidence": {f"{s:g}": round(v, 2) for s, v in evidence.items()},
                                 "chosen": best, "seconds": round(time.perf_counter() - t0, 2)}
    return best


def _r0_by_evidence(frames: list[Frame], make_model, species: list[int], rung: dict[str, Any],
                    bound: dict[str, list[int]], pair_r_in, e0, use_f: bool, use_s: bool,
                    seconds: float, smoothness: float | None) -> tuple[float | None, dict[str, Any]]:
    """The radial transform of the basis: polynomials in ``r`` (``None``) or in
    ``(r0 / (r0 + r))^2`` with ``r0`` the training atoms' median nearest-neighbour
    distance (:func:`~ml4m.data.nearest_neighbor_distance`, Angstrom, to 0.01), whichever
    has the larger log evidence for the basis of ``rung`` (per-species ``bound``), each at
    its best smoothness exponent of ``SMOOTHNESS_GRID`` (or at ``smoothness``), on the
    evenly spaced subset of the frames whose two passes fit in ``seconds``.

    Returns the chosen ``r0`` and a record: ``n_coefficients`` (the rung's), ``n_frames``,
    ``log_evidence`` per candidate, ``chosen``, ``seconds``; ``skipped`` (why) when too
    few frames fit."""
    from ml4m.data import nearest_neighbor_distance

    t0 = time.perf_counter()
    nn = nearest_neighbor_distance([frames[k] for k in evenly_spaced(len(frames), R0_SAMPLE)],
                                   BASE["r_cut"])
    if nn is None:
        return None, {"skipped": "no atom has a neighbour within the cutoff"}
    candidates = (None, round(nn, 2))
    models = [_prepared(make_model(_descriptor(species, rung, pair_r_in, r0), bound or None),
                        e0, frames) for r0 in candidates]
    sample = [frames[k] for k in evenly_spaced(len(frames), 3)]
    one = np.zeros(len(sample), dtype=int)
    FoldSums(models[0], sample[:1], one[:1], use_f, use_s)  # untimed: one-time set-up
    t1 = time.perf_counter()
    FoldSums(models[0], sample, one, use_f, use_s)
    per_frame = (time.perf_counter() - t1) / len(sample)
    left = seconds - (time.perf_counter() - t0)
    n = min(len(frames), int(left / (2 * per_frame)))
    record: dict[str, Any] = {"n_coefficients": int(models[0].fmap_.n_features), "n_frames": n}
    if n < min(R0_MIN_FRAMES, len(frames)):
        record["skipped"] = f"{n} frame(s) fit in {seconds:.0f} s"
        return None, record
    subset = [frames[k] for k in evenly_spaced(len(frames), n)]
    grid = SMOOTHNESS_GRID if smoothness is None else (smoothness,)
    evidence = {}
    for r0, model in zip(candidates, models):
        data = FoldSums(model, subset, np.zeros(len(subset), dtype=int), use_f, use_s)
        ev = log_evidence(data, np.arange(model.fmap_.n_features),
                          _smoothness_priors(model, grid), model.noise == "shared")
        evidence[r0] = max(ev.values())
    best = max(candidates, key=lambda r0: evidence[r0])
    record.update({"log_evidence": {"none" if r0 is None else f"{r0:g}": round(v, 2)
                                    for r0, v in evidence.items()},
                   "chosen": best, "seconds": round(time.perf_counter() - t0, 2)})
    return best, record


def search_linear_ace(frames: list[Frame], budget_s: float, make_model, started: float | None = None,
                      progress=None, report: tuple[int, int] = (0, 0), probe=None,
                      probe_steps: int = 0, smoothness: float | None = None,
                      r0: float | str | None = None, make_kernel_model=None) -> SearchResult:
    """Pick the ACE rung with the best CV score within ``budget_s`` seconds.

    Parameters
    ----------
    frames : list of Frame
        Training frames (energies and forces; the valid set is never passed).
    budget_s : float
        Seconds for the whole fit, the search, the final fit and its report included.
    make_model : callable
        ``make_model(descriptor, species_degree)`` -> an unfitted
        :class:`~ml4m.models.linear.LinearACE` with the fit's other settings (E0s, sigmas,
        prior) and these per-species bounds (``None``: none).
    started : float, optional
        ``time.perf_counter()`` when the fit started (default: now).
    progress : callable, optional
        Called with each table row as it is computed.
    report : (int, int), default=(0, 0)
        Frames and atoms the caller predicts with sigmas after the fit (the valid set's
        sizes only: its frames are never read here); their cost, and a plain prediction
        of the training frames, is kept out of the search's share of the budget.
    probe : callable, optional
        ``probe(model)`` -> :class:`~ml4m.training.probe.ProbeResult`: a short MD run of
        a rung's model (fitted on every frame; the caller adds its baseline). Rungs are
        probed in order of CV score and the first stable one is chosen (the best by CV
        when none is, or when the budget allows no probe); each probed row of the table
        gets ``md_probe``.
    probe_steps : int
        The probe's MD steps (for its cost in the budget).
    smoothness : float, optional
        Exponent of the smoothness prior of every rung. ``None``: the one of
        ``SMOOTHNESS_GRID`` with the largest evidence on a small rung (models whose prior
        is not the smoothness prior keep theirs).
    r0 : float, None or "auto", default=None
        Radial transform of every rung (ACE's ``r0``, Angstrom; ``None``: polynomials in
        ``r``). ``"auto"``: the one with the larger evidence on a small rung
        (:func:`_r0_by_evidence`, at most ``R0_SHARE`` of the budget), for models with the
        smoothness prior; recorded in ``plan['r0']``. Not the default: on 3BPA the
        evidence prefers ``r0`` (valid energy error 0.62 against 1.02 meV/atom) but the
        model's MD fails sooner (``benchmarks/results/md_stability.md``, session 16).
    make_kernel_model : callable, optional
        ``make_kernel_model(descriptor, species_degree, kernel_columns)`` -> an unfitted
        :class:`~ml4m.models.kernel.SparseGPPotential` with a linear baseline: the search
        then returns that sparse GP on the chosen rung, its kernel reading the rung's two-
        and three-body functions inside rung 0's bounds (:func:`kernel_columns`), with
        sparse environments chosen once on rung 0. The pass adds the kernel's columns to
        the sums; rungs are scored on their linear columns (the ladder as without a
        kernel) and the final fit solves the chosen rung's with the kernel's.

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

    def build(r0: float | None):  # every rung's descriptor and model, ready to fit
        descriptors = [_descriptor(species, rung, pair_r_in, r0) for rung in rungs]
        models = [make_model(d, b or None) for d, b in zip(descriptors, bounds)]
        e0 = resolve_reference_energies(Dataset(frames), models[0].e0)
        return descriptors, [_prepared(m, e0, frames) for m in models], e0

    descriptors, models, e0 = build(None if r0 == "auto" else r0)
    sizes = [m.fmap_.n_features for m in models]  # the same for any radial transform
    r0_record = None
    if r0 == "auto":
        r0 = None
        if models[0]._prior_kind() == "smoothness":
            small = _small_rung(sizes)
            r0, r0_record = _r0_by_evidence(frames, make_model, species, rungs[small],
                                            bounds[small], pair_r_in, e0, use_f, use_s,
                                            R0_SHARE * budget_s, smoothness)
            if r0 is not None:
                descriptors, models, e0 = build(r0)
    kernel_model, n_kernel = None, 0
    if make_kernel_model is not None:
        # sparse environments chosen once, on rung 0's functions (which every rung holds
        # with the same values), and shared by every rung's kernel model
        source = _prepared(make_kernel_model(descriptors[0], bounds[0] or None,
                                             kernel_columns(rungs[0])), e0, frames)
        n_kernel = source._kernel().n_features

        def kernel_model(r: int):  # rung r's GP, with its linear rung's prior
            m = make_kernel_model(descriptors[r], bounds[r] or None, kernel_columns(rungs[r]))
            m.e0_ = e0
            m.smoothness = models[r].smoothness
            return m.adopt_sparse_points(source)

    # the largest rung whose pass, per-fold sums, CV solves and final fit fit the budget
    # and the memory; every rung's functions are among its own (nested ladder)
    timing = [frames[k] for k in evenly_spaced(len(frames), 3)]
    n_rows = len(frames) + 3 * len(numbers) * use_f + 6 * len(frames) * use_s
    gram_rate = _gram_rate(max(sizes))
    solve_rate = _solve_rate(max(sizes))

    held = folds == folds.max()  # the final fit's held-out group (LinearPotential.holdout_split)
    held_share = float(np.mean(held)) if models[0].uncertainty == "calibrated" else 0.0
    held_rows = 3 * sum(len(f) for f, h in zip(frames, held) if h) * (held_share > 0)

    def pass_seconds(p: int, t_rows: float) -> float:
        """A pass: the rows' descriptors (``t_rows``, s) and their Gram updates (p columns)."""
        return t_rows + n_rows * float(p) ** 2 / gram_rate

    def final_seconds(p: int, t_rows: float, flop_rate: float, step: float) -> float:
        """The final fit from the sums: the held-out frames described again (their share
        of ``t_rows``) and their force rows' posterior variances (p columns); then the
        report: the ``report`` frames the same way, the training frames' plain
        prediction (``step``: one frame's energy and forces, s)."""
        n_report, atoms_report = report
        return ((held_share + n_report / len(frames)) * t_rows + len(frames) * step
                + (held_rows + 3 * atoms_report) * float(p) ** 2 / flop_rate)

    top, candidates = 0, []
    for r in range(len(rungs) - 1, -1, -1):
        memory = _sums_bytes(sizes[r] + n_kernel, len(frames), len(numbers), use_f, use_s)
        if (memory > MEMORY_SHARE * limit or sizes[r] > ROWS_RATIO * n_rows) and r > 0:
            continue
        model = models[r] if kernel_model is None else kernel_model(r)  # the pass's model
        t_rows, step = _rung_seconds(model, timing, use_f, use_s, len(frames), frames[0])
        parts = {"pass": pass_seconds(sizes[r] + n_kernel, t_rows),
                 "final_and_report": final_seconds(sizes[r] + n_kernel, t_rows, gram_rate, step),
                 "cv_solves": sum(_solve_flops(q) for q in sizes[:r + 1]) / solve_rate,
                 "md_probe": probe_steps * step if probe else 0.0}
        left = deadline - time.perf_counter()
        candidates.append({"rung": r, **{k: round(v, 1) for k, v in parts.items()},
                           "left": round(left, 1)})
        if sum(parts.values()) <= left or r == 0:
            top = r
            break
    t0 = time.perf_counter()
    data = FoldSums(model, frames, folds, use_f, use_s)
    result = SearchResult(descriptor={}, folds=int(folds.max()) + 1,
                          pass_seconds=time.perf_counter() - t0,
                          plan={"top": top,
                                "pass_estimate_seconds": pass_seconds(sizes[top] + n_kernel, t_rows),
                                "gram_gflops": gram_rate / 1e9, "solve_gflops": solve_rate / 1e9,
                                "candidates": candidates})
    if r0_record is not None:
        result.plan["r0"] = r0_record
    # the descriptors of a rung's final fit: the estimate, scaled to the pass measured
    measured = result.pass_seconds / pass_seconds(sizes[top] + n_kernel, t_rows)
    # the linear rungs are scored (their columns lead the kernel model's sums)
    lin = models[top]
    shared = lin.noise == "shared"
    if smoothness is None and lin._prior_kind() == "smoothness":
        # on the largest rung of at most SMOOTHNESS_COLUMNS coefficients: a few seconds
        r = _small_rung(sizes[:top + 1])
        smoothness = _smoothness_by_evidence(
            result, data, lin, r, _rung_columns(lin, descriptors[r], bounds[r]), shared)
    if smoothness is not None:
        for m in models:
            m.smoothness = float(smoothness)
        result.params["smoothness"] = float(smoothness)
    prior = lin._prior(np.ones(lin.fmap_.n_features))
    sigma = {"energy": lin.sigma_energy, "forces": lin.sigma_forces or 1.0,
             "stress": lin.sigma_stress or 1.0}
    best, worse, rate = None, 0, None
    coefs: dict[int, np.ndarray] = {}  # per rung: the posterior mean on every fold
    reserve: dict[int, float] = {}  # per rung: seconds of its final fit and report
    result.stopped = "every affordable rung tried"
    for r in range(top + 1):
        cols = _rung_columns(lin, descriptors[r], bounds[r])
        # the final fit (the held-out frames described again, two solves at this size, the
        # report) and one MD probe, at this rung's own costs: its descriptors (timed on the
        # same frames as the top's, scaled as the top's estimate was to its pass) and MD step
        t_r, step_r = (_rung_seconds(models[r] if kernel_model is None else kernel_model(r),
                                     timing, use_f, use_s, len(frames), frames[0])
                       if r < top and rate else (t_rows, step))
        finish = (_solve_flops(len(cols) + n_kernel) / rate
                  + final_seconds(len(cols) + n_kernel, measured * t_r, gram_rate, step_r)
                  if rate else 0.0)
        need = finish + (probe_steps * step_r if probe and rate else 0.0)
        if r > 0 and time.perf_counter() + need > deadline:
            result.stopped = f"budget: rung {r} would end after the budget"
            break
        t0 = time.perf_counter()
        coef = []
        rmse = cv_rmse(data, cols, prior, shared=shared, coef=coef)
        coefs[r] = coef[0]
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
        reserve[r] = finish  # its final fit and report, should it be chosen
        if progress is not None:
            progress(row)
        if best is None or score < best["score"]:
            best, worse = row, 0
        else:
            worse += 1
            if worse == 2:
                result.stopped = "two rungs in a row scored worse than the best"
                break
    if probe is not None:
        def fitted(row):  # a rung on every frame: its CV's evidence fit on all folds
            cand = models[row["rung"]]  # E0s and feature map set above
            cand.coef_ = coefs[row["rung"]]
            return cand

        best = _probe_rungs(result, fitted, probe, probe_steps * step, deadline,
                            lambda row: max(reserve[row["rung"]], reserve[best["rung"]])) or best
    b = best["rung"]
    result.descriptor = _settings(rungs[b], pair_r_in, len(species), r0)
    if bounds[b]:
        result.params["species_degree"] = bounds[b]
    # the chosen rung on every frame, from the same sums: no second pass
    cols = _rung_columns(lin, descriptors[b], bounds[b])
    final = models[b]
    if kernel_model is not None:  # the kernel's columns follow the top rung's linear ones
        final = kernel_model(b)
        cols = np.concatenate([cols, lin.fmap_.n_features + np.arange(n_kernel)])
        result.params["kernel_columns"] = kernel_columns(rungs[b])
    per_quantity = final.noise != "shared"
    total = accumulator(data, cols, per_quantity)
    without = accumulator(data, cols, per_quantity, skip=int(folds.max())) if held_share else total
    del data
    result.model = final.fit_from_sums(frames, without, total)
    return result

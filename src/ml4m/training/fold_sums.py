"""Cross-validation of a linear fit from per-fold least-squares sums.

One pass over the frames adds each fold's design rows (energy per atom, forces with
rigid motions projected out, stresses; weights ``1 / sigma^2``, the rows of
:class:`~ml4m.models.linear.potential.LinearPotential`'s own fit) to per-fold sums of
the largest basis. Any sub-basis (a set of columns) is then cross-validated from
principal sub-matrices: the system without fold ``k`` is the all-fold sum less fold
``k``'s, fitted by the Bayesian evidence on all folds, and fold ``k``'s squared error
comes from its own sums, ``c^T G_k c - 2 c^T b_k + y^T y_k``.
"""

from __future__ import annotations

import math

import numpy as np

from ml4m.data.frames import Frame

__all__ = ["FoldSums", "Sums", "accumulator", "cv_rmse", "group_sums", "log_evidence"]


class Sums:
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
    projected out, stresses; weights ``1 / sigma^2``) routed to per-fold :class:`Sums`."""

    def __init__(self, p: int, sigmas: dict[str, float | None]) -> None:
        from ml4m.models.linear.potential import QUANTITIES, _Accumulator

        self.sigmas = sigmas
        self.phi_sq = np.zeros(p)  # written by the recipe (the 'scale' prior's input)
        self.n_atoms = 0
        self.sums = {q: Sums(p) for q in QUANTITIES}
        self._add_rows = _Accumulator.add

    def _add(self, q: str, A: np.ndarray, y: np.ndarray) -> None:
        self.sums[q].add(A, y, 1.0 / self.sigmas[q] ** 2)

    def add(self, rows, block, e0) -> None:
        self._add_rows(self, rows, block, e0)  # the fit's own row recipe, into self._add


class FoldSums:
    """Per-fold sums of the largest rung: per fold and quantity a :class:`Sums` (one
    (p, p) Gram matrix per fold for the forces; energy and stress rows as rows when few)."""

    def __init__(self, model, frames: list[Frame], folds: np.ndarray, use_f: bool, use_s: bool):
        sig = {"energy": model.sigma_energy, "forces": model.sigma_forces if use_f else None,
               "stress": model.sigma_stress if use_s else None}
        self.sigmas = sig
        self.n_features = model.fmap_.n_features
        self.acc = []
        for k in range(int(folds.max()) + 1):
            acc = _FoldAccumulator(model.fmap_.n_features, sig)
            part = [f for f, fk in zip(frames, folds) if fk == k]
            for block, rows, _, _ in model._block_rows(part, use_f, use_s):
                acc.add(rows, block, model._e0_of(block))
            self.acc.append(acc)
        self.quantities = [q for q in ("energy", "forces", "stress") if self.n_rows(q)]

    def fold(self, q: str, k: int) -> Sums:
        return self.acc[k].sums[q]

    def n_rows(self, q: str) -> int:
        return sum(a.sums[q].n for a in self.acc)


def _sub_equations(G: np.ndarray, b: np.ndarray, yy: float, n: int):
    from ml4m.models.linear.bayesian import NormalEquations

    neq = NormalEquations(len(b))
    neq.AtA = G
    neq.Aty = b.copy()
    neq.yty = yy
    neq.n = n
    return neq


def group_sums(folds: FoldSums, group: list[str], cols: np.ndarray, skip: int | None = None):
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


def accumulator(folds: FoldSums, cols: np.ndarray, per_quantity: bool, skip: int | None = None):
    """The normal equations of a linear fit (as :meth:`~ml4m.models.linear.LinearPotential.
    fit` accumulates them, on the features ``cols`` of the sums, in that order) of every
    fold but ``skip``: the input of :meth:`~ml4m.models.linear.LinearPotential.fit_from_sums`."""
    from ml4m.models.linear.potential import _Accumulator

    acc = _Accumulator(len(cols), per_quantity, dict(folds.sigmas))
    groups = ([[q] for q in folds.quantities] if per_quantity else [list(folds.quantities)])
    for group in groups:
        neq = acc.neq[group[0]]
        neq.AtA, neq.Aty, neq.yty, neq.n = group_sums(folds, group, cols, skip)
    ks = [k for k in range(len(folds.acc)) if k != skip]
    for q in folds.quantities:
        acc.rows[q] = sum(folds.fold(q, k).n for k in ks)
    acc.phi_sq = sum(folds.acc[k].phi_sq for k in ks)[cols]
    acc.n_atoms = sum(folds.acc[k].n_atoms for k in ks)
    return acc


def _noise_groups(folds: FoldSums, shared: bool) -> list[list[str]]:
    """The quantities that share a noise precision: all of them, or one each."""
    return [list(folds.quantities)] if shared else [[q] for q in folds.quantities]


def _evidence_fit(totals: list, prior: np.ndarray, shared: bool):
    """The evidence fit of the all-fold sums ``totals`` (one per noise group) with the
    prior precision shape ``prior`` (scaled to mean 1)."""
    from ml4m.models.linear.bayesian import BayesianLinearRegression

    reg = BayesianLinearRegression(prior=prior / prior.mean())
    if shared:
        return reg.fit_normal_equations(_sub_equations(*totals[0]))
    return reg.fit_groups([_sub_equations(*t) for t in totals])


def log_evidence(folds: FoldSums, cols: np.ndarray, priors: dict, shared: bool = True
                 ) -> dict:
    """Log evidence (marginal likelihood) of the sub-basis ``cols`` fitted on every fold,
    for each prior precision shape of ``priors`` (``{key: (p,) array}``), at its own
    evidence-optimal scale and noise: ``{key: value}``. Comparable between priors (the
    evidence of the data under each), so it chooses a prior's shape as it chooses its
    scale."""
    totals = [group_sums(folds, g, cols) for g in _noise_groups(folds, shared)]
    return {key: float(_evidence_fit(totals, P[cols], shared).log_evidence_)
            for key, P in priors.items()}


def cv_rmse(folds: FoldSums, cols: np.ndarray, prior: np.ndarray, shared: bool = True,
            coef: list | None = None) -> dict[str, float]:
    """CV RMSE per quantity (eV/atom, eV/A, eV/A^3) of the sub-basis ``cols``; ``shared``:
    one noise scale for all quantities (their relative weights fixed by the sigmas, the
    model's ``noise='shared'``), else one each. ``coef``: a list that gets the posterior
    mean on every fold (the evidence fit the folds' hyperparameters come from).

    The system without fold ``k`` is the all-fold sum less fold ``k``'s sums, so one
    (p, p) sum per noise group is formed for the rung, and one system per fold in turn.
    """
    import scipy.linalg

    K = len(folds.acc)
    groups = _noise_groups(folds, shared)
    totals = [group_sums(folds, g, cols) for g in groups]
    reg = _evidence_fit(totals, prior[cols], shared)
    P = reg.prior
    betas = np.broadcast_to(reg.betas_, (len(groups),))
    if coef is not None:
        coef.append(reg.coef_)
    sse = dict.fromkeys(folds.quantities, 0.0)
    c_full = np.zeros(folds.n_features)
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

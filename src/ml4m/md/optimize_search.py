"""Proposals of a search over a box of degrees of freedom: Bayesian optimisation with a
Gaussian-process surrogate, random search and grid search.

A point lives in the unit cube ``[0, 1)^d``; :class:`SearchSpace` maps it to the
degrees of freedom (``low + u * (high - low)``) and says which dimensions are periodic
(a full turn of a torsion, a fractional coordinate of a surface site). The surrogate
sees a periodic dimension through the features ``cos(2 pi u), sin(2 pi u)``, so the two
ends of the turn are one point, and an ordinary one through ``u``; its kernel is a
constant times an anisotropic Matern 5/2 plus a fitted white noise, on targets
normalised to zero mean and unit variance after the values above their median are
compressed logarithmically (a clash of atoms would otherwise set the scale).

Every proposal is a pure function of the seed, the index of the call and the history
of evaluated points and values, so a resumed search proposes exactly what an
uninterrupted one would.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ml4m.errors import ConfigError

__all__ = ["ACQUISITIONS", "METHODS", "SearchSpace", "calls_to_reach", "grid_levels", "minimise",
           "propose"]

#: search methods
METHODS = ("bo", "random", "grid")
#: acquisition functions of ``bo``: expected improvement, lower confidence bound
ACQUISITIONS = ("ei", "lcb")
#: random candidates scored per proposal before the best few are polished by L-BFGS-B
_N_CANDIDATES = 2048
_N_POLISH = 2


@dataclass(frozen=True)
class SearchSpace:
    """The box searched.

    Attributes
    ----------
    low, high : tuple of float
        Bounds of each dimension, in its own unit (deg, Angstrom, fraction of a cell
        vector).
    periodic : tuple of bool
        Whether ``low`` and ``high`` are the same point (a full period).
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    periodic: tuple[bool, ...]

    @property
    def dim(self) -> int:
        return len(self.low)

    def wrap(self, u: np.ndarray) -> np.ndarray:
        """Points ``u`` (..., dim) brought into the unit cube: periodic dimensions modulo
        1, the others clipped to [0, 1]."""
        return np.where(self.periodic, np.mod(u, 1.0), np.clip(u, 0.0, 1.0))

    def values(self, u: np.ndarray) -> np.ndarray:
        """Degrees of freedom of unit-cube points ``u`` (..., dim)."""
        low, high = np.asarray(self.low), np.asarray(self.high)
        return low + self.wrap(u) * (high - low)

    def features(self, u: np.ndarray) -> np.ndarray:
        """Surrogate inputs of points ``u`` (n, dim): ``[cos, sin](2 pi u)`` for periodic
        dimensions, ``u`` for the others."""
        u = np.atleast_2d(u)
        cols = []
        for k, per in enumerate(self.periodic):
            if per:
                cols += [np.cos(2 * np.pi * u[:, k]), np.sin(2 * np.pi * u[:, k])]
            else:
                cols.append(u[:, k])
        return np.stack(cols, axis=1)


def grid_levels(budget: int, dim: int) -> int:
    """Points per dimension of the largest full grid within ``budget`` calls."""
    n = max(1, int(round(budget ** (1.0 / dim))))
    while n > 1 and n ** dim > budget:
        n -= 1
    while (n + 1) ** dim <= budget:
        n += 1
    return n


def _grid_point(space: SearchSpace, budget: int, call: int) -> np.ndarray | None:
    """The ``call``-th point of the full grid in lexicographic order (None past its end).
    A periodic dimension of ``n`` levels takes ``k / n``; another ``k / (n - 1)``."""
    n = grid_levels(budget, space.dim)
    if call >= n ** space.dim:
        return None
    index = next(itertools.islice(itertools.product(range(n), repeat=space.dim), call, None))
    return np.array([k / n if per else (k / (n - 1) if n > 1 else 0.5)
                     for k, per in zip(index, space.periodic)])


def _initial_design(space: SearchSpace, n: int, seed: int) -> np.ndarray:
    """A Latin-hypercube sample of ``n`` points (scrambled, fixed by ``seed``)."""
    from scipy.stats import qmc

    return qmc.LatinHypercube(d=space.dim, rng=np.random.default_rng([seed, 0xB0])).random(n)


def _surrogate(space: SearchSpace, u: np.ndarray, y: np.ndarray, seed: int):
    """A Gaussian process fitted to values ``y`` at points ``u`` (hyperparameters by
    maximum marginal likelihood, one restart)."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    x = space.features(u)
    kernel = (ConstantKernel(1.0, (1e-3, 1e3))
              * Matern(length_scale=np.full(x.shape[1], 0.5), length_scale_bounds=(1e-2, 1e2),
                       nu=2.5)
              + WhiteKernel(1e-4, (1e-8, 1e-1)))
    gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=1,
                                  random_state=seed)
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():  # a bound reached is a fact of small data, not a fault
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp.fit(x, y)
    return gp


def _squash(y: np.ndarray) -> np.ndarray:
    """Values above the median compressed logarithmically (on the scale of the median's
    height above the minimum), so that a few very high values (clashing atoms) do not
    set the surrogate's variance and length scales; the lower half is kept."""
    med = float(np.median(y))
    scale = max(med - float(np.min(y)), 1e-12)
    high = y > med
    out = np.array(y, dtype=float)
    out[high] = med + scale * np.log1p((y[high] - med) / scale)
    return out


def _acquisition(gp, space: SearchSpace, y: np.ndarray, kind: str, xi: float, kappa: float
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """The score to minimise at points ``u`` (n, dim): minus the expected improvement
    below ``y_best`` (by at least ``xi`` standard deviations of the targets), or the
    lower confidence bound ``mu - kappa * sigma``, of the surrogate ``gp`` fitted to
    values ``y``."""
    from scipy.stats import norm

    y_best, scale = float(np.min(y)), float(np.std(y)) or 1.0

    def score(u: np.ndarray) -> np.ndarray:
        mu, sd = gp.predict(space.features(u), return_std=True)
        if kind == "lcb":
            return mu - kappa * sd
        sd = np.maximum(sd, 1e-12 * scale)
        gain = y_best - mu - xi * scale
        z = gain / sd
        return -(gain * norm.cdf(z) + sd * norm.pdf(z))

    return score


def _bo_point(space: SearchSpace, u: np.ndarray, y: np.ndarray, rng: np.random.Generator,
              seed: int, acquisition: str, xi: float, kappa: float) -> np.ndarray:
    """The minimiser of the acquisition: dense random candidates and jitters of the best
    points so far, the best few polished by L-BFGS-B."""
    from scipy.optimize import minimize

    y = _squash(y)
    gp = _surrogate(space, u, y, seed)
    score = _acquisition(gp, space, y, acquisition, xi, kappa)
    best = u[np.argsort(y)[:8]]
    jitter = best[rng.integers(len(best), size=_N_CANDIDATES // 4)] + \
        rng.normal(0.0, 0.03, size=(_N_CANDIDATES // 4, space.dim))
    cand = np.concatenate([rng.random((_N_CANDIDATES, space.dim)), jitter])
    cand = space.wrap(cand)
    s = score(cand)
    out, out_score = cand[np.argmin(s)], float(np.min(s))
    for start in cand[np.argsort(s)[:_N_POLISH]]:
        res = minimize(lambda p: float(score(p[None])[0]), start, method="L-BFGS-B",
                       bounds=[(0.0, 1.0)] * space.dim, options={"maxiter": 50})
        if np.isfinite(res.fun) and res.fun < out_score:
            out, out_score = np.asarray(res.x), float(res.fun)
    return space.wrap(out)


def propose(space: SearchSpace, method: str, call: int, u: np.ndarray, y: np.ndarray, *,
            seed: int = 0, budget: int = 50, n_initial: int = 8, acquisition: str = "ei",
            xi: float = 0.01, kappa: float = 2.0) -> np.ndarray | None:
    """The next point to evaluate, in the unit cube.

    Parameters
    ----------
    space : SearchSpace
    method : {'bo', 'random', 'grid'}
        ``bo``: a Latin-hypercube design of ``n_initial`` points, then the minimiser of
        the acquisition on the surrogate fitted to all values so far; ``random``:
        uniform points; ``grid``: the largest full grid within ``budget`` calls, in
        lexicographic order.
    call : int
        Index of the call (0 for the first).
    u : ndarray of shape (call, dim)
        Points evaluated so far.
    y : ndarray of shape (call,)
        Their values (eV for an energy).
    seed : int
        Fixes every random choice (with ``call``).
    budget, n_initial : int
        Calls in all; calls of the initial design.
    acquisition : {'ei', 'lcb'}
    xi : float
        Least improvement sought by EI, in standard deviations of the values.
    kappa : float
        Weight of the surrogate's standard deviation in LCB.

    Returns
    -------
    ndarray of shape (dim,) or None
        None when the grid is exhausted.
    """
    if method == "grid":
        return _grid_point(space, budget, call)
    rng = np.random.default_rng([seed, call])
    if method == "random":
        return rng.random(space.dim)
    if method != "bo":
        raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
    n_initial = min(n_initial, budget)
    if call < n_initial or len(y) < 2:
        return _initial_design(space, max(n_initial, 2), seed)[min(call, max(n_initial, 2) - 1)]
    return _bo_point(space, np.asarray(u), np.asarray(y), rng, seed + call, acquisition, xi,
                     kappa)


def minimise(function: Callable[[np.ndarray], float], space: SearchSpace, method: str,
             budget: int, **options) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate ``function`` (of the degrees of freedom) at up to ``budget`` proposed
    points; the points (unit cube, (calls, dim)) and values (calls,) in call order.

    ``options`` are those of :func:`propose` (``seed``, ``n_initial``, ...).
    """
    u = np.zeros((0, space.dim))
    y = np.zeros(0)
    for call in range(budget):
        point = propose(space, method, call, u, y, budget=budget, **options)
        if point is None:
            break
        u = np.vstack([u, point])
        y = np.append(y, float(function(space.values(point))))
    return u, y


def calls_to_reach(values: Sequence[float], target: float) -> int | None:
    """Calls until the first value at or below ``target`` (1-based; None if never)."""
    hits = np.flatnonzero(np.asarray(values, dtype=float) <= target)
    return int(hits[0]) + 1 if len(hits) else None


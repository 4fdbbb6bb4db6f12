"""A heteroscedastic model of per-atom force errors, fitted on held-out residuals.

The posterior of a linear (or sparse GP) potential measures only how well the data pin
down the coefficients; on ab initio data the error of a fitted potential is mostly
*model* error (the basis cannot represent the true surface), which the posterior does
not see. This module learns the size of that error from residuals on training frames
the potential was not fitted on (whole trajectories held out inside ``train``), as a
function of what is known at prediction time: the atom's species, its posterior
force sigma, its predicted force and its environment (the descriptor, projected on its
leading principal components, one block per species).

Each force component of atom ``i`` is modelled as ``N(0, s_i^2)`` with
``log s_i = a_i . w`` (a Gamma regression on ``|r_i|^2`` with a log link); ``w``
maximises the likelihood of the held-out residuals with a ridge penalty, by Newton
steps (the problem is convex). Energies get a two-parameter model of the same held-out
residuals (:class:`EnergyErrorModel`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ml4m.errors import ConfigError

__all__ = ["EnergyErrorModel", "ForceErrorModel", "MIN_ATOMS"]

#: fewest held-out atoms a :class:`ForceErrorModel` is fitted on
MIN_ATOMS = 10


def _leading_components(Z: np.ndarray, k: int, n_iter: int = 8, oversample: int = 32,
                        exact_below: int = 1000) -> np.ndarray:
    """The ``k`` leading right singular vectors of ``Z`` (n, F) as columns (F, k).

    Below ``exact_below`` rows or columns, from the top of the spectrum of the smaller
    Gram matrix (a full SVD of a few thousand atoms by a few thousand features costs
    ~100x more for the same 32 vectors). Above, by subspace iteration on ``k +
    oversample`` random vectors (``n_iter`` power steps, re-orthonormalised, then a
    Rayleigh-Ritz step; fixed seed): the error converges as ``(s_(k+oversample) /
    s_k)^(2 n_iter)``, for descriptors' fast-decaying spectra to rounding in a second
    where the Gram matrix's eigenvalues cost ~10 s (3BPA: 5,400 atoms, 5,187 features).
    """
    import scipy.linalg

    n, F = Z.shape
    m = k + oversample
    if min(n, F) >= max(exact_below, 2 * m):
        Q = np.linalg.qr(Z.T @ np.random.default_rng(0).standard_normal((n, m)))[0]
        for _ in range(n_iter):
            Q = np.linalg.qr(Z.T @ (Z @ Q))[0]
        _, _, Wt = np.linalg.svd(Z @ Q, full_matrices=False)
        return Q @ Wt[:k].T
    if n >= F:
        _, V = scipy.linalg.eigh(Z.T @ Z, subset_by_index=[F - k, F - 1])
        return V[:, ::-1]
    w, U = scipy.linalg.eigh(Z @ Z.T, subset_by_index=[n - k, n - 1])
    V = Z.T @ U[:, ::-1]
    return V / np.maximum(np.linalg.norm(V, axis=0), 1e-300)


class ForceErrorModel:
    """Predicts the standard deviation of each force component of each atom.

    Parameters
    ----------
    n_species : int
        Species indices run over ``0 .. n_species - 1``.
    n_components : int, default=32
        Principal components of the descriptor used per species.
    ridge : float, default=1e-3
        Ridge penalty per atom on the species offsets and the component weights.
    """

    def __init__(self, n_species: int, n_components: int = 32, ridge: float = 1e-3) -> None:
        self.n_species = int(n_species)
        self.n_components = int(n_components)
        self.ridge = float(ridge)

    def _design(self, sigma: np.ndarray, force_norm: np.ndarray, species: np.ndarray,
                X: np.ndarray) -> np.ndarray:
        onehot = np.zeros((len(species), self.n_species))
        onehot[np.arange(len(species)), species] = 1.0
        pcs = ((X - self.mean_) / self.scale_) @ self.components_ / np.sqrt(max(self.components_.shape[1], 1))
        blocks = (onehot[:, :, None] * pcs[:, None, :]).reshape(len(species), -1)
        return np.hstack([np.ones((len(species), 1)), onehot,
                          np.log(np.maximum(sigma, 1e-12))[:, None],
                          np.log(force_norm + self.force_scale_)[:, None], blocks])

    def fit(self, residual_sq: np.ndarray, sigma: np.ndarray, force_norm: np.ndarray,
            species: np.ndarray, X: np.ndarray, max_iter: int = 100) -> ForceErrorModel:
        """Fit on held-out atoms.

        Parameters
        ----------
        residual_sq : ndarray of shape (n,)
            ``|F_pred - F_ref|^2`` per atom, (eV/Angstrom)^2.
        sigma : ndarray of shape (n,)
            Norm of the posterior force sigma per atom, eV/Angstrom.
        force_norm : ndarray of shape (n,)
            ``|F_pred|`` per atom, eV/Angstrom.
        species : ndarray of shape (n,)
            Species index per atom.
        X : ndarray of shape (n, F)
            Descriptor of each atom.

        Returns
        -------
        self
        """
        residual_sq = np.asarray(residual_sq, dtype=float)
        n = len(residual_sq)
        if n < MIN_ATOMS:
            raise ConfigError(f"the force error model needs at least {MIN_ATOMS} held-out atoms, "
                              f"got {n}")
        self.mean_ = X.mean(axis=0)
        std = X.std(axis=0)
        self.scale_ = np.where(std > 1e-12 * max(float(std.max(initial=0.0)), 1e-300), std, 1.0)
        k = min(self.n_components, n - 1, X.shape[1])
        self.components_ = _leading_components((X - self.mean_) / self.scale_, k)
        self.force_scale_ = 0.1 * float(np.median(force_norm)) + 1e-6
        A = self._design(sigma, force_norm, species, X)
        pen = np.full(A.shape[1], self.ridge * n)
        # intercept, log sigma, log |F| free; species offsets are penalised, so a species
        # absent from the held-out atoms keeps the common intercept
        pen[[0, self.n_species + 1, self.n_species + 2]] = 0.0
        r2 = np.maximum(residual_sq, 1e-30)
        w = np.zeros(A.shape[1])
        w[0] = 0.5 * np.log(np.mean(r2) / 3.0)

        def objective(w):
            eta = A @ w
            with np.errstate(over="ignore"):  # inf: a trial step the backtracking rejects
                return float(np.sum(3.0 * eta + 0.5 * r2 * np.exp(-2.0 * eta))
                             + 0.5 * np.sum(pen * w * w))

        f = objective(w)
        for self.n_iter_ in range(1, max_iter + 1):
            q = r2 * np.exp(-2.0 * (A @ w))
            grad = A.T @ (3.0 - q) + pen * w
            hess = (A * (2.0 * q)[:, None]).T @ A + np.diag(pen)
            step = np.linalg.lstsq(hess, grad, rcond=None)[0]
            t = 1.0
            while t > 1e-8:  # backtracking: Newton steps from far away can overshoot
                f_new = objective(w - t * step)
                if f_new <= f:
                    break
                t *= 0.5
            w, f_old, f = w - t * step, f, f_new
            if abs(f_old - f) <= 1e-10 * abs(f) or t <= 1e-8:
                break
        self.coef_ = w
        return self

    def predict(self, sigma: np.ndarray, force_norm: np.ndarray, species: np.ndarray,
                X: np.ndarray) -> np.ndarray:
        """Standard deviation of each force component (eV/Angstrom), shape (n,)."""
        return np.exp(self._design(sigma, force_norm, species, X) @ self.coef_)

    # ---- persistence ----------------------------------------------------------------------
    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        params = {"n_species": self.n_species, "n_components": self.n_components,
                  "ridge": self.ridge, "force_scale": self.force_scale_}
        arrays = {"mean": self.mean_, "scale": self.scale_, "components": self.components_,
                  "coef": self.coef_}
        return params, arrays

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> ForceErrorModel:
        model = cls(params["n_species"], params["n_components"], params["ridge"])
        model.force_scale_ = float(params["force_scale"])
        model.mean_, model.scale_ = arrays["mean"], arrays["scale"]
        model.components_, model.coef_ = arrays["components"], arrays["coef"]
        k = model.components_.shape[1]
        if model.coef_.shape != (3 + model.n_species * (1 + k),) or model.mean_.shape != model.scale_.shape:
            raise ConfigError("force error model arrays have inconsistent shapes")
        return model


class EnergyErrorModel:
    """Structure energy sigma ``sqrt(a^2 sigma_post^2 + b^2 n_atoms)``, fitted on held-out frames.

    ``a`` rescales the posterior standard deviation; ``b`` (eV per sqrt(atom)) is an
    error of each atom's energy independent of the others (the part of the basis error
    the posterior does not see). Both maximise the Gaussian likelihood of the held-out
    energy residuals.
    """

    def fit(self, residual: np.ndarray, sigma: np.ndarray, n_atoms: np.ndarray) -> EnergyErrorModel:
        """Fit on held-out frames.

        Parameters
        ----------
        residual : ndarray of shape (n,)
            ``E_pred - E_ref`` per frame, eV.
        sigma : ndarray of shape (n,)
            Posterior energy sigma per frame, eV.
        n_atoms : ndarray of shape (n,)
            Atoms per frame.

        Returns
        -------
        self
        """
        import scipy.optimize

        r2 = np.asarray(residual, dtype=float) ** 2
        s2 = np.asarray(sigma, dtype=float) ** 2
        n = np.asarray(n_atoms, dtype=float)
        if len(r2) < 2:
            raise ConfigError(f"the energy error model needs at least 2 held-out frames, got {len(r2)}")

        def nll(theta):
            var = np.exp(2 * theta[0]) * s2 + np.exp(2 * theta[1]) * n + 1e-300
            return float(np.sum(np.log(var) + r2 / var))

        start = np.log(np.sqrt(max(np.mean(r2 / n), 1e-30)))
        best = min((scipy.optimize.minimize(nll, [t0, start], method="Nelder-Mead",
                                            options={"xatol": 1e-6, "fatol": 1e-10, "maxiter": 2000})
                    for t0 in (0.0, 3.0, 6.0)), key=lambda res: res.fun)
        self.scale_, self.per_atom_ = (float(v) for v in np.exp(best.x))
        return self

    def predict(self, sigma: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
        """Energy standard deviation per structure, eV."""
        return np.sqrt(self.scale_**2 * np.asarray(sigma) ** 2 + self.per_atom_**2 * np.asarray(n_atoms))

    def get_state(self) -> dict[str, float]:
        return {"scale": self.scale_, "per_atom": self.per_atom_}

    @classmethod
    def from_state(cls, params: dict[str, Any]) -> EnergyErrorModel:
        model = cls()
        model.scale_, model.per_atom_ = float(params["scale"]), float(params["per_atom"])
        return model

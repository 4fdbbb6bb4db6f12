"""Kernel ridge and Gaussian-process regression for structure-property models.

Any scalar target (formation energy, band gap, ...) regressed on per-structure
descriptors (averaged SOAP/ACE, MBTR). Features are standardised; the kernel is RBF
(Gaussian), Laplacian or linear; hyperparameters ``alpha`` (regularisation) and
``gamma`` (inverse squared length scale, in units of standardised features) are chosen
by k-fold cross-validation. In GP mode the same solution comes with a predictive
standard deviation (signal variance by maximum likelihood).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
from sklearn.metrics.pairwise import pairwise_kernels
from sklearn.model_selection import KFold

from ml4m.errors import ConfigError, NotFittedError

__all__ = ["KernelRegressor", "cross_validate", "learning_curve", "LearningCurve"]

_KERNELS = ("rbf", "laplacian", "linear")


class KernelRegressor:
    """Kernel ridge regression / GP regression on a feature table.

    Parameters
    ----------
    kernel : {'rbf', 'laplacian', 'linear'}, default='rbf'
        Kernel on standardised features.
    alpha : float, default=1e-3
        Regularisation (GP noise variance relative to the signal variance).
    gamma : float, optional
        Kernel width parameter; default ``1 / n_features``.

    Attributes
    ----------
    dual_coef_ : ndarray of shape (n_train,)
    X_fit_ : ndarray of shape (n_train, n_features)
        Standardised training features (part of the model).
    signal_variance_ : float
        Maximum-likelihood signal variance (for ``predict(..., return_std=True)``).
    """

    def __init__(self, kernel: str = "rbf", alpha: float = 1e-3, gamma: float | None = None) -> None:
        self.kernel = kernel
        self.alpha = alpha
        self.gamma = gamma

    def _k(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        params = {} if self.kernel == "linear" else {"gamma": self.gamma_}
        return pairwise_kernels(A, B, metric=self.kernel, **params)

    def fit(self, X: np.ndarray, y: np.ndarray) -> KernelRegressor:
        """Fit on ``X`` (n, F) and ``y`` (n,); returns ``self``."""
        if self.kernel not in _KERNELS:
            raise ConfigError(f"kernel must be one of {_KERNELS}, got {self.kernel!r}")
        if not self.alpha > 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha}")
        X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=float).ravel()
        if X.ndim != 2 or len(X) != len(y) or len(y) < 2:
            raise ConfigError(f"X must be (n, F) with n = len(y) >= 2; got {X.shape} and {y.shape}")
        if not (np.isfinite(X).all() and np.isfinite(y).all()):
            raise ConfigError("X or y contains NaN or inf")
        self.x_mean_ = X.mean(axis=0)
        std = X.std(axis=0)
        self.x_scale_ = np.where(std > 0, std, 1.0)
        self.y_mean_ = float(y.mean())
        self.gamma_ = float(self.gamma) if self.gamma is not None else 1.0 / X.shape[1]
        self.X_fit_ = (X - self.x_mean_) / self.x_scale_
        K = self._k(self.X_fit_, self.X_fit_)
        K[np.diag_indices_from(K)] += self.alpha
        self._chol = scipy.linalg.cho_factor(K, lower=True)
        r = y - self.y_mean_
        self.dual_coef_ = scipy.linalg.cho_solve(self._chol, r)
        self.signal_variance_ = max(float(r @ self.dual_coef_) / len(r), 1e-300)
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: np.ndarray, return_std: bool = False):
        """Predictions for ``X`` (n, F); with ``return_std`` the GP standard deviation."""
        if not hasattr(self, "dual_coef_"):
            raise NotFittedError("This KernelRegressor is not fitted yet. Call 'fit' first.")
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ConfigError(f"X has {X.shape[-1]} features, but the model expects {self.n_features_in_}")
        Z = (X - self.x_mean_) / self.x_scale_
        Ks = self._k(Z, self.X_fit_)
        mean = Ks @ self.dual_coef_ + self.y_mean_
        if not return_std:
            return mean
        if not hasattr(self, "_chol"):
            K = self._k(self.X_fit_, self.X_fit_)
            K[np.diag_indices_from(K)] += self.alpha
            self._chol = scipy.linalg.cho_factor(K, lower=True)
        v = scipy.linalg.solve_triangular(self._chol[0], Ks.T, lower=True)
        kxx = np.diag(self._k(Z, Z)) if self.kernel == "linear" else np.ones(len(Z))
        var = np.clip(kxx - np.sum(v**2, axis=0), 0.0, None) + self.alpha
        return mean, np.sqrt(self.signal_variance_ * var)

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Parameters and arrays for :func:`ml4m.models.serialization.save_model_file`."""
        params = {"kernel": self.kernel, "alpha": self.alpha, "gamma": self.gamma_,
                  "y_mean": self.y_mean_, "signal_variance": self.signal_variance_}
        arrays = {"dual_coef": self.dual_coef_, "X_fit": self.X_fit_, "x_mean": self.x_mean_,
                  "x_scale": self.x_scale_}
        return params, arrays

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> KernelRegressor:
        """Rebuild a fitted regressor from :meth:`get_state`'s output."""
        m = cls(kernel=params["kernel"], alpha=params["alpha"], gamma=params["gamma"])
        m.gamma_, m.y_mean_ = params["gamma"], params["y_mean"]
        m.signal_variance_ = params["signal_variance"]
        m.dual_coef_, m.X_fit_ = arrays["dual_coef"], arrays["X_fit"]
        m.x_mean_, m.x_scale_ = arrays["x_mean"], arrays["x_scale"]
        m.n_features_in_ = m.X_fit_.shape[1]
        return m


def cross_validate(X: np.ndarray, y: np.ndarray, kernel: str = "rbf",
                   alphas: tuple[float, ...] = (1e-6, 1e-4, 1e-2, 1e-1),
                   gammas: tuple[float, ...] | None = None, n_folds: int = 5,
                   seed: int = 0) -> tuple[KernelRegressor, dict[str, Any]]:
    """Choose ``alpha`` and ``gamma`` by k-fold CV (MAE), then refit on all data.

    Returns
    -------
    model : KernelRegressor
        Fitted on all of ``X, y`` with the best hyperparameters.
    report : dict
        ``alpha``, ``gamma``, ``cv_mae`` and the full grid of CV errors.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float).ravel()
    n_folds = min(n_folds, len(y))
    if n_folds < 2:
        raise ConfigError(f"cross-validation needs at least 2 samples, got {len(y)}")
    if gammas is None:
        base = 1.0 / X.shape[1]
        gammas = (None,) if kernel == "linear" else tuple(base * f for f in (0.1, 0.3, 1.0, 3.0))
    folds = list(KFold(n_folds, shuffle=True, random_state=seed).split(X))
    grid = []
    for a in alphas:
        for g in gammas:
            errs = []
            for tr, te in folds:
                m = KernelRegressor(kernel, a, g).fit(X[tr], y[tr])
                errs.append(np.mean(np.abs(m.predict(X[te]) - y[te])))
            grid.append({"alpha": a, "gamma": g, "cv_mae": float(np.mean(errs))})
    best = min(grid, key=lambda r: r["cv_mae"])
    model = KernelRegressor(kernel, best["alpha"], best["gamma"]).fit(X, y)
    return model, {**best, "gamma": model.gamma_, "grid": grid}


@dataclass
class LearningCurve:
    """Test MAE versus training-set size (mean and std over repeats)."""

    sizes: np.ndarray
    mae: np.ndarray
    mae_std: np.ndarray

    def slope(self) -> float:
        """Log-log slope of MAE against size (negative when learning)."""
        return float(np.polyfit(np.log(self.sizes), np.log(self.mae), 1)[0])

    def plot(self, path, label: str = "test MAE") -> None:
        """Write a log-log PNG of the curve (atomically)."""
        from matplotlib.figure import Figure

        from ml4m._fileio import atomic_path

        fig = Figure(figsize=(5, 4), dpi=120)
        ax = fig.add_subplot()
        ax.errorbar(self.sizes, self.mae, yerr=self.mae_std, marker="o", capsize=3)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training-set size")
        ax.set_ylabel(label)
        ax.set_title(f"learning curve (slope {self.slope():.2f})")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp)


def learning_curve(X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
                   sizes: tuple[int, ...], kernel: str = "rbf", alpha: float = 1e-3,
                   gamma: float | None = None, repeats: int = 3, seed: int = 0) -> LearningCurve:
    """Test MAE of models trained on random subsets of increasing size."""
    rng = np.random.default_rng(seed)
    sizes = np.array([s for s in sizes if 2 <= s <= len(y)])
    if not len(sizes):
        raise ConfigError(f"no training size between 2 and {len(y)} in {sizes}")
    mae = np.zeros((len(sizes), repeats))
    for i, n in enumerate(sizes):
        for r in range(repeats):
            idx = rng.choice(len(y), size=int(n), replace=False)
            m = KernelRegressor(kernel, alpha, gamma).fit(X[idx], y[idx])
            mae[i, r] = np.mean(np.abs(m.predict(X_test) - y_test))
    return LearningCurve(sizes, mae.mean(axis=1), mae.std(axis=1))

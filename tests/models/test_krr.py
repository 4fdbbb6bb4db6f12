"""Kernel ridge / GP regression: exact interpolation limit, CV, learning curve, sigma."""

from __future__ import annotations

import numpy as np
import pytest

from ml4m.errors import ConfigError, NotFittedError
from ml4m.models.kernel.krr import KernelRegressor, cross_validate, learning_curve


def _target(X):
    return np.sin(X[:, 0]) + 0.5 * X[:, 1] ** 2 - X[:, 2]


def test_linear_kernel_equals_ridge(rng):
    X = rng.normal(size=(50, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.01 * rng.normal(size=50)
    m = KernelRegressor("linear", alpha=1e-2).fit(X, y)
    Z = (X - X.mean(0)) / X.std(0)
    w = np.linalg.solve(Z.T @ Z + 1e-2 * np.eye(4), Z.T @ (y - y.mean()))  # primal ridge
    Xt = rng.normal(size=(10, 4))
    np.testing.assert_allclose(m.predict(Xt), ((Xt - X.mean(0)) / X.std(0)) @ w + y.mean(), rtol=1e-8)


def test_cv_learns_a_smooth_function_and_curve_decreases(rng, tmp_path):
    X = rng.uniform(-2, 2, size=(300, 3))
    y = _target(X)
    Xt = rng.uniform(-2, 2, size=(200, 3))
    model, report = cross_validate(X, y, alphas=(1e-6, 1e-3), n_folds=4)
    mae = np.mean(np.abs(model.predict(Xt) - _target(Xt)))
    assert mae < 0.05 * np.std(y)
    assert report["cv_mae"] == min(r["cv_mae"] for r in report["grid"])
    curve = learning_curve(X, y, Xt, _target(Xt), sizes=(20, 60, 200), alpha=report["alpha"],
                           gamma=report["gamma"], repeats=2)
    assert np.all(np.diff(curve.mae) < 0) and curve.slope() < -0.5
    curve.plot(tmp_path / "lc.png")
    assert (tmp_path / "lc.png").read_bytes()[:4] == b"\x89PNG"


def test_gp_std_grows_away_from_data(rng):
    X = rng.uniform(-1, 1, size=(80, 2))
    m = KernelRegressor("rbf", alpha=1e-4, gamma=1.0).fit(X, np.sin(3 * X[:, 0]))
    _, near = m.predict(X[:5] + 1e-3, return_std=True)
    _, far = m.predict(np.array([[6.0, 6.0], [-7.0, 5.0]]), return_std=True)
    assert far.min() > 10 * near.max()


def test_state_round_trip_and_errors(rng):
    X = rng.normal(size=(30, 3))
    m = KernelRegressor().fit(X, X[:, 0])
    m2 = KernelRegressor.from_state(*m.get_state())
    np.testing.assert_array_equal(m.predict(X), m2.predict(X))
    with pytest.raises(NotFittedError):
        KernelRegressor().predict(X)
    with pytest.raises(ConfigError, match="kernel must be one of"):
        KernelRegressor("poly").fit(X, X[:, 0])
    with pytest.raises(ConfigError, match="NaN"):
        KernelRegressor().fit(np.full((3, 2), np.nan), np.ones(3))
    with pytest.raises(ConfigError, match="X has 2 features, but the model expects 3"):
        m.predict(np.ones((1, 2)))

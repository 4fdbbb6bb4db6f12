"""Structure-property models: a global descriptor plus kernel ridge / GP regression."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ml4m.data.frames import Dataset, Frame
from ml4m.errors import DataError, NotFittedError
from ml4m.descriptors import from_settings
from ml4m.models.base import Estimator, as_frames
from ml4m.models.kernel.krr import _KERNELS, KernelRegressor, cross_validate
from ml4m.models.registry import register_model
from ml4m.validation import (
    check_array,
    check_choice,
    check_float,
    check_mapping,
    check_str,
    each,
    float_from,
    int_from,
    optional,
)

__all__ = ["PropertyModel", "frame_targets"]


def frame_targets(frames: Sequence[Frame], target: str) -> np.ndarray:
    """Per-frame target values: ``energy_per_atom`` (eV/atom), ``energy`` (eV) or an info key.

    Raises
    ------
    DataError
        A frame without the target (file and frame named).
    """
    out = []
    for n, f in enumerate(frames):
        if target in ("energy", "energy_per_atom"):
            value = None if f.energy is None else f.energy / (len(f) if target == "energy_per_atom" else 1)
        else:
            value = f.info.get(target)
        if value is None or not np.isfinite(float(value)):
            raise DataError(f"no finite value of target '{target}'", *(f.source or (None, n)))
        out.append(float(value))
    return np.array(out)


@register_model("krr", fit_name="krr", descriptor="mbtr")
class PropertyModel(Estimator):
    """Kernel ridge / GP regression of a per-structure property on a global descriptor.

    Parameters
    ----------
    descriptor : Descriptor
        Any ml4m descriptor; rows are averaged over the atoms of each structure.
    target : str, default='energy_per_atom'
        ``energy_per_atom``, ``energy`` or a key of ``Frame.info``.
    kernel : {'rbf', 'laplacian', 'linear'}, default='rbf'
    alphas, gammas : tuple of float, optional
        Cross-validation grids (defaults of :func:`cross_validate`).
    n_folds : int, default=5
    seed : int, default=0
    """

    has_uncertainty = True
    param_checks = {
        "target": check_str, "kernel": lambda name, value, **where: check_choice(
            name, value, tuple(_KERNELS), **where),
        "alphas": each(float_from(0.0, low_open=True)),
        "gammas": optional(each(float_from(0.0, low_open=True))),
        "n_folds": int_from(2), "seed": int_from(0),
    }

    def __init__(self, descriptor, target: str = "energy_per_atom", kernel: str = "rbf",
                 alphas: tuple[float, ...] = (1e-6, 1e-4, 1e-2, 1e-1),
                 gammas: tuple[float, ...] | None = None, n_folds: int = 5, seed: int = 0) -> None:
        self.descriptor = descriptor
        self.target = target
        self.kernel = kernel
        self.alphas = alphas
        self.gammas = gammas
        self.n_folds = n_folds
        self.seed = seed

    def features(self, frames) -> np.ndarray:
        """Per-structure descriptor (mean over atoms), shape (n_frames, n_features)."""
        frames = as_frames(frames)
        res = self.descriptor.compute(frames)
        n = len(frames)
        sums = np.zeros((n, res.features.shape[1]))
        np.add.at(sums, res.frame, res.features)
        counts = np.bincount(res.frame, minlength=n)
        return sums / counts[:, None]

    def fit(self, train: Dataset | Sequence[Frame], valid: Dataset | None = None) -> PropertyModel:
        """Choose hyperparameters by k-fold CV on ``train`` and fit; returns ``self``."""
        frames = as_frames(train)
        y = frame_targets(frames, self.target)
        self.regressor_, self.cv_ = cross_validate(
            self.features(frames), y, kernel=self.kernel, alphas=tuple(self.alphas),
            gammas=None if self.gammas is None else tuple(self.gammas), n_folds=self.n_folds,
            seed=self.seed)
        return self

    def predict_values(self, frames, return_std: bool = False):
        """Predicted target per frame (and GP standard deviation)."""
        if not hasattr(self, "regressor_"):
            raise NotFittedError("This PropertyModel is not fitted yet. Call 'fit' first.")
        return self.regressor_.predict(self.features(frames), return_std=return_std)

    def score(self, frames) -> dict[str, Any]:
        """MAE, RMSE and sigma/error Spearman correlation on labelled frames."""
        from scipy.stats import spearmanr

        frames = as_frames(frames)
        y = frame_targets(frames, self.target)
        mean, std = self.predict_values(frames, return_std=True)
        err = np.abs(mean - y)
        rho = float(spearmanr(std, err).statistic) if len(y) > 2 else None
        return {"n_frames": len(frames), "target": self.target,
                "property": {"mae": float(err.mean()), "rmse": float(np.sqrt(np.mean(err**2)))},
                "uncertainty": {"sigma_spearman": rho}}

    def save(self, path):
        """Write the model to one ``.ml4m`` file."""
        from ml4m.models.serialization import save_model_file

        params, arrays = self.regressor_.get_state()
        meta = {"descriptor": dict(self.descriptor.settings()), "target": self.target,
                "regressor": params, "cv": {k: v for k, v in self.cv_.items() if k != "grid"}}
        return save_model_file(path, self.kind, meta, arrays)

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> PropertyModel:
        """Rebuild from a model file's contents.

        Every entry is checked first (type, range, shapes of the training table against
        the descriptor); a bad one raises :class:`DataError` naming it
        (:func:`ml4m.load` adds the file).
        """
        where = {"error": DataError}
        params = check_mapping("params", params, required=("descriptor", "target", "regressor"),
                               **where)
        reg = check_mapping("params.regressor", params["regressor"],
                            required=("kernel", "alpha", "gamma", "y_mean", "signal_variance"),
                            **where)
        check_choice("params.regressor.kernel", reg["kernel"], _KERNELS, **where)
        check_float("params.regressor.alpha", reg["alpha"], low=0.0, low_open=True, **where)
        check_float("params.regressor.gamma", reg["gamma"], low=0.0, low_open=True, **where)
        check_float("params.regressor.y_mean", reg["y_mean"], **where)
        check_float("params.regressor.signal_variance", reg["signal_variance"], low=0.0,
                    low_open=True, **where)
        model = cls(from_settings(params["descriptor"]),
                    target=check_str("params.target", params["target"], **where),
                    kernel=reg["kernel"])
        n_features = model.descriptor.n_features
        for name in ("dual_coef", "X_fit", "x_mean", "x_scale"):
            if name not in arrays:
                raise DataError(f"array {name!r} is missing")
        X = check_array("array 'X_fit'", arrays["X_fit"], shape=(None, n_features), kinds="f")
        check_array("array 'dual_coef'", arrays["dual_coef"], shape=(len(X),), kinds="f")
        check_array("array 'x_mean'", arrays["x_mean"], shape=(n_features,), kinds="f")
        scale = check_array("array 'x_scale'", arrays["x_scale"], shape=(n_features,), kinds="f")
        if len(X) < 2 or not np.all(scale > 0):
            raise DataError("array 'X_fit' needs >= 2 rows and 'x_scale' values > 0")
        model.regressor_ = KernelRegressor.from_state(reg, arrays)
        cv = params.get("cv", {})
        model.cv_ = check_mapping("params.cv", cv, **where)
        return model

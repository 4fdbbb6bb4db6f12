"""Structure-property models: a global descriptor plus kernel ridge / GP regression."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ml4m.data.frames import Dataset, Frame
from ml4m.errors import ConfigError, DataError, NotFittedError
from ml4m.models.base import as_frames, descriptor_from_dict, descriptor_to_dict
from ml4m.models.kernel.krr import KernelRegressor, cross_validate
from ml4m.models.serialization import register_model

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


@register_model("krr")
class PropertyModel:
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
        meta = {"descriptor": descriptor_to_dict(self.descriptor), "target": self.target,
                "regressor": params, "cv": {k: v for k, v in self.cv_.items() if k != "grid"}}
        return save_model_file(path, self.kind, meta, arrays)

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> PropertyModel:
        """Rebuild from a model file's contents."""
        try:
            model = cls(descriptor_from_dict(params["descriptor"]), target=params["target"],
                        kernel=params["regressor"]["kernel"])
            model.regressor_ = KernelRegressor.from_state(params["regressor"], arrays)
            model.cv_ = params.get("cv", {})
        except KeyError as exc:
            raise ConfigError(f"model file lacks entry {exc}") from exc
        return model

"""Any potential plus a baseline: the model learns the residual, predictions add it back.

:class:`Baselined` wraps any potential (linear, GP, committee, network): ``fit`` fits
the baseline's data-dependent settings, then a clone of the inner model on
:func:`~ml4m.models.baseline.residual_frames` (labels minus baseline); ``predict``
returns the inner model's prediction plus the baseline's energies, forces and stress,
with the inner model's sigmas. The saved model records the baseline and nests the inner
model's state. :func:`with_baseline` builds one from the ``repulsion:`` and ``baseline:``
settings of a fit.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from ml4m.data.frames import Dataset, Frame
from ml4m.errors import ConfigError, DataError, NotFittedError
from ml4m.models.base import Potential, Prediction, as_frames
from ml4m.models.baseline.core import (
    Baseline,
    SumBaseline,
    baseline_from_state,
    is_baseline,
    residual_frames,
)
from ml4m.models.baseline.external import CalculatorBaseline, LabelBaseline
from ml4m.models.baseline.repulsion import PairRepulsion
from ml4m.models.registry import model_kind, register_model
from ml4m.validation import check_bool, check_mapping, describe, fail

__all__ = ["Baselined", "with_baseline", "baseline_from_config", "attach_baseline_labels"]


def _is_potential(name: str, value: Any, **where: Any) -> Potential:
    if not isinstance(value, Potential) or isinstance(value, Baselined):
        raise fail(f"{name} must be a potential other than a baselined one, got "
                   f"{describe(value)}", **where)
    return value


@register_model("baselined")
class Baselined(Potential):
    """A potential fitted to the reference minus a baseline, predicting their sum.

    Parameters
    ----------
    model : Potential
        The template of the inner model (cloned and fitted on residual labels).
    baseline : Baseline
        What is subtracted from the labels before the fit and added to predictions
        (cloned and fitted on the training frames): :class:`PairRepulsion`,
        :class:`CalculatorBaseline`, :class:`LabelBaseline`, :class:`SumBaseline`.

    Attributes
    ----------
    model_ : Potential
        The fitted inner model.
    baseline_ : Baseline
        The fitted baseline.
    """

    param_checks = {"model": _is_potential, "baseline": is_baseline}

    def __init__(self, model: Potential, baseline: Baseline) -> None:
        self.model = model
        self.baseline = baseline

    @classmethod
    def from_fitted(cls, model: Potential, baseline: Baseline) -> Baselined:
        """Wrap an already fitted model and baseline without refitting.

        Right when ``model`` was fitted on residuals of ``baseline``, or when the
        baseline is zero on the model's training frames (a :class:`PairRepulsion`
        fitted on those same frames): the fit would then reproduce ``model`` exactly.
        """
        out = cls(model, baseline)
        out.check_params(out.get_params())
        out.model_, out.baseline_ = model, baseline
        return out

    # ---- the potential contract ------------------------------------------------------------
    @property
    def _inner(self) -> Potential:
        return getattr(self, "model_", self.model)

    @property
    def species(self) -> np.ndarray:
        return self._inner.species

    @property
    def cutoff(self) -> float:
        baseline = getattr(self, "baseline_", self.baseline)
        return max(float(self._inner.cutoff), float(baseline.range))

    @property
    def has_uncertainty(self) -> bool:
        return self._inner.has_uncertainty

    @property
    def n_parameters(self) -> int:
        return self.model_.n_parameters if hasattr(self, "model_") else 0

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError("This Baselined potential is not fitted yet. Call 'fit' first.")

    def fit(self, train: Dataset | list[Frame], valid: Dataset | None = None) -> Baselined:
        """Fit the baseline on ``train``, then the inner model on the residuals of
        ``train`` (and ``valid``); returns ``self``."""
        self.check_params(self.get_params())
        baseline, frames, rest = self.residuals(train, valid)
        self.model_ = self.model.clone().fit(frames, rest)
        self.baseline_ = baseline
        return self

    def residuals(self, train: Dataset | list[Frame], valid: Dataset | list[Frame] | None = None
                  ) -> tuple[Baseline, list[Frame], list[Frame] | None]:
        """A clone of the baseline fitted on ``train``, and what the inner model learns:
        ``train`` and ``valid`` (None stays None) with the baseline taken off their labels."""
        frames = as_frames(train)
        if not frames:
            raise DataError("no training frames")
        baseline = self.baseline.clone().fit(frames)
        rest = residual_frames(as_frames(valid), baseline) if valid is not None else None
        return baseline, residual_frames(frames, baseline), rest

    # ---- exact updates (on-the-fly learning) ---------------------------------------------
    @property
    def noise_(self) -> dict[str, float]:
        """The inner model's fitted noise per quantity (empty when it has none)."""
        return getattr(self._inner, "noise_", {})

    @property
    def normal_equations_(self) -> Any:
        """The inner model's kept normal equations (None when it keeps none)."""
        return getattr(self._inner, "normal_equations_", None)

    def update(self, frames: Dataset | list[Frame], reoptimise: bool = False) -> Baselined:
        """Learn labelled ``frames`` without a refit: a baseline that adapts to data (the
        repulsive core's radii) adapts first, then the inner model takes the residuals by
        its own exact update; returns ``self``.

        A baseline's ``update`` must leave its values on the frames learnt before
        unchanged (the repulsive core's does: it only widens where no frame was).

        Raises
        ------
        NotFittedError
            Not fitted, or the inner model keeps no normal equations.
        """
        self._check_fitted()
        frames = as_frames(frames)
        self.baseline_.update(frames)
        self.model_.update(residual_frames(frames, self.baseline_), reoptimise=reoptimise)
        return self

    def posterior_view(self) -> Baselined:
        """A shallow copy whose inner model is its ``posterior_view`` (the inner model
        itself when it has none): the same predictions, the posterior's sigmas."""
        self._check_fitted()
        view = copy.copy(self)
        inner = getattr(self.model_, "posterior_view", None)
        view.model_ = inner() if inner is not None else self.model_
        return view

    def restore_normal_equations(self, frames: Dataset | list[Frame]) -> Baselined:
        """The inner model's sums rebuilt from the frames it was fitted on (their
        residuals); returns ``self``."""
        self._check_fitted()
        restore = getattr(self.model_, "restore_normal_equations", None)
        if restore is None:
            raise ConfigError(f"the inner '{self.model_.kind}' model keeps no normal equations "
                              "to rebuild: it is refitted, not updated")
        restore(residual_frames(as_frames(frames), self.baseline_))
        return self

    def update_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The inner model's :meth:`update_state` (the baseline's state is in the file)."""
        self._check_fitted()
        return self.model_.update_state()

    def restore_update_state(self, params: dict[str, Any], arrays: dict[str, np.ndarray]
                             ) -> Baselined:
        """The inner model's :meth:`restore_update_state`; returns ``self``."""
        self._check_fitted()
        self.model_.restore_update_state(params, arrays)
        return self

    def predict(self, frames, uncertainty: bool = False) -> Prediction:
        """The inner model's prediction plus the baseline: energy (eV), forces (eV/A),
        stress (eV/A^3), per-atom energies when both have them; the inner model's sigmas."""
        self._check_fitted()
        frames = as_frames(frames)
        inner = self.model_.predict(frames, uncertainty=uncertainty)
        base = self.baseline_.evaluate(frames)
        energies = None
        if inner.energies is not None and base.energies is not None:
            energies = inner.energies + base.energies
        return Prediction(energy=inner.energy + base.energy, forces=inner.forces + base.forces,
                          stress=inner.stress + base.stress, offsets=inner.offsets,
                          energy_sigma=inner.energy_sigma, forces_sigma=inner.forces_sigma,
                          stress_sigma=inner.stress_sigma, energies=energies)

    # ---- persistence ---------------------------------------------------------------------------
    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        self._check_fitted()
        inner, inner_arrays = self.model_.get_state()
        record, base_arrays = self.baseline_.get_state()
        arrays = {f"model_{k}": v for k, v in inner_arrays.items()}
        arrays.update({f"baseline_{k}": v for k, v in base_arrays.items()})
        return {"model_kind": self.model_.kind, "model": inner, "baseline": record}, arrays

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Baselined:
        """Rebuild from a model file's contents (the inner model by its own kind)."""
        params = check_mapping("params", params, required=("model_kind", "model", "baseline"),
                               error=DataError)
        kind = model_kind(str(params["model_kind"]))
        if not kind.potential or kind.cls is cls:
            raise DataError(f"params.model_kind {kind.name!r} is not a potential kind")

        def own(prefix: str) -> dict[str, np.ndarray]:
            return {n[len(prefix):]: a for n, a in arrays.items() if n.startswith(prefix)}

        model = kind.cls.from_state(params["model"], own("model_"))
        baseline = baseline_from_state(params["baseline"], own("baseline_"))
        out = cls(model, baseline.clone())
        out.model_, out.baseline_ = model, baseline
        return out


def baseline_from_config(repulsion: Any = True, baseline: Any = None,
                         source: str = "config") -> Baseline | None:
    """The baseline a fit's ``repulsion:`` and ``baseline:`` settings describe.

    Parameters
    ----------
    repulsion : bool or dict, default=True
        ``true``: a :class:`PairRepulsion` with its defaults; a mapping: its settings
        (``width``, ``margin``, ``r_in``); ``false``: none.
    baseline : dict, optional
        ``{calculator: NAME, calculator_kwargs: {...}}`` for a :class:`CalculatorBaseline`,
        or ``{labels: {energy: KEY, forces: KEY}, calculator: ..., calculator_kwargs: ...}``
        for a :class:`LabelBaseline` (the calculator then serves new structures).
    source : str
        Config file name, for messages.

    Returns
    -------
    Baseline or None
        One baseline, a :class:`SumBaseline` of both, or None when neither is asked for.

    Raises
    ------
    ConfigError
        Naming the key: a value of the wrong type, an unknown setting.
    """
    where = {"source": source}
    parts: list[Baseline] = []
    if baseline is not None:
        spec = check_mapping("baseline", baseline, keys=("calculator", "calculator_kwargs",
                                                         "labels"), **where)
        if "labels" in spec:
            labels = check_mapping("baseline.labels", spec["labels"], keys=("energy", "forces"),
                                   required=("energy", "forces"), **where)
            settings = {"energy_key": labels["energy"], "forces_key": labels["forces"],
                        "calculator": spec.get("calculator"),
                        "calculator_kwargs": spec.get("calculator_kwargs")}
            parts.append(LabelBaseline(**LabelBaseline.check_params(settings, "baseline.",
                                                                    **where)))
        elif "calculator" in spec:
            parts.append(CalculatorBaseline(**CalculatorBaseline.check_params(
                spec, "baseline.", **where)))
        else:
            raise ConfigError(f"{source}: baseline needs 'calculator' or 'labels'")
    if isinstance(repulsion, dict):
        parts.append(PairRepulsion(**PairRepulsion.check_params(repulsion, "repulsion.",
                                                                **where)))
    elif check_bool("repulsion", repulsion, **where):
        parts.append(PairRepulsion())
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else SumBaseline(parts)


def with_baseline(model: Potential, repulsion: Any = True, baseline: Any = None,
                  source: str = "config") -> Potential:
    """``model`` wrapped in :class:`Baselined` as the settings ask (unfitted), or
    ``model`` itself when they ask for no baseline (see :func:`baseline_from_config`)."""
    chosen = baseline_from_config(repulsion, baseline, source)
    return model if chosen is None else Baselined(model, chosen)


def _label_parts(baseline: Baseline) -> list[LabelBaseline]:
    if isinstance(baseline, LabelBaseline):
        return [baseline]
    if isinstance(baseline, SumBaseline):
        return [p for part in baseline.parts for p in _label_parts(part)]
    return []


def attach_baseline_labels(model: Potential, frames: list[Frame],
                           paths: Any) -> list[Frame]:
    """``frames`` carrying the labels every :class:`LabelBaseline` of ``model`` reads,
    from ``paths`` (the files the frames were read from); unchanged for other models.

    A fit calls it on its training and validation frames before ``model.fit``, a test
    before ``model.predict`` (``paths`` as given to :func:`ml4m.data.read_dataset`).
    """
    if not isinstance(model, Baselined):
        return list(frames)
    frames = list(frames)
    for part in _label_parts(getattr(model, "baseline_", model.baseline)):
        frames = part.attach(frames, paths)  # a store: refused by the reader, named
    return frames

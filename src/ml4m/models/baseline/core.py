"""What a baseline is: energies, forces and stress of frames, saved as JSON plus arrays.

A baseline is a cheap, fixed model of the reference labels (a repulsive core, an ASE
calculator, labels of a lower level of theory carried by the data). A potential then
learns only the difference between the reference and the baseline (delta learning),
and predictions add the baseline back (:class:`~ml4m.models.baseline.Baselined`).

Every baseline kind registers itself with :func:`register_baseline`; a saved baseline
is ``{"kind": ..., "params": {...}, "state": {...}}`` plus numeric arrays, rebuilt by
:func:`baseline_from_state` without executing anything from the file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from ml4m.data.frames import Frame
from ml4m.errors import DataError
from ml4m.models.base import Estimator
from ml4m.validation import check_mapping, describe, each, fail

__all__ = ["Baseline", "BaselineValues", "register_baseline", "baseline_from_state",
           "is_baseline", "residual_frames", "frame_offsets", "nan_stress", "SumBaseline"]


@dataclass(frozen=True)
class BaselineValues:
    """A baseline's labels of a batch of frames, in ASE units.

    Attributes
    ----------
    energy : ndarray of shape (n_frames,), eV
    forces : ndarray of shape (n_atoms_total, 3), eV/Angstrom
    stress : ndarray of shape (n_frames, 6), eV/Angstrom^3
        Voigt order, ASE sign; NaN rows for frames that are not fully periodic (and
        for frames whose baseline gives no stress).
    energies : ndarray of shape (n_atoms_total,), eV, optional
        Per-atom energies, for baselines that have them.
    """

    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray
    energies: np.ndarray | None = None

    def __add__(self, other: BaselineValues) -> BaselineValues:
        energies = None
        if self.energies is not None and other.energies is not None:
            energies = self.energies + other.energies
        return BaselineValues(self.energy + other.energy, self.forces + other.forces,
                              self.stress + other.stress, energies)


def frame_offsets(frames: Sequence[Frame]) -> np.ndarray:
    """Atom offsets of concatenated frames: frame ``k`` holds atoms ``o[k]:o[k+1]``."""
    return np.concatenate([[0], np.cumsum([len(f) for f in frames])]).astype(np.int64)


def nan_stress(frames: Sequence[Frame]) -> np.ndarray:
    """An ``(n_frames, 6)`` array of zeros for fully periodic frames, NaN for the others."""
    periodic = np.array([bool(np.all(f.pbc)) for f in frames], dtype=bool)
    return np.where(periodic[:, None], 0.0, np.nan) * np.ones((len(frames), 6))


class Baseline(Estimator, ABC):
    """Base class of baselines: fixed models of the labels that a potential adds to.

    Hyperparameters are constructor arguments (:class:`~ml4m.models.base.Estimator`);
    :meth:`fit` sets whatever the baseline takes from the training data (returns
    ``self``); :meth:`evaluate` gives energies, forces and stress of frames.
    """

    #: the name a saved baseline is rebuilt by (set by :func:`register_baseline`)
    kind: ClassVar[str] = "baseline"

    @property
    def range(self) -> float:
        """Distance within which the baseline couples atoms, Angstrom (0: it has its own)."""
        return 0.0

    @property
    def fitted(self) -> bool:
        """Whether :meth:`evaluate` may be called."""
        return True

    @property
    def external(self) -> bool:
        """Whether :meth:`evaluate` may run an external calculator (whose numbers are not
        in a model file, and which may fail on structures it was not meant for)."""
        return False

    def fit(self, frames: Sequence[Frame]) -> Baseline:
        """Take what the baseline needs from the training frames; returns ``self``."""
        return self

    def update(self, frames: Sequence[Frame]) -> Baseline:
        """See frames learnt after the fit, leaving the values on every frame seen before
        unchanged (on-the-fly learning); returns ``self``. Fixed baselines ignore them."""
        return self

    @abstractmethod
    def evaluate(self, frames: Sequence[Frame]) -> BaselineValues:
        """Energies (eV), forces (eV/Angstrom) and stress (eV/Angstrom^3) of ``frames``."""

    def fitted_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What :meth:`fit` learned: JSON values and numeric arrays (none by default)."""
        return {}, {}

    def restore(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Set what :meth:`fit` learned from :meth:`fitted_state`'s output."""

    def json_params(self) -> dict[str, Any]:
        """The hyperparameters as JSON values (nested baselines as their own records)."""
        return self.get_params()

    @classmethod
    def params_from_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Constructor arguments from :meth:`json_params`'s output (checked)."""
        return cls.check_params(params, prefix="params.", error=DataError)

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The whole baseline: ``{"kind", "params", "state"}`` and its arrays."""
        state, arrays = self.fitted_state()
        return {"kind": self.kind, "params": self.json_params(), "state": state}, arrays


_KINDS: dict[str, type[Baseline]] = {}


def register_baseline(kind: str) -> Callable[[type[Baseline]], type[Baseline]]:
    """Class decorator: a baseline kind that :func:`baseline_from_state` can rebuild."""

    def wrap(cls: type[Baseline]) -> type[Baseline]:
        _KINDS[kind] = cls
        cls.kind = kind
        return cls

    return wrap


def _unfitted(record: Any, name: str) -> Baseline:
    """A baseline from ``{"kind", "params"}`` (its hyperparameters, nothing fitted)."""
    record = check_mapping(name, record, required=("kind", "params"), error=DataError)
    cls = _KINDS.get(record["kind"]) if isinstance(record["kind"], str) else None
    if cls is None:
        raise DataError(f"{name}: unknown baseline kind {record['kind']!r} "
                        f"(known: {sorted(_KINDS)})")
    params = check_mapping(f"{name}.params", record["params"], error=DataError)
    return cls(**cls.params_from_json(params))


def baseline_from_state(record: Any, arrays: dict[str, np.ndarray]) -> Baseline:
    """Rebuild a baseline saved by :meth:`Baseline.get_state`.

    Raises
    ------
    DataError
        Not a record, an unknown kind, or parameters or state its class refuses.
    """
    record = check_mapping("baseline", record, required=("kind", "params", "state"),
                           error=DataError)
    baseline = _unfitted(record, "baseline")
    baseline.restore(check_mapping("baseline.state", record["state"], error=DataError), arrays)
    return baseline


def is_baseline(name: str, value: Any, **where: Any) -> Baseline:
    """A check (``param_checks``) that ``value`` is a :class:`Baseline`."""
    if not isinstance(value, Baseline):
        raise fail(f"{name} must be a baseline (PairRepulsion, CalculatorBaseline, "
                   f"LabelBaseline, SumBaseline), got {describe(value)}", **where)
    return value


def residual_frames(frames: Sequence[Frame], baseline: Baseline) -> list[Frame]:
    """Frames whose labels are the reference minus ``baseline`` (what a delta model learns).

    Energy, forces and stress are each replaced when the frame carries them; structure,
    ``info`` and source stay. The baseline must be fitted.

    Parameters
    ----------
    frames : sequence of Frame
        Labelled frames (eV, eV/Angstrom, eV/Angstrom^3).
    baseline : Baseline
        A fitted baseline.

    Returns
    -------
    list of Frame
        New frames; the input is left unchanged.

    Raises
    ------
    DataError
        A frame has a stress label its baseline gives no stress for (naming it).
    """
    frames = list(frames)
    if not frames:
        return []
    values = baseline.evaluate(frames)
    offsets = frame_offsets(frames)
    out = []
    for k, frame in enumerate(frames):
        a, b = offsets[k], offsets[k + 1]
        change: dict[str, Any] = {}
        if frame.energy is not None:
            change["energy"] = float(frame.energy - values.energy[k])
        if frame.forces is not None:
            change["forces"] = np.asarray(frame.forces) - values.forces[a:b]
        if frame.stress is not None:
            if not np.all(np.isfinite(values.stress[k])):
                raise DataError(f"the {baseline.kind} baseline gives no stress for a frame "
                                "with a stress label", *(frame.source or (None, None)))
            change["stress"] = np.asarray(frame.stress) - values.stress[k]
        out.append(replace(frame, **change))
    return out


@register_baseline("sum")
class SumBaseline(Baseline):
    """The sum of several baselines (a repulsive core plus a calculator, ...).

    Parameters
    ----------
    parts : list of Baseline
        The baselines added; each is fitted on the same frames.
    """

    param_checks = {"parts": each(is_baseline)}

    def __init__(self, parts: list[Baseline]) -> None:
        self.parts = parts

    def fit(self, frames: Sequence[Frame]) -> SumBaseline:
        self.check_params(self.get_params())
        frames = list(frames)
        for part in self.parts:
            part.fit(frames)
        return self

    def update(self, frames: Sequence[Frame]) -> SumBaseline:
        frames = list(frames)
        for part in self.parts:
            part.update(frames)
        return self

    @property
    def fitted(self) -> bool:
        return all(p.fitted for p in self.parts)

    @property
    def external(self) -> bool:
        return any(p.external for p in self.parts)

    @property
    def range(self) -> float:
        return max((p.range for p in self.parts), default=0.0)

    def evaluate(self, frames: Sequence[Frame]) -> BaselineValues:
        frames = list(frames)
        total = self.parts[0].evaluate(frames)
        for part in self.parts[1:]:
            total = total + part.evaluate(frames)
        return total

    def clone(self) -> SumBaseline:
        return SumBaseline([p.clone() for p in self.parts])

    def json_params(self) -> dict[str, Any]:
        return {"parts": [{"kind": p.kind, "params": p.json_params()} for p in self.parts]}

    @classmethod
    def params_from_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        parts = check_mapping("params", params, required=("parts",), error=DataError)["parts"]
        if not isinstance(parts, list) or not parts:
            raise DataError("baseline params.parts must be a non-empty list")
        return {"parts": [_unfitted(p, f"params.parts[{k}]") for k, p in enumerate(parts)]}

    def fitted_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        states, arrays = [], {}
        for k, part in enumerate(self.parts):
            state, own = part.fitted_state()
            states.append(state)
            arrays.update({f"p{k}_{name}": a for name, a in own.items()})
        return {"parts": states}, arrays

    def restore(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        states = state.get("parts")
        if not isinstance(states, list) or len(states) != len(self.parts):
            raise DataError(f"baseline.state.parts must list {len(self.parts)} states")
        for k, (part, own) in enumerate(zip(self.parts, states)):
            prefix = f"p{k}_"
            part.restore(check_mapping(f"baseline.state.parts[{k}]", own, error=DataError),
                         {n[len(prefix):]: a for n, a in arrays.items() if n.startswith(prefix)})

"""Baselines from outside the model: an ASE calculator, or labels the data already carries.

:class:`CalculatorBaseline` runs any ASE calculator (``emt``, ``tblite.ase:TBLite`` with
``method: GFN2-xTB``, ...), built by the same checked path as ``ml4m data generate``
(:func:`ml4m.data.generation.make_calculator`). :class:`LabelBaseline` reads a cheaper
level of theory from label keys of the frames (``gfn2_energy``/``gfn2_forces``); new
structures have no such labels, so it predicts them only with the calculator that made
the labels, and refuses without one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ml4m.data.frames import Frame
from ml4m.errors import ConfigError, DataError
from ml4m.models.baseline.core import (
    Baseline,
    BaselineValues,
    frame_offsets,
    nan_stress,
    register_baseline,
)
from ml4m.validation import check_mapping, check_str, describe, fail, optional

__all__ = ["CalculatorBaseline", "LabelBaseline"]


def _check_name(name: str, value: Any, **where: Any) -> str:
    return check_str(name, value, **where)


def _check_kwargs(name: str, value: Any, **where: Any) -> dict[str, Any]:
    """A mapping of calculator settings that JSON can store (a model file records it)."""
    value = check_mapping(name, value, **where)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise fail(f"{name} must hold JSON values only (numbers, strings, lists, "
                   f"mappings), got {describe(value)}: {exc}", **where) from None
    return value


def _run_calculator(calc: Any, frames: Sequence[Frame]) -> BaselineValues:
    """Energy, forces and (fully periodic frames) stress of ``frames`` by ``calc``."""
    from ase.calculators.calculator import PropertyNotImplementedError

    energy = np.zeros(len(frames))
    forces, stress = [], nan_stress(frames)
    for k, frame in enumerate(frames):
        atoms = frame.to_atoms(with_labels=False)
        atoms.calc = calc
        energy[k] = atoms.get_potential_energy()
        forces.append(np.asarray(atoms.get_forces(), dtype=float))
        if np.isfinite(stress[k, 0]):
            try:
                stress[k] = atoms.get_stress(voigt=True)
            except PropertyNotImplementedError:
                stress[k] = np.nan
    return BaselineValues(energy, np.concatenate(forces) if forces else np.zeros((0, 3)), stress)


@register_baseline("calculator")
class CalculatorBaseline(Baseline):
    """An ASE calculator as baseline.

    Parameters
    ----------
    calculator : str
        ``emt``, ``lj``, ``morse`` or an import path ``package.module:Class``.
    calculator_kwargs : dict, optional
        The calculator's settings (JSON values; e.g. ``{"method": "GFN2-xTB"}``).
    """

    param_checks = {"calculator": _check_name, "calculator_kwargs": optional(_check_kwargs)}

    def __init__(self, calculator: str, calculator_kwargs: dict[str, Any] | None = None) -> None:
        self.calculator = calculator
        self.calculator_kwargs = calculator_kwargs

    @property
    def external(self) -> bool:
        return True

    def _calc(self) -> Any:
        if getattr(self, "_instance", None) is None:
            from ml4m.data.generation import make_calculator

            self.check_params(self.get_params())
            self._instance = make_calculator(self.calculator, self.calculator_kwargs)
        return self._instance

    def fit(self, frames: Sequence[Frame]) -> CalculatorBaseline:
        """Build the calculator (a bad name or setting fails here); returns ``self``."""
        self._calc()
        return self

    def evaluate(self, frames: Sequence[Frame]) -> BaselineValues:
        return _run_calculator(self._calc(), list(frames))


@register_baseline("labels")
class LabelBaseline(Baseline):
    """A lower level of theory carried by the data under its own label keys.

    Frames carry the baseline as ``info[energy_key]`` (eV), ``info[forces_key]``
    (eV/Angstrom, shape (n_atoms, 3)) and, for periodic data, ``info[stress_key]``
    (eV/Angstrom^3, Voigt); :meth:`attach` puts them there from a file.

    Parameters
    ----------
    energy_key, forces_key : str
        Label keys of the baseline's energy and forces (``gfn2_energy``, ``gfn2_forces``).
    stress_key : str, optional
        Label key of its stress (needed to learn stress labels as a residual).
    calculator : str, optional
        The calculator that made these labels (as :class:`CalculatorBaseline`), used for
        frames that carry none (new structures, MD); without it they are refused.
    calculator_kwargs : dict, optional
        Its settings.
    """

    param_checks = {"energy_key": _check_name, "forces_key": _check_name,
                    "stress_key": optional(_check_name), "calculator": optional(_check_name),
                    "calculator_kwargs": optional(_check_kwargs)}

    def __init__(self, energy_key: str = "gfn2_energy", forces_key: str = "gfn2_forces",
                 stress_key: str | None = None, calculator: str | None = None,
                 calculator_kwargs: dict[str, Any] | None = None) -> None:
        self.energy_key = energy_key
        self.forces_key = forces_key
        self.stress_key = stress_key
        self.calculator = calculator
        self.calculator_kwargs = calculator_kwargs

    @property
    def external(self) -> bool:
        """Structures without the labels go to the calculator, when there is one."""
        return self.calculator is not None

    def _labelled(self, frame: Frame) -> bool:
        forces = frame.info.get(self.forces_key)
        return (frame.info.get(self.energy_key) is not None and forces is not None
                and np.shape(forces) == (len(frame), 3))

    def attach(self, frames: Sequence[Frame],
               paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Frame]:
        """Copies of ``frames`` carrying the baseline labels read from ``paths``.

        ``paths`` are the files ``frames`` were read from (same frames, same order);
        the baseline energy and forces are read and validated by
        :func:`ml4m.data.read_dataset` under this baseline's keys.

        Raises
        ------
        DataError
            A file lacks the keys, or its frames are not ``frames`` (count, elements or
            positions differ), naming the file and frame.
        """
        from ml4m.data import LabelKeys, read_dataset

        keys = LabelKeys(energy=self.energy_key, forces=self.forces_key, stress=self.stress_key)
        labels = read_dataset(paths, keys=keys, require=("energy", "forces"))
        frames = list(frames)
        if len(labels) != len(frames):
            raise DataError(f"{len(labels)} frames carry {self.energy_key!r}, expected "
                            f"{len(frames)} (the frames they label)", str(paths))
        out = []
        for frame, other in zip(frames, labels):
            if (len(frame) != len(other) or np.any(frame.numbers != other.numbers)
                    or not np.allclose(frame.positions, other.positions, atol=1e-6)):
                raise DataError("its structure differs from the frame it should label",
                                *(other.source or (None, None)))
            info = {**frame.info, self.energy_key: float(other.energy),
                    self.forces_key: np.asarray(other.forces, dtype=float)}
            if self.stress_key is not None and other.stress is not None:
                info[self.stress_key] = np.asarray(other.stress, dtype=float)
            out.append(replace(frame, info=info))
        return out

    def evaluate(self, frames: Sequence[Frame]) -> BaselineValues:
        """The labels where frames carry them, the calculator's values elsewhere."""
        frames = list(frames)
        labelled = np.array([self._labelled(f) for f in frames], dtype=bool)
        energy = np.array([float(f.info[self.energy_key]) if ok else 0.0
                           for f, ok in zip(frames, labelled)])
        offsets = frame_offsets(frames)
        forces = np.zeros((offsets[-1], 3))
        for k in np.flatnonzero(labelled):
            forces[offsets[k]:offsets[k + 1]] = np.asarray(frames[k].info[self.forces_key])
        stress = np.full((len(frames), 6), np.nan)
        for k in np.flatnonzero(labelled):
            value = frames[k].info.get(self.stress_key) if self.stress_key else None
            if value is not None and np.shape(value) == (6,) and np.all(frames[k].pbc):
                stress[k] = value
        missing = np.flatnonzero(~labelled)
        if missing.size:
            if self.calculator is None:
                frame = frames[missing[0]]
                raise ConfigError(
                    f"{frame.where()}: no {self.energy_key!r}/{self.forces_key!r} labels; a "
                    "label baseline evaluates new structures only with the calculator that "
                    "made its labels (LabelBaseline(calculator=..., calculator_kwargs=...), "
                    "baseline: calculator in a fit config)")
            if getattr(self, "_fallback", None) is None:
                self._fallback = CalculatorBaseline(self.calculator, self.calculator_kwargs)
            values = self._fallback.evaluate([frames[k] for k in missing])
            inner = frame_offsets([frames[k] for k in missing])
            for n, k in enumerate(missing):
                energy[k] = values.energy[n]
                forces[offsets[k]:offsets[k + 1]] = values.forces[inner[n]:inner[n + 1]]
                stress[k] = values.stress[n]
        return BaselineValues(energy, forces, stress)

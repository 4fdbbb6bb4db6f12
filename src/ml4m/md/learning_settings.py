"""Settings of on-the-fly active learning (``ml4m learn CONFIG.yaml``), strictly checked.

A config names the starting model (a model file, or a fit of initial frames), the
reference calculator, the MD walkers, and the rule that sends a frame to the reference
(the largest predicted force sigma above a threshold). Every key is checked through
:mod:`ml4m.validation`; an unknown key or a value out of range raises
:class:`~ml4m.errors.ConfigError` naming the file and the key.

Example::

    reference: emt                       # or {calculator: pkg.mod:Class, kwargs: {...}}
    fit: {model: ace, descriptor: {r_cut: 4.5, n_max: 6, l_max: 3}}
    initial: start.extxyz                # frames of the initial fit
    label_initial: true                  # labelled by the reference first
    walkers:
      - {structure: start.extxyz, temperature: 300, temperature_end: 1500, seed: 0}
    ensemble: nvt
    steps: 2000
    dt: 2.0
    threshold: 0.15                      # eV/A (the model's sigma), or "3x": the posterior
                                         # sigma against three times the fitted force noise
    check_interval: 10
    min_steps_between_calls: 100         # a walker's next call at least 100 steps later
    max_calls: 50
    reoptimise_every: 2
    refit_growth: 2                      # fit again (basis search too) as the set doubles
    fine_tune: {max_epochs: 10}          # a network's updates (training settings)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from ml4m.errors import ConfigError
from ml4m.md.dynamics import ENSEMBLES, MAX_DT_FS, MAX_TEMPERATURE_K
from ml4m.validation import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_mapping,
    check_str,
    describe,
    fail,
)

__all__ = ["LearnSettings", "WalkerSettings", "Threshold", "parse_threshold"]

#: what the loop does when the reference raises on a frame
ON_REFERENCE_ERROR = ("stop", "skip")


@dataclass(frozen=True)
class Threshold:
    """When a frame goes to the reference: its largest force sigma above ``value``.

    Attributes
    ----------
    value : float
        eV/Angstrom when ``relative`` is False (set against the model's force sigma,
        calibrated when the model is: a target error); else a factor of the model's fitted
        force noise (``model.noise_["forces"]``), set against its posterior force sigma
        where it has one (the data's part of the uncertainty, FLARE's convention).
    relative : bool
    """

    value: float
    relative: bool = False

    def resolve(self, model: Any) -> float:
        """The threshold in eV/Angstrom for ``model`` (its current fitted noise when
        relative). Raises :class:`ConfigError` for a model without a fitted force noise."""
        if not self.relative:
            return self.value
        noise = getattr(model, "noise_", {}).get("forces")
        if noise is None:
            raise ConfigError(f"threshold '{self.text}' is relative to the model's fitted force "
                              f"noise, which a '{getattr(model, 'kind', type(model).__name__)}' "
                              "model does not have: give it in eV/A")
        return self.value * float(noise)

    @property
    def text(self) -> str:
        """As a config writes it: ``0.1`` (eV/A) or ``"3x"``."""
        return f"{self.value:g}x" if self.relative else f"{self.value:g}"


def parse_threshold(value: Any, **where: Any) -> Threshold:
    """A positive number (eV/Angstrom) or ``"Fx"`` (F > 0 times the fitted force noise)."""
    if isinstance(value, str) and value.strip().lower().endswith("x"):
        factor = value.strip()[:-1]
        try:
            number = float(factor)
        except ValueError:
            raise fail(f"threshold must be a number of eV/A or 'Fx' (F times the fitted force "
                       f"noise), got {describe(value)}", **where) from None
        return Threshold(check_float("threshold factor", number, low=0.0, low_open=True, **where),
                         relative=True)
    return Threshold(check_float("threshold", value, low=0.0, low_open=True, **where))


@dataclass(frozen=True)
class WalkerSettings:
    """One MD walker.

    Attributes
    ----------
    structure : str
        Starting structure (any ASE-readable file; its last frame).
    temperature_k : float
        Initial velocities and thermostat target, K.
    temperature_end_k : float or None
        Thermostat target at the last step, K: the target ramps linearly from
        ``temperature_k`` (NVT, NPT). None: constant.
    seed : int
        Seed of the velocities and the thermostat noise.
    """

    structure: str
    temperature_k: float = 300.0
    temperature_end_k: float | None = None
    seed: int = 0

    def target(self, step: int, steps: int) -> float:
        """Thermostat target after ``step`` of ``steps``, K."""
        if self.temperature_end_k is None:
            return self.temperature_k
        return self.temperature_k + (self.temperature_end_k - self.temperature_k) * step / steps

    @property
    def hottest_k(self) -> float:
        return max(self.temperature_k, self.temperature_end_k or 0.0)


#: config keys of a walker and the fields they set
_WALKER_KEYS = {"structure": "structure", "temperature": "temperature_k",
                "temperature_end": "temperature_end_k", "seed": "seed"}


@dataclass(frozen=True)
class LearnSettings:
    """Everything that decides the result of a learning loop (see the module example).

    Attributes
    ----------
    walkers : tuple of WalkerSettings
        MD walkers, advanced in lock-step rounds of ``check_interval`` steps.
    reference : str
        Reference calculator: a name or import path (:func:`ml4m.data.make_calculator`).
    reference_kwargs : dict
        Its constructor's arguments.
    model : str or None
        Starting model file (``.ml4m``, a potential with uncertainty). One of ``model``
        and ``fit`` is needed unless the caller gives a fitted model
        (:func:`~ml4m.md.learning.run_learning`).
    fit : dict or None
        Or: ``ml4m fit`` config keys (``model``, ``descriptor``, ``sigmas``, ``params``,
        ``e0``, ...) of an initial fit on ``initial``.
    initial : str or None
        Frames of the initial fit (required with ``fit``); with ``model``, the frames it
        was fitted on (required unless the caller's model keeps its normal equations): the
        model is used as it is, and each update adds the new frames to its normal
        equations, rebuilt from these (linear and sparse-GP models), or refits on these
        and the new frames (others).
    label_initial : bool
        Label ``initial`` with the reference first (its own labels, if any, are ignored).
    ensemble : {'nve', 'nvt', 'npt'}
    steps : int
        MD steps per walker.
    dt_fs, friction, pressure_gpa : float
        Time step (fs), Langevin friction (1/fs), NPT pressure (GPa).
    threshold : Threshold
    check_interval : int
        Steps between force-sigma checks (the length of a round).
    min_steps_between_calls : int
        MD steps a walker runs on the model after a call before its frames may go to the
        reference again (FLARE's ``min_steps_with_model``): the next few frames of a
        walker are near-duplicates of the labelled one. 0: no wait.
    max_calls : int
        Reference calls at most (MD runs its steps either way).
    reoptimise_every : int, default=2
        Re-optimise the model's hyperparameters every this many reference calls (0:
        never; the other updates keep them). A calibrated linear or GP model also refits
        its error models then, on its labelled frames as it predicted them before
        learning them (:meth:`~ml4m.models.linear.LinearPotential.update`). Cu
        benchmark (``benchmarks/results/active_learning.md``), 7-13 calls: every 2 calls
        its force RMSE / RMS sigma is 0.8-0.9; every 10, the first error model stays and
        the ratio on the liquid is about 40.
    refit_growth : float, default=2.0
        With a ``fit`` of a linear or sparse-GP model (whose updates keep the basis, the
        inner radii of its radial basis and the prior chosen on the frames of the last
        fit): fit again on every frame (:func:`~ml4m.md.learning.fit_one`, the basis search
        included) once the training set has grown by this factor since the last fit (4
        initial frames: at 8, 16, 32, ...; a logarithmic number of fits), and once at the
        end when frames joined since the last fit (the written model is then the fit of
        every frame). 0: neither. Between these fits, a labelled frame with an element
        pair closer than the radial basis reaches makes one fit of the same basis with
        inner radii from every frame (:func:`~ml4m.md.learning.with_inner_radii`).
    fine_tune : dict or None
        For a network: training settings (keys of :class:`~ml4m.training.TrainSettings`)
        of each update, which trains the network on from its weights on the whole
        training set; unset keys as :data:`ml4m.training.finetune.FINE_TUNE` (10 passes
        at a tenth of the default rate).
    on_reference_error : {'stop', 'skip'}
        A reference that raises stops the loop (state kept) or its frame is skipped.
    """

    walkers: tuple[WalkerSettings, ...]
    reference: str = "emt"
    reference_kwargs: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    fit: dict[str, Any] | None = None
    initial: str | None = None
    label_initial: bool = False
    ensemble: str = "nvt"
    steps: int = 1000
    dt_fs: float = 1.0
    friction: float = 0.01
    pressure_gpa: float = 0.0
    threshold: Threshold = Threshold(1.0, relative=True)
    check_interval: int = 1
    min_steps_between_calls: int = 0
    max_calls: int = 100
    reoptimise_every: int = 2
    refit_growth: float = 2.0
    on_reference_error: str = "stop"
    fine_tune: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, **where: Any) -> None:
        """Raise :class:`ConfigError` naming the first invalid value."""
        if not self.walkers:
            raise fail("walkers must be a non-empty list of {structure, temperature, ...}",
                       **where)
        for k, w in enumerate(self.walkers):
            check_str(f"walkers[{k}].structure", w.structure, **where)
            for name in ("temperature_k", "temperature_end_k"):
                value = getattr(w, name)
                if value is not None:
                    check_float(f"walkers[{k}].{name[:-2]}", value, 0.0, MAX_TEMPERATURE_K,
                                **where)
            check_int(f"walkers[{k}].seed", w.seed, low=0, **where)
            if w.temperature_end_k is not None and self.ensemble == "nve":
                raise fail(f"walkers[{k}].temperature_end needs a thermostat (ensemble nvt or "
                           "npt), not nve", **where)
        check_str("reference", self.reference, **where)
        check_mapping("reference_kwargs", self.reference_kwargs, **where)
        if self.model is not None and self.fit is not None:
            raise fail("give one of 'model' (a .ml4m file) and 'fit' (settings of an initial "
                       "fit on 'initial'), not both", **where)
        if self.model is not None:
            check_str("model", self.model, **where)
        if self.fit is not None:
            check_mapping("fit", self.fit, **where)
            if self.initial is None:
                raise fail("'fit' needs 'initial': the frames of the initial fit", **where)
        if self.initial is not None:
            check_str("initial", self.initial, **where)
        check_bool("label_initial", self.label_initial, **where)
        if self.label_initial and self.initial is None:
            raise fail("label_initial needs 'initial' (frames to label)", **where)
        check_choice("ensemble", self.ensemble, ENSEMBLES, **where)
        check_int("steps", self.steps, low=1, **where)
        check_float("dt", self.dt_fs, 0.0, MAX_DT_FS, low_open=True, **where)
        check_float("friction", self.friction, 0.0, 1.0, low_open=True, **where)
        check_float("pressure", self.pressure_gpa, **where)
        if not isinstance(self.threshold, Threshold):
            raise fail(f"threshold must be a Threshold, got {describe(self.threshold)}", **where)
        check_float("threshold", self.threshold.value, low=0.0, low_open=True, **where)
        check_int("check_interval", self.check_interval, low=1, **where)
        check_int("min_steps_between_calls", self.min_steps_between_calls, low=0, **where)
        check_int("max_calls", self.max_calls, low=0, **where)
        check_int("reoptimise_every", self.reoptimise_every, low=0, **where)
        check_float("refit_growth", self.refit_growth, low=0.0, **where)
        if 0 < self.refit_growth <= 1:
            raise fail(f"refit_growth must be 0 (never) or above 1 (a factor of growth of the "
                       f"training set), got {self.refit_growth!r}", **where)
        check_choice("on_reference_error", self.on_reference_error, ON_REFERENCE_ERROR, **where)
        if self.fine_tune is not None:
            from ml4m.training.finetune import fine_tune_settings

            fine_tune_settings(check_mapping("fine_tune", self.fine_tune, **where),
                               source="fine_tune")

    @classmethod
    def from_mapping(cls, mapping: dict[str, Any], source: str | os.PathLike = "config"
                     ) -> LearnSettings:
        """Settings from a config mapping (YAML keys: see the module example).

        Raises
        ------
        ConfigError
            Naming ``source`` and the key: unknown keys, wrong types, values out of range.
        """
        where = {"source": source}
        keys = ("walkers", "reference", "model", "fit", "initial", "label_initial", "ensemble",
                "steps", "dt", "friction", "pressure", "threshold", "check_interval",
                "min_steps_between_calls", "max_calls", "reoptimise_every", "refit_growth",
                "on_reference_error", "fine_tune")
        m = check_mapping("the config", mapping, keys=keys, required=("walkers", "threshold"),
                          **where)
        walkers = m.pop("walkers")
        if not isinstance(walkers, list) or not walkers:
            raise fail(f"walkers must be a non-empty list of {{structure, temperature, ...}}, "
                       f"got {describe(walkers)}", **where)
        parsed = []
        for k, w in enumerate(walkers):
            w = check_mapping(f"walkers[{k}]", w, keys=_WALKER_KEYS, required=("structure",),
                              **where)
            w.setdefault("seed", k)
            parsed.append(WalkerSettings(**{_WALKER_KEYS[key]: v for key, v in w.items()}))
        reference = m.pop("reference", "emt")
        kwargs: dict[str, Any] = {}
        if isinstance(reference, dict):
            ref = check_mapping("reference", reference, keys=("calculator", "kwargs"),
                                required=("calculator",), **where)
            reference, kwargs = ref["calculator"], ref.get("kwargs") or {}
        renamed = {"dt": "dt_fs", "pressure": "pressure_gpa"}
        fields = {renamed.get(k, k): v for k, v in m.items()}
        fields["threshold"] = parse_threshold(fields["threshold"], **where)
        try:
            return cls(walkers=tuple(parsed), reference=reference, reference_kwargs=kwargs,
                       **fields)
        except ConfigError as exc:
            if str(exc).startswith(f"{source}:"):
                raise
            raise ConfigError(f"{source}: {exc}") from None

    def record(self) -> dict[str, Any]:
        """The settings as JSON-able data (what a resumed loop must match)."""
        out = dataclasses.asdict(self)
        out["threshold"] = self.threshold.text
        return out

    def differences(self, record: dict[str, Any]) -> list[str]:
        """Keys whose value differs from a saved :meth:`record` (JSON round-tripped)."""
        import json

        mine = json.loads(json.dumps(self.record()))
        keys = sorted(set(mine) | set(record))
        return [k for k in keys if mine.get(k) != record.get(k)]

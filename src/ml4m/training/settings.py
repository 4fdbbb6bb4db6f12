"""Settings of the optimisation loop that trains torch potentials (:class:`TrainSettings`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ml4m.validation import (
    check_bool,
    check_float,
    check_mapping,
    describe,
    fail,
    float_from,
    int_from,
    one_of,
    optional,
)

__all__ = ["TrainSettings", "LOSS_TERMS"]

#: quantities the loss can weigh
LOSS_TERMS = ("energy", "forces", "stress")
#: optimizer steps of a run whose ``max_epochs`` is not given (ethanol, 30 frames of 9
#: atoms, default MPNN: valid force MAE 50 meV/A after 800 steps, 36 after 2,000, 34
#: after 3,300; benchmarks/results/delta_learning.md)
AUTO_STEPS = 5000
#: fewest passes of such a run (a large data set: ``MIN_EPOCHS`` passes, as before)
MIN_EPOCHS = 100
#: passes of a run with a time budget and no ``max_epochs``: more than any budget allows
BUDGET_EPOCHS = 1_000_000
#: factor on the energy weight in the final stage of ``final_weights='auto'`` (MACE's
#: second stage: energy 1 -> 1000 against forces 100)
FINAL_ENERGY_FACTOR = 1000.0


def _check_path(name: str, value: Any, **where: Any) -> str:
    """A file path (str or PathLike), returned as str."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise fail(f"{name} must be a path, got {describe(value)}", **where)
    return value


def _check_weights(name: str, value: Any, **where: Any) -> dict[str, float]:
    """Loss weights: a mapping of energy/forces/stress to numbers >= 0, one of them > 0."""
    weights = check_mapping(name, value, keys=LOSS_TERMS, **where)
    weights = {k: check_float(f"{name}.{k}", v, low=0.0, **where) for k, v in weights.items()}
    if not any(weights.values()):
        raise fail(f"{name} must give one of {list(LOSS_TERMS)} a weight > 0, got {weights}",
                   **where)
    return weights


def _check_decay(name: str, value: Any, **where: Any) -> float:
    return check_float(name, value, low=0.0, high=1.0, high_open=True, **where)


def _check_final_weights(name: str, value: Any, **where: Any) -> dict[str, float] | str:
    """``'auto'`` or loss weights (:func:`_check_weights`)."""
    return value if value == "auto" else _check_weights(name, value, **where)


def _check_bool(name: str, value: Any, **where: Any) -> bool:
    return check_bool(name, value, **where)


@dataclass(frozen=True)
class TrainSettings:
    """How :class:`ml4m.training.Trainer` optimises a torch potential.

    Parameters
    ----------
    batch_size : int
        Structures per step and process (the global batch is ``batch_size`` times the
        number of data-parallel processes).
    lr : float, optional
        Initial learning rate. ``None`` (the default): the model's (its
        ``training_defaults``, :meth:`resolved`;
        :class:`~ml4m.models.torch_potential.TorchPotential`).
    max_epochs : int, optional
        Passes over the training set at most. ``None`` (the default): with
        ``max_minutes``, as many as the budget allows; without, enough passes for
        ``AUTO_STEPS`` optimizer steps and at least ``MIN_EPOCHS`` (:meth:`resolved`): a
        small data set takes a few batches per pass, and 100 passes of 30 frames left a
        network far from converged.
    max_minutes : float, optional
        Wall-time budget of :meth:`Trainer.fit`, minutes: training stops after the step
        that would cross it.
    weights : dict
        Loss weights: ``energy`` (on the squared error per atom, eV^2/atom^2), ``forces``
        (per component, eV^2/Angstrom^2), ``stress`` (per component, eV^2/Angstrom^6,
        only frames with a stress label count). A term left out weighs 0. The default,
        ``{energy: 1, forces: 100, stress: 100}``, lets the stress of periodic data pin
        the volume dependence of the energy.
    final_weights : dict, 'auto' or None
        Loss weights of the last part of training, from phase ``final_from`` on (a second
        stage, as MACE's ``swa`` stage, which weighs energies 1000 against forces 100):
        the model is then selected, and stopped early, on the loss of these weights.
        ``'auto'``: ``weights`` with the energy weight times ``FINAL_ENERGY_FACTOR`` (no
        second stage without an energy term). None (the default): ``weights``
        throughout (3BPA, default MPNN, 30 minutes: ``'auto'`` gave valid energies 0.37
        against 0.42 meV/atom and forces 12.7 against 12.3 meV/A, one run each;
        benchmarks/results/fit_defaults.md).
    final_from : float
        Phase in (0, 1) where ``final_weights`` take over: of the cosine anneal (epochs
        or budget, see ``scheduler``), otherwise the fraction of ``max_epochs``.
    optimizer : {'adamw', 'adam'}
    amsgrad : bool, optional
        The AMSGrad variant of either (the running maximum of the second moment
        scales the steps; MACE trains with it). ``None`` (the default): the model's, as
        ``lr`` (``ml4m fit`` sets it by the regime of the fit,
        :mod:`ml4m.training.regime`).
    weight_decay : float, optional
        Decoupled weight decay (AdamW) or L2 penalty (Adam). ``None`` (the default): the
        model's, as ``lr``.
    scheduler : {'plateau', 'cosine', 'none'}
        ``plateau`` multiplies the rate by ``plateau_factor`` after ``plateau_patience``
        epochs without a better loss (valid if given, else train); ``cosine`` anneals it
        to ``min_lr`` over ``max_epochs``, or by the end of the ``max_minutes`` budget
        when that comes sooner (the phase is the larger of the fraction of epochs and the
        fraction of the budget's training time passed, so uneven epochs do not delay it;
        the rate never rises). A run resumed with another ``max_epochs`` or a budget
        anneals from its current rate
        (:class:`~ml4m.training.loop.CosineSchedule`).
    plateau_factor : float
        In (0, 1).
    plateau_patience : int
        Epochs.
    min_lr : float
        Floor of the learning rate.
    ema_decay : float or None
        Decay of the exponential moving average of the weights, in [0, 1); the average
        is validated and becomes the final model. None or 0: no average.
    clip_grad : float or None
        Largest gradient norm; None: no clipping.
    patience : int
        Early stopping: epochs without a better valid loss before training stops (under
        the cosine schedule counted from phase ``training.loop.EARLY_STOP_FROM`` on).
    seed : int
        Seeds the weights' initialisation and the order of the frames.
    checkpoint : str, optional
        File of the training state, written atomically every ``checkpoint_every`` steps.
    checkpoint_every : int
        Steps between checkpoints.
    log_csv : str, optional
        One row per epoch (see :attr:`Trainer.history`); TensorBoard scalars go to
        ``{log_csv without suffix}_tb/`` when tensorboard is installed.
    progress : bool
        Show a progress bar on stderr.
    """

    batch_size: int = 4
    lr: float | None = None
    max_epochs: int | None = None
    max_minutes: float | None = None
    weights: dict[str, float] = field(
        default_factory=lambda: {"energy": 1.0, "forces": 100.0, "stress": 100.0})
    final_weights: dict[str, float] | str | None = None
    final_from: float = 0.75
    optimizer: str = "adamw"
    amsgrad: bool | None = None
    weight_decay: float | None = None
    scheduler: str = "cosine"
    plateau_factor: float = 0.5
    plateau_patience: int = 5
    min_lr: float = 1e-6
    ema_decay: float | None = 0.99
    clip_grad: float | None = 10.0
    patience: int = 20
    seed: int = 0
    checkpoint: str | None = None
    checkpoint_every: int = 100
    log_csv: str | None = None
    progress: bool = True

    #: setting -> check of its type and range (see :mod:`ml4m.validation`)
    checks: ClassVar[dict[str, Callable[..., Any]]] = {
        "batch_size": int_from(1), "lr": optional(float_from(0.0, low_open=True)),
        "max_epochs": optional(int_from(1)), "max_minutes": optional(float_from(0.0, low_open=True)),
        "weights": _check_weights, "final_weights": optional(_check_final_weights),
        "final_from": lambda n, v, **w: check_float(n, v, low=0.0, high=1.0, low_open=True,
                                                    high_open=True, **w),
        "optimizer": one_of("adamw", "adam"), "amsgrad": optional(_check_bool),
        "weight_decay": optional(float_from(0.0)), "scheduler": one_of("plateau", "cosine", "none"),
        "plateau_factor": lambda n, v, **w: check_float(n, v, low=0.0, high=1.0, low_open=True,
                                                        high_open=True, **w),
        "plateau_patience": int_from(0), "min_lr": float_from(0.0),
        "ema_decay": optional(_check_decay), "clip_grad": optional(float_from(0.0, low_open=True)),
        "patience": int_from(1), "seed": int_from(0), "checkpoint": optional(_check_path),
        "checkpoint_every": int_from(1), "log_csv": optional(_check_path),
        "progress": _check_bool,
    }
    #: settings that may change when a run is resumed from its checkpoint
    RUN_CONTROL: ClassVar[tuple[str, ...]] = ("max_epochs", "max_minutes", "patience",
                                              "checkpoint", "checkpoint_every", "log_csv",
                                              "progress")

    def __post_init__(self) -> None:
        for name, check in self.checks.items():
            value = check(name, getattr(self, name))
            if name in ("weights", "final_weights", "checkpoint", "log_csv"):
                object.__setattr__(self, name, value)

    @property
    def until_budget(self) -> bool:
        """Whether the run trains until its time budget ends (``max_minutes`` given,
        ``max_epochs`` not)."""
        return self.max_epochs is None and self.max_minutes is not None

    def resolved(self, batches_per_epoch: int,
                 defaults: Mapping[str, float] | None = None) -> TrainSettings:
        """These settings with ``lr``, ``weight_decay``, ``amsgrad`` and ``max_epochs`` set.

        ``lr``, ``weight_decay``, ``amsgrad``: as given, else ``defaults`` (the model's
        ``training_defaults``), else those of
        :class:`~ml4m.models.torch_potential.TorchPotential`. ``max_epochs``: as given;
        with a budget only, ``BUDGET_EPOCHS`` (the budget ends the run, and a cosine
        rate anneals to its end); otherwise the passes of ``batches_per_epoch`` steps that
        make ``AUTO_STEPS`` steps, at least ``MIN_EPOCHS``. (3BPA, default BPNN,
        ``--max-minutes 30``: 100 passes ended after 18.5 minutes, at 71.6 meV/A, with
        the rest of the budget unused.)
        """
        from ml4m.models.torch_potential import TorchPotential

        defaults = {**TorchPotential.training_defaults, **(defaults or {})}
        out = dataclasses.replace(self, **{
            name: value if isinstance(value, bool) else float(value)
            for name, value in defaults.items() if getattr(self, name) is None})
        if out.max_epochs is not None:
            return out
        if out.until_budget:
            return dataclasses.replace(out, max_epochs=BUDGET_EPOCHS)
        epochs = max(MIN_EPOCHS, -(-AUTO_STEPS // max(1, int(batches_per_epoch))))
        return dataclasses.replace(out, max_epochs=epochs)

    @classmethod
    def names(cls) -> list[str]:
        """Every setting's name."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, mapping: Any, source: str | os.PathLike = "training") -> TrainSettings:
        """Settings from a mapping (a config file's ``training:`` section).

        Raises
        ------
        ConfigError
            Naming ``source`` and the key: not a mapping, an unknown key, a value of the
            wrong type or range.
        """
        mapping = check_mapping("training", mapping, keys=cls.names(), source=source)
        for name, value in mapping.items():
            cls.checks[name](f"training.{name}", value, source=source)
        return cls(**mapping)

    def as_dict(self) -> dict[str, Any]:
        """Plain values (str, numbers, dict), for JSON and checkpoints."""
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(self).items()}

    def weight(self, term: str) -> float:
        """The largest loss weight of ``term`` in either stage (0 when not given)."""
        return max(float(w.get(term, 0.0)) for w in (self.weights, self.stage_weights(True)))

    def stage_weights(self, final: bool) -> dict[str, float]:
        """The loss weights of the first stage, or of the final one (``final_weights``,
        resolved when ``'auto'``)."""
        if not final or self.final_weights is None:
            return self.weights
        if self.final_weights == "auto":
            return {t: w * (FINAL_ENERGY_FACTOR if t == "energy" else 1.0)
                    for t, w in self.weights.items()}
        return self.final_weights

    @property
    def has_final_stage(self) -> bool:
        """Whether the final stage weighs the loss otherwise than the first."""
        return self.stage_weights(True) != self.weights

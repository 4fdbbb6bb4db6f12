"""The optimisation loop that trains every :class:`~ml4m.models.torch_potential.TorchPotential`.

>>> trainer = Trainer(TrainSettings(batch_size=4, lr=1e-2, max_epochs=50))  # doctest: +SKIP
>>> model = trainer.fit(model, train_frames, valid_frames)                  # doctest: +SKIP
>>> trainer.history[-1]["valid_forces_mae_mev_per_a"]                       # doctest: +SKIP

One step: this process's share of a global batch (:mod:`ml4m.training.batches`),
energies and their derivatives by autograd, the weighted loss
(:mod:`ml4m.training.losses`), AdamW, gradient clipping, the weight average
(:mod:`ml4m.training.ema`). One epoch ends with the average's loss on the validation
frames, the scheduler, and early stopping; the final model holds the average's weights
of the best validation epoch (the last average without validation frames).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from ml4m.errors import ConfigError
from ml4m.training.batches import GraphSet, as_graph_set, check_labels, collate, epoch_batches
from ml4m.training.distributed import Distributed
from ml4m.training.logs import RunLog
from ml4m.training.loop import Clock, CosineSchedule, TrainingRun
from ml4m.training.settings import TrainSettings

__all__ = ["Trainer", "prepare_model"]


class Trainer:
    """Trains a torch potential on labelled frames (see the module docstring).

    Parameters
    ----------
    settings : TrainSettings, optional
        How to train (defaults when not given).

    Attributes
    ----------
    history : list of dict
        One row per epoch: ``epoch``, ``step`` (optimiser steps so far), ``seconds``
        (since this fit started), ``lr``, ``train_loss``, ``train_energy_mae_mev_per_atom``,
        ``train_forces_mae_mev_per_a`` (the weights while training, averaged over the
        epoch), ``valid_loss``, ``valid_energy_mae_mev_per_atom``,
        ``valid_forces_mae_mev_per_a`` (the weight average at the end of the epoch; NaN
        without validation frames).
    stop_reason : str
        ``max_epochs``, ``early_stopping`` or ``max_minutes``.
    """

    def __init__(self, settings: TrainSettings | None = None) -> None:
        if settings is not None and not isinstance(settings, TrainSettings):
            raise ConfigError(f"settings must be a TrainSettings, got {type(settings).__name__}")
        self.settings = settings or TrainSettings()
        self.history: list[dict[str, Any]] = []
        self.stop_reason = ""

    # ---- the run ---------------------------------------------------------------------------
    def fit(self, model: Any, train: Any, valid: Any = None, resume: bool = False,
            after_seconds: float = 0.0, last_layer_frames: int = 2000,
            costs: dict[str, Any] | None = None) -> Any:
        """Train ``model`` and return it with its best (averaged) weights.

        Parameters
        ----------
        model : TorchPotential
            Prepared (``module_`` set) or not: then :func:`prepare_model` prepares it.
        train, valid : list of Frame, Dataset or PackedStore
            Training and validation frames (``valid`` optional).
        resume : bool
            Continue the run saved in ``settings.checkpoint``.
        after_seconds : float
            Seconds the caller needs after this returns, within ``max_minutes``: training
            stops early enough for them, for the last validation and for the last-layer
            posterior (their costs are measured on a few frames first,
            :func:`ml4m.training.costs.evaluation_costs`, then on each validation).
        last_layer_frames : int
            The last-layer posterior (models with ``fit_last_layer`` whose module returns
            ``features``) is fitted on at most this many evenly spaced training frames
            (and calibrated on the validation frames); with ``max_minutes``, on fewer of
            both when the time left after training needs it; 0: no posterior (a
            committee's member, whose sigma is the committee's spread).
        costs : dict, optional
            :func:`~ml4m.training.costs.evaluation_costs` of ``model``, if the caller
            measured them (else they are, on the smallest of 16 spaced training frames,
            when ``max_minutes`` is set).

        Raises
        ------
        DataError
            A frame lacks a label the loss weighs.
        ConfigError
            ``resume`` without a checkpoint, or from one of another model or settings.
        TrainingError
            The loss or the gradient became non-finite (the checkpoint keeps the last
            state written before).
        """
        import torch

        s = self.settings
        started = time.perf_counter()
        if resume and s.checkpoint is None:
            raise ConfigError("resume needs settings.checkpoint (the file to resume from)")
        train_set = as_graph_set(train, "train")
        valid_set = as_graph_set(valid, "valid") if valid is not None and len(valid) else None
        for data in (train_set, valid_set):
            if data is not None:
                check_labels(data, {t: s.weight(t) for t in ("energy", "forces")})
        torch.manual_seed(s.seed)
        if not hasattr(model, "module_"):
            prepare_model(model, train_set, s.seed)
        dist = Distributed.from_env(getattr(model, "device", "cpu"))
        try:
            return self._run(model, train_set, valid_set, resume, dist, started,
                             after_seconds, last_layer_frames, costs)
        finally:
            dist.close()

    def _run(self, model, train_set, valid_set, resume, dist, started, after_seconds,
             last_layer_frames, cost):
        n_batches = len(epoch_batches(len(train_set), self.settings.batch_size,
                                      self.settings.seed, 0, dist.world))
        open_ended = self.settings.until_budget  # the bar then counts steps, of no total
        self.settings = s = self.settings.resolved(n_batches, model.training_defaults)
        run = TrainingRun(s, model, train_set, valid_set, dist)
        if resume:
            run.restore()
        self.history = run.position["history"]
        last_layer = (last_layer_frames > 0 and hasattr(model, "fit_last_layer")
                      and train_set.any_label("energy")
                      and self._has_features(model, train_set))
        clock = Clock(started + 60.0 * s.max_minutes if s.max_minutes else math.inf)
        if s.max_minutes:
            from ml4m.training.costs import evaluation_costs, probe_frames

            if cost is None:  # measured by the first process, followed by all
                cost = dist.broadcast(evaluation_costs(model, probe_frames(train_set.spaced(16)))
                                      if dist.main else None)
            valid_atoms = len(valid_set) * valid_set.mean_atoms() if valid_set else 0.0
            clock.valid_seconds = cost["forces"] * valid_atoms
            clock.after_seconds = after_seconds
            if last_layer:  # features and Jacobian of training frames, sigmas of held ones
                clock.after_seconds += _last_layer_seconds(
                    cost, model, train_set, valid_set, min(len(train_set), last_layer_frames))(1.0)
        log = RunLog(s.log_csv, s.progress, None if open_ended else n_batches * s.max_epochs,
                     enabled=dist.main)
        clock.started = time.perf_counter()  # the budget's training time begins
        if s.max_minutes and isinstance(run.sched, CosineSchedule):
            run.sched.budget()
        try:
            while run.position["epoch"] < s.max_epochs and not run.position["stopped_early"]:
                time_up = run.train_epoch(clock, log)
                if run.end_epoch(clock, log, started, time_up):
                    break
        finally:
            log.close()
        self.stop_reason = run.stop_reason
        run.finish()
        if last_layer:
            n_train, n_valid = min(len(train_set), last_layer_frames), len(valid_set or ())
            if s.max_minutes:
                from ml4m.training.costs import largest_share

                seconds_of = _last_layer_seconds(cost, model, train_set, valid_set, n_train)
                share = dist.broadcast(largest_share(
                    seconds_of, clock.deadline - after_seconds - time.perf_counter()))
                n_train, n_valid = max(1, int(share * n_train)), max(1, int(share * n_valid))
            model.fit_last_layer(_frames_of(train_set, n_train), _frames_of(valid_set, n_valid))
        return model

    @staticmethod
    def _has_features(model, train_set) -> bool:
        """Whether the module returns last-layer ``features`` (then the model gets its
        last-layer posterior, i.e. uncertainty, after training)."""
        import torch

        data, _ = collate(train_set.graphs([0], model.cutoff, model.species_, model.dtype),
                          model.device)
        with torch.no_grad():
            return "features" in model.module_(data)


def prepare_model(model: Any, train_set: GraphSet, seed: int, species=None) -> Any:
    """``model.prepare`` on the frames every training run prepares it on (all of a list,
    evenly spaced ones of a store: :meth:`GraphSet.sample`), torch seeded by ``seed``;
    for the elements ``species`` if given (else those of the frames)."""
    import torch

    torch.manual_seed(seed)
    return model.prepare(train_set.sample(), species=species)


def _last_layer_seconds(cost: dict[str, Any], model: Any, train_set: GraphSet,
                        valid_set: GraphSet | None, n_train: int) -> Callable[[float], float]:
    """Seconds of the last-layer posterior on a share of ``n_train`` training frames and
    of the validation frames (at least one each; without validation frames the training
    ones calibrate it), as a function of the share."""
    from ml4m.training.costs import last_layer_seconds

    per_train = train_set.mean_atoms()
    n_valid, per_valid = (len(valid_set), valid_set.mean_atoms()) if valid_set else (0, 0.0)

    def seconds_of(share: float) -> float:
        train_atoms = max(1, int(share * n_train)) * per_train
        held = max(1, int(share * n_valid)) * per_valid if n_valid else train_atoms
        return last_layer_seconds(cost, train_atoms, held, model.jacobian_atoms)

    return seconds_of


def _frames_of(data: GraphSet | None, n_max: int) -> Any:
    """At most ``n_max`` evenly spaced frames of a set, for ``fit_last_layer``."""
    return None if data is None else data.spaced(n_max)

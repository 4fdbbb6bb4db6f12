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

import contextlib
import math
import time
from typing import Any

import numpy as np

from ml4m.errors import ConfigError, TrainingError
from ml4m.training.batches import as_graph_set, check_labels, collate, epoch_batches, shard
from ml4m.training.checkpoint import (
    check_compatible,
    identity,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ml4m.training.distributed import Distributed
from ml4m.training.ema import WeightAverage
from ml4m.training.logs import RunLog
from ml4m.training.losses import TERMS, error_sums, weighted_loss
from ml4m.training.settings import TrainSettings

__all__ = ["Trainer"]

#: per-step numbers summed over processes: nonfinite flag, time-up flag, loss, error sums
_STEP_SUMS = ("nonfinite", "time_up", "loss", "energy_sae", "energy_n", "forces_sae",
              "forces_n")


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
            after_frames: int = 0, last_layer_frames: int = 2000) -> Any:
        """Train ``model`` and return it with its best (averaged) weights.

        Parameters
        ----------
        model : TorchPotential
            Prepared (``module_`` set) or not: then ``model.prepare`` runs on ``train``
            (on evenly spaced frames of a store) after seeding torch.
        train, valid : list of Frame, Dataset or PackedStore
            Training and validation frames (``valid`` optional).
        resume : bool
            Continue the run saved in ``settings.checkpoint``.
        after_frames : int
            Frames the caller will evaluate (energy and forces) after this returns; with
            ``max_minutes``, training stops early enough for them, for the last
            validation and for the last-layer posterior (their cost per frame is
            measured on the validation passes).
        last_layer_frames : int
            The last-layer posterior (models with ``fit_last_layer`` whose module returns
            ``features``) is fitted on at most this many evenly spaced training frames.

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
                check_labels(data, s.weights)
        torch.manual_seed(s.seed)
        if not hasattr(model, "module_"):
            model.prepare(train_set.sample())
        dist = Distributed.from_env(getattr(model, "device", "cpu"))
        try:
            return self._run(model, train_set, valid_set, resume, dist, started,
                             after_frames, last_layer_frames)
        finally:
            dist.close()

    def _run(self, model, train_set, valid_set, resume, dist, started, after_frames,
             last_layer_frames):
        import torch

        s = self.settings
        module = model.module_
        opt = self._optimizer(module)
        sched = self._scheduler(opt)
        ema = WeightAverage(module, s.ema_decay) if s.ema_decay else None
        ident = identity(model, s)
        run: dict[str, Any] = {"epoch": 0, "batch": 0, "step": 0, "best_loss": math.inf,
                               "bad_epochs": 0, "history": [], "acc": _zero_acc(),
                               "last_saved": None}
        best_state = None
        if resume:
            payload = load_checkpoint(s.checkpoint)
            check_compatible(payload, ident, s.checkpoint)
            module.load_state_dict(payload["module"])
            opt.load_state_dict(payload["optimizer"])
            if sched is not None:
                sched.load_state_dict(payload["scheduler"])
            if ema is not None:
                ema.load_state_dict(payload["ema"])
            set_rng_state(payload["rng"])
            run.update(payload["run"])
            best_state = payload.get("best_state")
        self.history = run["history"]
        deadline = started + 60.0 * s.max_minutes if s.max_minutes else math.inf
        n_batches = len(epoch_batches(len(train_set), s.batch_size, s.seed, 0, dist.world))
        log = RunLog(s.log_csv, s.progress, n_batches * s.max_epochs, enabled=dist.main)
        terms = tuple(t for t in TERMS if s.weight(t) > 0)
        create_graph = "forces" in terms or "stress" in terms
        step_seconds: list[float] = []
        last_layer = hasattr(model, "fit_last_layer") and self._has_features(model, train_set)
        n_valid = len(valid_set) if valid_set is not None else 0
        # evaluations left once training stops: the last validation, the last-layer
        # posterior (features of the training frames ~ 1/3 of an evaluation each, then
        # the validation frames with sigmas ~ 2) and the caller's
        n_after = (n_valid + after_frames
                   + (min(len(train_set), last_layer_frames) / 3 + 2 * n_valid
                      if last_layer else 0))
        # seconds of one evaluation per frame: probed now, then measured on validation
        frame_seconds = (self._probe(model, valid_set or train_set)
                         if math.isfinite(deadline) else None)
        self.stop_reason = "max_epochs"
        wrapped = dist.wrap(module)
        model.module_ = wrapped
        try:
            while run["epoch"] < s.max_epochs:
                batches = epoch_batches(len(train_set), s.batch_size, s.seed, run["epoch"],
                                        dist.world)
                time_up = False
                while run["batch"] < len(batches):
                    t0 = time.perf_counter()
                    idx = shard(batches[run["batch"]], dist.rank, dist.world)
                    data, labels = collate(train_set.graphs(idx, model.cutoff, model.species_,
                                                            model.dtype), model.device)
                    counts = dict(zip(terms, dist.sum(
                        [float(labels[TERMS[t][0]].sum()) for t in terms], data["positions"])))
                    pred = model.energy_and_derivatives(
                        data, forces="forces" in terms, stress="stress" in terms,
                        create_graph=create_graph)
                    sums = error_sums(pred, labels, data, terms)
                    loss = weighted_loss(sums, s.weights, counts, scale=dist.world)
                    value = float(loss.detach()) if isinstance(loss, torch.Tensor) else loss
                    step = np.mean(step_seconds[-20:]) if step_seconds else 0.0
                    per_frame = frame_seconds if frame_seconds is not None else (
                        step / max(1, len(idx)) / 2)
                    expected = step + per_frame * n_after
                    mine = [0.0 if math.isfinite(value) else 1.0,
                            float(time.perf_counter() + expected > deadline), value,
                            sums.get("energy_sae", 0.0), sums.get("energy_n", 0),
                            sums.get("forces_sae", 0.0), sums.get("forces_n", 0)]
                    summed = dict(zip(_STEP_SUMS, dist.sum(mine, data["positions"])))
                    if summed["nonfinite"]:
                        raise self._diverged(run, f"loss {value}")
                    if isinstance(loss, torch.Tensor):
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        norm = torch.nn.utils.clip_grad_norm_(
                            module.parameters(), s.clip_grad or math.inf)
                        if not torch.isfinite(norm):
                            raise self._diverged(run, f"gradient norm {float(norm)}")
                        opt.step()
                        if ema is not None:
                            ema.update(module)
                    run["step"] += 1
                    run["batch"] += 1
                    acc = run["acc"]
                    acc["loss"] += summed["loss"] / dist.world
                    acc["steps"] += 1
                    for key in ("energy_sae", "energy_n", "forces_sae", "forces_n"):
                        acc[key] += summed[key]
                    step_seconds.append(time.perf_counter() - t0)
                    log.step(run["step"], summed["loss"] / dist.world)
                    last = run["batch"] == len(batches)
                    if not last and run["step"] % s.checkpoint_every == 0:
                        self._save(dist, run, module, opt, sched, ema, best_state, ident)
                    if summed["time_up"]:
                        time_up = True
                        break
                tv = time.perf_counter()
                model.module_ = module  # no gradient to share: validate without the wrapper
                valid_row = self._evaluate(model, valid_set, ema, module, dist, terms)
                model.module_ = wrapped
                if valid_set is not None:
                    frame_seconds = (time.perf_counter() - tv) / n_valid
                row = self._epoch_row(run, opt, valid_row, started)
                self.history.append(row)
                log.epoch(self.history)
                run["epoch"] += 1
                run["batch"] = 0
                run["acc"] = _zero_acc()
                if sched is not None:
                    monitored = row["valid_loss"] if valid_set is not None else row["train_loss"]
                    if s.scheduler == "plateau":
                        sched.step(monitored)
                    else:
                        sched.step()
                stop = time_up
                if valid_set is not None:
                    if row["valid_loss"] < run["best_loss"]:
                        run["best_loss"] = row["valid_loss"]
                        run["bad_epochs"] = 0
                        source = ema.state if ema is not None else module.state_dict()
                        best_state = {k: v.detach().clone() for k, v in source.items()}
                    else:
                        run["bad_epochs"] += 1
                        if run["bad_epochs"] >= s.patience:
                            self.stop_reason = "early_stopping"
                            stop = True
                if time_up:
                    self.stop_reason = "max_minutes"
                if run["step"] % s.checkpoint_every == 0 or stop or run["epoch"] == s.max_epochs:
                    self._save(dist, run, module, opt, sched, ema, best_state, ident)
                if stop:
                    break
        finally:
            model.module_ = module
            log.close()
        if best_state is not None:
            module.load_state_dict(best_state)
        elif ema is not None:
            module.load_state_dict(ema.state)
        if last_layer:
            model.fit_last_layer(_frames_of(train_set, last_layer_frames),
                                 _frames_of(valid_set))
        return model

    def _probe(self, model, data_set) -> float:
        """Seconds per frame of evaluating energies and forces of the first frames."""
        idx = np.arange(min(len(data_set), self.settings.batch_size))
        t0 = time.perf_counter()
        data, _ = collate(data_set.graphs(idx, model.cutoff, model.species_, model.dtype),
                          model.device)
        model.energy_and_derivatives(data, forces=True, stress=False)
        return (time.perf_counter() - t0) / len(idx)

    @staticmethod
    def _has_features(model, train_set) -> bool:
        """Whether the module returns last-layer ``features`` (then the model gets its
        last-layer posterior, i.e. uncertainty, after training)."""
        import torch

        data, _ = collate(train_set.graphs([0], model.cutoff, model.species_, model.dtype),
                          model.device)
        with torch.no_grad():
            return "features" in model.module_(data)

    # ---- parts -----------------------------------------------------------------------------
    def _optimizer(self, module):
        import torch

        s = self.settings
        cls = torch.optim.AdamW if s.optimizer == "adamw" else torch.optim.Adam
        return cls(module.parameters(), lr=s.lr, weight_decay=s.weight_decay)

    def _scheduler(self, opt):
        import torch

        s = self.settings
        if s.scheduler == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, factor=s.plateau_factor, patience=s.plateau_patience, min_lr=s.min_lr)
        if s.scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.max_epochs,
                                                              eta_min=s.min_lr)
        return None

    def _evaluate(self, model, valid_set, ema, module, dist, terms) -> dict[str, float]:
        """Loss and errors of the weight average on the validation frames (shared out
        among the processes, summed)."""
        nan = float("nan")
        if valid_set is None:
            return {"loss": nan, "energy": nan, "forces": nan}
        s = self.settings
        shown = tuple(dict.fromkeys(("energy", "forces") + terms))
        names = [f"{t}_{k}" for t in shown for k in ("sse", "sae", "n")]
        totals = dict.fromkeys(names, 0.0)
        mine = np.array_split(np.arange(len(valid_set)), dist.world)[dist.rank]
        context = ema.applied(module) if ema is not None else contextlib.nullcontext()
        with context:
            for start in range(0, len(mine), s.batch_size):
                idx = mine[start:start + s.batch_size]
                data, labels = collate(valid_set.graphs(idx, model.cutoff, model.species_,
                                                        model.dtype), model.device)
                pred = model.energy_and_derivatives(data, forces=True,
                                                    stress="stress" in terms)
                sums = error_sums(pred, labels, data, shown)
                for name in names:
                    totals[name] += float(sums[name].detach() if name.endswith("sse")
                                          else sums[name])
        totals = dict(zip(names, dist.sum([totals[n] for n in names], next(module.parameters()))))
        counts = {t: int(totals[f"{t}_n"]) for t in shown}
        loss = float(weighted_loss({f"{t}_sse": totals[f"{t}_sse"] for t in shown},
                                   s.weights, counts))
        return {"loss": loss, "energy": _mae(totals["energy_sae"], totals["energy_n"], 1),
                "forces": _mae(totals["forces_sae"], totals["forces_n"], 3)}

    def _epoch_row(self, run, opt, valid_row, started) -> dict[str, Any]:
        acc = run["acc"]
        return {"epoch": run["epoch"], "step": run["step"],
                "seconds": time.perf_counter() - started, "lr": opt.param_groups[0]["lr"],
                "train_loss": acc["loss"] / max(1, acc["steps"]),
                "train_energy_mae_mev_per_atom": _mae(acc["energy_sae"], acc["energy_n"], 1),
                "train_forces_mae_mev_per_a": _mae(acc["forces_sae"], acc["forces_n"], 3),
                "valid_loss": valid_row["loss"],
                "valid_energy_mae_mev_per_atom": valid_row["energy"],
                "valid_forces_mae_mev_per_a": valid_row["forces"]}

    def _save(self, dist, run, module, opt, sched, ema, best_state, ident) -> None:
        """Write the checkpoint (first process only), if the settings name one."""
        s = self.settings
        if s.checkpoint is None or not dist.main:
            return
        run["last_saved"] = run["step"]
        payload = {"identity": ident, "settings": s.as_dict(), "module": module.state_dict(),
                   "optimizer": opt.state_dict(), "rng": rng_state(),
                   "run": {k: v for k, v in run.items()}}
        if sched is not None:
            payload["scheduler"] = sched.state_dict()
        if ema is not None:
            payload["ema"] = ema.state_dict()
        if best_state is not None:
            payload["best_state"] = best_state
        save_checkpoint(s.checkpoint, payload)

    def _diverged(self, run, what: str) -> TrainingError:
        s = self.settings
        kept = ("no checkpoint was written" if s.checkpoint is None or run["last_saved"] is None
                else f"the checkpoint {s.checkpoint} keeps step {run['last_saved']}")
        return TrainingError(f"training diverged: {what} at epoch {run['epoch']}, step "
                             f"{run['step'] + 1}; {kept}. Lower training.lr or check the "
                             "labels")


def _zero_acc() -> dict[str, float]:
    return {"loss": 0.0, "steps": 0, "energy_sae": 0.0, "energy_n": 0.0, "forces_sae": 0.0,
            "forces_n": 0.0}


def _mae(sae: float, n: float, width: int) -> float:
    """Mean absolute error in meV (per atom or per component) from eV sums."""
    return 1000.0 * sae / (width * n) if n else float("nan")


def _frames_of(data, n_max: int = 2000) -> Any:
    """At most ``n_max`` evenly spaced frames of a set (all of a short list), for
    ``fit_last_layer``."""
    if data is None:
        return None
    if data.streaming:
        return data.sample(n_max)
    if len(data) <= n_max:
        return data.frames
    return [data.frames[int(k)] for k in np.linspace(0, len(data) - 1, n_max).astype(int)]


"""One training run: its optimiser, schedule, weight average, position, history and clock.

:class:`TrainingRun` does the work of :meth:`ml4m.training.Trainer.fit` step by step
and epoch by epoch, and is what a checkpoint saves and restores (:meth:`TrainingRun.save`,
:meth:`TrainingRun.restore`). :class:`Clock` decides when a ``max_minutes`` budget is
spent.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import numpy as np

from ml4m.errors import TrainingError
from ml4m.training.batches import GraphSet, collate, epoch_batches, shard
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

__all__ = ["TrainingRun", "Clock", "CosineSchedule"]

#: per-step numbers summed over processes: nonfinite flag, time-up flag, loss, error sums
_STEP_SUMS = ("nonfinite", "time_up", "loss", "energy_sae", "energy_n", "forces_sae",
              "forces_n")


class Clock:
    """When to stop for a time budget: before a step that, with the last validation and
    the work that follows training, would end past the deadline.

    Parameters
    ----------
    deadline : float
        ``time.perf_counter()`` value (inf: no budget).
    after_seconds : float
        Seconds of the work after the last validation (estimated).
    valid_seconds : float
        Seconds of one validation pass: estimated, then measured after each.
    """

    def __init__(self, deadline: float, after_seconds: float = 0.0,
                 valid_seconds: float = 0.0) -> None:
        self.deadline = deadline
        self.after_seconds = after_seconds
        self.valid_seconds = valid_seconds
        self.step_seconds: list[float] = []
        #: ``time.perf_counter()`` when the clock began (this process's training start)
        self.started = time.perf_counter()

    def _margin(self) -> float:
        """Seconds :meth:`time_up` keeps before the deadline: two steps (twice the longest
        of the last 20: a shared machine makes steps uneven), a validation and the work
        after it."""
        return 2 * max(self.step_seconds[-20:], default=0.0) + self.valid_seconds + self.after_seconds

    def time_up(self) -> bool:
        """Whether, asked during a step, the rest of it, one more step, a validation and
        the work after it could cross the deadline."""
        return time.perf_counter() + self._margin() > self.deadline

    def fraction(self) -> float:
        """Fraction in [0, 1] of the training time the budget allows that has passed:
        seconds since the clock began over seconds from then to the deadline less the
        margin :meth:`time_up` keeps (0 without a budget)."""
        if not math.isfinite(self.deadline):
            return 0.0
        now = time.perf_counter()
        usable = self.deadline - self._margin() - self.started
        return 1.0 if usable <= 0 else min(1.0, max(0.0, (now - self.started) / usable))


#: phase of a cosine schedule from which epochs without a better valid loss count
#: towards early stopping (the rate is then below a tenth of its peak)
EARLY_STOP_FROM = 0.8


class CosineSchedule:
    """The learning rate annealed along half a cosine to ``min_lr``:

        lr = min_lr + (lr_0 - min_lr) (1 + cos(pi phase)) / 2

    from ``(e_0, lr_0) = (0, lr)``. The phase is the fraction of the epochs from ``e_0``
    to ``max_epochs`` that have passed or, with a time budget (:meth:`budget`), of the
    budget's training time if that is further; it never falls, so the rate never rises,
    however unevenly epochs run on a shared machine. A run resumed with the same
    ``max_epochs`` and no budget follows the same curve. One resumed with another
    ``max_epochs`` or a budget anneals from where it stands: ``(e_0, lr_0)`` becomes the
    epoch reached and its rate (a finished run resumed for more epochs stays at
    ``min_lr``).

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Its rates are set after every epoch (:meth:`step`).
    max_epochs : int
    min_lr : float
    """

    def __init__(self, optimizer: Any, max_epochs: int, min_lr: float) -> None:
        self.optimizer, self.max_epochs, self.min_lr = optimizer, max_epochs, min_lr
        self.epoch = self.start = 0
        self.phase = 0.0
        self.start_lr = optimizer.param_groups[0]["lr"]

    def rate(self, phase: float) -> float:
        """The learning rate at ``phase`` (0: the anchor's rate, 1 and on: ``min_lr``)."""
        phase = min(1.0, phase)
        return self.min_lr + (self.start_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * phase))

    def budget(self) -> None:
        """Anneal to the end of a time budget that begins now: anchor at the current
        epoch and rate (:meth:`step` then takes the budget's fraction)."""
        self.start, self.start_lr = self.epoch, self.optimizer.param_groups[0]["lr"]
        self.phase = 0.0

    def step(self, time_fraction: float = 0.0) -> None:
        """End an epoch: set the next epoch's rate.

        Parameters
        ----------
        time_fraction : float
            Fraction of the time budget passed (:meth:`Clock.fraction`; 0 without one).
        """
        self.epoch += 1
        span = self.max_epochs - self.start
        epochs = (self.epoch - self.start) / span if span > 0 else 1.0
        self.phase = max(self.phase, epochs, time_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = self.rate(self.phase)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "start": self.start, "start_lr": self.start_lr,
                "max_epochs": self.max_epochs, "phase": self.phase}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a saved schedule (after the optimizer's state, which holds the rate)."""
        self.epoch = int(state.get("epoch", state.get("last_epoch", 0)))  # or torch's
        if state.get("max_epochs") == self.max_epochs:
            self.start, self.start_lr = int(state["start"]), float(state["start_lr"])
            span = self.max_epochs - self.start
            self.phase = float(state.get("phase", (self.epoch - self.start) / span
                                         if span > 0 else 1.0))
        else:
            self.budget()


def _zero_acc() -> dict[str, float]:
    return {"loss": 0.0, "steps": 0, "energy_sae": 0.0, "energy_n": 0.0, "forces_sae": 0.0,
            "forces_n": 0.0}


def _mae(sae: float, n: float, width: int) -> float:
    """Mean absolute error in meV (per atom or per component) from eV sums."""
    return 1000.0 * sae / (width * n) if n else float("nan")


class TrainingRun:
    """The state of one :meth:`Trainer.fit` and the steps that advance it.

    Parameters
    ----------
    settings : TrainSettings
    model : TorchPotential
        Prepared (``module_`` set).
    train_set, valid_set : GraphSet
        ``valid_set`` may be None.
    dist : Distributed
        This process's place among the data-parallel processes.

    Attributes
    ----------
    position : dict
        ``epoch``, ``batch`` (next batch of the epoch), ``step``, ``best_loss``,
        ``bad_epochs``, ``history``, ``acc`` (the epoch's sums so far), ``last_saved``,
        ``stopped_early`` (``early_stopping`` once it stopped the run: a resumed run
        then trains no further).
    best_state : dict or None
        Weights of the best validation epoch (of the average, when there is one).
    stop_reason : str
    """

    def __init__(self, settings: TrainSettings, model: Any, train_set: GraphSet,
                 valid_set: GraphSet | None, dist: Distributed) -> None:
        import torch

        s = self.settings = settings
        self.model, self.train_set, self.valid_set, self.dist = model, train_set, valid_set, dist
        self.module = model.module_
        cls = torch.optim.AdamW if s.optimizer == "adamw" else torch.optim.Adam
        self.opt = cls(self.module.parameters(), lr=s.lr, weight_decay=s.weight_decay,
                       amsgrad=s.amsgrad)
        self.sched: Any = None
        if s.scheduler == "plateau":
            self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.opt, factor=s.plateau_factor, patience=s.plateau_patience, min_lr=s.min_lr)
        elif s.scheduler == "cosine":
            self.sched = CosineSchedule(self.opt, s.max_epochs, s.min_lr)
        self.ema = WeightAverage(self.module, s.ema_decay) if s.ema_decay else None
        # a stress term without any stress label (molecules) would only cost the strain
        # derivative of every step
        self.terms = tuple(t for t in TERMS if s.weight(t) > 0
                           and (t != "stress" or train_set.any_label("stress")))
        self.identity = identity(model, s)
        #: loss weights of the first and of the final stage (``final_weights`` resolved)
        self.stage_weights = (s.stage_weights(False), s.stage_weights(True))
        self.position: dict[str, Any] = {"epoch": 0, "batch": 0, "step": 0,
                                         "best_loss": math.inf, "bad_epochs": 0,
                                         "history": [], "acc": _zero_acc(), "last_saved": None,
                                         "stopped_early": "", "final_stage": False}
        self.best_state: dict[str, Any] | None = None
        self.stop_reason = "max_epochs"
        self.wrapped = dist.wrap(self.module)

    # ---- checkpoints ----------------------------------------------------------------------
    def restore(self) -> None:
        """Continue from ``settings.checkpoint`` (same model and settings only)."""
        s = self.settings
        payload = load_checkpoint(s.checkpoint)
        check_compatible(payload, self.identity, s.checkpoint)
        self.module.load_state_dict(payload["module"])
        self.opt.load_state_dict(payload["optimizer"])
        if self.sched is not None:
            self.sched.load_state_dict(payload["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(payload["ema"])
        set_rng_state(payload["rng"])
        self.position.update(payload["run"])
        self.best_state = payload.get("best_state")
        self.stop_reason = self.position["stopped_early"] or self.stop_reason

    def save(self) -> None:
        """Write the checkpoint atomically (first process only), if the settings name one."""
        s = self.settings
        if s.checkpoint is None or not self.dist.main:
            return
        self.position["last_saved"] = self.position["step"]
        payload = {"identity": self.identity, "settings": s.as_dict(),
                   "module": self.module.state_dict(), "optimizer": self.opt.state_dict(),
                   "rng": rng_state(), "run": dict(self.position)}
        if self.sched is not None:
            payload["scheduler"] = self.sched.state_dict()
        if self.ema is not None:
            payload["ema"] = self.ema.state_dict()
        if self.best_state is not None:
            payload["best_state"] = self.best_state
        save_checkpoint(s.checkpoint, payload)

    def _diverged(self, what: str) -> TrainingError:
        s, p = self.settings, self.position
        kept = ("no checkpoint was written" if s.checkpoint is None or p["last_saved"] is None
                else f"the checkpoint {s.checkpoint} keeps step {p['last_saved']}")
        return TrainingError(f"training diverged: {what} at epoch {p['epoch']}, step "
                             f"{p['step'] + 1}; {kept}. Lower training.lr or check the "
                             "labels")

    # ---- steps and epochs -----------------------------------------------------------------
    def _batch(self, data_set: GraphSet, idx) -> tuple[dict[str, Any], dict[str, Any]]:
        m = self.model
        return collate(data_set.graphs(idx, m.cutoff, m.species_, m.dtype), m.device)

    def step(self, idx, clock: Clock) -> dict[str, float]:
        """One optimiser step on this process's frames ``idx`` of the global batch.

        Returns
        -------
        dict
            The step's numbers summed over processes (:data:`_STEP_SUMS`).

        Raises
        ------
        TrainingError
            The loss or the gradient norm is not finite (nothing is updated).
        """
        import torch

        s, dist, terms = self.settings, self.dist, self.terms
        data, labels = self._batch(self.train_set, idx)
        counts = dict(zip(terms, dist.sum([float(labels[TERMS[t][0]].sum()) for t in terms],
                                          data["positions"])))
        self.model.module_ = self.wrapped
        try:
            pred = self.model.energy_and_derivatives(
                data, forces="forces" in terms, stress="stress" in terms,
                create_graph="forces" in terms or "stress" in terms)
        finally:
            self.model.module_ = self.module
        sums = error_sums(pred, labels, data, terms)
        loss = weighted_loss(sums, self.weights, counts, scale=dist.world)
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else loss
        mine = [0.0 if math.isfinite(value) else 1.0, float(clock.time_up()), value,
                sums.get("energy_sae", 0.0), sums.get("energy_n", 0),
                sums.get("forces_sae", 0.0), sums.get("forces_n", 0)]
        summed = dict(zip(_STEP_SUMS, dist.sum(mine, data["positions"])))
        if summed["nonfinite"]:
            raise self._diverged(f"loss {value}")
        if isinstance(loss, torch.Tensor):  # a batch without any weighed label has none
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(),
                                                  s.clip_grad or math.inf)
            if not torch.isfinite(norm):
                raise self._diverged(f"gradient norm {float(norm)}")
            self.opt.step()
            if self.ema is not None:
                self.ema.update(self.module)
        p = self.position
        p["step"] += 1
        p["batch"] += 1
        p["acc"]["loss"] += summed["loss"] / dist.world
        p["acc"]["steps"] += 1
        for key in _STEP_SUMS[3:]:
            p["acc"][key] += summed[key]
        return summed

    def train_epoch(self, clock: Clock, log: RunLog) -> bool:
        """The rest of the current epoch's steps; True when the budget stopped it early."""
        s, p, dist = self.settings, self.position, self.dist
        batches = epoch_batches(len(self.train_set), s.batch_size, s.seed, p["epoch"],
                                dist.world)
        while p["batch"] < len(batches):
            t0 = time.perf_counter()
            summed = self.step(shard(batches[p["batch"]], dist.rank, dist.world), clock)
            clock.step_seconds.append(time.perf_counter() - t0)
            log.step(p["step"], summed["loss"] / dist.world)
            if p["batch"] < len(batches) and p["step"] % s.checkpoint_every == 0:
                self.save()  # the epoch's last step is saved after the epoch's end
            if summed["time_up"]:
                return True
        return False

    def end_epoch(self, clock: Clock, log: RunLog, started: float, time_up: bool) -> bool:
        """Validate, log, schedule, keep the best weights, checkpoint; True to stop."""
        s, p = self.settings, self.position
        t0 = time.perf_counter()
        valid = self.evaluate()
        if self.valid_set is not None:
            clock.valid_seconds = time.perf_counter() - t0
        acc = p["acc"]
        row = {"epoch": p["epoch"], "step": p["step"], "seconds": time.perf_counter() - started,
               "lr": self.opt.param_groups[0]["lr"],
               "train_loss": acc["loss"] / max(1, acc["steps"]),
               "train_energy_mae_mev_per_atom": _mae(acc["energy_sae"], acc["energy_n"], 1),
               "train_forces_mae_mev_per_a": _mae(acc["forces_sae"], acc["forces_n"], 3),
               "valid_loss": valid["loss"], "valid_energy_mae_mev_per_atom": valid["energy"],
               "valid_forces_mae_mev_per_a": valid["forces"]}
        p["history"].append(row)
        log.epoch(p["history"])
        p["epoch"] += 1
        p["batch"] = 0
        p["acc"] = _zero_acc()
        if s.scheduler == "plateau":
            self.sched.step(row["valid_loss"] if self.valid_set is not None
                            else row["train_loss"])
        elif self.sched is not None:  # cosine: annealed to the budget's end if that is sooner
            self.sched.step(clock.fraction())
        stop = time_up
        if time_up:
            self.stop_reason = "max_minutes"
        if self.valid_set is not None:
            if row["valid_loss"] < p["best_loss"]:
                p["best_loss"] = row["valid_loss"]
                p["bad_epochs"] = 0
                source = self.ema.state if self.ema is not None else self.module.state_dict()
                self.best_state = {k: v.detach().clone() for k, v in source.items()}
            elif self._may_stop_early():
                p["bad_epochs"] += 1
                if p["bad_epochs"] >= s.patience and not stop:
                    self.stop_reason = p["stopped_early"] = "early_stopping"
                    stop = True
        if s.has_final_stage and not p["final_stage"] and self._phase() >= s.final_from:
            # the second stage's loss is another measure: its epochs compete among themselves
            p["final_stage"], p["best_loss"], p["bad_epochs"] = True, math.inf, 0
        if p["step"] % s.checkpoint_every == 0 or stop or p["epoch"] == s.max_epochs:
            self.save()
        return stop

    @property
    def weights(self) -> dict[str, float]:
        """The loss weights of the current stage."""
        return self.stage_weights[self.position["final_stage"]]

    def _phase(self) -> float:
        """Progress in [0, 1]: the cosine schedule's phase, else the fraction of
        ``max_epochs`` passed."""
        if isinstance(self.sched, CosineSchedule):
            return self.sched.phase
        return self.position["epoch"] / self.settings.max_epochs if self.settings.max_epochs else 0.0

    def _may_stop_early(self) -> bool:
        """Whether an epoch without a better valid loss counts towards ``patience``: always,
        except before phase :data:`EARLY_STOP_FROM` of a cosine schedule, whose high rate
        makes the valid loss jump between epochs without any overfitting (counting from
        the start, the default MPNN on 30 ethanol frames stopped at epoch 173 of 625;
        counting from half the anneal, the BPNN on ethanol stopped after 14 of its 30
        minutes, at 42 meV/A, its training error still falling). The best epoch's
        weights are kept either way."""
        return not isinstance(self.sched, CosineSchedule) or self.sched.phase >= EARLY_STOP_FROM

    def evaluate(self) -> dict[str, float]:
        """Loss and errors of the weight average on the validation frames (shared out
        among the processes, summed); NaN without validation frames."""
        nan = float("nan")
        if self.valid_set is None:
            return {"loss": nan, "energy": nan, "forces": nan}
        s, dist = self.settings, self.dist
        shown = tuple(dict.fromkeys(("energy", "forces") + self.terms))
        names = [f"{t}_{k}" for t in shown for k in ("sse", "sae", "n")]
        totals = dict.fromkeys(names, 0.0)
        mine = np.array_split(np.arange(len(self.valid_set)), dist.world)[dist.rank]
        averaged = (self.ema.applied(self.module) if self.ema is not None
                    else contextlib.nullcontext())
        with averaged:
            for start in range(0, len(mine), s.batch_size):
                data, labels = self._batch(self.valid_set, mine[start:start + s.batch_size])
                pred = self.model.energy_and_derivatives(data, forces=True,
                                                         stress="stress" in self.terms)
                sums = error_sums(pred, labels, data, shown)
                for name in names:
                    value = sums[name]
                    totals[name] += float(value.detach() if name.endswith("sse") else value)
        totals = dict(zip(names, dist.sum([totals[n] for n in names],
                                          next(self.module.parameters()))))
        counts = {t: int(totals[f"{t}_n"]) for t in shown}
        loss = float(weighted_loss({f"{t}_sse": totals[f"{t}_sse"] for t in shown},
                                   self.weights, counts))
        return {"loss": loss, "energy": _mae(totals["energy_sae"], totals["energy_n"], 1),
                "forces": _mae(totals["forces_sae"], totals["forces_n"], 3)}

    def finish(self) -> None:
        """Load the final weights: the best epoch's, else the average's, else the last."""
        if self.best_state is not None:
            self.module.load_state_dict(self.best_state)
        elif self.ema is not None:
            self.module.load_state_dict(self.ema.state)

"""On-the-fly active learning: MD with an uncertain model, the reference where it is unsure.

K walkers (:class:`~ml4m.md.learning_settings.WalkerSettings`) share one model with
uncertainty and advance in lock-step rounds of ``check_interval`` MD steps; the force
sigma is computed on the last step of a round. Every walker whose largest force sigma
(eV/Angstrom, any atom and component) is above the threshold sends its frame to the
reference calculator; the frames of a round are labelled together through a
:class:`concurrent.futures.Executor` (inline, a process pool, or a Dask client), join
the training set in walker order, and the model is updated once (an exact rank update
of the normal equations for linear and sparse-GP potentials, a refit for the others;
hyperparameters re-optimised every ``reoptimise_every`` calls). All walkers then
continue, the flagged ones from their labelled frames. The result of a seed therefore
does not depend on how many workers label the frames.

After every update the whole loop state is saved (:mod:`ml4m.md.learning_state`); a
resumed loop continues exactly where the saved one was (NVE and NVT: bit for bit; NPT
restarts its barostat's momentum, which is not saved), and refuses other settings.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from ml4m.data.frames import Frame
from ml4m.data.read import read_structure
from ml4m.errors import ConfigError, DataError, SimulationError
from ml4m.md.dynamics import _dynamics
from ml4m.md.learning_reference import (
    InlineExecutor,
    Reference,
    ReferenceCalculationError,
    label_frames,
    label_structure,
    reference_executor,
)
from ml4m.md.learning_settings import LearnSettings, WalkerSettings
from ml4m.md.learning_state import (
    LoopState,
    WalkerState,
    has_state,
    load_state,
    save_state,
    updatable,
)
from ml4m.md.safety import blowup_limits, check_step

__all__ = ["InlineExecutor", "LearnStatus", "Reference", "ReferenceCalculationError",
           "below_range", "fit_one", "label_structure", "refit_reason",
           "with_inner_radii", "reference_executor", "run_learning"]


@dataclass(frozen=True)
class LearnStatus:
    """The loop after a round (what the live table shows).

    Attributes
    ----------
    rounds, step, steps : int
        Rounds run; MD steps done and asked for, per walker.
    time_ps : float
        MD time of every walker, ps.
    sigma : tuple of float
        Each walker's largest force sigma at the round's end, eV/Angstrom.
    threshold : float
        eV/Angstrom.
    calls, max_calls, skipped, n_train, n_parameters : int
    labelled : tuple of int
        Walkers whose frames were labelled this round.
    """

    rounds: int
    step: int
    steps: int
    time_ps: float
    sigma: tuple[float, ...]
    threshold: float
    calls: int
    max_calls: int
    skipped: int
    n_train: int
    n_parameters: int
    labelled: tuple[int, ...]


class _Walker:
    """A walker's atoms (with the model's calculator), integrator and generator."""

    def __init__(self, spec: WalkerSettings, start: Atoms, state: WalkerState,
                 settings: LearnSettings) -> None:
        self.spec, self.settings, self.atoms, self.step = spec, settings, state.atoms, state.step
        self.last_call = state.last_call
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state.rng_state
        self.limits = blowup_limits(start, spec.hottest_k)  # from the start, as on a resume
        self.dyn = None

    def attach(self, model: Any) -> None:
        """A fresh calculator of ``model`` (no cached results) and integrator."""
        from ml4m.models.calculator import ML4MCalculator

        self.atoms.calc = ML4MCalculator(model)
        s = self.settings
        if self.dyn is None:
            self.dyn = _dynamics(self.atoms, s.ensemble, self.spec.target(self.step, s.steps),
                                 s.dt_fs, s.friction, s.pressure_gpa, self.rng)

    def advance(self, n: int) -> float:
        """``n`` MD steps, each checked (:func:`ml4m.md.safety.check_step`); the largest
        force sigma of the last one, eV/Angstrom."""
        calc, s = self.atoms.calc, self.settings
        for i in range(n):
            if self.spec.temperature_end_k is not None:
                self.dyn.set_temperature(temperature_K=self.spec.target(self.step, s.steps))
            if i == n - 1:
                self.atoms.get_forces()  # this step's starting forces without the sigma
                calc.uncertainty = True
            self.dyn.step()
            self.step += 1
            check_step(self.atoms, self.step, self.limits)
        calc.uncertainty = False
        return float(np.max(calc.results["forces_sigma"]))

    def state(self) -> WalkerState:
        return WalkerState(self.atoms, self.step, self.rng.bit_generator.state, self.last_call)

    def may_call(self) -> bool:
        """Whether ``min_steps_between_calls`` have passed since this walker's last call."""
        return self.last_call is None or \
            self.step - self.last_call >= self.settings.min_steps_between_calls


def _check_species(model: Any, atoms: Atoms, path: str) -> None:
    from ase.data import chemical_symbols

    unknown = sorted(set(atoms.numbers.tolist()) - set(np.asarray(model.species).tolist()))
    if unknown:
        raise DataError(f"species {[chemical_symbols[z] for z in unknown]} are not known to the "
                        f"model (trained on {[chemical_symbols[z] for z in model.species]})", path)


def _labelled_frame(atoms: Atoms, labels: dict[str, Any], info: dict[str, Any]) -> Frame:
    return Frame.from_atoms(atoms, energy=labels["energy"], forces=labels["forces"],
                            stress=labels["stress"], info=info)


def _initial_model(settings: LearnSettings, executor: Executor, reference: Callable[[], Any],
                   model: Any = None) -> tuple[Any, list[Frame]]:
    """The starting model (``model``, a model file, or the initial fit) and training frames."""
    from ml4m.data import read_dataset

    frames: list[Frame] = []
    if settings.initial is not None:
        require = () if settings.label_initial else ("energy", "forces")
        frames = list(read_dataset(settings.initial, require=require))
        if settings.label_initial:
            structures = [f.to_atoms(with_labels=False) for f in frames]
            labels = label_frames(executor, reference, structures)
            for k, lab in enumerate(labels):
                if isinstance(lab, Exception):
                    raise ReferenceCalculationError(
                        f"the reference failed on frame {k} of {settings.initial}: "
                        f"{type(lab).__name__}: {lab}")
            frames = [_labelled_frame(a, lab, {"source": "initial", "frame": k})
                      for k, (a, lab) in enumerate(zip(structures, labels))]
    if model is None and settings.model is not None:
        from ml4m.models.serialization import load

        model = load(settings.model)
    if model is None:
        if settings.fit is None:
            raise ConfigError("no starting model: give 'model' (a .ml4m file) or 'fit' (settings "
                              "of an initial fit on 'initial')")
        return _fit_initial(settings, frames), frames
    from ml4m.models.base import Potential

    if not isinstance(model, Potential) or not model.has_uncertainty:
        raise ConfigError(f"model {settings.model or ''}: active learning needs a potential with "
                          f"uncertainty (ace, gp, a network, a committee), got '{model.kind}'")
    if not updatable(model):
        _restore_updates(model, frames, settings.model)
    return model, frames


def _restore_updates(model: Any, frames: list[Frame], path: str | None) -> None:
    """Make a starting model without normal equations (read from a file) learn new frames
    as it is: its normal equations rebuilt from its training frames (``initial``), or,
    for a model refitted (a network: trained on) at each update, those frames kept. Without them, ConfigError:
    the first update would refit on the labelled frames alone."""
    from ml4m.training.finetune import is_network

    name = f"model {path}" if path else "the starting model"
    rebuild = callable(getattr(model, "restore_normal_equations", None))
    if not frames:
        how = ("new frames are added to its normal equations, which a model file does not "
               "hold" if rebuild else f"a '{model.kind}' model is "
               f"{'trained on' if is_network(model) else 'refitted'} on the whole "
               "training set at each update")
        raise ConfigError(f"{name}: {how}; give 'initial': the frames it was fitted on (or "
                          "'fit' with 'initial' for a new initial fit)")
    if rebuild:
        model.restore_normal_equations(frames)


def _fit_initial(settings: LearnSettings, frames: list[Frame]) -> Any:
    """The model ``settings.fit`` describes (with the repulsive core or baseline its
    ``repulsion``/``baseline`` keys ask for, as ``ml4m fit``), fitted on ``frames``; an
    ``ace`` or ``gp`` fit without descriptor settings chooses its basis on ``frames`` as
    ``ml4m fit`` does (:func:`~ml4m.training.fit.search_fit`: CV, MD probe, budget
    ``max_minutes``), and the loop's updates keep that basis.

    With ``committee: K`` (networks), K members with seeds ``seed`` .. ``seed + K - 1``
    (as ``ml4m fit --committee K``), each trained as a single network here is (with its
    last-layer posterior, whose force noise is a relative threshold's unit), then joined;
    the loop has no held-out frames, so the members' spread is not calibrated (factors 1).
    """
    from ml4m.data import Dataset
    from ml4m.models.committee import Committee
    from ml4m.training.config import FitConfig

    clash = sorted({"train", "valid", "output"} & set(settings.fit))
    if clash:
        raise ConfigError(f"fit: {clash} are set by the learning loop ('initial' is the "
                          "training set; the model is written to the output folder)")
    if "init" in settings.fit:  # the loop's fit is a fresh one; a fitted start is 'model'
        raise ConfigError("fit.init: the learning loop does not fine-tune a fit's start; give "
                          "the fitted network as 'model: FILE' (with 'initial': the frames "
                          "it was trained on), and 'fine_tune' for its updates")
    cfg = FitConfig.from_mapping({**settings.fit, "train": settings.initial}, source="fit")
    ds = Dataset(frames)
    if cfg.committee:  # FitConfig admits it for networks only
        members = [fit_one(dataclasses.replace(cfg, seed=cfg.seed + k), frames, ds)
                   for k in range(cfg.committee)]
        return Committee.from_members(members, resample="seed", seed=cfg.seed)
    return fit_one(cfg, frames, ds)


def fit_one(cfg: Any, frames: list[Frame], ds: Any = None) -> Any:
    """One model of the loop's initial fit (and of its refits): ``cfg`` (a
    :class:`~ml4m.training.config.FitConfig`) on ``frames`` (``ds``: them as a
    :class:`~ml4m.data.Dataset`, made when not given)."""
    from ml4m.data import Dataset
    from ml4m.models.baseline import with_baseline
    from ml4m.training.finetune import is_network, train_network
    from ml4m.training.fit import build_model
    from ml4m.training.settings import TrainSettings

    ds = Dataset(frames) if ds is None else ds
    species = [int(z) for z in ds.atomic_numbers]
    # inside the repulsive core (and baseline) ml4m fit would give it: the walkers run MD
    # with this model from the first step, where the data is thinnest
    model = with_baseline(build_model(cfg, species, ds), cfg.repulsion_settings, cfg.baseline,
                          "fit")
    if is_network(model):  # trained as ml4m fit trains it, then has its last layer
        training = {**cfg.training, "seed": cfg.seed, "progress": False}
        return train_network(model, frames, TrainSettings.from_mapping(training, "fit"))
    if not model.has_uncertainty:
        raise ConfigError(f"fit.model: active learning needs a model with uncertainty, "
                          f"'{cfg.model}' has none")
    if cfg.searches:  # the basis ml4m fit would choose on these frames (its search and budget)
        from ml4m.training.fit import search_fit

        return search_fit(cfg, species, ds, model, time.perf_counter())[2]
    return model.fit(ds)


def below_range(model: Any, frames: list[Frame]) -> list[str]:
    """Element pairs (``"A-B"``) closer in ``frames`` than the inner radius of ``model``'s
    radial basis for them (its descriptor's ``pair_r_in``, Angstrom: the basis is constant
    below it, so the model cannot learn those frames' forces there); empty for a model
    without inner radii."""
    from ml4m.data import shortest_distances

    inner = getattr(model, "model_", model)  # inside a baseline
    radii = getattr(getattr(inner, "descriptor", None), "pair_r_in", None)
    if not radii:
        return []
    canon = {"-".join(sorted(k.split("-"))): r for k, r in radii.items()}
    return sorted(pair for pair, d in shortest_distances(frames).items()
                  if d < canon.get("-".join(sorted(pair.split("-"))), 0.0))


def refit_reason(model: Any, n_train: int, fitted_on: int, new: list[Frame],
                 growth: float) -> str | None:
    """Why a loop with its own fit should fit again on every frame instead of updating
    ``model``, which keeps its normal equations (its basis, inner radii and prior were
    chosen on the ``fitted_on`` frames of its last fit): ``"growth"`` when the training
    set (``n_train`` frames) has grown by ``growth`` (0: never) since (the whole fit,
    basis search included); else ``"range"`` when ``new`` holds a pair closer than its
    radial basis reaches (:func:`below_range`; the same basis with inner radii from every
    frame, :func:`with_inner_radii`); None otherwise, and for a model that an update
    trains on every frame anyway (a network)."""
    if not updatable(model):
        return None
    if growth and n_train >= growth * fitted_on:
        return "growth"
    return "range" if below_range(model, new) else None


def with_inner_radii(model: Any, frames: list[Frame]) -> Any:
    """``model``'s kind, hyperparameters and basis (inside its baseline, if any), the inner
    radii of its radial basis taken from ``frames`` as ``pair_r_in: auto`` takes them,
    fitted on ``frames``: one fit, no basis search."""
    from ml4m.data import pair_inner_radii
    from ml4m.descriptors import from_settings
    from ml4m.models.baseline import Baselined
    from ml4m.training.fit import PAIR_R_IN_MARGIN

    inner = model.model_ if isinstance(model, Baselined) else model
    settings = inner.descriptor.settings()
    settings["pair_r_in"] = pair_inner_radii(frames, PAIR_R_IN_MARGIN)
    fresh = inner.clone().set_params(descriptor=from_settings(settings))
    if isinstance(model, Baselined):
        fresh = Baselined(fresh, model.baseline_.clone())
    return fresh.fit(frames)


def _updated(model: Any, train: list[Frame], new: list[Frame], reoptimise: bool,
             fine_tune: dict[str, Any] | None = None) -> Any:
    """``model`` with ``new`` frames learnt: an exact update when it keeps its normal
    equations; a network trained on from its weights on the whole training set
    (``fine_tune``: its training settings); else a refit of a clone on the whole set."""
    from ml4m.training.finetune import fine_tune_settings, is_network, train_network

    if updatable(model):
        return model.update(new, reoptimise=reoptimise)
    if is_network(model):
        return train_network(model, train, fine_tune_settings(fine_tune))
    return model.clone().fit(train)


def run_learning(settings: LearnSettings, output: str | os.PathLike, *,
                 executor: Executor | None = None, reference: Callable[[], Any] | None = None,
                 model: Any = None, resume: bool = False, overwrite: bool = False, on_round: Callable[[LearnStatus], None] | None = None
                 ) -> dict[str, Any]:
    """Run (or resume) the loop; the state and results go to the folder ``output``.

    Parameters
    ----------
    settings : LearnSettings
    output : path
        Folder (claimed by the caller: :func:`ml4m.outputs.claim_output`). Written:
        ``state/`` after every update, then ``model.ml4m``, ``train.extxyz`` and
        ``learning.png`` (sigma and reference calls against MD time).
    executor : Executor, optional
        Labels frames (default: inline). Any :class:`concurrent.futures.Executor`.
    reference : callable, optional
        A picklable factory of the reference calculator, instead of
        ``settings.reference`` (its name is still what a resume compares).
    model : Potential, optional
        A fitted potential with uncertainty to start from, instead of ``settings.model``
        or ``settings.fit`` (ignored on a resume: the state holds the model).
    resume : bool
        Continue the state in ``output`` (ConfigError if there is none, or if it was run
        with other settings).
    overwrite : bool
        Start afresh over a state in ``output`` (replaced at the first save); without it
        (and without ``resume``) such a state is refused.
    on_round : callable, optional
        Called with a :class:`LearnStatus` after every round.

    Returns
    -------
    dict
        ``steps``, ``walkers``, ``reference_calls``, ``skipped``, ``n_train``,
        ``n_parameters``, ``threshold_ev_per_a``, ``sigma_max_final`` (eV/A, per walker),
        ``seconds``, ``model``, ``plot``, ``resumed``.

    Raises
    ------
    ConfigError, DataError
        Bad settings or inputs (nothing run), or a resume under other settings.
    ReferenceCalculationError
        The reference failed and ``on_reference_error`` is ``stop`` (state kept).
    SimulationError
        A walker blew up (state of the last update kept).
    """
    started = time.perf_counter()
    output = Path(output)
    executor = executor if executor is not None else InlineExecutor()
    if reference is None:
        reference = Reference(settings.reference, tuple(sorted(settings.reference_kwargs.items())))
    reference()  # an import or a setting it refuses fails here, before any work
    starts = [read_structure(w.structure) for w in settings.walkers]
    if resume:
        if not has_state(output):
            raise ConfigError(f"--resume: {output} holds no learning state to resume")
        state = load_state(output, starts)
        diff = settings.differences(state.settings)
        if diff:
            raise ConfigError(f"--resume: the state in {output} was run with other settings "
                              f"({', '.join(diff)} differ); use the same config, or another "
                              "output folder")
    else:
        if has_state(output) and not overwrite:
            raise ConfigError(f"{output} holds the state of a learning run: pass --resume to "
                              "continue it, --overwrite to start over, or choose another "
                              "output folder")
        model, train = _initial_model(settings, executor, reference, model)
        for spec, atoms in zip(settings.walkers, starts):
            _check_species(model, atoms, spec.structure)
        state = LoopState(settings.record(), model, train, [_fresh_walker(s, a)
                                                           for s, a in zip(settings.walkers, starts)],
                          fitted_on=len(train))
        save_state(output, state)
    loop = _Loop(settings, state, starts, executor, reference, output, on_round)
    loop.run()
    return loop.finish(time.perf_counter() - started, resume)


def _fresh_walker(spec: WalkerSettings, start: Atoms) -> WalkerState:
    """A walker at its start, with Maxwell-Boltzmann velocities at its temperature."""
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    atoms = start.copy()
    rng = np.random.default_rng(spec.seed)
    thermalize_momenta(atoms, temperature_K=spec.temperature_k, rng=rng)
    Stationary(atoms)
    return WalkerState(atoms, 0, rng.bit_generator.state)


class _Loop:
    """The rounds of a run: advance, check, label, update, save."""

    def __init__(self, settings: LearnSettings, state: LoopState, starts: list[Atoms],
                 executor: Executor, reference: Callable[[], Any], output: Path,
                 on_round: Callable[[LearnStatus], None] | None) -> None:
        self.s, self.state, self.executor, self.reference = settings, state, executor, reference
        self.output, self.on_round = output, on_round
        self.walkers = [_Walker(spec, start, w, settings)
                        for spec, start, w in zip(settings.walkers, starts, state.walkers)]
        self._attach()

    def _attach(self) -> None:
        """Every walker runs on the current model; with a relative threshold its sigmas are
        the posterior's (:meth:`posterior_view`, where the model has one: the part of the
        uncertainty that new frames reduce, set against the fitted noise as FLARE sets its
        GP's variance), else the model's own (calibrated ones include the basis' error,
        which is above the noise everywhere)."""
        model = self.state.model
        view = getattr(model, "posterior_view", None) if self.s.threshold.relative else None
        for w in self.walkers:
            w.attach(view() if view is not None else model)

    def run(self) -> None:
        s, st = self.s, self.state
        while self.walkers[0].step < s.steps:
            n = min(s.check_interval, s.steps - self.walkers[0].step)
            sigma = [self._advance(k, n) for k in range(len(self.walkers))]
            threshold = s.threshold.resolve(st.model)
            st.rounds += 1
            hist = st.history
            hist["time_fs"].append(self.walkers[0].step * s.dt_fs)
            hist["sigma"].append(sigma)
            hist["threshold"].append(threshold)
            flagged = [k for k, v in enumerate(sigma) if v > threshold and self.walkers[k].may_call()]
            flagged = flagged[:max(0, s.max_calls - st.calls)]
            labelled = self._learn(flagged, sigma) if flagged else []
            hist["calls"].append(st.calls)
            if labelled:
                self._save()
            if self.on_round is not None:
                self.on_round(self._status(sigma, threshold, labelled))
        if s.fit is not None and s.refit_growth and updatable(st.model) and \
                len(st.train) > st.fitted_on:  # the written model: the fit of every frame
            st.model, st.fitted_on = _fit_initial(s, st.train), len(st.train)
        self._save()

    def _advance(self, k: int, n: int) -> float:
        try:
            return self.walkers[k].advance(n)
        except SimulationError as exc:
            raise SimulationError(f"walker {k} ({self.s.walkers[k].structure}) stopped at {exc}; "
                                  f"the state after the last update is kept in "
                                  f"{self.output / 'state'}") from None

    def _learn(self, flagged: list[int], sigma: list[float]) -> list[int]:
        """Label the flagged walkers' frames, add them in walker order, update the model."""
        s, st = self.s, self.state
        labels = label_frames(self.executor, self.reference,
                               [self.walkers[k].atoms for k in flagged])
        before = st.calls
        new, labelled = [], []
        for k, lab in zip(flagged, labels):
            st.calls += 1
            w = self.walkers[k]
            w.last_call = w.step
            if isinstance(lab, Exception):
                if s.on_reference_error == "stop":
                    raise ReferenceCalculationError(
                        f"the reference ({s.reference}) failed on walker {k} at step {w.step}: "
                        f"{type(lab).__name__}: {lab}; the state after the last update is kept in "
                        f"{self.output / 'state'} (ml4m learn ... --resume continues it)")
                st.skipped += 1
                continue
            info = {"walker": k, "step": w.step, "time_fs": w.step * s.dt_fs,
                    "sigma_max": sigma[k]}
            new.append(_labelled_frame(w.atoms, lab, info))
            labelled.append(k)
        if new:
            every = s.reoptimise_every
            reoptimise = every > 0 and st.calls // every > before // every
            st.train.extend(new)
            reason = refit_reason(st.model, len(st.train), st.fitted_on, new, s.refit_growth) \
                if s.fit is not None else None
            if reason == "growth":
                st.model, st.fitted_on = _fit_initial(s, st.train), len(st.train)
            elif reason == "range":
                st.model = with_inner_radii(st.model, st.train)
            else:
                st.model = _updated(st.model, st.train, new, reoptimise, s.fine_tune)
            self._attach()  # every walker continues with the new model
        return labelled

    def _save(self) -> None:
        self.state.walkers = [w.state() for w in self.walkers]
        save_state(self.output, self.state)

    def _status(self, sigma: list[float], threshold: float, labelled: list[int]) -> LearnStatus:
        st, step = self.state, self.walkers[0].step
        return LearnStatus(st.rounds, step, self.s.steps, step * self.s.dt_fs / 1000.0,
                           tuple(sigma), threshold, st.calls, self.s.max_calls, st.skipped,
                           len(st.train), int(st.model.n_parameters), tuple(labelled))

    def finish(self, seconds: float, resumed: bool) -> dict[str, Any]:
        """Write the model, the plot; the run's summary."""
        from ml4m.md.learning_plots import plot_history

        st = self.state
        model_path = st.model.save(self.output / "model.ml4m")
        plot = plot_history(st.history, self.output / "learning.png")
        last = st.history["sigma"][-1] if st.history["sigma"] else []
        return {"steps": self.s.steps, "walkers": len(self.walkers), "rounds": st.rounds,
                "reference_calls": st.calls, "skipped": st.skipped, "n_train": len(st.train),
                "n_parameters": int(st.model.n_parameters),
                "threshold_ev_per_a": st.history["threshold"][-1] if st.history["threshold"]
                else None,
                "sigma_max_final": list(last), "seconds": seconds, "model": str(model_path),
                "plot": str(plot), "resumed": resumed}

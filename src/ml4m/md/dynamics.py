"""Molecular dynamics and relaxation through ASE with any calculator.

An MD run streams its trajectory (:mod:`ml4m.md.trajectory`), stops with
:class:`~ml4m.errors.SimulationError` when it blows up (:mod:`ml4m.md.safety`), keeping
the frames written so far, and computes a model's uncertainty only on the steps that
:class:`~ml4m.md.sigma_schedule.SigmaSchedule` picks (by default spaced to add at most
5% (``SIGMA_TIME_FRACTION``) to the run's wall time).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from ase import Atoms, units

from ml4m.data.neighbors import verlet_reuse
from ml4m.errors import ConfigError, SimulationError
from ml4m.validation import check_choice, check_float, check_int
from ml4m.md.safety import blowup_limits, check_step
from ml4m.md.sigma_schedule import SigmaSchedule, parse_interval
from ml4m.md.trajectory import TrajectoryStream, snapshot

__all__ = ["MDResult", "MDStatus", "run_md", "relax", "check_md_settings", "ENSEMBLES",
           "check_relax_settings", "MAX_TEMPERATURE_K", "MAX_DT_FS"]

ENSEMBLES = ("nve", "nvt", "npt")
#: highest target temperature accepted, K
MAX_TEMPERATURE_K = 1.0e5
#: longest time step accepted, fs
MAX_DT_FS = 20.0


@dataclass
class MDResult:
    """Summary of an MD run (the ``ml4m md --json`` object).

    Attributes
    ----------
    n_atoms, steps : int
    seconds : float
        Wall time of the dynamics (checks, logging and trajectory included), s.
    atom_steps_per_s : float
        ``n_atoms * steps / seconds``.
    temperature_k_mean : float
        Mean kinetic temperature over the sampled steps, K.
    energy_drift_mev_per_atom_per_ps : float or None
        Slope of the total energy (NVE only), meV/atom/ps.
    ensemble : str
    dt_fs : float
        Time step, fs.
    forces_sigma_max : float or None
        Largest predicted force standard deviation over the steps where it was
        computed, eV/Angstrom (models with uncertainty only).
    uncertainty_interval : int, str or None
        Steps between uncertainty evaluations, ``'auto (mean N)'`` when spaced by cost,
        None when the calculator has none.
    n_sigma_evaluations : int
        Steps on which the force sigma was computed.
    trajectory : str or None
        File holding the frames.
    n_frames : int
        Frames written to it.
    """

    n_atoms: int
    steps: int
    seconds: float
    atom_steps_per_s: float
    temperature_k_mean: float
    energy_drift_mev_per_atom_per_ps: float | None
    ensemble: str
    dt_fs: float
    forces_sigma_max: float | None = None
    uncertainty_interval: int | str | None = None
    n_sigma_evaluations: int = 0
    trajectory: str | None = None
    n_frames: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MDStatus:
    """The state of a run after a step (what a log line shows).

    Attributes
    ----------
    step : int
    time_ps : float
        Simulated time, ps.
    temperature_k : float
        Kinetic temperature, K.
    energy_pot_ev, energy_tot_ev : float
        Potential and total energy, eV.
    forces_sigma_max : float or None
        Largest force standard deviation at the latest step where it was computed, eV/A.
    """

    step: int
    time_ps: float
    temperature_k: float
    energy_pot_ev: float
    energy_tot_ev: float
    forces_sigma_max: float | None


def check_md_settings(ensemble: str, temperature_k: float, steps: int, dt_fs: float, friction: float,
                      pressure_gpa: float, interval: int, uncertainty_interval: int | str
                      ) -> None:
    """Raise :class:`ConfigError` (naming the setting) for a value outside its range.

    Ranges: ``steps >= 1``; ``0 < dt <= MAX_DT_FS`` fs; ``0 <= temperature <=
    MAX_TEMPERATURE_K`` K; ``interval >= 1``; ``uncertainty_interval >= 0`` or ``'auto'``;
    ``0 < friction <= 1`` 1/fs; ``pressure`` finite, GPa.
    """
    check_choice("ensemble", ensemble, ENSEMBLES)
    check_int("steps", steps, low=1)
    check_float("dt", dt_fs, 0.0, MAX_DT_FS, low_open=True)
    check_float("temperature", temperature_k, 0.0, MAX_TEMPERATURE_K)
    check_int("interval", interval, low=1)
    parse_interval(uncertainty_interval)
    check_float("friction", friction, 0.0, 1.0, low_open=True)
    check_float("pressure", pressure_gpa)


def check_relax_settings(fmax: float, steps: int) -> None:
    """Raise :class:`ConfigError` unless ``fmax`` (eV/Angstrom) is finite and > 0 and
    ``steps`` is an integer >= 1."""
    check_float("fmax", fmax, 0.0, low_open=True)
    check_int("steps", steps, low=1)


def _dynamics(atoms: Atoms, ensemble: str, temperature_k: float, dt_fs: float, friction: float,
              pressure_gpa: float, rng: np.random.Generator):
    dt = dt_fs * units.fs
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt)
    if ensemble == "nvt":
        from ase.md.langevin import Langevin

        return Langevin(atoms, timestep=dt, temperature_K=temperature_k,
                        friction=friction / units.fs, fixcm=False, rng=rng)
    from ase.md.langevinbaoab import LangevinBAOAB

    return LangevinBAOAB(atoms, timestep=dt, temperature_K=temperature_k,
                         externalstress=-pressure_gpa * units.GPa,  # stress = -pressure
                         T_tau=1 / friction * units.fs, hydrostatic=True, rng=rng)


def _uncertainty_calculator(atoms: Atoms):
    """The atoms' :class:`ML4MCalculator` if its model has uncertainty, else None."""
    from ml4m.models.calculator import ML4MCalculator

    calc = atoms.calc
    if isinstance(calc, ML4MCalculator) and getattr(calc.model, "has_uncertainty", False):
        return calc
    return None


def run_md(atoms: Atoms, ensemble: str = "nve", temperature_k: float = 300.0, steps: int = 100,
           dt_fs: float = 1.0, friction: float = 0.01, pressure_gpa: float = 0.0,
           trajectory: str | os.PathLike | None = None, interval: int = 10, seed: int = 0,
           initialize: bool = True, uncertainty_interval: int | str = "auto",
           log_interval: int | None = None,
           on_log: Callable[[MDStatus], None] | None = None,
           on_step: Callable[[int], None] | None = None, overwrite: bool = False) -> MDResult:
    """Run MD on ``atoms`` (which carry their calculator).

    Every step is checked (:func:`ml4m.md.safety.check_step`): a run whose energy or
    forces turn non-finite, whose atoms come closer than half their shortest starting
    distance, or whose temperature runs away is stopped with :class:`SimulationError`,
    after the offending frame is appended to the trajectory.

    Parameters
    ----------
    atoms : ase.Atoms
        Structure with a calculator attached; modified in place.
    ensemble : {'nve', 'nvt', 'npt'}
        Velocity Verlet, Langevin, or Langevin-BAOAB with an isotropic barostat.
    temperature_k : float
        Initial (Maxwell-Boltzmann) and thermostat temperature, K; the target of the
        runaway-temperature check.
    steps : int
        MD steps.
    dt_fs : float
        Time step, fs.
    friction : float
        Langevin friction, 1/fs.
    pressure_gpa : float
        External pressure for NPT, GPa.
    trajectory : path, optional
        extxyz file with a frame every ``interval`` steps, appended and flushed as the
        run goes (:class:`~ml4m.md.trajectory.TrajectoryStream`: an existing file is
        replaced only when the run ends or is stopped).
    interval : int
        Sampling interval for the trajectory and the energy record.
    seed : int
        Seed of velocities and thermostat noise.
    initialize : bool
        Draw Maxwell-Boltzmann velocities at ``temperature_k`` first.
    uncertainty_interval : int or 'auto'
        With an :class:`~ml4m.models.ML4MCalculator` whose model has uncertainty: the
        predictive sigmas are computed every this many steps (0: never), or, with
        ``'auto'``, on steps spaced so that they add at most 5% to the wall time
        (:class:`~ml4m.md.sigma_schedule.SigmaSchedule`); the other steps take the
        fast energy-and-forces path. Frames on sigma steps carry ``forces_sigma``
        (eV/Angstrom).
    log_interval : int, optional
        Steps between ``on_log`` calls (default: about 20 per run, a multiple of
        ``interval``).
    on_log : callable, optional
        Called with an :class:`MDStatus` every ``log_interval`` steps (and at step 0).
    on_step : callable, optional
        Called with the step number after every step (a progress bar).
    overwrite : bool, default=False
        Stream over an existing ``TRAJ.partial`` file (an interrupted run's frames);
        without it such a file is refused (ConfigError) before the first step.

    Raises
    ------
    ConfigError
        A setting out of range (:func:`check_md_settings`).
    SimulationError
        The run blew up; the message names the step, what was seen and the trajectory.
    """
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    check_md_settings(ensemble, temperature_k, steps, dt_fs, friction, pressure_gpa, interval,
                      uncertainty_interval)
    if log_interval is None:
        log_interval = interval * max(1, math.ceil(steps / (20 * interval)))
    check_int("log_interval", log_interval, low=1)
    if ensemble == "npt" and not atoms.pbc.all():
        raise ConfigError("NPT needs a fully periodic cell")
    limits = blowup_limits(atoms, temperature_k)
    rng = np.random.default_rng(seed)
    if initialize:
        thermalize_momenta(atoms, temperature_K=temperature_k, rng=rng)
        Stationary(atoms)
    dyn = _dynamics(atoms, ensemble, temperature_k, dt_fs, friction, pressure_gpa, rng)
    calc = _uncertainty_calculator(atoms)
    schedule = SigmaSchedule(uncertainty_interval if calc is not None else 0)
    was_uncertain = calc.uncertainty if calc is not None else False
    stream = TrajectoryStream(trajectory, overwrite) if trajectory is not None else None
    times: list[float] = []
    energies: list[float] = []
    temps: list[float] = []
    sigma = {"last": None, "max": None}

    def frame(step: int, finite: bool = True) -> Atoms:
        arrays = {}
        if finite and "forces_sigma" in atoms.calc.results:
            arrays["forces_sigma"] = atoms.calc.results["forces_sigma"]
        return snapshot(atoms, {"step": step, "time_fs": step * dt_fs}, arrays, with_results=finite)

    clock = {"last": 0.0}

    def observe() -> None:
        step = dyn.nsteps
        now = time.perf_counter()
        schedule.record(step, now - clock["last"], with_sigma=calc is not None and calc.uncertainty)
        check_step(atoms, step, limits)
        if "forces_sigma" in atoms.calc.results:
            s = float(np.max(atoms.calc.results["forces_sigma"]))
            sigma["last"] = s
            sigma["max"] = s if sigma["max"] is None else max(sigma["max"], s)
        if step % interval == 0:
            times.append(step * dt_fs)
            energies.append(atoms.get_total_energy())
            temps.append(atoms.get_temperature())
            if stream is not None:
                stream.write(frame(step))
        if on_log is not None and (step % log_interval == 0 or step == steps):
            e_pot = atoms.get_potential_energy()
            on_log(MDStatus(step, step * dt_fs / 1000.0, atoms.get_temperature(), e_pot,
                            e_pot + atoms.get_kinetic_energy(), sigma["last"]))
        if calc is not None:  # sigma on the next step's evaluation only if it is due
            calc.uncertainty = schedule.due(step + 1)
        if on_step is not None:
            on_step(step)
        clock["last"] = time.perf_counter()  # the next step's time excludes this bookkeeping

    dyn.attach(observe, interval=1)
    if calc is not None:
        calc.uncertainty = schedule.due(0)
        calc.reset()  # step 0's evaluation follows the setting
    t0 = clock["last"] = time.perf_counter()
    try:
        with verlet_reuse():  # lists rebuilt only when atoms moved half the skin
            dyn.run(steps)
    except SimulationError as exc:
        where = ""
        if stream is not None:
            res = atoms.calc.results
            finite = all(np.isfinite(np.asarray(res.get(key, np.nan))).all()
                         for key in ("energy", "forces"))
            try:
                stream.write(frame(dyn.nsteps, finite=finite))
            finally:
                where = f"; trajectory of {stream.n_frames} frames (the last one at the stop) " \
                        f"kept in {stream.close(complete=True)}"
        raise SimulationError(f"MD stopped at {exc}{where}") from None
    except BaseException:
        if stream is not None:
            stream.close(complete=False)
        raise
    finally:
        if calc is not None:
            calc.uncertainty = was_uncertain
    seconds = time.perf_counter() - t0
    path = stream.close(complete=True) if stream is not None else None
    drift = None
    if ensemble == "nve" and len(times) > 2:
        slope = np.polyfit(np.array(times), np.array(energies), 1)[0]  # eV/fs
        drift = float(slope * 1000.0 * 1000.0 / len(atoms))  # meV/atom/ps
    return MDResult(n_atoms=len(atoms), steps=steps, seconds=seconds,
                    atom_steps_per_s=len(atoms) * steps / seconds,
                    temperature_k_mean=float(np.mean(temps)) if temps else float(atoms.get_temperature()),
                    energy_drift_mev_per_atom_per_ps=drift, ensemble=ensemble, dt_fs=dt_fs,
                    forces_sigma_max=sigma["max"],
                    uncertainty_interval=schedule.description if calc is not None else None,
                    n_sigma_evaluations=schedule.n_sigma,
                    trajectory=None if path is None else str(path),
                    n_frames=0 if stream is None else stream.n_frames)


def relax(atoms: Atoms, fmax: float = 0.01, steps: int = 500, cell: bool = False) -> dict[str, Any]:
    """Relax positions (and the cell) with FIRE until max |F| < ``fmax`` (eV/Angstrom).

    Raises
    ------
    ConfigError
        ``fmax`` not finite and positive, ``steps`` < 1, or ``cell`` without a fully
        periodic structure.
    SimulationError
        The energy or forces turned non-finite.

    Returns
    -------
    dict
        ``converged``, ``steps``, ``energy`` (eV), ``fmax`` (eV/Angstrom), ``volume``.
    """
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    check_relax_settings(fmax, steps)
    if cell and not atoms.pbc.all():
        raise ConfigError("--cell needs a fully periodic structure")
    target = FrechetCellFilter(atoms) if cell else atoms
    opt = FIRE(target, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    forces = atoms.get_forces()
    energy = float(atoms.get_potential_energy())
    if not (np.isfinite(energy) and np.isfinite(forces).all()):
        raise SimulationError(f"relaxation stopped after {opt.nsteps} steps: energy or forces not finite")
    return {"converged": converged, "steps": int(opt.nsteps), "energy": energy,
            "fmax": float(np.linalg.norm(forces, axis=1).max()),
            "volume": float(atoms.get_volume()) if atoms.pbc.all() else None}

"""Molecular dynamics and relaxation through ASE with any calculator."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from ase import Atoms, units

from ml4m.errors import ConfigError

__all__ = ["MDResult", "run_md", "relax", "ENSEMBLES"]

ENSEMBLES = ("nve", "nvt", "npt")


@dataclass
class MDResult:
    """Summary of an MD run (the ``ml4m md --json`` object).

    Attributes
    ----------
    n_atoms, steps : int
    seconds : float
        Wall time of the dynamics.
    atom_steps_per_s : float
        ``n_atoms * steps / seconds``.
    temperature_k_mean : float
        Mean kinetic temperature over the run, K.
    energy_drift_mev_per_atom_per_ps : float or None
        Slope of the total energy (NVE only), meV/atom/ps.
    """

    n_atoms: int
    steps: int
    seconds: float
    atom_steps_per_s: float
    temperature_k_mean: float
    energy_drift_mev_per_atom_per_ps: float | None
    ensemble: str
    dt_fs: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_md(atoms: Atoms, ensemble: str = "nve", temperature_k: float = 300.0, steps: int = 100,
           dt_fs: float = 1.0, friction: float = 0.01, pressure_gpa: float = 0.0,
           trajectory: str | os.PathLike | None = None, interval: int = 10, seed: int = 0,
           initialize: bool = True) -> MDResult:
    """Run MD on ``atoms`` (which carry their calculator).

    Parameters
    ----------
    atoms : ase.Atoms
        Structure with a calculator attached; modified in place.
    ensemble : {'nve', 'nvt', 'npt'}
        Velocity Verlet, Langevin, or Langevin-BAOAB with an isotropic barostat.
    temperature_k : float
        Initial (Maxwell-Boltzmann) and thermostat temperature, K.
    steps : int
        MD steps.
    dt_fs : float
        Time step, fs.
    friction : float
        Langevin friction, 1/fs.
    pressure_gpa : float
        External pressure for NPT, GPa.
    trajectory : path, optional
        extxyz written (atomically) with a frame every ``interval`` steps.
    interval : int
        Sampling interval for the trajectory and the energy log.
    seed : int
        Seed of velocities and thermostat noise.
    initialize : bool
        Draw Maxwell-Boltzmann velocities at ``temperature_k`` first.
    """
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    if ensemble not in ENSEMBLES:
        raise ConfigError(f"ensemble must be one of {list(ENSEMBLES)}, got {ensemble!r}")
    if steps < 1 or dt_fs <= 0 or temperature_k < 0 or interval < 1:
        raise ConfigError(f"need steps >= 1, dt > 0, temperature >= 0, interval >= 1; got "
                          f"steps={steps}, dt={dt_fs}, T={temperature_k}, interval={interval}")
    if ensemble == "npt" and not atoms.pbc.all():
        raise ConfigError("NPT needs a fully periodic cell")
    rng = np.random.default_rng(seed)
    if initialize:
        thermalize_momenta(atoms, temperature_K=temperature_k, rng=rng)
        Stationary(atoms)
    dt = dt_fs * units.fs
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        dyn = VelocityVerlet(atoms, timestep=dt)
    elif ensemble == "nvt":
        from ase.md.langevin import Langevin

        dyn = Langevin(atoms, timestep=dt, temperature_K=temperature_k,
                       friction=friction / units.fs, fixcm=False, rng=rng)
    else:
        from ase.md.langevinbaoab import LangevinBAOAB

        dyn = LangevinBAOAB(atoms, timestep=dt, temperature_K=temperature_k,
                            externalstress=-pressure_gpa * units.GPa,  # stress = -pressure
                            T_tau=1 / friction * units.fs, hydrostatic=True, rng=rng)
    times, energies, temps, frames = [], [], [], []

    def record() -> None:
        times.append(dyn.get_time() / units.fs)
        energies.append(atoms.get_total_energy())
        temps.append(atoms.get_temperature())
        if trajectory is not None:
            snap = atoms.copy()
            from ase.calculators.singlepoint import SinglePointCalculator

            snap.calc = SinglePointCalculator(snap, energy=atoms.get_potential_energy(),
                                              forces=atoms.get_forces())
            frames.append(snap)

    dyn.attach(record, interval=interval)
    t0 = time.perf_counter()
    dyn.run(steps)
    seconds = time.perf_counter() - t0
    drift = None
    if ensemble == "nve" and len(times) > 2:
        slope = np.polyfit(np.array(times), np.array(energies), 1)[0]  # eV/fs
        drift = float(slope * 1000.0 * 1000.0 / len(atoms))  # meV/atom/ps
    if trajectory is not None:
        import ase.io

        from ml4m._fileio import atomic_path

        with atomic_path(trajectory) as tmp:
            ase.io.write(tmp, frames, format="extxyz")
    return MDResult(n_atoms=len(atoms), steps=steps, seconds=seconds,
                    atom_steps_per_s=len(atoms) * steps / seconds,
                    temperature_k_mean=float(np.mean(temps)) if temps else float(atoms.get_temperature()),
                    energy_drift_mev_per_atom_per_ps=drift, ensemble=ensemble, dt_fs=dt_fs)


def relax(atoms: Atoms, fmax: float = 0.01, steps: int = 500, cell: bool = False) -> dict[str, Any]:
    """Relax positions (and the cell) with FIRE until max |F| < ``fmax`` (eV/Angstrom).

    Returns
    -------
    dict
        ``converged``, ``steps``, ``energy`` (eV), ``fmax`` (eV/Angstrom), ``volume``.
    """
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    if cell and not atoms.pbc.all():
        raise ConfigError("--cell needs a fully periodic structure")
    target = FrechetCellFilter(atoms) if cell else atoms
    opt = FIRE(target, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    forces = atoms.get_forces()
    return {"converged": converged, "steps": int(opt.nsteps), "energy": float(atoms.get_potential_energy()),
            "fmax": float(np.linalg.norm(forces, axis=1).max()),
            "volume": float(atoms.get_volume()) if atoms.pbc.all() else None}

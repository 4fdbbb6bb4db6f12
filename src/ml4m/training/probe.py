"""A short MD run that tells whether a fitted potential keeps a structure physical.

The basis search's last criterion: a basis that fits the CV folds can still drive atoms
where the training data never went (stretched bonds, atoms pressed together) and blow
up within picoseconds. :func:`md_probe` runs Langevin dynamics (ASE's integrator, the
model as its calculator) from a training structure and stops at the first step that
breaks :class:`ml4m.data.stability.StabilityCheck`'s criteria or gives non-finite forces.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ml4m.data.frames import Frame
from ml4m.data.neighbors import verlet_reuse
from ml4m.data.stability import StabilityCheck

__all__ = ["ProbeResult", "md_probe", "probe_temperature"]

#: the probe runs at this multiple of the training data's highest temperature: MD is
#: run hotter than the data were sampled at, and a basis that is wild just beyond the
#: data fails there first
PROBE_TEMPERATURE_FACTOR = 2.0
#: temperature of the data when no frame gives one (``info['T_K']``), K
DEFAULT_DATA_TEMPERATURE_K = 300.0


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of :func:`md_probe`.

    Attributes
    ----------
    stable : bool
        No criterion broken over the whole run.
    steps : int
        Steps run (the failing step when unstable).
    time_ps : float
        Simulated time reached, ps.
    detail : str
        What failed (empty when stable).
    seconds : float
        Wall time, s.
    """

    stable: bool
    steps: int
    time_ps: float
    detail: str
    seconds: float

    def as_dict(self) -> dict:
        return {"stable": self.stable, "steps": self.steps, "time_ps": self.time_ps,
                "detail": self.detail, "seconds": self.seconds}


def probe_temperature(frames: list[Frame]) -> float:
    """``PROBE_TEMPERATURE_FACTOR`` times the highest ``info['T_K']`` of ``frames``
    (``DEFAULT_DATA_TEMPERATURE_K`` when none gives one), K."""
    temps = [float(f.info["T_K"]) for f in frames
             if isinstance(f.info.get("T_K"), (int, float, np.number)) and f.info["T_K"] > 0]
    return PROBE_TEMPERATURE_FACTOR * (max(temps) if temps else DEFAULT_DATA_TEMPERATURE_K)


def md_probe(model, start: Frame, shortest: dict[str, float], temperature_k: float, steps: int,
             dt_fs: float = 0.5, friction: float = 0.01, seed: int = 0,
             check_every: int = 5) -> ProbeResult:
    """Langevin NVT of ``start`` under ``model`` until a stability criterion breaks.

    Parameters
    ----------
    model : Potential
        A fitted potential (its ASE calculator drives the dynamics).
    start : Frame
        The starting structure (velocities drawn from Maxwell-Boltzmann at
        ``temperature_k``; centre-of-mass motion and, for molecules, rotation removed).
    shortest : dict
        Shortest training distance per element pair, Angstrom
        (:func:`ml4m.data.shortest_distances`).
    temperature_k : float
        Thermostat temperature, K.
    steps : int
        Steps to run.
    dt_fs : float, default=0.5
        Time step, fs.
    friction : float, default=0.01
        Langevin friction, 1/fs.
    seed : int, default=0
        Seed of the initial velocities and the thermostat's noise.
    check_every : int, default=5
        Steps between stability checks (and the last step).

    Returns
    -------
    ProbeResult
    """
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

    atoms = start.to_atoms(with_labels=False)
    atoms.calc = model.as_calculator()
    check = StabilityCheck(atoms, shortest)
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature_K=temperature_k, rng=rng)
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)
    atoms.set_constraint(FixCom())
    dyn = Langevin(atoms, dt_fs * units.fs, temperature_K=temperature_k,
                   friction=friction / units.fs, rng=rng, fixcm=False)
    t0 = time.perf_counter()
    done, detail = 0, ""
    with verlet_reuse():  # lists rebuilt only when atoms moved half the skin
        while done < steps:
            n = min(check_every, steps - done)
            try:
                dyn.run(n)
            except (FloatingPointError, ValueError) as exc:  # e.g. a search on NaNs
                detail = f"non-finite dynamics: {exc}"
                break
            done += n
            forces = atoms.get_forces()
            if not np.all(np.isfinite(forces)) or not np.all(np.isfinite(atoms.positions)):
                detail = "non-finite forces or positions"
                break
            bad = check(atoms)
            if bad is not None:
                detail = str(bad)
                break
    return ProbeResult(stable=not detail, steps=done, time_ps=done * dt_fs / 1000.0,
                       detail=detail, seconds=time.perf_counter() - t0)

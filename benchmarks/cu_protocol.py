"""The structures and reference MD of the Cu active-learning protocol, with ASE and NumPy
only, so that ``benchmarks/active_learning.py`` (ml4m's venv) and
``benchmarks/flare_otf.py`` (FLARE's venv, without ml4m) build the same numbers: the
crystal and liquid starts, Langevin MD with a ramped target, and its labelled frames.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary

try:
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # ASE before 3.25 (FLARE's venv): the same draws under the older name
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    def thermalize_momenta(atoms: Atoms, temperature_K: float, rng) -> None:
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)

#: fcc lattice constant of the crystal walker and of the liquid's cell, Angstrom
LATTICE = 3.65
LIQUID_LATTICE = 3.80
#: time step (fs) and Langevin friction (1/fs) of the Cu protocol
DT_FS = 2.0
FRICTION = 0.02

__all__ = ["DT_FS", "FRICTION", "LATTICE", "LIQUID_LATTICE", "emt_md", "langevin_frames",
           "liquid", "solid", "thermalize_momenta"]


def langevin_frames(start: Atoms, calculator, t0: float, t1: float, steps: int, seed: int,
                    every: int, dt_fs: float = DT_FS, friction: float = FRICTION) -> list[Atoms]:
    """Langevin MD on ``calculator`` (time step ``dt_fs`` fs, friction 1/fs), the target
    ramped linearly t0 -> t1 (K) over ``steps``; every ``every`` steps a copy of the
    structure whose ``info`` holds ``energy`` (eV), ``forces`` (eV/A), ``stress`` (eV/A^3,
    None without a periodic cell), ``step`` and ``T_target`` (K). Velocities and noise
    come from ``numpy.random.default_rng(seed)``."""
    atoms = start.copy()
    atoms.calc = calculator
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature_K=t0, rng=rng)
    Stationary(atoms)
    dyn = Langevin(atoms, dt_fs * units.fs, temperature_K=t0, friction=friction / units.fs,
                   fixcm=False, rng=rng)
    frames = []
    for step in range(1, steps + 1):
        target = t0 + (t1 - t0) * step / steps
        dyn.set_temperature(temperature_K=target)
        dyn.step()
        if step % every == 0:
            frame = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell[:], pbc=atoms.pbc)
            frame.info.update(energy=atoms.get_potential_energy(), forces=atoms.get_forces(),
                              stress=atoms.get_stress() if atoms.pbc.all() else None,
                              step=step, T_target=target)
            frames.append(frame)
    return frames


def emt_md(start: Atoms, t0: float, t1: float, steps: int, seed: int, every: int) -> list[Atoms]:
    """EMT Langevin MD of the protocol (2 fs, 0.02/fs): :func:`langevin_frames`."""
    return langevin_frames(start, EMT(), t0, t1, steps, seed, every)


def solid() -> Atoms:
    """The crystal walker's start: 32 Cu atoms, fcc, a = :data:`LATTICE`."""
    return bulk("Cu", cubic=True, a=LATTICE).repeat(2)


def liquid() -> Atoms:
    """32 Cu atoms at liquid density (a = 3.80 A) melted by EMT at 3000 K (1.2 ps), then
    0.4 ps at 1500 K (in a pilot run they kept diffusing at 1500 K: RMS displacement 0.7 ->
    1.6 A over 3 ps; at a = 3.65 and 3.75 the cell recrystallised or stayed glassy)."""
    start = bulk("Cu", cubic=True, a=LIQUID_LATTICE).repeat(2)
    melt = emt_md(start, 3000.0, 3000.0, 600, seed=7, every=600)[-1]
    cool = emt_md(melt, 1500.0, 1500.0, 200, seed=8, every=200)[-1]
    return Atoms(cool.numbers, cool.positions, cell=cool.cell[:], pbc=cool.pbc)

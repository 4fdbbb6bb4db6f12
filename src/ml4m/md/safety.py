"""When an MD run has blown up: non-finite results, atoms too close, runaway temperature.

A run is stopped (:class:`~ml4m.errors.SimulationError`) when, after any step,

* the potential energy or a force is not finite;
* two atoms are closer than ``CLOSE_FRACTION`` (0.5) of the shortest distance of their
  element pair in the starting structure (pairs absent there: of the shortest distance of
  any pair; a structure without neighbours within ``REFERENCE_CUTOFF``:
  :data:`ml4m.data.validate.MIN_DISTANCE`). No potential is trained on such contacts;
* the kinetic temperature exceeds ``TEMPERATURE_FACTOR`` (10) times the target plus
  ``TEMPERATURE_MARGIN`` (1,000 K): a thermostat or an energy-conserving integrator
  cannot get there from a sound start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms

from ml4m.errors import SimulationError

__all__ = ["BlowUpLimits", "blowup_limits", "check_step", "CLOSE_FRACTION", "TEMPERATURE_FACTOR",
           "TEMPERATURE_MARGIN"]

#: fraction of a pair's shortest starting distance below which a run is stopped
CLOSE_FRACTION = 0.5
#: a run is stopped above TEMPERATURE_FACTOR * target + TEMPERATURE_MARGIN, K
TEMPERATURE_FACTOR = 10.0
TEMPERATURE_MARGIN = 1000.0
#: how far the starting structure is searched for each pair's shortest distance, Angstrom
REFERENCE_CUTOFF = 6.0


@dataclass(frozen=True)
class BlowUpLimits:
    """Limits a healthy run stays within.

    Attributes
    ----------
    min_distance : ndarray of shape (119, 119)
        Closest allowed distance of each pair of atomic numbers, Angstrom (symmetric).
    reference : dict
        ``{"Cu-Cu": 2.55, ...}``: the starting structure's shortest distances, Angstrom.
    max_temperature_k : float
        Highest allowed kinetic temperature, K.
    fraction : float
        The fraction of the starting distances ``min_distance`` holds.
    """

    min_distance: np.ndarray
    reference: dict[str, float]
    max_temperature_k: float
    fraction: float = CLOSE_FRACTION

    @property
    def cutoff(self) -> float:
        """Largest closest-allowed distance, Angstrom (the neighbour search radius)."""
        return float(self.min_distance.max())


def blowup_limits(atoms: Atoms, target_temperature_k: float,
                  fraction: float = CLOSE_FRACTION) -> BlowUpLimits:
    """The limits of a run started from ``atoms`` at ``target_temperature_k`` (K)."""
    from ase.data import atomic_numbers

    from ml4m.data import shortest_distances
    from ml4m.data.validate import MIN_DISTANCE

    reference = shortest_distances([atoms], cutoff=REFERENCE_CUTOFF)
    floor = fraction * min(reference.values()) if reference else MIN_DISTANCE
    table = np.full((119, 119), floor)
    for pair, d in reference.items():
        a, b = (atomic_numbers[s] for s in pair.split("-"))
        table[a, b] = table[b, a] = fraction * d
    return BlowUpLimits(table, reference,
                        TEMPERATURE_FACTOR * target_temperature_k + TEMPERATURE_MARGIN, fraction)


def check_step(atoms: Atoms, step: int, limits: BlowUpLimits) -> None:
    """Raise :class:`SimulationError` if the state after ``step`` breaks ``limits``.

    ``atoms`` carries a calculator with results for its current positions.
    """
    from ase.data import chemical_symbols

    from ml4m.data import neighbor_list

    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    if not np.isfinite(energy) or not np.isfinite(forces).all():
        bad = "energy" if not np.isfinite(energy) else "forces"
        raise SimulationError(f"step {step}: the potential {bad} is not finite")
    temperature = atoms.get_temperature()
    if not temperature <= limits.max_temperature_k:
        raise SimulationError(
            f"step {step}: temperature {temperature:.0f} K is above {limits.max_temperature_k:.0f} K "
            f"({TEMPERATURE_FACTOR:g} x target + {TEMPERATURE_MARGIN:g} K)")
    if not np.isfinite(atoms.positions).all():
        raise SimulationError(f"step {step}: positions are not finite")
    nl = neighbor_list(atoms, limits.cutoff, full_list=False)
    if not len(nl):
        return
    z = atoms.numbers
    allowed = limits.min_distance[z[nl.i], z[nl.j]]
    close = np.flatnonzero(nl.distances < allowed)
    if len(close):
        k = close[np.argmin(nl.distances[close] / allowed[close])]
        i, j = int(nl.i[k]), int(nl.j[k])
        a, b = sorted((int(z[i]), int(z[j])))
        pair = f"{chemical_symbols[a]}-{chemical_symbols[b]}"
        start = limits.reference.get(pair)
        basis = (f"{limits.fraction:g} x the shortest {pair} distance at the start, {start:.2f} A"
                 if start is not None else "the closest-contact limit")
        raise SimulationError(
            f"step {step}: atoms {i} ({atoms[i].symbol}) and {j} ({atoms[j].symbol}) are "
            f"{nl.distances[k]:.2f} A apart, closer than {allowed[k]:.2f} A ({basis})")

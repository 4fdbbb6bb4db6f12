"""The search's MD probe: a physical potential passes, a collapsing or a non-finite one
fails at once with the reason; the probe temperature follows the data."""

from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from ml4m.data import default_dataset, shortest_distances
from ml4m.data.frames import Frame
from ml4m.training.probe import PROBE_TEMPERATURE_FACTOR, md_probe, probe_temperature


class _Pull(Calculator):
    """Every atom pulled to the centre of mass by a spring of ``k`` eV/A^2 (or NaN)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        d = self.atoms.positions - self.atoms.positions.mean(axis=0)
        self.results = {"energy": 0.5 * self.k * float(np.sum(d**2)), "forces": -self.k * d}


class _Model:
    def __init__(self, calc) -> None:
        self.calc = calc

    def as_calculator(self):
        return self.calc


@pytest.fixture(scope="module")
def cu():
    frames = list(default_dataset())
    return frames[0], shortest_distances(frames)


def test_a_physical_potential_stays_stable(cu):
    start, shortest = cu
    res = md_probe(_Model(EMT()), start, shortest, temperature_k=600.0, steps=200)
    assert res.stable and res.steps == 200 and res.detail == ""
    assert res.time_ps == pytest.approx(0.1)


def test_a_collapsing_potential_fails_with_the_contact_named(cu):
    _, shortest = cu
    molecule = Frame(numbers=np.array([29] * 4),
                     positions=np.array([[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5]], float),
                     cell=np.zeros((3, 3)), pbc=np.zeros(3, bool))
    res = md_probe(_Model(_Pull(50.0)), molecule, shortest, temperature_k=300.0, steps=2000)
    assert not res.stable and res.steps < 2000
    assert "too close" in res.detail
    nan = md_probe(_Model(_Pull(np.nan)), molecule, shortest, temperature_k=300.0, steps=50)
    assert not nan.stable and "non-finite" in nan.detail and nan.steps <= 5


def test_probe_temperature_is_a_multiple_of_the_hottest_frame(cu):
    start, _ = cu
    hot = [Frame(**{**start.__dict__, "info": {"T_K": t}}) for t in (300, 900)]
    assert probe_temperature(hot) == PROBE_TEMPERATURE_FACTOR * 900
    bare = [Frame(**{**start.__dict__, "info": {}})]
    assert probe_temperature(bare) == PROBE_TEMPERATURE_FACTOR * 300

"""MD that knows when it failed, computes sigma only when due, and a calculator contract."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT
from ase.md.velocitydistribution import thermalize_momenta

from ml4m.data import default_dataset
from ml4m.descriptors import make_descriptor
from ml4m.errors import ConfigError, SimulationError
from ml4m.md import ML4MCalculator, run_md
from ml4m.md.safety import blowup_limits, check_step
from ml4m.models.linear import LinearACE


@pytest.fixture(scope="module")
def ace():
    """A small linear ACE model with calibrated uncertainty (fitted in ~0.5 s)."""
    descriptor = make_descriptor("ace", species=[29], r_cut=4.0, n_max=4, l_max=2, correlation_order=3)
    return LinearACE(descriptor).fit(default_dataset()[::8])


def _cu(n=2):
    atoms = bulk("Cu", cubic=True, a=3.6).repeat(n)
    atoms.calc = EMT()
    return atoms


class _NaNAfter(EMT):
    """EMT whose energy turns NaN after ``n`` evaluations."""

    def __init__(self, n):
        super().__init__()
        self.n, self.calls = n, 0

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        if self.calls > self.n:
            self.results["energy"] = np.nan


def test_nonfinite_energy_stops_and_keeps_frames(tmp_path):
    atoms = _cu()
    atoms.calc = _NaNAfter(25)
    traj = tmp_path / "md.extxyz"
    with pytest.raises(SimulationError, match=r"step 25: the potential energy is not finite.*md.extxyz"):
        run_md(atoms, steps=100, interval=5, trajectory=traj)
    frames = ase.io.read(traj, ":")
    assert [f.info["step"] for f in frames] == [0, 5, 10, 15, 20, 25]  # the stop frame last
    assert np.isfinite(frames[-2].get_potential_energy()) and frames[-1].calc is None


def test_close_contact_and_hot_limits():
    atoms = _cu()
    limits = blowup_limits(atoms, 300.0)
    assert limits.reference["Cu-Cu"] == pytest.approx(3.6 / np.sqrt(2))
    assert limits.max_temperature_k == 10 * 300 + 1000
    atoms.get_forces()
    check_step(atoms, 0, limits)  # the start itself is fine
    close = atoms.copy()
    close.calc = EMT()
    close.positions[1] = close.positions[0] + [0.9, 0.0, 0.0]
    with pytest.raises(SimulationError, match=r"atoms 0 \(Cu\) and 1 \(Cu\) are 0.90 A apart, closer "
                                              r"than 1.27 A \(0.5 x the shortest Cu-Cu"):
        check_step(close, 7, limits)
    hot = atoms.copy()
    hot.calc = EMT()
    thermalize_momenta(hot, temperature_K=300, rng=np.random.default_rng(0))
    hot.set_momenta(hot.get_momenta() * np.sqrt(6000 / hot.get_temperature()))  # exactly 6000 K
    with pytest.raises(SimulationError, match=r"step 3: temperature 6000 K is above 4000 K"):
        check_step(hot, 3, limits)


class _Counting:
    """Counts a model's predict calls with and without uncertainty."""

    def __init__(self, model, monkeypatch):
        self.calls = {True: 0, False: 0}
        predict = model.predict

        def counted(frames, uncertainty=False):
            self.calls[bool(uncertainty)] += 1
            return predict(frames, uncertainty=uncertainty)

        monkeypatch.setattr(model, "predict", counted)


@pytest.mark.parametrize("k,sigma_steps", [(10, [0, 10, 20, 30]), (0, [])])
def test_sigma_only_every_k_steps(ace, monkeypatch, tmp_path, k, sigma_steps):
    count = _Counting(ace, monkeypatch)
    atoms = _cu()
    atoms.calc = ace.as_calculator()
    traj = tmp_path / "md.extxyz"
    result = run_md(atoms, steps=30, interval=5, uncertainty_interval=k, trajectory=traj)
    assert count.calls[True] == len(sigma_steps)
    assert count.calls[True] + count.calls[False] == 31  # one evaluation per step, step 0 included
    with_sigma = [f.info["step"] for f in ase.io.read(traj, ":") if "forces_sigma" in f.arrays]
    assert with_sigma == sigma_steps
    assert (result.forces_sigma_max is not None) == bool(sigma_steps)
    assert atoms.calc.uncertainty is False  # the calculator's own setting is restored


def test_auto_sigma_steps_are_the_schedules(ace, monkeypatch, tmp_path):
    """'auto' (the default) computes sigma at step 0, then on the steps its schedule picks;
    the frames and the result say which."""
    count = _Counting(ace, monkeypatch)
    atoms = _cu()
    atoms.calc = ace.as_calculator()
    traj = tmp_path / "md.extxyz"
    result = run_md(atoms, steps=40, interval=1, trajectory=traj)
    with_sigma = [f.info["step"] for f in ase.io.read(traj, ":") if "forces_sigma" in f.arrays]
    from ml4m.md.sigma_schedule import TIMED_PLAIN_STEPS

    # step 0, then none before the plain steps are timed (no provisional sigma step)
    assert with_sigma[0] == 0 and all(s > TIMED_PLAIN_STEPS for s in with_sigma[1:])
    assert result.n_sigma_evaluations == count.calls[True] == len(with_sigma)
    assert count.calls[True] + count.calls[False] == 41
    assert str(result.uncertainty_interval).startswith("auto")


def test_calculator_uncertainty_off_unless_asked(ace, monkeypatch):
    count = _Counting(ace, monkeypatch)
    for calc in (ace.as_calculator(), ML4MCalculator(ace)):
        atoms = _cu()
        atoms.calc = calc
        atoms.get_forces()
        assert "forces_sigma" not in calc.results
        sigma = calc.get_property("forces_sigma", atoms)  # asked by name: computed
        assert sigma.shape == (len(atoms), 3) and (sigma > 0).all()
    assert count.calls == {False: 2, True: 2}
    atoms = _cu()
    atoms.calc = ace.as_calculator(uncertainty=True)
    atoms.get_forces()
    assert "forces_sigma" in atoms.calc.results


def test_calculator_refuses_a_property_model():
    from ml4m.models.kernel import PropertyModel

    model = PropertyModel(make_descriptor("soap", species=[29], r_cut=3.0, n_max=2, l_max=2))
    with pytest.raises(ConfigError, match="not an interatomic potential"):
        ML4MCalculator(model)


@pytest.mark.parametrize("kwargs,key", [
    ({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"), ({"dt_fs": 0.0}, "dt"),
    ({"dt_fs": float("nan")}, "dt"), ({"dt_fs": 100.0}, "dt"), ({"temperature_k": -1.0}, "temperature"),
    ({"temperature_k": float("inf")}, "temperature"), ({"interval": 0}, "interval"),
    ({"uncertainty_interval": -1}, "uncertainty_interval"), ({"friction": 0.0}, "friction"),
    ({"friction": float("nan")}, "friction"), ({"pressure_gpa": float("inf")}, "pressure"),
    ({"log_interval": 0}, "log_interval"),
])
def test_settings_out_of_range(kwargs, key):
    with pytest.raises(ConfigError, match=f"^{key} must be"):
        run_md(_cu(), **kwargs)

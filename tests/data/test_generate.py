"""Reference-data generation: labels equal the calculator's, metadata, resume after a kill."""

from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.emt import EMT

import ml4m.data.generation as gen
from ml4m.data import GenerateConfig, default_dataset_path, generate, plan_tasks, read_dataset
from ml4m.data.default import DEFAULT_GENERATE_SETTINGS
from ml4m.errors import ConfigError

TINY = dict(system="Cu", supercells=[1], temperatures=[300.0, 900.0], trajectories=1,
            frames_per_trajectory=2, sample_every=3, equilibration_steps=2, n_strained=1,
            vacancies=True, surface=False, seed=5)


def test_generate_labels_and_info(tmp_path):
    out = tmp_path / "cu.extxyz"
    result = generate(GenerateConfig(**TINY), out, progress=False)
    ds = read_dataset(out, require=("energy", "forces", "stress"))
    assert len(ds) == result["n_frames"] == len(plan_tasks(GenerateConfig(**TINY))) * 2
    types = set(ds.info_values("config_type"))
    assert types == {"bulk_300K", "bulk_900K", "strained3pct_300K", "vacancy_300K", "vacancy_900K"}
    for frame in ds[[0, len(ds) - 1]]:
        atoms = frame.to_atoms(with_labels=False)
        atoms.calc = EMT()
        assert frame.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(frame.forces, atoms.get_forces(), atol=1e-6)
        assert {"T_K", "traj", "t_fs"} <= set(frame.info)
    assert 3.55 < result["lattice_constant_a"] < 3.62  # EMT Cu is 3.59 A


def test_alloy_cells_start_near_zero_pressure_at_every_composition(tmp_path):
    """Alloys take a lattice constant for their composition (Vegard's law on the atomic
    volumes): cold cells of Au-poor and Au-rich Cu-Au sit near zero pressure, where the
    host's lattice constant would press Cu(0.25)Au(0.75) by about 9% (about 100 GPa)."""
    from ase.units import GPa

    cfg = GenerateConfig(system="Cu-Au", alloy_fractions=[0.25, 0.75], supercells=[2],
                         temperatures=[1.0], trajectories=1, frames_per_trajectory=1,
                         sample_every=1, equilibration_steps=0, n_strained=0, vacancies=False,
                         surface=False, seed=3)
    result = generate(cfg, tmp_path / "cuau.extxyz", progress=False)
    ds = read_dataset(tmp_path / "cuau.extxyz", require=("stress",))
    a = result["alloy_lattice_constants"]
    assert result["lattice_constant_a"] < a["0.25"] < a["0.75"] < 4.1  # EMT Au is 4.06 A
    for frame in ds:
        x_au = np.mean(frame.numbers == 79)
        pressure = -np.mean(frame.stress[:3]) / GPa
        assert abs(pressure) < 5.0, (x_au, pressure)
    assert {round(float(np.mean(f.numbers == 79)), 2) for f in ds} == {0.25, 0.75}


def _killed_at(call: int, real):
    """``real`` (a trajectory task), killed (KeyboardInterrupt) on its ``call``-th call."""
    calls = {"n": 0}

    def task(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    return task


def test_resume_after_kill_gives_identical_file(tmp_path, monkeypatch):
    ref = tmp_path / "ref.extxyz"
    generate(GenerateConfig(**TINY), ref, progress=False)
    out = tmp_path / "resumed.extxyz"
    real = gen._run_task
    monkeypatch.setattr(gen, "_run_task", _killed_at(3, real))
    with pytest.raises(KeyboardInterrupt):
        generate(GenerateConfig(**TINY), out, progress=False)
    assert not out.exists()  # nothing partial where the output should be
    monkeypatch.setattr(gen, "_run_task", real)
    result = generate(GenerateConfig(**TINY), out, progress=False)
    assert result["resumed_trajectories"] == 2
    assert out.read_text() == ref.read_text()


def test_resume_refuses_parts_built_on_other_cells(tmp_path, monkeypatch):
    """A killed run's finished trajectories join only a run that builds the same cells:
    with other lattice constants (another calculator version, or an ml4m that sized
    alloys otherwise) the same settings are refused, and --overwrite (restart) starts
    afresh, giving the file of an uninterrupted run."""
    ref = tmp_path / "ref.extxyz"
    generate(GenerateConfig(**TINY), ref, progress=False)
    out = tmp_path / "out.extxyz"
    real_task, real_lattice = gen._run_task, gen._lattice_constants
    monkeypatch.setattr(gen, "_run_task", _killed_at(2, real_task))
    # the killed run's cells 1% larger than the calculator's
    monkeypatch.setattr(gen, "_lattice_constants",
                        lambda cfg, calc, a: {x: 1.01 * v for x, v in real_lattice(cfg, calc, a).items()})
    with pytest.raises(KeyboardInterrupt):
        generate(GenerateConfig(**TINY), out, progress=False)
    monkeypatch.setattr(gen, "_run_task", real_task)
    monkeypatch.setattr(gen, "_lattice_constants", real_lattice)
    with pytest.raises(ConfigError, match="1 finished trajectories of an interrupted run with other"):
        generate(GenerateConfig(**TINY), out, progress=False)
    assert not out.exists()
    result = generate(GenerateConfig(**TINY), out, progress=False, restart=True)
    assert result["resumed_trajectories"] == 0
    assert out.read_text() == ref.read_text()


@pytest.mark.parametrize("override,match", [
    ({"system": "Qq"}, "unknown element 'Qq'"),
    ({"supercells": [0]}, "supercells"),
    ({"temperatures": [-5.0]}, "temperatures"),
    ({"frames_per_trajectory": 0}, "frames_per_trajectory"),
])
def test_bad_settings(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        generate(GenerateConfig(**{**TINY, **override}), tmp_path / "x.extxyz", progress=False)


def test_unknown_calculator():
    with pytest.raises(ConfigError, match="cannot import calculator"):
        gen.make_calculator("nonexistent.module:Calc")


def test_short_names_carry_defaults_that_settings_override():
    """``xtb`` is GFN2-xTB by default; a config's own settings win over the defaults."""
    pytest.importorskip("tblite.ase", reason="the optional extra ml4m[xtb] is not installed")
    from ase.build import molecule

    calc = gen.make_calculator("xtb")
    assert calc.parameters["method"] == "GFN2-xTB"
    assert gen.make_calculator("gfn2", {"method": "GFN1-xTB"}).parameters["method"] == "GFN1-xTB"
    water = molecule("H2O")
    water.calc = calc
    f = water.get_forces()
    assert np.isfinite(water.get_potential_energy()) and abs(f.sum(axis=0)).max() < 1e-6


def test_xtb_without_tblite_names_the_extra(monkeypatch):
    import sys

    for name in ("tblite", "tblite.ase"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"ml4m\[xtb\]"):
        gen.make_calculator("xtb")


def test_embedded_data_matches_its_recipe():
    """The shipped file was made by the generator with DEFAULT_GENERATE_SETTINGS."""
    ds = read_dataset(default_dataset_path(), require=("energy", "forces"))
    cfg = GenerateConfig(**DEFAULT_GENERATE_SETTINGS)
    tasks = plan_tasks(cfg)
    assert len(ds) == len(tasks) * cfg.frames_per_trajectory
    assert list(dict.fromkeys(ds.info_values("traj"))) == [t.traj for t in tasks]
    for frame in ds[[0, 100]]:  # labels are EMT's
        atoms = frame.to_atoms(with_labels=False)
        atoms.calc = EMT()
        assert frame.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-6)

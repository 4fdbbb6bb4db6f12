"""MD and relaxation through ASE: conservation, thermostat, JSON keys, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write

from ml4m.cli.main import main
from ml4m.errors import ConfigError
from ml4m.md import relax, run_md


def _cu(n=2, rattle=0.0):
    atoms = bulk("Cu", cubic=True, a=3.6).repeat(n)
    if rattle:
        atoms.rattle(rattle, seed=3)
    atoms.calc = EMT()
    return atoms


def test_nve_conserves_energy():
    result = run_md(_cu(), "nve", temperature_k=300, steps=200, dt_fs=1.0, interval=5)
    assert abs(result.energy_drift_mev_per_atom_per_ps) < 0.5
    assert result.atom_steps_per_s > 0 and result.n_atoms == 32


def test_nvt_reaches_target_temperature():
    result = run_md(_cu(), "nvt", temperature_k=800, steps=600, dt_fs=2.0, friction=0.05, interval=5)
    assert result.temperature_k_mean == pytest.approx(800, rel=0.2)
    assert result.energy_drift_mev_per_atom_per_ps is None


def test_npt_changes_volume_under_pressure():
    atoms = _cu()
    v0 = atoms.get_volume()
    run_md(atoms, "npt", temperature_k=100, steps=300, dt_fs=2.0, friction=0.05, pressure_gpa=20.0)
    assert atoms.get_volume() < 0.99 * v0


def test_relax_vacancy_cell():
    atoms = _cu(rattle=0.05)
    del atoms[0]
    result = relax(atoms, fmax=0.01, cell=True)
    assert result["converged"] and result["fmax"] < 0.01


@pytest.mark.parametrize("kwargs,match", [({"ensemble": "nph"}, "ensemble must be"),
                                          ({"steps": 0}, r"steps must be an integer in \[1, inf\]")])
def test_bad_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        run_md(_cu(), **kwargs)


def test_cli_md_json_and_trajectory(tmp_path, capsys):
    write(tmp_path / "start.extxyz", _cu())
    code = main(["md", "emt", str(tmp_path / "start.extxyz"), "--steps", "40", "--dt", "1",
                 "--interval", "10", "-o", str(tmp_path / "traj.extxyz"), "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("n_atoms", "steps", "seconds", "atom_steps_per_s", "temperature_k_mean",
                "energy_drift_mev_per_atom_per_ps"):
        assert key in out
    import ase.io

    frames = ase.io.read(tmp_path / "traj.extxyz", ":")
    assert len(frames) == 5  # steps 0, 10, 20, 30, 40
    assert np.isfinite(frames[-1].get_potential_energy())


def test_cli_md_bad_structure_exit_2(tmp_path, capsys):
    (tmp_path / "bad.extxyz").write_text("1\nProperties=species:S:1:pos:R:3\nXx 0 0 0\n")
    assert main(["md", "emt", str(tmp_path / "bad.extxyz"), "-o", str(tmp_path / "t.extxyz")]) == 2
    assert "bad.extxyz, frame 0" in capsys.readouterr().err
    assert not (tmp_path / "t.extxyz").exists()

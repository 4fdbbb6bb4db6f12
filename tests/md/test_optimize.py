"""Structure search: the surrogate beats random search on a known function, degrees of
freedom are set on the right side and held through a relaxation, resume is exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import add_adsorbate, fcc100, molecule
from ase.calculators.emt import EMT

from ml4m.errors import ConfigError, SimulationError
from ml4m.md.dynamics import relax
from ml4m.md.optimize import run_optimize
from ml4m.md.optimize_search import SearchSpace, calls_to_reach, grid_levels, minimise, propose
from ml4m.md.optimize_settings import OptimizeSettings
from ml4m.md.optimize_structure import (
    Dof,
    apply_dofs,
    bond_graph,
    constraints_for,
    measure_dofs,
)

TORSION = Dof("torsion", (0, 1, 2, 3), (-180.0,), (180.0,))


def _two_torsions(v: np.ndarray) -> float:
    """Periodic in both angles (deg), one global minimum 0 at (60, -30), a local one
    near (60, 150) and side minima along the first angle."""
    a, b = np.radians(v[0] - 60.0), np.radians(v[1] + 30.0)
    return float((1 - np.cos(a)) + 0.3 * (1 - np.cos(3 * a)) + 0.5 * (1 - np.cos(2 * b))
                 + 0.2 * (1 - np.cos(b)))


def test_bo_reaches_the_minimum_in_fewer_calls_than_random():
    space = SearchSpace((-180.0, -180.0), (180.0, 180.0), (True, True))
    budget, target = 24, 0.02
    calls = {}
    for method in ("bo", "random"):
        found = [calls_to_reach(minimise(_two_torsions, space, method, budget, seed=s,
                                         n_initial=6)[1], target) for s in range(3)]
        calls[method] = [budget + 1 if n is None else n for n in found]
    assert max(calls["bo"]) <= budget  # every seed reaches it
    assert np.mean(calls["bo"]) < np.mean(calls["random"])


def test_grid_visits_the_largest_full_grid_within_the_budget():
    assert grid_levels(1728, 3) == 12 and grid_levels(26, 3) == 2 and grid_levels(1, 4) == 1
    space = SearchSpace((-180.0, 0.0), (180.0, 2.0), (True, False))
    points = [propose(space, "grid", k, np.zeros((k, 2)), np.zeros(k), budget=10)
              for k in range(10)]
    assert points[9] is None  # 3 x 3 = 9 points
    values = np.array([space.values(p) for p in points[:9]])
    assert sorted(set(values[:, 0])) == [-180.0, -60.0, 60.0]  # a turn: both ends are one
    assert sorted(set(values[:, 1])) == [0.0, 1.0, 2.0]


def test_torsion_setter_moves_one_side_rigidly():
    atoms = molecule("trans-butane")
    graph = bond_graph(atoms)
    moved = atoms.copy()
    apply_dofs(moved, [TORSION], [63.0])
    assert measure_dofs(moved, [TORSION])[0] == pytest.approx(63.0, abs=1e-9)
    shift = np.linalg.norm(moved.positions - atoms.positions, axis=1)
    side = {3, 2} | graph[3] | graph[2] - {1}  # C3, C4 and their hydrogens
    assert np.all(shift[[i for i in range(len(atoms)) if i not in side]] == 0.0)
    assert np.all(shift[[3] + sorted(graph[3] - {2})] > 0.1)
    bonds = [(i, j) for i in range(len(atoms)) for j in graph[i] if i < j]
    before = [atoms.get_distance(i, j) for i, j in bonds]
    assert np.allclose([moved.get_distance(i, j) for i, j in bonds], before, atol=1e-12)


def test_torsion_in_a_ring_and_a_non_bond_are_refused():
    ring = Dof("torsion", (0, 1, 2, 3), (-180.0,), (180.0,))
    with pytest.raises(ConfigError, match="another path"):
        apply_dofs(molecule("C6H6"), [ring], [30.0])
    with pytest.raises(ConfigError, match="not bonded"):
        apply_dofs(molecule("trans-butane"), [Dof("torsion", (4, 0, 2, 3), (-180.0,),
                                                  (180.0,))], [30.0])


@pytest.mark.parametrize("angle", [75.0, -120.0])
def test_torsion_and_distance_hold_through_an_emt_relaxation(angle):
    atoms = molecule("trans-butane")
    dofs = [TORSION, Dof("distance", (1, 2), (1.3,), (1.8,))]
    values = [angle, 1.6]
    apply_dofs(atoms, dofs, values)
    atoms.set_constraint(constraints_for(dofs, values))
    atoms.calc = EMT()
    start = atoms.get_potential_energy()
    result = relax(atoms, fmax=0.05, steps=200)
    assert result["converged"] and result["energy"] < start
    got = measure_dofs(atoms, dofs)
    assert abs(got[0] - angle) < 1e-3 and abs(got[1] - 1.6) < 1e-6


def test_adsorption_site_is_set_and_held_in_the_plane():
    slab = fcc100("Cu", (2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.5, "hollow")
    site = Dof("site", (12,), (0.0, 0.0), (1.0, 1.0))
    apply_dofs(slab, [site], [0.25, 0.6])
    assert np.allclose(measure_dofs(slab, [site]), [0.25, 0.6])
    fixed = list(range(4))
    bottom = slab.positions[fixed].copy()
    slab.set_constraint(constraints_for([site], [0.25, 0.6], fix=fixed))
    slab.calc = EMT()
    assert relax(slab, fmax=0.05, steps=200)["converged"]
    assert np.allclose(measure_dofs(slab, [site]), [0.25, 0.6], atol=1e-9)
    assert np.array_equal(slab.positions[fixed], bottom)


def _settings(tmp_path, **changes) -> OptimizeSettings:
    path = tmp_path / "butane.extxyz"
    if not path.exists():
        molecule("trans-butane").write(path)
    config = {"structure": str(path), "dofs": [{"type": "torsion", "atoms": [0, 1, 2, 3]},
                                               {"type": "distance", "atoms": [1, 2],
                                                "range": [1.4, 1.7]}],
              "method": "bo", "budget": 6, "n_initial": 3, "relax": {"fmax": 0.1, "steps": 3}}
    return OptimizeSettings.from_mapping({**config, **changes})


class _Stop(Exception):
    pass


def test_resume_equals_an_uninterrupted_run(tmp_path):
    settings = _settings(tmp_path)
    whole = run_optimize(settings, tmp_path / "whole")

    def kill_after_four(status):
        if status.call == 4:
            raise _Stop

    with pytest.raises(_Stop):
        run_optimize(settings, tmp_path / "part", on_call=kill_after_four)
    from ase.io import read

    state = json.loads((tmp_path / "part" / "state.json").read_text())
    kept = read(tmp_path / "part" / "evaluations.extxyz", ":")
    assert len(state["history"]) == len(kept) == 4  # the killed run's work is on disk
    with open(tmp_path / "part" / "evaluations.extxyz", "a") as fh:
        fh.write("14\nhalf a frame written when the run was killed\n")
    with pytest.raises(ConfigError, match="pass --resume"):
        run_optimize(settings, tmp_path / "part")
    with pytest.raises(ConfigError, match="other settings .seed differ"):
        run_optimize(_settings(tmp_path, seed=1), tmp_path / "part", resume=True)
    resumed = run_optimize(settings, tmp_path / "part", resume=True)
    assert resumed["resumed"] and resumed["calls"] == whole["calls"] == 6
    for a, b in zip(whole["history"], resumed["history"]):
        assert a["dofs"] == b["dofs"] and a["energy_ev"] == b["energy_ev"]
    frames = read(tmp_path / "part" / "evaluations.extxyz", ":")
    assert [f.info["call"] for f in frames] == list(range(1, 7))
    assert [f.info["REF_energy"] for f in frames] == [h["energy_ev"] for h in whole["history"]]
    summary = json.loads((tmp_path / "part" / "summary.json").read_text())
    best = read(tmp_path / "part" / "best.extxyz")
    assert best.info["REF_energy"] == summary["best_energy_ev"] == min(
        h["energy_ev"] for h in whole["history"])
    assert (tmp_path / "part" / "progress.png").stat().st_size > 0


class _Broken(EMT):
    def calculate(self, *args, **kwargs):
        raise RuntimeError("SCF did not converge")


def test_overwrite_drops_the_old_state_before_the_first_call(tmp_path):
    settings = _settings(tmp_path, method="random", budget=2)
    run_optimize(settings, tmp_path / "out")
    with pytest.raises(SimulationError, match="failed at call 1"):
        run_optimize(settings, tmp_path / "out", overwrite=True, calculator=_Broken())
    assert not (tmp_path / "out" / "state.json").exists()  # no stale state to resume
    with pytest.raises(ConfigError, match="holds no optimize state"):
        run_optimize(settings, tmp_path / "out", resume=True)


def test_xtb_names_gfn2_through_tblite(tmp_path):
    pytest.importorskip("tblite", reason="the optional extra 'xtb' (tblite) is not installed")
    from ase.io import read
    from tblite.ase import TBLite

    molecule("H2O2").write(tmp_path / "h2o2.extxyz")
    settings = OptimizeSettings.from_mapping({
        "structure": str(tmp_path / "h2o2.extxyz"), "reference": "xtb", "method": "random",
        "budget": 2, "dofs": [{"type": "torsion", "atoms": [2, 0, 1, 3]}],
        "relax": {"steps": 0}})
    result = run_optimize(settings, tmp_path / "out")
    frame = read(tmp_path / "out" / "evaluations.extxyz", index=1)
    frame.calc = TBLite(method="GFN2-xTB", verbosity=0)
    assert frame.get_potential_energy() == pytest.approx(result["history"][1]["energy_ev"],
                                                         abs=1e-6)
    assert result["history"][0]["energy_ev"] != result["history"][1]["energy_ev"]

"""``ml4m optimize``: JSON result and files, resume, and bad input with exit code 2."""

from __future__ import annotations

import json

import pytest
import yaml
from ase.build import molecule
from ase.io import read

from ml4m.cli.main import main
from flaky_reference import FLAKY, FlakyEMT


@pytest.fixture
def config(tmp_path):
    molecule("trans-butane").write(tmp_path / "butane.extxyz")
    base = {"structure": str(tmp_path / "butane.extxyz"),
            "dofs": [{"type": "torsion", "atoms": [0, 1, 2, 3]}],
            "method": "bo", "budget": 4, "n_initial": 2, "relax": {"fmax": 0.1, "steps": 3}}

    def write(**changes):
        path = tmp_path / "optimize.yaml"
        path.write_text(yaml.safe_dump({**base, **changes}))
        return str(path)

    return tmp_path, write


def test_optimize_json_files_and_resume(config, capsys):
    tmp, write = config
    out = str(tmp / "out")
    assert main(["optimize", write(), "-o", out, "--method", "random", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"best_energy_ev", "best_dofs", "best_call", "calls", "history", "method", "seed",
            "best", "evaluations", "summary", "plot"} <= set(result)
    assert result["method"] == "random" and result["calls"] == 4
    energies = [h["energy_ev"] for h in result["history"]]
    assert result["best_energy_ev"] == min(energies)
    assert list(result["best_dofs"]) == ["torsion(0,1,2,3)"]
    frames = read(tmp / "out" / "evaluations.extxyz", ":")
    assert [f.info["REF_energy"] for f in frames] == energies
    assert (tmp / "out" / "progress.png").is_file()
    assert main(["optimize", write(), "-o", out, "--method", "random"]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(["optimize", write(), "-o", out, "--resume"]) == 2  # config says bo
    assert "other settings (method differ)" in capsys.readouterr().err
    assert main(["optimize", write(), "-o", out, "--method", "random", "--resume",
                 "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["resumed"] and again["history"] == result["history"]


@pytest.mark.parametrize("changes, message", [
    ({"dofs": [{"type": "angle", "atoms": [0, 1, 2]}]}, "dofs[0].type must be one of"),
    ({"dofs": [{"type": "torsion", "atoms": [0, 1, 2, 99]}]},
     "dofs[0].atoms[3] = 99 is not an atom of"),
    ({"dofs": [{"type": "distance", "atoms": [1, 2]}]}, "dofs[0].range is required"),
    ({"dofs": [{"type": "torsion", "atoms": [0, 1, 2]}]}, "list of 4 atom indices"),
    ({"budget": 0}, "budget must be an integer in [1, inf]"),
    ({"reference": "no_such_module:Calc"}, "cannot import calculator"),
    ({"fix": [3, 40]}, "fix[1] = 40 is not an atom"),
    ({"relax": {"fmax": -1}}, "relax.fmax must be > 0.0"),
    ({"acquisition": "pi"}, "acquisition must be one of"),
])
def test_bad_input_exits_2_naming_the_key(config, capsys, changes, message):
    tmp, write = config
    assert main(["optimize", write(**changes), "-o", str(tmp / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ml4m: error:") and len(err.splitlines()) == 1
    assert message in err
    assert not (tmp / "out").exists()


def test_failing_reference_stops_with_state_kept_then_resumes(config, capsys):
    tmp, write = config
    cfg = write(reference={"calculator": FLAKY}, relax={"steps": 0})
    FlakyEMT.count, FlakyEMT.fail_after = 0, 2
    assert main(["optimize", cfg, "-o", str(tmp / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("ml4m: error:") and "SCF did not converge" in err and "--resume" in err
    state = json.loads((tmp / "out" / "state.json").read_text())
    assert len(state["history"]) == 2 and not (tmp / "out" / "summary.json").exists()
    FlakyEMT.fail_after = None
    assert main(["optimize", cfg, "-o", str(tmp / "out"), "--resume", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["calls"] == 4

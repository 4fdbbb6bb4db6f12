"""``ml4m learn``: JSON result, resume, and bad input with exit code 2 and the state intact."""

from __future__ import annotations

import json

import pytest
import yaml
from ase.build import bulk
from ase.io import write

from ml4m.cli.main import main
from flaky_reference import FLAKY, FlakyEMT


@pytest.fixture
def setup(tmp_path, write_rattled_cu):
    write_rattled_cu(tmp_path)
    config = {"fit": {"model": "ace", "params": {"uncertainty": "posterior"},
                      "descriptor": {"r_cut": 4.0, "n_max": 4, "l_max": 2, "correlation_order": 3}},
              "initial": str(tmp_path / "init.extxyz"),
              "walkers": [{"structure": str(tmp_path / "start.extxyz"), "temperature": 300,
                           "temperature_end": 900},
                          {"structure": str(tmp_path / "start.extxyz"), "temperature": 600}],
              "steps": 30, "dt": 2.0, "threshold": 0.0022, "check_interval": 5, "max_calls": 10}

    def write_config(**changes):
        path = tmp_path / "learn.yaml"
        path.write_text(yaml.safe_dump({**config, **changes}))
        return str(path)

    return tmp_path, write_config


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def _same_run(a, b) -> None:
    """Same training frames (walker, step, positions, forces) and the same model."""
    import numpy as np

    import ml4m
    from ml4m.data import read_dataset

    ta, tb = read_dataset(a / "train.extxyz"), read_dataset(b / "train.extxyz")
    assert [(f.info.get("walker"), f.info.get("step")) for f in ta] == \
        [(f.info.get("walker"), f.info.get("step")) for f in tb]
    for fa, fb in zip(ta, tb):
        np.testing.assert_array_equal(fa.positions, fb.positions)
        np.testing.assert_array_equal(fa.forces, fb.forces)
    ma, mb = ml4m.load(a / "model.ml4m"), ml4m.load(b / "model.ml4m")
    np.testing.assert_array_equal(ma.model_.coef_, mb.model_.coef_)  # inside the core
    assert ma.baseline_.r_in_ == mb.baseline_.r_in_


def test_learn_killed_then_resumed_gives_the_uninterrupted_run(setup, capsys):
    """A run whose reference fails after k calculations stops (exit 2, one error line,
    the state of its last update kept); --resume finishes it as if never stopped."""
    tmp, config = setup
    cfg = config(reference={"calculator": FLAKY})
    FlakyEMT.count, FlakyEMT.fail_after = 0, None
    assert main(["learn", cfg, "-o", str(tmp / "whole"), "--json"]) == 0
    result = _json(capsys)
    assert {"steps", "walkers", "reference_calls", "n_train", "n_parameters", "threshold_ev_per_a",
            "sigma_max_final", "seconds", "model", "plot"} <= set(result)
    assert result["reference_calls"] >= 3 and result["n_train"] == 6 + result["reference_calls"]
    assert (tmp / "whole" / "learning.png").is_file()
    per_call = FlakyEMT.count / result["reference_calls"]  # calculations per labelled frame

    out = tmp / "out"
    FlakyEMT.count, FlakyEMT.fail_after = 0, int(2 * per_call)  # the third call fails
    assert main(["learn", cfg, "-o", str(out)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # one line, after the log lines
    assert last.startswith("ml4m: error:") and "SCF did not converge" in last and "--resume" in last
    state = json.loads((out / "state" / "state.json").read_text())
    assert 1 <= state["calls"] <= 2 and not (out / "model.ml4m").exists()
    assert main(["learn", cfg, "-o", str(out)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    FlakyEMT.fail_after = None
    assert main(["learn", cfg, "-o", str(out), "--resume", "--json"]) == 0
    resumed = _json(capsys)
    assert resumed["resumed"] and resumed["reference_calls"] == result["reference_calls"]
    _same_run(tmp / "whole", out)
    assert main(["learn", config(reference={"calculator": FLAKY}, steps=40),
                 "-o", str(out), "--resume"]) == 2
    assert "other settings (steps differ)" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({"threshold": 0}, "threshold must be > 0"),
    ({"threshold": "-2x"}, "threshold factor must be > 0"),
    ({"reference": "nowhere.module:Calc"}, "cannot import calculator"),
    ({"walkers": [{"structure": "GOLD"}]}, "['Au'] are not known to the model"),
    ({"walkers": []}, "walkers must be a non-empty list"),
    ({"fit": {"model": "ace"}, "initial": None}, "'fit' needs 'initial'"),
    ({"speed": 3}, "unknown key(s) ['speed']"),
    ({"fit": {"model": "ace", "committee": 2}}, "'committee' applies to networks"),
    ({"fine_tune": {"lr": -1}}, "fine_tune: training.lr must be > 0.0"),
    ({"fit": {"model": "mpnn", "init": "pre.ml4m"}}, "give the fitted network as 'model: FILE'"),
])
def test_bad_input_exits_2_with_nothing_written(setup, capsys, change, message):
    tmp, config = setup
    if change.get("walkers") and change["walkers"][0]["structure"] == "GOLD":
        gold = bulk("Cu", cubic=True, a=3.61).repeat(2)
        gold.symbols[0] = "Au"
        write(tmp / "gold.extxyz", gold)
        change = {"walkers": [{"structure": str(tmp / "gold.extxyz")}]}
    assert main(["learn", config(**change), "-o", str(tmp / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("ml4m: error:")
    assert not (tmp / "out" / "state").exists()


def test_unreachable_scheduler_exits_2(setup, capsys):
    tmp, config = setup
    assert main(["learn", config(), "-o", str(tmp / "out"), "--scheduler", "tcp://127.0.0.1:1",
                 "--scheduler-timeout", "1"]) == 2
    assert "scheduler" in capsys.readouterr().err
    assert not (tmp / "out" / "state").exists()

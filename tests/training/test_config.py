"""``ml4m fit`` configuration: unknown keys, wrong types and bad values are named."""

from __future__ import annotations

import pytest

from ml4m.cli.main import main
from ml4m.errors import ConfigError
from ml4m.training import FitConfig


def test_valid_config():
    cfg = FitConfig.from_mapping({"model": "gp", "train": "t.extxyz", "sigmas": {"forces": 0.05},
                                  "max_minutes": 5, "descriptor": {"r_cut": 4.5}})
    assert cfg.model == "gp" and cfg.max_minutes == 5 and cfg.descriptor == {"r_cut": 4.5}


@pytest.mark.parametrize("mapping,match", [
    ({"train": "t", "learning_rate": 1}, r"unknown key\(s\) \['learning_rate'\]"),
    ({"train": "t", "seed": "one"}, "'seed' must be int, got str 'one'"),
    ({"train": "t", "seed": True}, "'seed' must be int"),
    ({"train": "t", "max_minutes": "5"}, "'max_minutes' must be float or NoneType"),
    ({"train": "t", "sigmas": [1, 2]}, "'sigmas' must be dict"),
    ({"train": "t", "model": "svm"}, "model must be one of"),
    ({"model": "ace"}, "'train' .* is required"),
    ({"train": "t", "sigmas": {"energy": 0}}, "sigmas.energy must be > 0"),
    ({"train": "t", "sigmas": {"forces": -1}}, "sigmas.forces must be a number >= 0"),
    ({"train": "t", "keys": {"charges": "q"}}, r"keys may name energy, forces, stress; got \['charges'\]"),
])
def test_bad_config(mapping, match):
    with pytest.raises(ConfigError, match=match):
        FitConfig.from_mapping(mapping, source="cfg.yaml")


def test_cli_bad_config_exit_2(tmp_path, capsys):
    cfg = tmp_path / "fit.yaml"
    cfg.write_text("model: ace\ntrain: x.extxyz\nweights: {energy: 1}\n")
    assert main(["fit", str(cfg), "-o", str(tmp_path / "m.ml4m")]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: unknown key(s) ['weights']" in err
    assert not (tmp_path / "m.ml4m").exists()
    cfg.write_text("- not\n- a mapping\n")
    assert main(["fit", str(cfg)]) == 2
    assert "expected a mapping" in capsys.readouterr().err

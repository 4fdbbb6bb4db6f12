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
    ({"train": "t", "seed": "one"}, r"cfg.yaml: seed must be an integer in \[0, inf\], got 'one'"),
    ({"train": "t", "seed": True}, "seed must be an integer"),
    ({"train": "t", "max_minutes": "5"}, "max_minutes must be a finite number, got '5'"),
    ({"train": "t", "sigmas": [1, 2]}, r"sigmas must be a mapping \(key: value\)"),
    ({"train": "t", "model": "svm"}, "model must be one of"),
    ({"model": "ace"}, "'train' .* is required"),
    ({"train": "t", "sigmas": {"energy": 0}}, "sigmas.energy must be > 0"),
    ({"train": "t", "sigmas": {"forces": -1}}, "sigmas.forces must be >= 0.0, got -1.0"),
    ({"train": "t", "keys": {"charges": "q"}}, r"keys may name energy, forces, stress; got \['charges'\]"),
    ({"train": "t", "keys": {"energy": 1}}, "keys.energy must be a non-empty string, got 1"),
    ({"train": "t", "max_minutes": 0}, "max_minutes must be > 0.0"),
    ({"train": "t", "max_minutes": float("inf")}, "max_minutes must be a finite number"),
    ({"train": "t", "seed": -1}, r"seed must be an integer in \[0, inf\], got -1"),
    ({"train": "t", "sigmas": {"forces": float("nan")}}, "sigmas.forces must be a finite number"),
    ({"train": "t", "sigmas": {"stress": "1e-3"}}, "sigmas.stress .* write 1.0e-3"),
    ({"train": "t", "e0": "zero"}, r"e0 must be one of \('fit',\)"),
    ({"train": "t", "e0": {"Cu": "x"}}, "e0.Cu must be a finite number"),
    ({"train": "t", "params": [1]}, "params must be a mapping"),
    ({"train": "t", "params": {"batch_frames": "4"}}, "params.batch_frames must be an integer"),
    ({"train": "t", "params": {"alpha": -1}}, "params.alpha must be > 0.0"),
    ({"train": "t", "model": "gp", "params": {"zeta": 2.5}}, "params.zeta must be an integer"),
    ({"train": "t", "model": "gp", "params": {"linear_baseline": "yes"}}, "params.linear_baseline must be true or false"),
    ({"train": "t", "model": "krr", "params": {"alphas": 0.1}}, "params.alphas must be a non-empty list"),
    ({"train": "t", "descriptor": {1: 2}}, "descriptor keys must be strings"),
    ({"train": "t", "device": "tpu"}, "device must be one of"),
    ({"train": "t", "output": None}, "output must be a non-empty string"),
    ({"train": ["a"]}, "train must be a non-empty string"),
    ({1: "t"}, "the config keys must be strings, got 1"),
])
def test_bad_config(mapping, match):
    with pytest.raises(ConfigError, match=match) as info:
        FitConfig.from_mapping(mapping, source="cfg.yaml")
    assert str(info.value).startswith("cfg.yaml: ")


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


@pytest.mark.parametrize("text,match", [
    ("model: ace\n1: x\n", r"key 1 must be a string \(a setting name\), got int"),
    ("descriptor:\n  r_cut: 5\n  2.5: 3\n", r"key 2.5 in 'descriptor' must be a string"),
    ("params:\n  - {1: 2}\n", r"key 1 in 'params\[0\]' must be a string"),
    ("[" * 5000 + "]" * 5000, "nested too deeply|invalid YAML"),
    ("a: [1,\n", "invalid YAML at line"),
    ("- 1\n- 2\n", "expected a mapping of settings, got list"),
])
def test_load_yaml_names_the_problem(tmp_path, text, match):
    from ml4m.config import load_yaml

    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_yaml(path)
    assert str(info.value).startswith(f"{path}: ")


def test_load_yaml_refuses_binary_and_huge_files(tmp_path):
    from ml4m.config import MAX_CONFIG_BYTES, load_yaml

    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load_yaml(path)
    path.write_text("# " + "x" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError, match="too large for a config file"):
        load_yaml(path)
    path.write_text("a: &a [1, 2]\nb: [*a, *a]\n")  # aliases are fine
    assert load_yaml(path)["b"] == [[1, 2], [1, 2]]


@pytest.mark.parametrize("text,message", [
    ("model: ace\ntrain: x.extxyz\nsigmas: {energy: 1e-3}\n",
     "sigmas.energy must be a finite number, got '1e-3' (a string: YAML reads 1e-3"),
    ("model: ace\ntrain: x.extxyz\nparams: {batch_frames: four}\n",
     "params.batch_frames must be an integer in [1, inf], got 'four'"),
    ("model: ace\ntrain: x.extxyz\n7: seven\n", "key 7 must be a string"),
])
def test_cli_config_value_errors_exit_2(tmp_path, capsys, text, message):
    """Wrong types in fit.yaml end as one stderr line naming file and key; nothing written."""
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(text)
    assert main(["fit", str(cfg), "-o", str(tmp_path / "m.ml4m")]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "m.ml4m").exists()


def test_descriptor_names_are_the_descriptor_registry():
    """The CLI's descriptor choices (a light constant) name exactly the descriptors."""
    from ml4m.descriptors import DESCRIPTORS
    from ml4m.training.config import DESCRIPTOR_CHOICES

    assert sorted(DESCRIPTOR_CHOICES) == sorted(DESCRIPTORS)

"""The validation layer: every check accepts the valid, refuses the rest with a named error."""

from __future__ import annotations

import numpy as np
import pytest

from ml4m.errors import ConfigError, DataError
from ml4m.validation import (
    check_array,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_mapping,
    check_size_against_file,
    check_str,
)


def test_check_int():
    assert check_int("n", np.int32(3), 1, 5) == 3
    for bad in (True, 2.0, "3", None):
        with pytest.raises(ConfigError, match=r"n must be an integer, got"):
            check_int("n", bad)
    with pytest.raises(ConfigError, match=r"^cfg.yaml: n must be an integer in \[1, 5\], got 7$"):
        check_int("n", 7, 1, 5, source="cfg.yaml")


def test_check_float():
    assert check_float("x", 2) == 2.0 and isinstance(check_float("x", 2), float)
    with pytest.raises(ConfigError, match="YAML reads 1e-3 without a dot as text"):
        check_float("sigma", "1e-3")  # YAML 1.1 reads 1e-3 as a string
    for bad in (float("nan"), float("inf"), "abc", True, [1.0], None, 10**400):
        with pytest.raises(ConfigError, match="x must be a finite number"):
            check_float("x", bad)
    with pytest.raises(ConfigError, match=r"x must be > 0, got 0.0"):
        check_float("x", 0, low=0, low_open=True)
    assert check_float("x", 0, low=0) == 0.0
    with pytest.raises(ConfigError, match=r"x must be < 1, got 1.0"):
        check_float("x", 1.0, high=1, high_open=True)


def test_check_choice_bool_str():
    assert check_choice("mode", "a", ("a", "b")) == "a"
    with pytest.raises(ConfigError, match=r"mode must be one of \('a', 'b'\), got 'c'"):
        check_choice("mode", "c", ("a", "b"))
    with pytest.raises(ConfigError, match="mode must be one of"):
        check_choice("mode", np.array([1, 2]), ("a", "b"))
    with pytest.raises(ConfigError, match="mode must be one of"):
        check_choice("mode", 1, (True, False))  # 1 == True, but not the same type
    assert check_bool("flag", np.bool_(True)) is True
    with pytest.raises(ConfigError, match="flag must be true or false, got 1"):
        check_bool("flag", 1)
    with pytest.raises(ConfigError, match="name must be a non-empty string"):
        check_str("name", "")


def test_check_mapping():
    assert check_mapping("sigmas", {"energy": 1.0}, keys=("energy", "forces")) == {"energy": 1.0}
    with pytest.raises(ConfigError, match=r"sigmas must be a mapping \(key: value\), got \[1\]"):
        check_mapping("sigmas", [1])
    with pytest.raises(ConfigError, match="sigmas keys must be strings, got 1"):
        check_mapping("sigmas", {1: 2.0})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['x'\]"):
        check_mapping("sigmas", {"x": 1}, keys=("energy",))
    with pytest.raises(DataError, match=r"^m.ml4m: meta.json lacks required key\(s\) \['kind'\]"):
        check_mapping("meta.json", {}, required=("kind",), error=DataError, path="m.ml4m")


def test_check_array():
    a = check_array("forces", [[1, 2, 3]], shape=(None, 3), dtype=np.float64)
    assert a.dtype == np.float64 and a.shape == (1, 3)
    with pytest.raises(DataError, match=r"^f.xyz, frame 2: forces must be numeric"):
        check_array("forces", [["a", "b", "c"]], path="f.xyz", frame=2)
    with pytest.raises(DataError, match=r"forces must have shape \(any, 3\), got \(2, 2\)"):
        check_array("forces", np.zeros((2, 2)), shape=(None, 3))
    with pytest.raises(DataError, match=r"coef contains a non-finite value \(nan\) at index \(1,\)"):
        check_array("coef", [0.0, np.nan])
    with pytest.raises(DataError, match="coef must hold float values, got dtype int64"):
        check_array("coef", np.arange(3), kinds="f")
    assert np.isnan(check_array("s", [np.nan], finite=False)[0])
    with pytest.raises(ConfigError, match="weights must be 2-dimensional"):
        check_array("weights", [1.0], ndim=2, error=ConfigError)


def test_check_size_against_file():
    assert check_size_against_file("atom count", 10, 8, 100) == 10
    with pytest.raises(DataError, match=r"^a.xyz, frame 1: atom count 999999999999 needs"):
        check_size_against_file("atom count", 999999999999, 8, 100, path="a.xyz", frame=1)
    with pytest.raises(DataError, match="atom count must be an integer in"):
        check_size_against_file("atom count", -1, 8, 100)

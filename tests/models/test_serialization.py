"""Model files: exact round trip, no pickle, truncated and tampered files rejected."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from ml4m.errors import ConfigError, DataError
from ml4m.models.serialization import model_file_path, read_model_file, save_model_file


def _rewrite(path, **entries):
    """Replace or add zip entries (bytes) of a model file, keeping the others."""
    with zipfile.ZipFile(path) as zf:
        content = {n: zf.read(n) for n in zf.namelist()}
    content.update(entries)
    with zipfile.ZipFile(path, "w") as zf:
        for n, b in content.items():
            zf.writestr(n, b)


def _npy(array, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def _save(tmp_path):
    arrays = {"coef": np.linspace(0, 1, 50), "species": np.array([29, 79])}
    path = save_model_file(tmp_path / "m", "toy", {"r_cut": 5.0}, arrays)
    return path, arrays


def test_round_trip(tmp_path):
    path, arrays = _save(tmp_path)
    assert path.name == "m.ml4m"
    kind, params, loaded = read_model_file(path)
    assert kind == "toy" and params == {"r_cut": 5.0}
    for k in arrays:
        np.testing.assert_array_equal(loaded[k], arrays[k])


def test_object_arrays_refused(tmp_path):
    with pytest.raises(TypeError, match="object dtype"):
        save_model_file(tmp_path / "m", "toy", {}, {"x": np.array([{"a": 1}], dtype=object)})


def test_truncated_file(tmp_path):
    path, _ = _save(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"m\.ml4m.*(truncated|corrupted)"):
        read_model_file(path)


def test_tampered_array(tmp_path):
    path, arrays = _save(tmp_path)
    _rewrite(path, **{"coef.npy": _npy(arrays["coef"] * 2)})
    with pytest.raises(DataError, match="'coef' does not match its checksum"):
        read_model_file(path)


def test_pickled_array_is_never_loaded(tmp_path):
    """An entry crafted with pickle is refused by allow_pickle=False."""
    path, _ = _save(tmp_path)
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("meta.json"))
    meta["sha256"]["evil"] = "0"
    _rewrite(path, **{"evil.npy": _npy(np.array([object()], dtype=object), allow_pickle=True),
                      "meta.json": json.dumps(meta).encode()})
    with pytest.raises(DataError, match="array 'evil' has dtype object; model files hold numbers"):
        read_model_file(path)


def test_not_a_model(tmp_path):
    p = tmp_path / "x.ml4m"
    p.write_text("hello")
    with pytest.raises(DataError, match="x.ml4m"):
        read_model_file(p)
    with pytest.raises(DataError, match="no such model file"):
        read_model_file(tmp_path / "missing.ml4m")


# ---- a fitted model's file: every malformed entry is refused naming the file ------------


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from ml4m.data import default_dataset
    from ml4m.descriptors import make_descriptor
    from ml4m.models.linear import LinearACE

    d = make_descriptor("ace", species=["Cu"], r_cut=3.5, n_max=2, l_max=1, correlation_order=2)
    model = LinearACE(d, uncertainty="posterior").fit(default_dataset()[:8])
    return model.save(tmp_path_factory.mktemp("model") / "tiny")


def _edited(model_file, tmp_path, edit_meta=None, **arrays):
    """A copy of the model file with meta.json edited and arrays replaced (checksums kept valid)."""
    from ml4m.models.serialization import _digest

    path = tmp_path / "edited.ml4m"
    path.write_bytes(model_file.read_bytes())
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("meta.json"))
    entries = {}
    for name, a in arrays.items():
        meta["sha256"][name] = _digest(a)
        entries[f"{name}.npy"] = _npy(a)
    if edit_meta is not None:
        meta = edit_meta(meta)
    _rewrite(path, **entries, **{"meta.json": json.dumps(meta).encode()})
    return path


def test_nan_coefficient_refused_at_load(model_file, tmp_path):
    import ml4m

    coef = read_model_file(model_file)[2]["coef"].copy()
    coef[1] = np.nan
    path = _edited(model_file, tmp_path, coef=coef)
    with pytest.raises(DataError, match=r"edited\.ml4m: array 'coef' contains a non-finite value "
                                        r"\(nan\) at index \(1,\)") as info:
        ml4m.load(path)
    assert info.value.path == str(path)


@pytest.mark.parametrize("meta,match", [
    ([1, 2], r"meta.json must be a mapping"),
    ("model", r"meta.json must be a mapping"),
    ({"format": "ml4m-model", "version": 1, "kind": "linear_ace", "params": "abc", "sha256": {}},
     r"meta.json 'params' must be a mapping"),
    ({"format": "ml4m-model", "version": 1, "kind": 3, "params": {}, "sha256": {}},
     r"meta.json 'kind' must be a non-empty string"),
    ({"format": "ml4m-model", "version": 1, "kind": "x", "params": {}, "sha256": []},
     r"meta.json 'sha256' must be a mapping"),
    ({"format": "ml4m-model", "version": 1, "params": {}, "sha256": {}},
     r"meta.json lacks required key\(s\) \['kind'\]"),
])
def test_metadata_of_wrong_type(model_file, tmp_path, meta, match):
    path = _edited(model_file, tmp_path, edit_meta=lambda _: meta)
    with pytest.raises(DataError, match=match) as info:
        read_model_file(path)
    assert info.value.path == str(path)


def _set(meta, keys, value):
    target = meta["params"]
    for k in keys[:-1]:
        target = target[k]
    if value is KeyError:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return meta


@pytest.mark.parametrize("keys,value,match", [
    (("hyper", "batch_frames"), "four", "batch_frames"),
    (("hyper", "noise"), 3, "noise"),
    (("descriptor", "r_cut"), "abc", "r_cut"),
    (("descriptor", "n_max"), 99, "n_max"),
    (("descriptor",), KeyError, r"params lacks required key\(s\) \['descriptor'\]"),
    (("alpha_",), "x", "alpha_"),
    (("alpha_",), -1.0, "alpha_"),
    (("noise_",), [1, 2], "noise_"),
    (("hyper",), [1, 2], "hyper"),
])
def test_params_of_wrong_type_name_file_and_key(model_file, tmp_path, keys, value, match):
    import ml4m

    path = _edited(model_file, tmp_path, edit_meta=lambda m: _set(m, keys, value))
    with pytest.raises(DataError, match=match) as info:
        ml4m.load(path)
    assert info.value.path == str(path)


def test_nan_in_params_refused(model_file, tmp_path):
    path = _edited(model_file, tmp_path, edit_meta=lambda m: _set(m, ("beta_",), float("nan")))
    with pytest.raises(DataError, match=r"meta.json 'params.beta_' is not finite"):
        read_model_file(path)


@pytest.mark.parametrize("name,array,match", [
    ("coef", np.zeros(3), r"coefficients have shape \(3,\)"),
    ("coef", np.zeros((2, 2)), r"array 'coef' must have shape \(any,\), got \(2, 2\)"),
    ("e0_values", np.zeros(3), "e0"),
    ("posterior_factor", np.zeros((1, 1)), "posterior"),
    ("coef", np.array(["a", "b"]), r"array 'coef' has dtype <U1; model files hold numbers only"),
])
def test_arrays_of_wrong_shape_or_dtype(model_file, tmp_path, name, array, match):
    import ml4m

    path = _edited(model_file, tmp_path, **{name: array})
    with pytest.raises(DataError, match=match) as info:
        ml4m.load(path)
    assert info.value.path == str(path)


def test_declared_sizes_checked_before_allocation(model_file, tmp_path, monkeypatch):
    """A header declaring 10^12 elements, or an entry larger than memory, is refused unread."""
    import ml4m.models.serialization as ser

    path = tmp_path / "bomb.ml4m"
    path.write_bytes(model_file.read_bytes())
    header = _npy(np.zeros(3))
    bomb = header.replace(b"(3,)", b"(1000000000000,)")  # same header length: padded
    _rewrite(path, **{"coef.npy": bomb[: len(header)]})
    with pytest.raises(DataError, match=r"array 'coef' declares shape \(1000000000000,\)"):
        read_model_file(path)
    monkeypatch.setattr(ser, "_memory_bytes", lambda: 100)
    with pytest.raises(DataError, match=r"tiny\.ml4m: array '\w+' declares \d+ bytes, more than"):
        read_model_file(model_file.with_name("tiny.ml4m"))


def test_absurd_finite_values_fail_at_load(model_file, tmp_path):
    """Finite coefficients of 1e300 pass every array check, but their predictions are
    absurd or overflow: load predicts a test structure and refuses the file."""
    import ml4m
    from ml4m.models.serialization import load

    coef = np.full_like(read_model_file(model_file)[2]["coef"], 1e300)
    path = _edited(model_file, tmp_path, coef=coef)
    with pytest.raises(DataError, match=r"edited\.ml4m: invalid model: the model predicts "
                                        r"\w+ \[.*\] for a test structure"):
        ml4m.load(path)
    assert load(path, check=False).coef_[0] == 1e300  # the check can be skipped


def test_cli_test_refuses_a_nan_model_with_exit_2(model_file, tmp_path, capsys):
    """'ml4m test' on a model file with a NaN coefficient: exit 2 naming the file (it
    reported null metrics with exit 0 before)."""
    from ase.io import write

    from ml4m.cli.main import main
    from ml4m.data import default_dataset

    coef = read_model_file(model_file)[2]["coef"].copy()
    coef[0] = np.nan
    path = _edited(model_file, tmp_path, coef=coef)
    data = tmp_path / "test.extxyz"
    write(data, default_dataset()[:2].to_atoms())
    assert main(["test", str(path), str(data)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: array 'coef' contains a non-finite value (nan)" in err


@pytest.mark.parametrize("noise", ["shared", "per_quantity"])
def test_model_read_from_a_file_updates_as_the_fitted_one(tmp_path, noise):
    """A file keeps no normal equations; given its training frames back (no new solve:
    predictions unchanged), the loaded model takes new frames exactly as the model in
    memory does."""
    import ml4m
    from ml4m.data import default_dataset
    from ml4m.descriptors import make_descriptor
    from ml4m.errors import NotFittedError
    from ml4m.models.linear import LinearACE

    ds = default_dataset()
    old, new = list(ds[:24:2]), list(ds[30:36])
    desc = make_descriptor("ace", species=["Cu"], r_cut=4.0, n_max=4, l_max=2,
                           correlation_order=3)
    fitted = LinearACE(desc, uncertainty="posterior", noise=noise).fit(old)
    loaded = ml4m.load(fitted.save(tmp_path / "m.ml4m"))
    with pytest.raises(NotFittedError, match="no normal equations"):
        loaded.update(new)
    before = loaded.predict(new, uncertainty=True)
    loaded.restore_normal_equations(old)
    np.testing.assert_array_equal(loaded.predict(new, uncertainty=True).forces_sigma,
                                  before.forces_sigma)
    fitted.update(new)
    loaded.update(new)
    # the same sums to rounding; near-null directions of the Gram matrix amplify it in the
    # coefficients (see tests/models/test_update.py), not in predictions
    a, b = loaded.predict(new, uncertainty=True), fitted.predict(new, uncertainty=True)
    np.testing.assert_allclose(a.forces, b.forces, rtol=0, atol=1e-6 * np.abs(b.forces).max())
    np.testing.assert_allclose(a.forces_sigma, b.forces_sigma, rtol=1e-4)
    assert np.abs(a.forces - before.forces).max() > 1e-3  # the update changed the model
    with pytest.raises(DataError, match="no training frames"):
        loaded.restore_normal_equations([])


def test_model_file_path_adds_the_suffix_and_refuses_folders(tmp_path):
    """A model output gets ``.ml4m`` unless it has it; a name that is or ends as a folder
    is refused and nothing is written there."""
    assert model_file_path(tmp_path / "m") == tmp_path / "m.ml4m"
    assert model_file_path(tmp_path / "m.ml4m") == tmp_path / "m.ml4m"
    assert model_file_path(tmp_path / "m.v2") == tmp_path / "m.v2.ml4m"
    for folder in (str(tmp_path), f"{tmp_path}/", f"{tmp_path}/new/"):
        with pytest.raises(ConfigError, match="folder; name a file, e.g. .*out.ml4m"):
            model_file_path(folder)
        with pytest.raises(ConfigError):
            save_model_file(folder, "ace", {}, {"a": np.zeros(2)})
    assert list(tmp_path.iterdir()) == []

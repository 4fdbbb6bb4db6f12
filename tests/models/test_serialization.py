"""Model files: exact round trip, no pickle, truncated and tampered files rejected."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from ml4m.errors import DataError
from ml4m.models.serialization import read_model_file, save_model_file


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
    with pytest.raises(DataError, match="cannot read model file"):
        read_model_file(path)


def test_not_a_model(tmp_path):
    p = tmp_path / "x.ml4m"
    p.write_text("hello")
    with pytest.raises(DataError, match="x.ml4m"):
        read_model_file(p)
    with pytest.raises(DataError, match="no such model file"):
        read_model_file(tmp_path / "missing.ml4m")

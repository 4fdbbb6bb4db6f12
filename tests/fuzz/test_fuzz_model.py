"""Fuzzing model files: a mutated .ml4m loads and predicts, or fails with a DataError.

The mutations: the zip's bytes (truncated, flipped, spans cut or repeated), meta.json
entries replaced by values of any JSON type or deleted, arrays replaced by arrays of
other shapes, dtypes or values (checksums updated, so the model class sees them).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from _fuzzing import JSON_VALUES, apply_byte_edits, byte_edits, edit_tree, fuzz, leaf_paths, outcome
from ase.build import bulk
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ml4m
from ml4m.data import default_dataset
from ml4m.descriptors import make_descriptor
from ml4m.models.linear import LinearACE
from ml4m.models.serialization import _digest

N = int(os.environ.get("ML4M_FUZZ_EXAMPLES", 0))


def _model_bytes() -> bytes:
    """A tiny linear ACE model with a calibrated error model, as file bytes."""
    d = make_descriptor("ace", species=["Cu"], r_cut=3.5, n_max=2, l_max=1, correlation_order=2)
    model = LinearACE(d).fit(default_dataset()[:12])
    with tempfile.TemporaryDirectory() as tmp:
        return model.save(Path(tmp) / "tiny").read_bytes()


MODEL = _model_bytes()
with zipfile.ZipFile(io.BytesIO(MODEL)) as _zf:
    ENTRIES = {n: _zf.read(n) for n in _zf.namelist()}
META = json.loads(ENTRIES["meta.json"])
ARRAYS = {n[:-4]: np.load(io.BytesIO(b)) for n, b in ENTRIES.items() if n.endswith(".npy")}
ATOMS = bulk("Cu", cubic=True)
ATOMS.rattle(0.05, seed=3)


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for n, b in entries.items():
            zf.writestr(n, b)
    return buf.getvalue()


def _load_and_predict(data: bytes) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.ml4m"
        path.write_bytes(data)

        def run():
            model = ml4m.load(path)
            model.predict([ATOMS], uncertainty=True)

        return outcome(run)


def test_valid_model_loads():
    assert _load_and_predict(MODEL) == "ok"


def test_mutated_bytes():
    seen = fuzz(byte_edits(len(MODEL)), lambda e: _load_and_predict(apply_byte_edits(MODEL, e)),
                max_examples=N or 60)
    assert seen["DataError"], seen


@st.composite
def _meta_edits(draw) -> list:
    """1-2 entries of meta.json (any depth) replaced by a JSON value or deleted."""
    meta, edits = json.loads(ENTRIES["meta.json"]), []
    for _ in range(draw(st.integers(1, 2))):
        paths = leaf_paths(meta)
        if not paths:
            break
        edit = (draw(st.sampled_from(paths)), draw(JSON_VALUES), draw(st.booleans()))
        edit_tree(meta, *edit)
        edits.append(edit)
    return edits


def _with_meta_edits(edits: list) -> bytes:
    meta = json.loads(ENTRIES["meta.json"])
    for edit in edits:
        edit_tree(meta, *edit)
    return _zip({**ENTRIES, "meta.json": json.dumps(meta).encode()})


def test_edited_metadata():
    seen = fuzz(_meta_edits(), lambda e: _load_and_predict(_with_meta_edits(e)),
                max_examples=N or 150)
    assert seen["ok"] and seen["DataError"], seen


_DTYPES = st.sampled_from([np.float64, np.float32, np.int64, np.int8, np.bool_, np.uint8])
_VALUES = st.sampled_from([np.nan, np.inf, -1.0, 0.0, 1e300, 2.0, 10**6])


@st.composite
def _array_edits(draw) -> tuple:
    """An array replaced: random, one value changed, reshaped, cut or cast."""
    name = draw(st.sampled_from(sorted(ARRAYS)))
    original = ARRAYS[name]
    how = draw(st.sampled_from(["random", "value", "reshape", "cut", "dtype"]))
    if how == "random":
        return name, draw(hnp.arrays(_DTYPES, hnp.array_shapes(min_dims=0, max_dims=3,
                                                                max_side=5)))
    if how == "value" and original.size:
        new = original.astype(float).copy()
        new.flat[draw(st.integers(0, original.size - 1))] = draw(_VALUES)
        return name, new
    if how == "reshape" and original.ndim:
        return name, original.reshape(-1)[None] if original.ndim == 1 else original.reshape(-1)
    if how == "cut" and original.size:
        return name, original[: draw(st.integers(0, len(original) - 1))]
    return name, original.astype(draw(_DTYPES))


def _with_array(edit: tuple) -> bytes:
    name, new = edit
    meta = json.loads(ENTRIES["meta.json"])
    meta["sha256"][name] = _digest(new)
    buf = io.BytesIO()
    np.save(buf, new)
    return _zip({**ENTRIES, f"{name}.npy": buf.getvalue(), "meta.json": json.dumps(meta).encode()})


def test_replaced_arrays():
    seen = fuzz(_array_edits(), lambda e: _load_and_predict(_with_array(e)),
                max_examples=N or 120)
    assert seen["ok"] and seen["DataError"], seen

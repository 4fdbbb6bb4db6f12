"""Fuzzing model files: a mutated .ml4m loads and predicts, or fails with a DataError.

Three kinds of file: a linear ACE potential (with its force and energy error models), a
sparse GP potential (SOAP kernel) and a kernel ridge structure-property model.

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
import pytest
from _fuzzing import JSON_VALUES, apply_byte_edits, byte_edits, edit_tree, fuzz, leaf_paths, outcome
from ase.build import bulk
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ml4m
from ml4m.data import default_dataset
from ml4m.descriptors import make_descriptor
from ml4m.models.kernel import PropertyModel, SparseGPPotential
from ml4m.models.linear import LinearACE
from ml4m.models.serialization import _digest

N = int(os.environ.get("ML4M_FUZZ_EXAMPLES", 0))


def _model_files() -> dict[str, bytes]:
    """Tiny linear ACE and sparse GP potentials with calibrated error models, and a tiny
    kernel ridge model."""
    ace = make_descriptor("ace", species=["Cu"], r_cut=3.5, n_max=2, l_max=1,
                          correlation_order=2)
    soap = make_descriptor("soap", species=["Cu"], r_cut=3.5, n_max=2, l_max=2)
    mbtr = make_descriptor("mbtr", species=["Cu"], r_cut=4.0)
    data = default_dataset()
    models = {"ace": LinearACE(ace).fit(data[:12]),
              "gp": SparseGPPotential(soap, n_sparse=10, zeta=2).fit(data[:12]),
              "krr": PropertyModel(mbtr, alphas=(1e-3,), gammas=(0.1,), n_folds=2).fit(data[:10])}
    with tempfile.TemporaryDirectory() as tmp:
        return {k: m.save(Path(tmp) / k).read_bytes() for k, m in models.items()}


MODELS = _model_files()


def _entries(kind: str) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(MODELS[kind])) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


ENTRIES = {kind: _entries(kind) for kind in MODELS}
ARRAYS = {kind: {n[:-4]: np.load(io.BytesIO(b)) for n, b in e.items() if n.endswith(".npy")}
          for kind, e in ENTRIES.items()}
ATOMS = bulk("Cu", cubic=True)
ATOMS.rattle(0.05, seed=3)
#: examples per kind (the ACE file has the most entries)
META_EXAMPLES = {"ace": 100, "gp": 60, "krr": 50}
ARRAY_EXAMPLES = {"ace": 80, "gp": 60, "krr": 40}


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
            if isinstance(model, PropertyModel):
                model.predict_values([ATOMS], return_std=True)
            else:
                model.predict([ATOMS], uncertainty=True)

        return outcome(run)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_valid_model_loads(kind):
    assert _load_and_predict(MODELS[kind]) == "ok"


def test_mutated_bytes():
    data = MODELS["ace"]
    seen = fuzz(byte_edits(len(data)), lambda e: _load_and_predict(apply_byte_edits(data, e)),
                max_examples=N or 60)
    assert seen["DataError"], seen


@st.composite
def _meta_edits(draw, kind: str) -> list:
    """1-2 entries of meta.json (any depth) replaced by a JSON value or deleted."""
    meta, edits = json.loads(ENTRIES[kind]["meta.json"]), []
    for _ in range(draw(st.integers(1, 2))):
        paths = leaf_paths(meta)
        if not paths:
            break
        edit = (draw(st.sampled_from(paths)), draw(JSON_VALUES), draw(st.booleans()))
        edit_tree(meta, *edit)
        edits.append(edit)
    return edits


def _with_meta_edits(kind: str, edits: list) -> bytes:
    meta = json.loads(ENTRIES[kind]["meta.json"])
    for edit in edits:
        edit_tree(meta, *edit)
    return _zip({**ENTRIES[kind], "meta.json": json.dumps(meta).encode()})


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_edited_metadata(kind):
    seen = fuzz(_meta_edits(kind), lambda e: _load_and_predict(_with_meta_edits(kind, e)),
                max_examples=N or META_EXAMPLES[kind])
    assert seen["ok"] and seen["DataError"], seen


_DTYPES = st.sampled_from([np.float64, np.float32, np.int64, np.int8, np.bool_, np.uint8])
_VALUES = st.sampled_from([np.nan, np.inf, -1.0, 0.0, 1e300, 2.0, 10**6])


@st.composite
def _array_edits(draw, kind: str) -> tuple:
    """An array replaced: random, one value changed, reshaped, cut or cast."""
    name = draw(st.sampled_from(sorted(ARRAYS[kind])))
    original = ARRAYS[kind][name]
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


def _with_array(kind: str, edit: tuple) -> bytes:
    name, new = edit
    meta = json.loads(ENTRIES[kind]["meta.json"])
    meta["sha256"][name] = _digest(new)
    buf = io.BytesIO()
    np.save(buf, new)
    return _zip({**ENTRIES[kind], f"{name}.npy": buf.getvalue(),
                 "meta.json": json.dumps(meta).encode()})


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_replaced_arrays(kind):
    seen = fuzz(_array_edits(kind), lambda e: _load_and_predict(_with_array(kind, e)),
                max_examples=N or ARRAY_EXAMPLES[kind])
    assert seen["ok"] and seen["DataError"], seen

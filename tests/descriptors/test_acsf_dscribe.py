"""ACSF equals DScribe 2.1.2 (reference from benchmarks/make_dscribe_acsf_reference.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ml4m.data.frames import Frame
from ml4m.descriptors import ACSF

DATA = Path(__file__).parent / "data"


def _reference():
    meta = json.loads((DATA / "dscribe_acsf.json").read_text())
    arrays = np.load(DATA / "dscribe_acsf.npz")
    return meta, arrays


def test_provenance():
    meta, _ = _reference()
    assert meta["peer"] == "dscribe" and meta["dscribe_version"] == "2.1.2"


@pytest.mark.parametrize("k", [0, 1, 2])
def test_acsf_equals_dscribe(k):
    meta, z = _reference()
    p = meta["parameters"]
    desc = ACSF(p["species"], p["r_cut"], g2_params=p["g2_params"], g3_params=p["g3_params"],
                g4_params=p["g4_params"], g5_params=p["g5_params"])
    frame = Frame(numbers=z[f"numbers_{k}"], positions=z[f"positions_{k}"],
                  cell=z[f"cell_{k}"], pbc=z[f"pbc_{k}"])
    ours = desc.compute(frame).features
    ref = z[f"acsf_{k}"]
    assert ours.shape == ref.shape
    assert np.abs(ref).max() > 0
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-12 * np.abs(ref).max())

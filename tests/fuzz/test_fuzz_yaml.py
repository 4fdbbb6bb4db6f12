"""Fuzzing ``ml4m fit`` configs: a mutated YAML file loads into a FitConfig or fails with
a ConfigError naming the file (never another exception)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml
from _fuzzing import (
    JSON_VALUES,
    apply_byte_edits,
    byte_edits,
    edit_tree,
    fuzz,
    leaf_paths,
    mutated_lines,
    outcome,
)
from hypothesis import strategies as st

from ml4m.config import load_yaml
from ml4m.training import FitConfig

N = int(os.environ.get("ML4M_FUZZ_EXAMPLES", 0))
VALID = """\
model: gp
train: train.extxyz
valid: valid.extxyz
output: model.ml4m
keys: {energy: REF_energy, forces: REF_forces}
descriptor: {r_cut: 4.5, n_max: 6, l_max: 4}
descriptor_type: soap
e0: {Cu: -0.5}
sigmas: {energy: 0.001, forces: 0.05, stress: 0.01}
params: {n_sparse: 50, zeta: 2, alpha: 1.0e-3, batch_frames: 4, linear_baseline: true}
target: energy_per_atom
seed: 3
max_minutes: 10
device: cpu
"""
KEYS = [line.split(":")[0] for line in VALID.splitlines()] + [
    "r_cut", "energy", "forces", "n_sparse", "alpha", "Cu", "&a", "*a", "!!python/object", "-"]


def _load(text: bytes | str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fit.yaml"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return outcome(lambda: FitConfig.from_mapping(load_yaml(path), source=path))


def test_valid_config_loads():
    assert _load(VALID) == "ok"


def test_mutated_lines():
    seen = fuzz(mutated_lines(VALID, KEYS), _load, max_examples=N or 150)
    assert seen["ok"] and seen["ConfigError"], seen


def test_mutated_bytes():
    data = VALID.encode()
    seen = fuzz(byte_edits(len(data)), lambda e: _load(apply_byte_edits(data, e)),
                max_examples=N or 80)
    assert seen["ConfigError"], seen


@st.composite
def _value_edits(draw) -> list:
    """1-3 settings (any depth) replaced by a value of any type, or deleted."""
    tree, edits = yaml.safe_load(VALID), []
    for _ in range(draw(st.integers(1, 3))):
        edit = (draw(st.sampled_from(leaf_paths(tree))), draw(JSON_VALUES | st.just({1: 2})),
                draw(st.booleans()))
        edit_tree(tree, *edit)
        edits.append(edit)
    return edits


def _dumped(edits: list) -> str:
    tree = yaml.safe_load(VALID)
    for edit in edits:
        edit_tree(tree, *edit)
    return yaml.safe_dump(tree)


def test_edited_values():
    seen = fuzz(_value_edits(), lambda e: _load(_dumped(e)), max_examples=N or 150)
    assert seen["ok"] and seen["ConfigError"], seen

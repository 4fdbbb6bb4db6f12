"""Fuzzing the structure readers: mutated extxyz files end in success or a DataError."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from _fuzzing import apply_byte_edits, byte_edits, fuzz, mutated_lines, outcome
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.io import write

from ml4m.data import read_dataset

KEYS = ["energy", "forces", "stress", "Lattice", "Properties", "pbc", "species", "pos",
        "REF_energy", "virial", "config_type", "R", "S", "I", "L"]


def _valid_text() -> str:
    """Two labelled EMT frames: a periodic Cu cell and a free molecule."""
    cu = bulk("Cu", cubic=True)
    cu.rattle(0.05, seed=1)
    mol = molecule("CH4")
    mol.center(vacuum=3.0)
    frames = []
    for atoms in (cu, mol):
        atoms.calc = EMT()
        atoms.get_potential_energy()
        if not atoms.pbc.all():
            atoms.calc.results.pop("stress", None)
        atoms.info["config_type"] = "fuzz"
        frames.append(atoms)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "valid.extxyz"
        write(path, frames)
        return path.read_text()


VALID = _valid_text()
N = int(os.environ.get("ML4M_FUZZ_EXAMPLES", 0))


def _read(data: bytes | str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.extxyz"
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return outcome(lambda: read_dataset(path, require=("energy",)))


def test_valid_file_reads():
    assert _read(VALID) == "ok"


def test_mutated_lines():
    """Lines deleted, repeated, swapped; numbers and keys replaced by odd values."""
    seen = fuzz(mutated_lines(VALID, KEYS), _read, max_examples=N or 200)
    assert seen["ok"] and seen["DataError"], seen


def test_mutated_bytes():
    """Truncated files, flipped bytes, spans deleted or repeated."""
    data = VALID.encode()
    seen = fuzz(byte_edits(len(data)), lambda edits: _read(apply_byte_edits(data, edits)),
                max_examples=N or 150)
    assert seen["ok"] and seen["DataError"], seen

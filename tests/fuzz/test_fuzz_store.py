"""Fuzzing stores: truncated or flipped array files and edited meta.json end in success
(every frame and batch read) or a DataError naming the store."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from _fuzzing import JSON_VALUES, apply_byte_edits, byte_edits, edit_tree, fuzz, leaf_paths, outcome
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from hypothesis import strategies as st

from ml4m.data import Frame, open_store, pack_frames

N = int(os.environ.get("ML4M_FUZZ_EXAMPLES", 0))
_ROOT = tempfile.TemporaryDirectory(prefix="ml4m-fuzz-store-")  # removed at exit
ROOT = Path(_ROOT.name)


def _pack() -> Path:
    frames = []
    for k, atoms in enumerate([bulk("Cu", cubic=True), molecule("CH4")]):
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        if not atoms.pbc.all():
            atoms.calc.results.pop("stress", None)
            atoms.center(vacuum=3.0)
        r = atoms.calc.results
        frames.append(Frame.from_atoms(atoms, energy=r["energy"], forces=r["forces"],
                                       stress=r.get("stress"), info={"config_type": f"c{k}"},
                                       source=("fuzz", k)))
    pack_frames(frames, ROOT / "valid.store")
    return ROOT / "valid.store"


VALID = _pack()
FILES = sorted(p.name for p in VALID.iterdir())
META = json.loads((VALID / "meta.json").read_text())


def _read_all(build) -> str:
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        store = Path(tmp) / "s.store"
        shutil.copytree(VALID, store)
        build(store)

        def run():
            s = open_store(store)
            frames = list(s)
            assert len(frames) == s.n_frames
            list(s.iter_batches(1))

        return outcome(run)


def test_valid_store_reads():
    assert _read_all(lambda store: None) == "ok"


@st.composite
def _file_edits(draw) -> tuple:
    name = draw(st.sampled_from(FILES))
    return name, draw(byte_edits((VALID / name).stat().st_size))


def test_edited_files():
    """Any file of the store truncated, flipped, or with a span cut or repeated."""

    def build(edit):
        def apply(store):
            name, recipe = edit
            path = store / name
            path.write_bytes(apply_byte_edits(path.read_bytes(), recipe))
        return apply

    seen = fuzz(_file_edits(), lambda e: _read_all(build(e)), max_examples=N or 120)
    assert seen["ok"] and seen["DataError"], seen


@st.composite
def _meta_edits(draw) -> list:
    meta, edits = json.loads(json.dumps(META)), []
    for _ in range(draw(st.integers(1, 2))):
        edit = (draw(st.sampled_from(leaf_paths(meta))), draw(JSON_VALUES), draw(st.booleans()))
        edit_tree(meta, *edit)
        edits.append(edit)
    return edits


def test_edited_meta():
    """meta.json entries (any depth) replaced by any JSON value, or deleted."""

    def build(edits):
        def apply(store):
            meta = json.loads(json.dumps(META))
            for edit in edits:
                edit_tree(meta, *edit)
            (store / "meta.json").write_text(json.dumps(meta))
        return apply

    seen = fuzz(_meta_edits(), lambda e: _read_all(build(e)), max_examples=N or 120)
    assert seen["DataError"], seen

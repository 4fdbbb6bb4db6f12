"""The memory-mapped store: exact round trip, lazy reads, tamper detection, atomicity."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from ase.io import write

from ml4m.data import Frame, iter_frames, open_store, pack_frames, read_dataset
from ml4m.errors import DataError


@pytest.fixture
def labelled_file(tmp_path):
    frames = []
    for k in range(5):
        atoms = bulk("Cu", cubic=True).repeat((2, 2, 1 + k % 2))
        if k == 3:
            atoms = fcc111("Cu", (2, 2, 2), vacuum=4.0)
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        if not atoms.pbc.all():
            atoms.calc.results.pop("stress")
        atoms.info["config_type"] = "slab" if k == 3 else "bulk"
        frames.append(atoms)
    path = tmp_path / "in.extxyz"
    write(path, frames)
    return path


def test_round_trip_exact(labelled_file, tmp_path):
    ds = read_dataset(labelled_file)
    store = pack_frames(iter_frames(labelled_file), tmp_path / "s.store")
    assert len(store) == len(ds) and store.n_atoms == ds.n_atoms
    assert store.labels == ("energy", "forces", "stress")
    for a, b in zip(ds, store):
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.forces, b.forces)
        np.testing.assert_array_equal(a.cell, b.cell)
        np.testing.assert_array_equal(a.pbc, b.pbc)
        assert a.energy == b.energy
        assert (a.stress is None) == (b.stress is None)
        if a.stress is not None:
            np.testing.assert_array_equal(a.stress, b.stress)
        assert a.info["config_type"] == b.info["config_type"]


def test_arrays_are_memory_mapped_and_batches_cover_all(labelled_file, tmp_path):
    store = pack_frames(iter_frames(labelled_file), tmp_path / "s.store")
    reopened = open_store(tmp_path / "s.store")
    assert isinstance(reopened.array("positions"), np.memmap)
    batches = list(reopened.iter_batches(frames_per_batch=2))
    assert [len(b["offsets"]) - 1 for b in batches] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([b["positions"] for b in batches]),
                                  np.asarray(store.array("positions")))
    np.testing.assert_array_equal(np.concatenate([b["energy"] for b in batches]),
                                  [f.energy for f in store])


def test_truncated_file_is_detected(labelled_file, tmp_path):
    pack_frames(iter_frames(labelled_file), tmp_path / "s.store")
    f = tmp_path / "s.store" / "positions.bin"
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(DataError, match="positions.bin.*truncated or tampered"):
        open_store(tmp_path / "s.store")


def test_tampered_meta_is_detected(labelled_file, tmp_path):
    pack_frames(iter_frames(labelled_file), tmp_path / "s.store")
    meta = tmp_path / "s.store" / "meta.json"
    m = json.loads(meta.read_text())
    m["arrays"]["forces"]["shape"][0] += 1
    meta.write_text(json.dumps(m))
    with pytest.raises(DataError, match="forces.bin"):
        open_store(tmp_path / "s.store")
    meta.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        open_store(tmp_path / "s.store")


def test_partial_labels_leave_nothing_on_disk(tmp_path):
    good = Frame(np.array([29, 29]), np.array([[0.0, 0, 0], [2, 0, 0]]), np.zeros((3, 3)),
                 np.zeros(3, bool), energy=1.0, source=("x.extxyz", 0))
    bad = Frame(good.numbers, good.positions, good.cell, good.pbc, source=("x.extxyz", 1))
    with pytest.raises(DataError, match="partial labels") as info:
        pack_frames([good, bad], tmp_path / "s.store")
    assert info.value.frame == 1
    assert list(tmp_path.iterdir()) == []


def test_not_a_store(tmp_path):
    with pytest.raises(DataError, match="not an ml4m store"):
        open_store(tmp_path)

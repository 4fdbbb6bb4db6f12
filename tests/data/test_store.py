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


@pytest.fixture
def store(labelled_file, tmp_path):
    pack_frames(iter_frames(labelled_file), tmp_path / "s.store")
    return tmp_path / "s.store"


def _edit_meta(store, edit):
    meta = store / "meta.json"
    meta.write_text(json.dumps(edit(json.loads(meta.read_text()))))


def _set(m, keys, value):
    target = m
    for k in keys[:-1]:
        target = target[k]
    target[keys[-1]] = value
    return m


@pytest.mark.parametrize("keys,value,match", [
    ((), [1, 2], r"meta.json must be a mapping"),
    (("n_frames",), "five", r"meta.json 'n_frames' must be an integer"),
    (("n_atoms",), -3, r"meta.json 'n_atoms' must be an integer in"),
    (("labels",), "energy", r"meta.json 'labels' must be a list"),
    (("labels",), ["energy", "charge"], r"unknown label\(s\) \['charge'\]"),
    (("arrays",), [], r"meta.json 'arrays' must be a mapping"),
    (("arrays", "../../evil"), {"dtype": "<f8", "shape": [1]}, r"unknown key\(s\) \['../../evil'\]"),
    (("arrays", "positions", "dtype"), "<f4", r"positions.bin: array 'positions' must be <f8 of shape"),
    (("arrays", "positions", "dtype"), "O", r"array 'positions' must be <f8"),
    (("arrays", "cell", "shape"), [5, 9], r"cell.bin: array 'cell' must be <f8 of shape \[5, 3, 3\]"),
    (("arrays", "energy"), 3, r"meta.json 'arrays'.energy must be a mapping"),
    (("config_types",), [], r"array 'config_type' holds codes outside"),
    (("pair_minima",), [], r"meta.json 'pair_minima' must be a mapping"),
    (("pair_minima", "cutoff"), -1.0, r"'pair_minima' cutoff must be"),
    (("pair_minima", "pairs", "Cu-Cu"), 3.2, r"'pair_minima' Cu-Cu must be"),
    (("pair_minima", "pairs", "Cu-Qq"), 2.0, r"pair 'Cu-Qq'; expected 'A-B'"),
    (("pair_minima", "pairs", "Cu-H"), 1.0, r"pair 'Cu-H'; expected 'A-B' .* lighter first"),
])
def test_malformed_meta_names_store_and_array(store, keys, value, match):
    _edit_meta(store, lambda m: value if not keys else _set(m, keys, value))
    with pytest.raises(DataError, match=match) as info:
        open_store(store)
    assert str(store) in str(info.value)


def test_missing_array_file_and_offsets(store):
    offsets = store / "offsets.bin"
    good = offsets.read_bytes()
    bad = np.frombuffer(good, "<i8").copy()
    bad[[1, 2]] = bad[[2, 1]]  # not monotone, same size
    offsets.write_bytes(bad.tobytes())
    with pytest.raises(DataError, match=r"s.store: array 'offsets' must rise from 0 to n_atoms"):
        open_store(store)
    offsets.unlink()
    with pytest.raises(DataError, match=r"offsets.bin: array file has -1 bytes"):
        open_store(store)


def test_non_finite_values_named_on_read(store):
    positions = store / "positions.bin"
    p = np.frombuffer(positions.read_bytes(), "<f8").copy().reshape(-1, 3)
    p[40, 1] = np.nan  # frame 1, atom 24 (frames 0 and 1 have 16 and 32 atoms)
    positions.write_bytes(p.tobytes())
    s = open_store(store)
    assert s[0].n_atoms == 16
    with pytest.raises(DataError, match=r"s.store, frame 1: positions are not finite .* atom 24"):
        s[1]
    with pytest.raises(DataError, match=r"array 'positions' \(frames 0 to 1\) contains a non-finite"):
        list(s.iter_batches(2))

"""Reading and validating labelled structures: label keys, and every bad input."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.io import write

from ml4m.data import LabelKeys, read_dataset
from ml4m.errors import DataError

HEADER = 'Lattice="{a} 0 0 0 {a} 0 0 0 {a}" Properties=species:S:1:pos:R:3{props} pbc="T T T"'


def _xyz(symbols, positions, a=10.0, props="", extra="", rows_extra=None):
    lines = [str(len(symbols)), HEADER.format(a=a, props=props) + (" " + extra if extra else "")]
    for k, (s, p) in enumerate(zip(symbols, positions)):
        row = f"{s} {p[0]} {p[1]} {p[2]}"
        if rows_extra is not None:
            row += " " + " ".join(str(v) for v in rows_extra[k])
        lines.append(row)
    return "\n".join(lines) + "\n"


def _emt_frames(n=3, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = bulk("Cu", cubic=True).repeat(2)
        atoms.rattle(0.05, seed=int(rng.integers(1000)))
        atoms.calc = EMT()
        atoms.get_potential_energy()
        frames.append(atoms)
    return frames


def test_standard_keys_roundtrip(tmp_path):
    frames = _emt_frames()
    write(tmp_path / "a.extxyz", frames)
    ds = read_dataset(tmp_path / "a.extxyz")
    assert len(ds) == 3
    for atoms, fr in zip(frames, ds):
        assert fr.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(fr.forces, atoms.get_forces(), atol=1e-7)
        np.testing.assert_allclose(fr.stress, atoms.get_stress(), atol=1e-10)
    assert ds[1].source == (str(tmp_path / "a.extxyz"), 1)


@pytest.mark.parametrize("prefix", ["REF_", "DFT_"])
def test_prefixed_keys(tmp_path, prefix):
    frames = _emt_frames(2)
    out = []
    for atoms in frames:
        a = atoms.copy()
        a.info[f"{prefix}energy"] = atoms.get_potential_energy()
        a.arrays[f"{prefix}forces"] = atoms.get_forces()
        a.info[f"{prefix}stress"] = atoms.get_stress()
        out.append(a)
    write(tmp_path / "p.extxyz", out)
    ds = read_dataset(tmp_path / "p.extxyz")
    assert ds[0].energy == pytest.approx(frames[0].get_potential_energy())
    np.testing.assert_allclose(ds[1].forces, frames[1].get_forces(), atol=1e-7)
    np.testing.assert_allclose(ds[1].stress, frames[1].get_stress(), atol=1e-10)
    assert f"{prefix}energy" not in ds[0].info


def test_explicit_keys_and_virial(tmp_path):
    atoms = _emt_frames(1)[0]
    a = atoms.copy()
    a.info["my_e"] = atoms.get_potential_energy()
    a.arrays["my_f"] = atoms.get_forces()
    vol = atoms.get_volume()
    s = atoms.get_stress(voigt=False)
    a.info["my_virial"] = (-s * vol).ravel()
    write(tmp_path / "k.extxyz", a)
    ds = read_dataset(tmp_path / "k.extxyz", keys=LabelKeys(energy="my_e", forces="my_f", virial="my_virial"))
    assert ds[0].energy == pytest.approx(atoms.get_potential_energy())
    np.testing.assert_allclose(ds[0].stress, atoms.get_stress(), atol=1e-10)


def test_other_ase_format(tmp_path):
    from ase.db import connect

    frames = _emt_frames(2)
    with connect(tmp_path / "x.db") as db:
        for a in frames:
            db.write(a)
    ds = read_dataset(tmp_path / "x.db")
    assert len(ds) == 2
    assert ds[1].energy == pytest.approx(frames[1].get_potential_energy())


def test_info_metadata_kept(tmp_path):
    a = molecule("H2O")
    a.info["config_type"] = "md_300K"
    a.info["T_K"] = 300
    write(tmp_path / "m.extxyz", a)
    ds = read_dataset(tmp_path / "m.extxyz")
    assert ds[0].info == {"config_type": "md_300K", "T_K": 300}
    assert ds[0].energy is None and ds[0].forces is None


# ---- bad input: each message names the file, the frame and the problem ----------------

GOOD = ["Cu", "Cu"], [[0, 0, 0], [1.8, 1.8, 0]]


@pytest.mark.parametrize(
    "name,text,frame,match",
    [
        ("empty", "", None, "file is empty"),
        ("garbage", "this is not xyz\n", 0, "line 1: expected the atom count of frame 0"),
        ("truncated", _xyz(*GOOD) + "3\nProperties=species:S:1:pos:R:3\nCu 0 0 0\n", 1, r"declares 3 atoms \(line 5\) but the file ends after 1 atom lines"),
        ("unknown_symbol", _xyz(["Qq", "Cu"], GOOD[1]), 0, "unknown element"),
        ("dummy_atom", _xyz(["X", "Cu"], GOOD[1]), 0, "unknown element on atom 0"),
        ("nan_energy", _xyz(*GOOD, extra="energy=nan"), 0, r"energy contains a non-finite value \(nan\)"),
        ("inf_forces", _xyz(*GOOD, props=":forces:R:3", extra="energy=1.0", rows_extra=[[0, 0, 0], [0, "inf", 0]]), 0, "forces are not finite .* atom 1"),
        ("nan_position", _xyz(["Cu", "Cu"], [[0, 0, 0], ["nan", 0, 0]]), 0, "positions are not finite"),
        ("close_atoms", _xyz(["Cu", "Cu"], [[0, 0, 0], [0.3, 0, 0]]), 0, r"atoms 0 and 1 are 0.300 Angstrom apart"),
        ("close_images", _xyz(["Cu", "Cu"], [[0.1, 0, 0], [9.8, 0, 0]]), 0, r"0.300 Angstrom apart"),
        ("zero_volume", _xyz(*GOOD, a=0.0), 0, "zero volume"),
        ("forces_shape", _xyz(*GOOD, props=":forces:R:2", extra="energy=1.0", rows_extra=[[0, 0], [0, 0]]), 0, r"forces have shape \(2, 2\), expected \(2, 3\)"),
        ("stress_shape", _xyz(*GOOD, extra='energy=1.0 REF_stress="1 2 3 4"'), 0, r"stress \(key 'REF_stress'\) has shape \(4,\)"),
        ("text_energy", _xyz(*GOOD, extra="energy=abc"), 0, r"energy must be numeric, got 'abc'"),
        ("text_ref_energy", _xyz(*GOOD, extra="REF_energy=abc"), 0, r"energy \(key 'REF_energy'\) must be numeric"),
        ("text_forces", _xyz(*GOOD, props=":forces:R:3", extra="energy=1.0", rows_extra=[[0, 0, 0], [0, "abc", 0]]), 0, r"atom 1, column forces\[1\]: 'abc' is not a valid value"),
        ("huge_atom_count", _xyz(*GOOD) + _xyz(*GOOD).replace("2\n", "999999999999\n", 1), 1, r"atom count \(line 5\) 999999999999 needs at least"),
        ("bad_count_frame1", _xyz(*GOOD) + _xyz(*GOOD).replace("2\n", "two\n", 1), 1, "line 5: expected the atom count of frame 1, got 'two'"),
        ("negative_count", _xyz(*GOOD).replace("2\n", "-2\n", 1), 0, "atom count .* must be an integer in"),
        ("far_position", _xyz(["Cu", "Cu"], [[0, 0, 0], [1e30, 0, 0]]), 0, r"position of atom 1 \[1e\+30, 0.0, 0.0\] lies beyond 1e\+06"),
        ("nan_cell", _xyz(*GOOD, a="nan"), 0, "cell is not a finite 3x3 matrix"),
        ("huge_cell", _xyz(*GOOD, a=1e30), 0, "cell entries exceed"),
        ("singular_cell", _xyz(*GOOD).replace('Lattice="10.0 0 0 0 10.0 0', 'Lattice="10.0 0 0 10.0 0 0'), 0, "periodic cell has zero volume"),
        ("text_after_blank", _xyz(*GOOD) + "\n" + _xyz(*GOOD), 1, "blank line 5 is followed by more text"),
        ("huge_properties", _xyz(*GOOD, props=":forces:R:99999999999"), 0, "Properties declares 100000000003 columns"),
        ("stress_ase_rejects", _xyz(*GOOD, extra='energy=1.0 stress="1 2 3 4"'), 0, "comment line cannot be parsed.*stress"),
    ],
)
def test_bad_input_names_file_and_frame(tmp_path, name, text, frame, match):
    path = tmp_path / f"{name}.extxyz"
    path.write_text(text)
    with pytest.raises(DataError, match=match) as info:
        read_dataset(path)
    assert info.value.path == str(path)
    assert info.value.frame == frame
    assert str(path) in str(info.value)
    if frame is not None:
        assert f"frame {frame}" in str(info.value)


def test_far_but_sane_coordinates_are_read(tmp_path):
    # two molecules 1e5 Angstrom apart are unusual, not absurd: read (the neighbour list's
    # business), unlike 1e30 above
    path = tmp_path / "far.extxyz"
    atoms = molecule("H2O") + molecule("H2O")
    atoms.positions[3:] += 1e5
    write(path, atoms)
    assert np.abs(read_dataset(path)[0].positions).max() > 9e4


def test_trailing_blank_lines_are_fine(tmp_path):
    path = tmp_path / "trail.extxyz"
    path.write_text(_xyz(*GOOD) + "\n\n  \n")
    assert len(read_dataset(path)) == 1


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_dataset(tmp_path / "nope.extxyz")


def test_unknown_format(tmp_path):
    p = tmp_path / "data.unknownext"
    p.write_text("hello\n")
    with pytest.raises(DataError, match="format|parse"):
        read_dataset(p)


def test_partial_labels(tmp_path):
    text = _xyz(*GOOD, extra="energy=1.0") + _xyz(*GOOD) + _xyz(*GOOD, extra="energy=2.0")
    p = tmp_path / "partial.extxyz"
    p.write_text(text)
    with pytest.raises(DataError, match="energy label missing.*partial") as info:
        read_dataset(p)
    assert info.value.frame == 1


def test_required_label_missing(tmp_path):
    p = tmp_path / "noforces.extxyz"
    p.write_text(_xyz(*GOOD, extra="energy=1.0"))
    assert len(read_dataset(p)) == 1
    with pytest.raises(DataError, match=r"required label 'forces' is missing \(looked for "
                       r"keys forces, REF_forces, ") as info:
        read_dataset(p, require=("energy", "forces"))
    assert info.value.frame == 0
    # an explicit key (a baseline's, say) is named
    with pytest.raises(DataError, match=r"'forces' is missing \(looked for key 'gfn2_forces'\)"):
        read_dataset(p, keys=LabelKeys(forces="gfn2_forces"), require=("forces",))


def test_stress_may_be_absent_on_non_periodic_frames(tmp_path):
    bulk_atoms, = _emt_frames(1)
    slab = bulk_atoms.copy()
    slab.pbc = (True, True, False)
    slab.calc = EMT()
    slab.get_potential_energy()
    slab.calc.results.pop("stress", None)  # undefined without full periodicity
    # a non-periodic frame has no stress; the data set is still consistent
    write(tmp_path / "mixed.extxyz", [bulk_atoms, slab])
    ds = read_dataset(tmp_path / "mixed.extxyz", require=("energy", "forces", "stress"))
    assert ds[0].stress is not None and ds[1].stress is None


def test_index_selection_names_the_file_frame(tmp_path):
    """With index='2:', the frames read and the errors carry the file's frame numbers."""
    path = tmp_path / "sel.extxyz"
    bad = _xyz(["Cu", "Cu"], [[0, 0, 0], [0.3, 0, 0]])
    path.write_text(_xyz(*GOOD) * 2 + _xyz(*GOOD) + bad)
    ds = read_dataset(path, index="2:3")
    assert [f.source[1] for f in ds] == [2]
    with pytest.raises(DataError, match="0.300 Angstrom apart") as info:
        read_dataset(path, index="2:")
    assert info.value.frame == 3


def test_unknown_required_label_is_a_parameter_error(tmp_path):
    from ml4m.errors import ConfigError

    path = tmp_path / "a.extxyz"
    path.write_text(_xyz(*GOOD))
    with pytest.raises(ConfigError, match=r"require names unknown label\(s\) \['charge'\]"):
        read_dataset(path, require=("charge",))


@pytest.mark.parametrize("kwargs,match", [
    ({"min_distance": -1.0}, r"min_distance must be >= 0.0, got -1.0"),
    ({"min_distance": float("nan")}, "min_distance must be a finite number"),
    ({"index": 0}, "index must be a non-empty string"),
])
def test_bad_reader_parameters(tmp_path, kwargs, match):
    from ml4m.errors import ConfigError

    path = tmp_path / "a.extxyz"
    path.write_text(_xyz(*GOOD))
    with pytest.raises(ConfigError, match=match):
        read_dataset(path, **kwargs)


def test_a_store_where_a_structure_file_is_read_is_named(tmp_path):
    """Every reader of structure files (read_dataset, read_structure, iter_frames) says
    that a packed store is one, instead of ASE's parse error."""
    from ml4m.data import Frame, pack_frames, read_structure

    atoms, = _emt_frames(1)
    pack_frames([Frame.from_atoms(atoms, energy=1.0)], tmp_path / "s.store")
    for read in (read_dataset, read_structure):
        with pytest.raises(DataError, match=r"s.store: is a packed store \(ml4m data pack\)"):
            read(tmp_path / "s.store")

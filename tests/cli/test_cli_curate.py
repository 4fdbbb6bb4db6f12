"""``ml4m curate`` end to end on the embedded Cu data; bad input: exit 2, one line, nothing written."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest

from ml4m.cli.main import main
from ml4m.data import default_dataset, pack_frames, write_extxyz


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    d = tmp_path_factory.mktemp("curate")
    write_extxyz(default_dataset()[::4], d / "pool.extxyz")
    return d / "pool.extxyz"


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("method", ["fps", "doptimal"])
def test_curate_writes_subset_indices_and_plot(capsys, tmp_path, pool, method):
    out = tmp_path / "sub.extxyz"
    code, stdout, _ = run_cli(capsys, "curate", pool, "--n", "0.25", "--method", method,
                              "--seed", "1", "--json", "-o", out)
    assert code == 0
    summary = json.loads(stdout)
    n_pool = len(ase.io.read(pool, ":"))
    assert summary["n_pool"] == n_pool and summary["n_selected"] == round(0.25 * n_pool)
    assert summary["method"] == method and summary["seconds"] > 0
    idx = summary["indices"]
    assert len(set(idx)) == len(idx) == summary["n_selected"]
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "sub_indices.txt", dtype=int), idx)
    assert (tmp_path / "sub_projection.png").read_bytes()[:4] == b"\x89PNG"
    frames, subset = ase.io.read(pool, ":"), ase.io.read(out, ":")
    for k, atoms in zip(idx, subset):  # the picked frames, in pick order, labels kept
        np.testing.assert_allclose(atoms.positions, frames[k].positions)
        assert atoms.get_potential_energy() == pytest.approx(frames[k].get_potential_energy())
        np.testing.assert_allclose(atoms.get_forces(), frames[k].get_forces())
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "sub.extxyz", "sub_indices.txt", "sub_projection.png"]


def test_curate_a_store_picks_as_from_the_file(capsys, tmp_path, pool):
    store = pack_frames(default_dataset()[::4], tmp_path / "p.store")
    picks = []
    for src, name in ((pool, "a.extxyz"), (store.path, "b.extxyz")):
        code, stdout, _ = run_cli(capsys, "curate", src, "--n", "6", "--method", "density",
                                  "--json", "-o", tmp_path / name)
        assert code == 0
        picks.append(json.loads(stdout)["indices"])
    assert picks[0] == picks[1]


BAD = {
    "n zero": (["{pool}", "--n", "0"], "n must be an integer in [1, inf], got 0"),
    "n above pool": (["{pool}", "--n", "1000"],
                     "n = 1000 frames asked for, but the pool holds only 44"),
    "n not a number": (["{pool}", "--n", "ten"], "n must be a frame count or a fraction"),
    "unknown method": (["{pool}", "--n", "3", "--method", "kmeans"], "--method must be one of"),
    "output is the pool": (["{pool}", "--n", "3", "-o", "{pool}"], "is the input"),
    "unreadable pool": (["{garbage}", "--n", "3"], "garbage.extxyz"),
    "missing pool": (["{missing}", "--n", "3"], "no such file"),
    "memory limit": (["{pool}", "--n", "3", "--max-memory", "10KB"], "would need about"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exit_2_one_line_nothing_written(capsys, tmp_path, pool, case):
    argv, message = BAD[case]
    garbage = tmp_path / "garbage.extxyz"
    garbage.write_bytes(bytes(range(256)) * 4)
    names = {"pool": pool, "garbage": garbage, "missing": tmp_path / "nope.extxyz"}
    argv = [a.format(**names) for a in argv]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "sub.extxyz")]
    before = sorted(p.name for p in tmp_path.iterdir())
    pool_bytes = pool.read_bytes()
    code, out, err = run_cli(capsys, "curate", *argv)
    assert code == 2, err
    assert out == "" and len(err.strip().splitlines()) == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert pool.read_bytes() == pool_bytes


def test_doptimal_from_a_model_starts_where_it_is_least_sure(capsys, tmp_path, pool):
    from ml4m.descriptors import ACE
    from ml4m.models.linear import LinearACE

    frames = default_dataset()[::4]
    model = LinearACE(ACE(["Cu"], r_cut=4.0, n_max=3, l_max=2, total_degree=5),
                      uncertainty="posterior").fit(frames[::4])
    model.save(tmp_path / "m.ml4m")
    code, stdout, _ = run_cli(capsys, "curate", pool, "--n", "3", "--method", "doptimal",
                              "--model", tmp_path / "m.ml4m", "--json", "-o", tmp_path / "s.xyz")
    assert code == 0
    sigma = model.predict(frames, uncertainty=True).energy_sigma
    per_atom = sigma / np.array([len(f) for f in frames])
    assert json.loads(stdout)["indices"][0] == int(np.argmax(per_atom))


def test_curate_on_environments(capsys, tmp_path, pool):
    code, stdout, _ = run_cli(capsys, "curate", pool, "--n", "5", "--level", "atoms", "--json",
                              "-o", tmp_path / "s.extxyz")
    assert code == 0
    idx = json.loads(stdout)["indices"]
    assert len(set(idx)) == 5 and len(ase.io.read(tmp_path / "s.extxyz", ":")) == 5


def test_the_subset_keeps_every_array_and_info_key(capsys, tmp_path):
    """A file's frames are written as the file has them: per-atom arrays beside the
    labels (a baseline's forces for delta learning) and info keys survive."""
    frames = ase.io.read(default_dataset_path_str(), "::8")
    for k, atoms in enumerate(frames):
        atoms.arrays["gfn2_forces"] = np.full((len(atoms), 3), float(k))
        atoms.info["frame_id"] = k
    ase.io.write(tmp_path / "pool.extxyz", frames)
    code, stdout, _ = run_cli(capsys, "curate", tmp_path / "pool.extxyz", "--n", "5", "--json",
                              "-o", tmp_path / "sub.extxyz")
    assert code == 0
    subset = ase.io.read(tmp_path / "sub.extxyz", ":")
    assert [a.info["frame_id"] for a in subset] == json.loads(stdout)["indices"]
    for atoms in subset:
        k = atoms.info["frame_id"]
        np.testing.assert_array_equal(atoms.arrays["gfn2_forces"], float(k))
        np.testing.assert_allclose(atoms.get_forces(), frames[k].get_forces())


def default_dataset_path_str() -> str:
    from ml4m.data import default_dataset_path

    return str(default_dataset_path())

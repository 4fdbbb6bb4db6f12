"""``ml4m analyze`` in-process: exit codes, JSON keys, output files, bad input."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import gaussian_mixture

from ml4m.cli.main import main


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    X, _ = gaussian_mixture(300, 3, 2, 7.0, 0)
    folder = tmp_path_factory.mktemp("tables")
    np.save(folder / "x.npy", X)
    np.savez(folder / "x.npz", features=X, other=X[:, :1])
    np.savetxt(folder / "x.csv", X, delimiter=",", header="a,b", comments="")
    np.savetxt(folder / "x.txt", X)
    return folder


def _json(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_json_keys_and_files(table, tmp_path, capsys):
    out_dir = tmp_path / "res"
    code, out, _ = _json(capsys, ["analyze", str(table / "x.npy"), "--density", "pak",
                                  "--cluster", "adp", "--z", "1.65", "--maxk", "40",
                                  "--json", "-o", str(out_dir)])
    assert code == 0
    assert out.count("\n") == 1
    d = json.loads(out)
    assert d["n"] == 900 and d["dim"] == 2
    assert d["id"]["method"] == "twonn" and abs(d["id"]["estimate"] - 2) < 0.3 and d["id"]["error"] > 0
    assert d["density"]["method"] == "pak" and np.isfinite(d["density"]["log_density_mean"])
    cl = d["clusters"]
    assert cl["method"] == "adp" and cl["n"] == 3 and sum(cl["sizes"]) == 900
    assert len(cl["centers"]) == 3 and all(isinstance(c, int) and 0 <= c < 900 for c in cl["centers"])
    assert d["seconds"] > 0
    labels = np.load(out_dir / "labels.npy")
    logd = np.load(out_dir / "log_density.npy")
    assert labels.shape == (900,) and logd.shape == (900,) and np.all(np.isfinite(logd))
    assert np.bincount(labels).tolist() == cl["sizes"]
    for png in ("id_scaling.png", "decision_graph.png", "dendrogram.png", "projection.png"):
        assert (out_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # no temporaries: only the ml4m output marker is hidden, and no folder is left beside
    assert [p.name for p in out_dir.iterdir() if p.name.startswith(".")] == [".ml4m-output.json"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert json.loads((out_dir / "summary.json").read_text())["clusters"]["n"] == 3


def test_minimal_json_has_no_density_or_clusters(table, capsys):
    code, out, _ = _json(capsys, ["analyze", str(table / "x.csv"), "--id", "gride", "--json"])
    d = json.loads(out)
    assert code == 0 and d["id"]["method"] == "gride" and d["n"] == 900
    assert "density" not in d and "clusters" not in d
    assert d["maxk"] == 100


@pytest.mark.parametrize("name,extra", [("x.npz", []), ("x.npz", ["--key", "features"]),
                                        ("x.txt", [])])
def test_formats(table, capsys, name, extra):
    code, out, _ = _json(capsys, ["analyze", str(table / name), "--maxk", "20", "--json",
                                  "--cluster", "dpc"] + extra)
    d = json.loads(out)
    assert code == 0 and d["dim"] == 2 and d["clusters"]["method"] == "dpc"
    assert d["clusters"]["n"] == 3


def test_human_output(table, capsys):
    code, out, _ = _json(capsys, ["analyze", str(table / "x.npy"), "--maxk", "20"])
    assert code == 0 and "intrinsic dimension (twonn)" in out


def _write(tmp_path, name, content):
    p = tmp_path / name
    if isinstance(content, np.ndarray):
        np.save(p, content)
    else:
        p.write_text(content)
    return p


def test_bad_inputs_exit_2(tmp_path, table, capsys):
    X = np.random.default_rng(0).normal(size=(50, 3))
    nan = X.copy()
    nan[7, 2] = np.nan
    cases = [
        (_write(tmp_path, "nan.npy", nan), [], "frame 7"),
        (_write(tmp_path, "inf.csv", "1,2\n3,inf\n4,5\n"), [], "frame 1"),
        (_write(tmp_path, "empty.csv", ""), [], "empty"),
        (_write(tmp_path, "blank.txt", "# only a comment\n"), [], "empty"),
        (_write(tmp_path, "vec.npy", X[:, 0].copy()), [], "2-D"),
        (_write(tmp_path, "const.npy", np.ones((30, 2))), [], "identical"),
        (_write(tmp_path, "small.npy", X), ["--maxk", "60"], "at least 61 points"),
        (_write(tmp_path, "ragged.csv", "1,2\n3\n"), [], "expected 2"),
        (_write(tmp_path, "text.csv", "a,b\n1,x\n"), [], "non-numeric"),
        (_write(tmp_path, "x.json", "{}"), [], "unknown table format"),
        (table / "x.npz", ["--key", "nope"], "no array 'nope'"),
        (tmp_path / "missing.npy", [], "not found"),
        (table / "x.npy", ["--maxk", "1"], "--maxk must be >= 2"),
        (table / "x.npy", ["--cluster", "adp", "--z", "-1"], "--z must be >= 0"),
    ]
    for path, extra, message in cases:
        code, out, err = _json(capsys, ["analyze", str(path), "--json"] + extra)
        assert code == 2, (path, err)
        assert message in err, (message, err)
        assert out == ""
        if path.name != "missing.npy" and "maxk must" not in message and "--z" not in message:
            assert str(path) in err


def test_duplicates_are_fine(tmp_path, capsys):
    X, _ = gaussian_mixture(200, 2, 2, 7.0, 3)
    X = np.vstack([X, X[:50], X[:50]])
    p = _write(tmp_path, "dup.npy", X)
    code, out, _ = _json(capsys, ["analyze", str(p), "--density", "pak", "--cluster", "adp",
                                  "--maxk", "30", "--json"])
    d = json.loads(out)
    assert code == 0 and np.isfinite(d["id"]["estimate"]) and np.isfinite(d["density"]["log_density_mean"])


def test_descriptor_without_module(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ml4m.descriptors", None)  # import fails
    p = _write(tmp_path, "s.extxyz", "1\n\nCu 0 0 0\n")
    code, _, err = _json(capsys, ["analyze", str(p), "--descriptor", "soap", "--json"])
    assert code == 2 and "--descriptor needs ml4m.descriptors" in err


def test_descriptor_path_uses_describe_frames(tmp_path, capsys, monkeypatch):
    import types

    calls = {}

    def describe_frames(frames, name, species=None, r_cut=5.0, n_max=8, l_max=6, average=False,
                        n_jobs=1, max_memory=None):
        calls.update(name=name, n=len(frames), average=average, species=species)
        rng = np.random.default_rng(0)
        return rng.normal(size=(120, 4)), np.zeros(120, int), np.full(120, 29)

    monkeypatch.setitem(sys.modules, "ml4m.descriptors",
                        types.SimpleNamespace(describe_frames=describe_frames))
    from ase import Atoms
    from ase.io import write

    p = tmp_path / "s.extxyz"
    write(p, [Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]]) for _ in range(3)])
    code, out, err = _json(capsys, ["analyze", str(p), "--descriptor", "soap", "--species", "Cu",
                                    "--average", "--maxk", "20", "--json"])
    assert code == 0, err
    assert calls == {"name": "soap", "n": 3, "average": True, "species": ["Cu"]}
    assert json.loads(out)["n"] == 120


def test_small_maxk_and_degenerate_data_answer_or_say_which_flag(tmp_path, table, capsys):
    # kNN and k* defaults shrink to a small --maxk instead of naming internal parameters
    for density in ("knn", "kstar", "pak"):
        code, out, err = _json(capsys, ["analyze", str(table / "x.npy"), "--maxk", "2",
                                        "--density", density, "--cluster", "adp", "--json"])
        assert code == 0, err
        assert "k_min" not in err and json.loads(out)["clusters"]["n"] >= 1
    # one Gaussian blob: one cluster (was IndexError)
    blob = _write(tmp_path, "blob.npy", np.random.default_rng(0).normal(size=(300, 5)))
    for method in ("adp", "dpc"):
        code, out, err = _json(capsys, ["analyze", str(blob), "--cluster", method, "--json"])
        assert code == 0, err
        assert json.loads(out)["clusters"]["n"] == 1
    # two points, 30 copies each: the message names the flag to change
    copies = _write(tmp_path, "copies.npy", np.repeat([[0.0, 0.0], [1.0, 1.0]], 30, axis=0))
    code, out, err = _json(capsys, ["analyze", str(copies), "--maxk", "10", "--json"])
    assert code == 2 and "--maxk" in err and "Traceback" not in err


def test_max_memory_and_output_folder_policy(tmp_path, table, capsys):
    x = str(table / "x.npy")
    code, _, err = _json(capsys, ["analyze", x, "--max-memory", "10kB", "--json"])
    assert code == 2 and "neighbour graph of 900 points" in err and "10 kB" in err
    assert "--max-memory" in err
    code, _, err = _json(capsys, ["analyze", x, "--max-memory", "lots", "--json"])
    assert code == 2 and "--max-memory must be a size" in err
    out_dir = tmp_path / "res"
    argv = ["analyze", x, "--maxk", "20", "--json", "-o", str(out_dir)]
    assert _json(capsys, argv)[0] == 0
    assert _json(capsys, argv)[0] == 0  # its own earlier output is replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, _, err = _json(capsys, argv[:-1] + [str(mine)])
    assert code == 2 and "--overwrite" in err and (mine / "notes.txt").read_text() == "keep me"
    assert _json(capsys, argv[:-1] + [str(mine), "--overwrite"])[0] == 0
    assert (mine / "labels.npy").exists() is False and (mine / "summary.json").exists()
    code, _, err = _json(capsys, ["analyze", x, "--json", "-o", str(table)])
    assert code == 2 and "contains the input" in err

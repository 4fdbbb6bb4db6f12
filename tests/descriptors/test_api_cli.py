"""describe_frames, averaging and the `ml4m describe` command."""

from __future__ import annotations

import json

import numpy as np
from ase.build import bulk

from ml4m.cli.main import main
from ml4m.descriptors import SOAP, describe_frames

from .conftest import alloy, cluster


def test_describe_frames_default_species_and_average():
    frames = [alloy(seed=1, repeat=(1, 1, 1)), cluster()]
    X, frame, numbers = describe_frames(frames, "soap", r_cut=3.5, n_max=2, l_max=2)
    assert X.shape[0] == 4 + len(frames[1])
    assert list(frame) == [0] * 4 + [1] * len(frames[1])
    Xa, fa, na = describe_frames(frames, "soap", r_cut=3.5, n_max=2, l_max=2, average=True)
    assert Xa.shape == (2, X.shape[1]) and list(fa) == [0, 1] and list(na) == [-1, -1]
    np.testing.assert_allclose(Xa[0], X[:4].mean(axis=0))


def test_soap_normalize_unit_norm():
    X = SOAP(["Cu"], r_cut=4.0, n_max=3, l_max=2, normalize=True).compute(
        bulk("Cu", "fcc", a=3.6)).features
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0)


def test_cli_writes_npz(tmp_path):
    f = tmp_path / "s.extxyz"
    for k, a in enumerate([alloy(seed=1, repeat=(1, 1, 1)), alloy(seed=2, repeat=(1, 1, 1))]):
        a.write(f, append=k > 0)
    out = tmp_path / "d.npz"
    rc = main(["describe", str(f), "--descriptor", "acsf", "--species", "Cu,Au",
               "--r-cut", "4", "-o", str(out), "--json"])
    assert rc == 0
    z = np.load(out)
    assert z["features"].shape[0] == 8 and list(z["frame"]) == [0] * 4 + [1] * 4
    meta = json.loads(str(z["meta"]))
    assert meta["descriptor"] == "acsf" and meta["species"] == ["Cu", "Au"]
    assert meta["r_cut"] == 4.0
    out2 = tmp_path / "avg.npz"
    assert main(["describe", str(f), "--descriptor", "ace", "--average", "-o", str(out2)]) == 0
    z2 = np.load(out2)
    assert z2["features"].shape[0] == 2 and list(z2["numbers"]) == [-1, -1]


def test_mbtr_counts_without_normalisation():
    from ml4m.descriptors import MBTR

    cell = alloy(seed=5, repeat=(1, 1, 1))
    raw = MBTR(["Cu", "Au"], r_cut=4.0, n_grid=8, normalize=False)
    per_atom = MBTR(["Cu", "Au"], r_cut=4.0, n_grid=8)
    X1, X8 = raw.compute(cell).features, raw.compute(cell.repeat((2, 2, 2))).features
    np.testing.assert_allclose(X1[0, :2], [np.sum(cell.numbers == 29), np.sum(cell.numbers == 79)])
    np.testing.assert_allclose(X8, 8 * X1, rtol=1e-12)
    np.testing.assert_allclose(per_atom.compute(cell).features * len(cell), X1, rtol=1e-12)


def test_analyze_structures_end_to_end(tmp_path, capsys):
    """`ml4m analyze FILE --descriptor soap` equals describing, then analysing the table."""
    from ml4m.analysis import Manifold
    from ml4m.data import default_dataset_path, read_dataset

    frames = list(read_dataset(default_dataset_path()))[:24]
    f = tmp_path / "cu.extxyz"
    for k, fr in enumerate(frames):
        fr.to_atoms().write(f, append=k > 0)
    argv = ["analyze", str(f), "--descriptor", "soap", "--r-cut", "4.5", "--n-max", "4",
            "--l-max", "3", "--maxk", "30", "--cluster", "adp", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    X = SOAP(["Cu"], r_cut=4.5, n_max=4, l_max=3).compute(frames).features
    assert out["n"] == X.shape[0] == sum(len(fr) for fr in frames)
    assert out["dim"] == X.shape[1]
    ref = Manifold(X, maxk=30).intrinsic_dimension("twonn")
    assert abs(out["id"]["estimate"] - ref.estimate) < 1e-9
    assert sum(out["clusters"]["sizes"]) == X.shape[0]

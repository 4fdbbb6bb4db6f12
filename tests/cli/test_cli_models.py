"""``ml4m fit`` and ``ml4m test``: outputs, JSON keys, and bad input with exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write

from ml4m.cli.main import main
from ml4m.data import default_dataset, write_extxyz


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fitdata")
    ds = default_dataset()
    write_extxyz(ds[::8], d / "train.extxyz")
    write_extxyz(ds[4::16], d / "valid.extxyz")
    return d


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("model,descriptor", [
    ("ace", {"r_cut": 4.0, "n_max": 4, "l_max": 2, "correlation_order": 3}),
    ("gp", {"r_cut": 4.0, "n_max": 3, "l_max": 3}),
])
def test_fit_then_test(files, tmp_path, capsys, model, descriptor):
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(json.dumps({"model": model, "train": str(files / "train.extxyz"),
                               "valid": str(files / "valid.extxyz"), "descriptor": descriptor,
                               "params": {"n_sparse": 30} if model == "gp" else {}}))
    code, out, _ = _run(capsys, "fit", cfg, "-o", tmp_path / "m.ml4m", "--json")
    assert code == 0
    metrics = json.loads(out)
    for name in ("m.ml4m", "metrics.json", "m_parity_energy.png", "m_parity_forces.png"):
        assert (tmp_path / name).is_file(), name
    assert metrics["valid"]["forces"]["mae_mev_per_a"] < 100
    code, out, _ = _run(capsys, "test", tmp_path / "m.ml4m", files / "valid.extxyz", "--json")
    assert code == 0
    result = json.loads(out)
    assert set(result) >= {"n_frames", "energy", "forces", "stress", "uncertainty"}
    assert set(result["energy"]) == {"mae_mev_per_atom", "rmse_mev_per_atom"}
    assert set(result["forces"]) == {"mae_mev_per_a", "rmse_mev_per_a"}
    assert "mae_gpa" in result["stress"]
    assert set(result["uncertainty"]) >= {"force_sigma_spearman", "energy_sigma_spearman"}
    # ml4m test agrees with the metrics written at fit time
    assert result["forces"]["mae_mev_per_a"] == pytest.approx(metrics["valid"]["forces"]["mae_mev_per_a"], rel=1e-6)


def test_fit_krr_property(tmp_path, capsys):
    frames = []
    rng = np.random.default_rng(0)
    for k in range(40):
        a = bulk("Cu", cubic=True, a=3.5 + 0.2 * rng.random()).repeat((1, 1, 2))
        a.symbols[rng.choice(len(a), size=rng.integers(0, 5), replace=False)] = "Au"
        a.calc = EMT()
        a.get_potential_energy()
        frames.append(a)
    write(tmp_path / "train.extxyz", frames[:30])
    write(tmp_path / "valid.extxyz", frames[30:])
    code, out, _ = _run(capsys, "fit", "--model", "krr", "--train", tmp_path / "train.extxyz",
                        "--valid", tmp_path / "valid.extxyz", "-o", tmp_path / "p.ml4m", "--json")
    assert code == 0
    metrics = json.loads(out)
    spread = np.std([a.get_potential_energy() / len(a) for a in frames[30:]])
    assert metrics["valid"]["property"]["mae"] < 0.5 * spread
    assert (tmp_path / "p_learning_curve.png").is_file()
    code, out, _ = _run(capsys, "test", tmp_path / "p.ml4m", tmp_path / "valid.extxyz", "--json")
    assert code == 0 and json.loads(out)["property"]["mae"] == pytest.approx(metrics["valid"]["property"]["mae"])


def test_fit_without_forces_exit_2(tmp_path, capsys):
    a = bulk("Cu", cubic=True).repeat(2)
    a.info["energy"] = 1.0
    write(tmp_path / "noforces.extxyz", [a, a])
    code, _, err = _run(capsys, "fit", "--model", "ace", "--train", tmp_path / "noforces.extxyz",
                        "-o", tmp_path / "m.ml4m")
    assert code == 2
    assert "noforces.extxyz, frame 0: required label 'forces' is missing" in err
    assert not (tmp_path / "m.ml4m").exists()


def test_test_with_unknown_species_exit_2(files, tmp_path, capsys):
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(json.dumps({"model": "ace", "train": str(files / "train.extxyz"),
                               "descriptor": {"r_cut": 3.5, "n_max": 2, "l_max": 1}}))
    assert _run(capsys, "fit", cfg, "-o", tmp_path / "m.ml4m", "--json")[0] == 0
    a = bulk("Cu", cubic=True).repeat(2)
    a.symbols[0] = "Au"
    a.calc = EMT()
    a.get_potential_energy()
    write(tmp_path / "alloy.extxyz", a)
    code, _, err = _run(capsys, "test", tmp_path / "m.ml4m", tmp_path / "alloy.extxyz")
    assert code == 2
    assert "alloy.extxyz, frame 0" in err and "['Au'] are not known to this model" in err


def test_tampered_model_exit_2(tmp_path, capsys, files):
    (tmp_path / "bad.ml4m").write_bytes(b"PK\x03\x04 not really a zip")
    code, _, err = _run(capsys, "test", tmp_path / "bad.ml4m", files / "valid.extxyz")
    assert code == 2 and "bad.ml4m" in err


@pytest.mark.parametrize("params,message", [
    ({"prior": "flat"}, "params.prior must be one of ('auto', 'smoothness', 'scale'), got 'flat'"),
    ({"smoothing": 2}, "params has unknown key(s) ['smoothing']; known: ['alpha'"),
])
def test_fit_bad_prior_settings_exit_2(files, tmp_path, capsys, params, message):
    """Prior settings of ``params`` are checked: a bad value or key is named, nothing written."""
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(json.dumps({"model": "ace", "train": str(files / "train.extxyz"),
                               "descriptor": {"r_cut": 4.0, "n_max": 3, "l_max": 2, "r_in": 1.5, "r0": 1.0},
                               "params": params}))
    code, _, err = _run(capsys, "fit", cfg, "-o", tmp_path / "m.ml4m")
    assert code == 2
    assert message in err
    assert not (tmp_path / "m.ml4m").exists()


def test_fit_pair_r_in_auto_and_bad_pairs(files, tmp_path, capsys):
    """``pair_r_in: auto`` starts each element pair's radial basis 0.25 A below its shortest
    training distance (saved with the model); a pair the model lacks is named (exit 2)."""
    import ml4m
    from ml4m.data import read_dataset, shortest_distances

    base = {"model": "ace", "train": str(files / "train.extxyz"),
            "descriptor": {"r_cut": 4.0, "n_max": 3, "l_max": 2, "correlation_order": 2,
                           "r_in": 1.0, "pair_r_in": "auto"}}
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(json.dumps(base))
    assert _run(capsys, "fit", cfg, "-o", tmp_path / "m.ml4m", "--json")[0] == 0
    shortest = shortest_distances(list(read_dataset(files / "train.extxyz")))["Cu-Cu"]
    assert 2.0 < shortest < 2.6
    model = ml4m.load(tmp_path / "m.ml4m")
    assert model.kind == "baselined"  # the default repulsive core around the linear model
    assert model.model_.descriptor.pair_r_in == {"Cu-Cu": round(shortest - 0.25, 3)}
    base["descriptor"]["pair_r_in"] = {"Cu-Au": 1.2}
    cfg.write_text(json.dumps(base))
    code, _, err = _run(capsys, "fit", cfg, "-o", tmp_path / "bad.ml4m")
    assert code == 2 and "'Cu-Au' is not a pair" in err
    assert not (tmp_path / "bad.ml4m").exists()


def test_fit_puts_a_repulsive_core_below_the_data(files, tmp_path, capsys):
    """By default a fitted potential repels atoms pushed closer than any training pair
    (ZBL core), and predicts the training data exactly as without the core."""
    import ase

    import ml4m

    base = {"model": "ace", "train": str(files / "train.extxyz"),
            "descriptor": {"r_cut": 4.0, "n_max": 3, "l_max": 2, "correlation_order": 2}}
    for name, extra in (("core", {}), ("bare", {"repulsion": False})):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(json.dumps({**base, **extra}))
        assert _run(capsys, "fit", cfg, "-o", tmp_path / f"{name}.ml4m", "--json")[0] == 0
    core, bare = ml4m.load(tmp_path / "core.ml4m"), ml4m.load(tmp_path / "bare.ml4m")
    assert core.kind == "baselined" and bare.kind == "linear_ace"
    frames = list(ml4m.data.read_dataset(files / "train.extxyz"))[:3]
    np.testing.assert_allclose(core.predict(frames).forces, bare.predict(frames).forces,
                               atol=1e-8)
    dimer = [ase.Atoms("Cu2", positions=[[0, 0, 0], [0, 0, d]], cell=np.eye(3) * 20, pbc=False)
             for d in (0.8, 1.2)]
    e_core = core.predict(dimer).energy
    assert e_core[0] - e_core[1] > 10.0  # eV: ZBL between two Cu nuclei at 0.8 vs 1.2 A
    assert core.predict(dimer[:1]).forces[1, 2] > 10.0  # pushes the atoms apart


def test_test_on_a_store_equals_the_test_on_its_file(files, tmp_path, capsys):
    """`ml4m test` reads a packed store as it reads the file packed into it; a delta model,
    whose baseline labels only a file holds, is refused with the store named."""
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(json.dumps({"model": "ace", "train": str(files / "train.extxyz"),
                               "descriptor": {"r_cut": 4.0, "n_max": 3, "l_max": 2,
                                              "correlation_order": 2}}))
    assert _run(capsys, "fit", cfg, "-o", tmp_path / "m.ml4m")[0] == 0
    assert _run(capsys, "data", "pack", files / "valid.extxyz", "-o", tmp_path / "v.store")[0] == 0
    reports = []
    for data in (files / "valid.extxyz", tmp_path / "v.store"):
        code, out, _ = _run(capsys, "test", tmp_path / "m.ml4m", data, "--json")
        assert code == 0
        reports.append(json.loads(out))
    for q, key in (("energy", "mae_mev_per_atom"), ("forces", "mae_mev_per_a"),
                   ("stress", "mae_gpa")):
        assert reports[1][q][key] == pytest.approx(reports[0][q][key], rel=1e-12)
    assert reports[1]["n_frames"] == reports[0]["n_frames"]

    from ml4m.data import read_dataset
    from ml4m.errors import DataError
    from ml4m.models.baseline import Baselined, LabelBaseline, attach_baseline_labels

    delta = Baselined(ml4m_load(tmp_path / "m.ml4m"),
                      LabelBaseline())
    with pytest.raises(DataError, match=r"v.store: is a packed store \(ml4m data pack\)"):
        attach_baseline_labels(delta, list(read_dataset(files / "valid.extxyz")),
                               tmp_path / "v.store")


def ml4m_load(path):
    import ml4m

    return ml4m.load(path)

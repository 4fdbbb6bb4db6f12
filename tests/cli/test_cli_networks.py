"""``ml4m fit --model bpnn|mpnn``: outputs, the saved network in test and md, a run killed
with SIGKILL resumed to the same model, bad training settings with exit code 2."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from ml4m.cli.main import main
from ml4m.data import Dataset, write_extxyz
from ml4m.models.registry import fit_choices
from models.toy_potentials import emt_cu_frames, write_emt_cu_split

#: small, fast settings of each network kind
PARAMS = {"bpnn": {"hidden": [8], "r_cut": 4.0, "g2_params": [[0.5, 0.0], [2.0, 0.0]],
                   "g4_params": [[0.1, 1.0, 1.0], [0.1, 1.0, -1.0]]},
          "mpnn": {}}
NETWORK = next((m for m in PARAMS if m in fit_choices()), None)
pytestmark = pytest.mark.skipif(NETWORK is None, reason="neither bpnn nor mpnn is registered")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_emt_cu_split(tmp_path_factory.mktemp("netdata"), 12, 4)


def _config(path, files, **training):
    path.write_text(json.dumps({
        "model": NETWORK, "train": str(files / "train.extxyz"),
        "valid": str(files / "valid.extxyz"), "params": PARAMS[NETWORK],
        "training": {"batch_size": 4, "lr": 0.01, "max_epochs": 3, "checkpoint_every": 2,
                     **training}}))
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def fitted(files, tmp_path_factory):
    """An uninterrupted fit: its folder, config and metrics."""
    d = tmp_path_factory.mktemp("whole")
    cfg = _config(d / "fit.yaml", files)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["fit", str(cfg), "-o", str(d / "m.ml4m"), "--json"]) == 0
    return d, cfg, json.loads(out.getvalue())


def test_fit_writes_a_network_that_test_and_md_use(files, fitted, capsys):
    d, _, metrics = fitted
    for name in ("m.ml4m", "metrics.json", "m_parity_energy.png", "m_parity_forces.png",
                 "m_learning_curve.png", "m_training.csv"):
        assert (d / name).is_file(), name
    assert not (d / ".m.ckpt").exists()  # removed once the model is written
    assert metrics["training"]["epochs"] == 3 and metrics["training"]["steps"] == 9
    assert len((d / "m_training.csv").read_text().splitlines()) == 1 + 3
    assert set(metrics["valid"]) >= {"energy", "forces", "uncertainty"}
    code, out, err = _run(capsys, "test", d / "m.ml4m", files / "valid.extxyz", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["forces"]["mae_mev_per_a"] == pytest.approx(
        metrics["valid"]["forces"]["mae_mev_per_a"], rel=1e-9)
    code, out, err = _run(capsys, "md", d / "m.ml4m", files / "valid.extxyz", "--steps", 3,
                          "-o", d / "md.extxyz", "--json")
    assert code == 0, err
    assert json.loads(out)["steps"] == 3


def test_a_network_learns_the_residual_of_its_baseline(tmp_path, capsys):
    """Delta learning: with ``baseline:`` an EMT calculator and reference labels of 1.1 x
    EMT, the network learns 0.1 x EMT (its force scale says so), the saved model predicts
    the network plus EMT, and ``ml4m test`` scores the sum as the fit did."""
    import ml4m
    from ase.calculators.emt import EMT

    from ml4m.data import Frame
    from ml4m.models.baseline import Baselined

    def scaled(frames):  # reference labels 1.1 x EMT
        return [Frame(f.numbers, f.positions, f.cell, f.pbc, energy=1.1 * f.energy,
                      forces=1.1 * f.forces) for f in frames]

    train, valid = emt_cu_frames(12, 0), emt_cu_frames(4, 1)
    write_extxyz(Dataset(scaled(train)), tmp_path / "train.extxyz")
    write_extxyz(Dataset(scaled(valid)), tmp_path / "valid.extxyz")
    cfg = _config(tmp_path / "fit.yaml", tmp_path)
    spec = json.loads(cfg.read_text())
    cfg.write_text(json.dumps({**spec, "baseline": {"calculator": "emt"}}))
    code, out, err = _run(capsys, "fit", cfg, "-o", tmp_path / "d.ml4m", "--json")
    assert code == 0, err
    metrics = json.loads(out)
    model = ml4m.load(tmp_path / "d.ml4m")
    assert isinstance(model, Baselined) and model.model_.kind == NETWORK
    residual = 0.1 * np.concatenate([f.forces for f in train])  # (raw labels: 11x larger)
    assert float(model.model_.module_.scale) == pytest.approx(  # labels as extxyz keeps them
        np.sqrt(np.mean(residual**2)), rel=1e-6)
    frames = [Frame(f.numbers, f.positions, f.cell, f.pbc) for f in valid]
    total, inner = model.predict(frames), model.model_.predict(frames)
    emt_energy, emt_forces = [], []
    for f in frames:
        atoms = f.to_atoms(with_labels=False)
        atoms.calc = EMT()
        emt_energy.append(atoms.get_potential_energy())
        emt_forces.append(atoms.get_forces())
    np.testing.assert_allclose(total.energy, inner.energy + np.array(emt_energy), atol=1e-9)
    np.testing.assert_allclose(total.forces, inner.forces + np.concatenate(emt_forces), atol=1e-9)
    code, out, err = _run(capsys, "test", tmp_path / "d.ml4m", tmp_path / "valid.extxyz", "--json")
    assert code == 0, err
    assert json.loads(out)["forces"]["mae_mev_per_a"] == pytest.approx(
        metrics["valid"]["forces"]["mae_mev_per_a"], rel=1e-9)
    # a packed store is streamed, not relabelled: exit 2 naming it, nothing written
    assert main(["data", "pack", str(tmp_path / "train.extxyz"), "-o", str(tmp_path / "store")]) == 0
    cfg.write_text(json.dumps({**spec, "train": str(tmp_path / "store"),
                               "baseline": {"calculator": "emt"}}))
    code, out, err = _run(capsys, "fit", cfg, "-o", tmp_path / "s.ml4m")
    assert code == 2 and "not a packed store" in err and "store" in err
    assert not (tmp_path / "s.ml4m").exists()


def _shifted(frames, per_atom: float):
    """The frames' labels at another "level of theory": energies + ``per_atom`` eV per
    atom (another energy reference), the same forces."""
    from ml4m.data import Frame

    return [Frame(f.numbers, f.positions, f.cell, f.pbc, energy=f.energy + per_atom * len(f),
                  forces=f.forces) for f in frames]


def test_init_starts_from_a_fitted_network_with_its_own_energy_reference(fitted, tmp_path,
                                                                         capsys):
    """``--init``: the architecture and weights of the network started from; E0s refitted
    on the new data. With a vanishing rate the tuned network predicts the forces of the one
    it started from, and on data whose energies are shifted by 3 eV/atom it predicts
    energies shifted by 3 eV/atom. Trained for real, it moves from those weights."""
    import ml4m

    d, _, _ = fitted
    start = ml4m.load(d / "m.ml4m")
    train, valid = emt_cu_frames(12, 0), emt_cu_frames(4, 1)
    write_extxyz(Dataset(_shifted(train, 3.0)), tmp_path / "train.extxyz")
    write_extxyz(Dataset(_shifted(valid, 3.0)), tmp_path / "valid.extxyz")
    config = {"model": NETWORK, "train": str(tmp_path / "train.extxyz"),
              "valid": str(tmp_path / "valid.extxyz"), "init": str(d / "m.ml4m"),
              "training": {"batch_size": 4, "lr": 1e-14, "min_lr": 1e-15, "max_epochs": 1,
                           "ema_decay": None}}
    (tmp_path / "still.yaml").write_text(yaml.safe_dump(config))  # YAML's 1.0e-14
    code, out, err = _run(capsys, "fit", tmp_path / "still.yaml", "-o", tmp_path / "s.ml4m",
                          "--json")
    assert code == 0, err
    still = ml4m.load(tmp_path / "s.ml4m")
    inner, first = still.model_, start.model_  # inside their repulsive cores
    assert inner.get_params() == first.get_params()
    a, b = still.predict(valid), start.predict(valid)
    np.testing.assert_allclose(a.forces, b.forces, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.energy - b.energy, [3.0 * len(f) for f in valid], atol=2e-3)
    assert json.loads(out)["config"]["init"] == str(d / "m.ml4m")
    # trained for real (the first network's rate, flags as on the command line)
    config["training"] = {"batch_size": 4, "lr": 0.01, "max_epochs": 2}
    del config["init"]
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(config))
    code, out, err = _run(capsys, "fit", tmp_path / "tune.yaml", "--model", NETWORK,
                          "--init", d / "m.ml4m", "-o", tmp_path / "t.ml4m", "--json")
    assert code == 0, err
    tuned = ml4m.load(tmp_path / "t.ml4m")
    assert tuned.model_.get_params() == first.get_params()
    assert not np.allclose(tuned.predict(valid).forces, b.forces, atol=1e-6)


@pytest.fixture(scope="module")
def linear_model(files, tmp_path_factory):
    """A fitted linear ACE model file (not a network)."""
    path = tmp_path_factory.mktemp("ace") / "ace.ml4m"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["fit", "--model", "ace", "--train", str(files / "train.extxyz"),
                     "--search", "off", "-o", str(path), "--json"]) == 0
    return path


@pytest.mark.parametrize("config, match", [
    ({"params": "an architecture"}, "'params' and 'init' both set"),
    ({"model": "ace"}, "'init' .* applies to networks"),
    ({"init": "missing.ml4m"}, "missing.ml4m"),
    ({"init": "garbage.ml4m"}, "garbage.ml4m"),
    ({"init": "ace.ml4m"}, r"ace.ml4m: a 'linear_ace' model; init needs a fitted"),
    ({"init": "train.extxyz"}, "train.extxyz"),
])
def test_a_bad_init_exits_2_and_writes_nothing(files, linear_model, tmp_path, capsys, config,
                                               match):
    """A network to start from that is missing, not a model file, of another kind, or
    given beside ``params``; ``init`` for a linear model: exit 2, one line, no output."""
    import shutil

    (tmp_path / "garbage.ml4m").write_bytes(b"not a model")
    shutil.copy(files / "train.extxyz", tmp_path / "train.extxyz")
    shutil.copy(linear_model, tmp_path / "ace.ml4m")
    mapping = {"model": NETWORK, "train": str(tmp_path / "train.extxyz"),
               "init": str(tmp_path / "ace.ml4m"), **config}
    if "params" in mapping:  # a setting of the kind's own
        mapping["params"] = {"hidden": [4]} if NETWORK == "bpnn" else {"n_channels": 4}
    if not Path(mapping["init"]).is_absolute():
        mapping["init"] = str(tmp_path / mapping["init"])
    (tmp_path / "fit.yaml").write_text(json.dumps(mapping))
    code, _, err = _run(capsys, "fit", tmp_path / "fit.yaml", "-o", tmp_path / "m.ml4m")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert re.search(match, err), err
    assert not (tmp_path / "m.ml4m").exists()


def test_init_refuses_a_network_of_other_elements(fitted, tmp_path, capsys):
    """Data with an element the network started from never saw (Au beside Cu): exit 2
    naming both sets of elements."""
    from ml4m.data import Frame

    d, _, _ = fitted
    frames = emt_cu_frames(4, 2)
    alloy = []
    for f in frames:
        numbers = f.numbers.copy()
        numbers[0] = 79
        atoms = Frame(numbers, f.positions, f.cell, f.pbc).to_atoms(with_labels=False)
        from ase.calculators.emt import EMT

        atoms.calc = EMT()
        alloy.append(Frame(numbers, f.positions, f.cell, f.pbc,
                           energy=atoms.get_potential_energy(), forces=atoms.get_forces()))
    write_extxyz(Dataset(alloy), tmp_path / "alloy.extxyz")
    code, _, err = _run(capsys, "fit", "--model", NETWORK, "--train", tmp_path / "alloy.extxyz",
                        "--init", d / "m.ml4m", "-o", tmp_path / "m.ml4m")
    assert code == 2
    assert "'Cu', 'Au'" in err and "['Cu']" in err, err
    assert not (tmp_path / "m.ml4m").exists()


def test_a_network_trains_from_a_packed_store_inside_its_repulsive_core(files, tmp_path,
                                                                        capsys):
    """The default core needs no relabelling (it is zero on its own training frames): a
    packed store trains, and the saved core is the one fitted on the same frames read
    from the structure file."""
    import ml4m
    from ml4m.data import read_dataset
    from ml4m.models.baseline import Baselined, PairRepulsion

    assert main(["data", "pack", str(files / "train.extxyz"), "-o", str(tmp_path / "store")]) == 0
    cfg = _config(tmp_path / "fit.yaml", files)
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "train": str(tmp_path / "store")}))
    code, _, err = _run(capsys, "fit", cfg, "-o", tmp_path / "s.ml4m")
    assert code == 0, err
    model = ml4m.load(tmp_path / "s.ml4m")
    assert isinstance(model, Baselined) and model.model_.kind == NETWORK
    expect = PairRepulsion().fit(read_dataset(files / "train.extxyz")).r_in_
    assert model.baseline_.r_in_ == pytest.approx(expect, rel=1e-12)


def _fit_killed_at(cfg, model, marker, seconds: float = 180.0) -> None:
    """``ml4m fit CFG -o MODEL`` in a subprocess, SIGKILLed as soon as ``marker`` (a
    checkpoint) exists; asserts it does and that ``model`` was not written."""
    proc = subprocess.Popen([sys.executable, "-m", "ml4m", "fit", str(cfg), "-o", str(model),
                             "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + seconds
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists() and not model.exists(), proc.stderr.read().decode()


def _assert_same_networks(path, reference) -> None:
    """The network weights of two model files agree (1e-10 relative)."""
    got, whole = _module_arrays(path), _module_arrays(reference)
    assert set(got) == set(whole) and len(whole) > 0
    for k in whole:
        np.testing.assert_allclose(got[k], whole[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_killed_fit_resumes_to_the_uninterrupted_model(fitted, tmp_path, capsys):
    whole_dir, cfg, _ = fitted
    ckpt = tmp_path / ".m.ckpt"
    _fit_killed_at(cfg, tmp_path / "m.ml4m", ckpt)  # at step 2 of 9
    code, _, err = _run(capsys, "fit", cfg, "-o", tmp_path / "m.ml4m", "--resume", "--json")
    assert code == 0, err
    assert not ckpt.exists()
    _assert_same_networks(tmp_path / "m.ml4m", whole_dir / "m.ml4m")


@pytest.mark.parametrize("config,argv,match", [
    ({"training": {"lr_max": 1}}, [], r"training has unknown key\(s\) \['lr_max'\]"),
    ({"training": {"checkpoint": "x.ckpt"}}, [], r"training has unknown key\(s\) \['checkpoint'\]"),
    ({"training": {"weights": {"energy": -1}}}, [], "training.weights.energy must be >= 0.0"),
    ({"model": "ace", "training": {"lr": 0.1}}, [], "'training' applies to networks"),
    ({}, ["--resume"], r"\.m\.ckpt: no checkpoint to resume from"),
    ({"model": "ace"}, ["--resume"], "resume applies to networks"),
    ({"committee": 1}, [], r"committee must be an integer in \[2, 64\], got 1"),
    ({"model": "ace", "committee": 2}, [], "'committee' applies to networks"),
    ({"committee": 2}, ["--resume"], r"\.m\.committee\.json: no committee to resume"),
])
def test_bad_training_settings_exit_2(files, tmp_path, capsys, config, argv, match):
    cfg = _config(tmp_path / "fit.yaml", files)
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), **config}))
    mapping = json.loads(cfg.read_text())
    if config.get("model") == "ace":  # no network params; no training unless given
        del mapping["params"]
        mapping["training"] = config.get("training", {})
    cfg.write_text(json.dumps(mapping))
    code, _, err = _run(capsys, "fit", cfg, "-o", tmp_path / "m.ml4m", *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert re.search(match, err), err


@pytest.fixture
def one_thread():
    """One torch thread (the machine is shared: timings hold better), restored after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _budgeted_fit(folder, minutes: float, *flags: str) -> tuple[float, dict]:
    """``ml4m fit --model mpnn --max-minutes MINUTES FLAGS`` on 48 two-cell EMT Cu frames
    (one valid frame) written into ``folder``: the command's wall seconds and its JSON."""
    write_emt_cu_split(folder, 48, 1, repeat=2, valid_repeat=1)
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = main(["fit", "--model", "mpnn", "--train", str(folder / "train.extxyz"),
                     "--valid", str(folder / "valid.extxyz"), "--max-minutes", str(minutes),
                     *flags, "-o", str(folder / "m.ml4m"), "--json"])
    seconds = time.perf_counter() - t0
    assert code == 0
    return seconds, json.loads(out.getvalue())


@pytest.mark.skipif("mpnn" not in fit_choices(), reason="mpnn is not registered")
def test_max_minutes_bounds_the_whole_network_fit(tmp_path, one_thread):
    """``ml4m fit --model mpnn --max-minutes 0.25`` (default network): the whole command,
    i.e. the cost measurement, training, validation, the last-layer posterior (its
    feature Jacobian: one backward pass per feature on up to 2048 training atoms, here
    1536), metrics and plots, ends within the budget + 10% + 5 s."""
    budget = 0.25
    seconds, metrics = _budgeted_fit(tmp_path, budget)
    assert seconds <= 1.1 * 60 * budget + 5.0, (seconds, metrics["budget"])
    assert metrics["training"]["steps"] >= 1 and "uncertainty" in metrics["valid"]
    # the regime's passes: the budget's training seconds over one timed pass (12 steps
    # and a validation); whether they foretell the passes made is measured on real fits
    # (fit_defaults.md), not in a 15-s run on a shared CPU (1 to 119 epochs seen)
    regime = metrics["training"]["regime"]
    assert regime["seconds_per_pass"] >= 12 * regime["step_seconds"] > 0
    assert regime["passes"] == pytest.approx(max(regime["train_seconds"], 0.0)
                                             / regime["seconds_per_pass"])


@pytest.fixture(scope="module")
def committee_fit(files, fitted, tmp_path_factory):
    """An uninterrupted ``committee: 2`` fit of the ``fitted`` config: its folder, config
    and metrics."""
    d = tmp_path_factory.mktemp("committee")
    cfg = d / "fit.yaml"
    cfg.write_text(json.dumps({**json.loads(fitted[1].read_text()), "committee": 2}))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["fit", str(cfg), "-o", str(d / "c.ml4m"), "--json"]) == 0
    return d, cfg, json.loads(out.getvalue())


def _module_arrays(path):
    """The network weights in a model file (inside a core or a committee)."""
    from ml4m.models.serialization import read_model_file

    arrays = read_model_file(path)[2]
    return {k: v for k, v in arrays.items() if "module." in k}


def test_a_committee_fit_joins_members_that_are_single_fits_with_seeds(fitted, committee_fit,
                                                                      files, capsys):
    """``committee: 2``: member k is the network ``ml4m fit --seed k`` gives (member 0
    bit for bit the single fit of seed 0; member 1 differs), both written beside the
    committee; the committee's spread is calibrated on valid as
    :meth:`Committee.calibrate` does; ``ml4m test`` scores the file as the fit did."""
    import ml4m
    from ml4m.data import read_dataset
    from ml4m.models.committee import Committee

    single_dir, _, _ = fitted
    d, _, metrics = committee_fit
    assert metrics["kind"] == "committee" and len(metrics["committee"]["members"]) == 2
    assert not (d / ".c.committee.json").exists() and not (d / ".c_member1.ckpt").exists()
    member0, member1 = _module_arrays(d / "c_member0.ml4m"), _module_arrays(d / "c_member1.ml4m")
    single = _module_arrays(single_dir / "m.ml4m")
    assert set(member0) == set(single)
    for k in single:
        np.testing.assert_array_equal(member0[k], single[k], err_msg=k)
    assert any(not np.array_equal(member1[k], member0[k]) for k in member0)
    committee = ml4m.load(d / "c.ml4m")
    assert isinstance(committee, Committee) and committee.n_members == 2
    # members get no last-layer posterior: the committee's spread is their sigma
    assert not any(m.has_uncertainty for m in committee.members_)
    joined = Committee.from_members([ml4m.load(d / f"c_member{k}.ml4m") for k in (0, 1)])
    joined.calibrate(read_dataset(files / "valid.extxyz"))
    assert joined.calibration_ == pytest.approx(committee.calibration_, rel=1e-9)
    assert committee.calibration_["forces"] != 1.0
    assert metrics["committee"]["calibration"] == pytest.approx(committee.calibration_)
    code, out, err = _run(capsys, "test", d / "c.ml4m", files / "valid.extxyz", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["forces"]["mae_mev_per_a"] == pytest.approx(
        metrics["valid"]["forces"]["mae_mev_per_a"], rel=1e-9)
    assert result["uncertainty"]["force_sigma_spearman"] == pytest.approx(
        metrics["valid"]["uncertainty"]["force_sigma_spearman"], rel=1e-9)


def test_a_killed_committee_fit_resumes_keeping_its_finished_members(committee_fit,
                                                                     tmp_path, capsys):
    """SIGKILL while member 1 trains: ``--resume`` keeps member 0's file untouched,
    resumes member 1 from its checkpoint, and the committee equals the uninterrupted
    one; a resume under other settings is refused with exit 2."""
    whole_dir, cfg, _ = committee_fit
    ckpt = tmp_path / ".c_member1.ckpt"
    _fit_killed_at(cfg, tmp_path / "c.ml4m", ckpt)
    progress = json.loads((tmp_path / ".c.committee.json").read_text())
    assert progress["finished"] == [0]
    kept = (tmp_path / "c_member0.ml4m").read_bytes()
    other = tmp_path / "other.yaml"
    other.write_text(json.dumps({**json.loads(cfg.read_text()), "seed": 5}))
    code, _, err = _run(capsys, "fit", other, "-o", tmp_path / "c.ml4m", "--resume")
    assert code == 2 and "started with other settings" in err
    code, out, err = _run(capsys, "fit", cfg, "-o", tmp_path / "c.ml4m", "--resume", "--json")
    assert code == 0, err
    assert json.loads(out)["committee"]["members"][0]["resumed"] is True
    assert (tmp_path / "c_member0.ml4m").read_bytes() == kept
    assert not (tmp_path / ".c.committee.json").exists() and not ckpt.exists()
    _assert_same_networks(tmp_path / "c.ml4m", whole_dir / "c.ml4m")


@pytest.mark.skipif("mpnn" not in fit_choices(), reason="mpnn is not registered")
def test_max_minutes_bounds_a_whole_committee_fit(tmp_path, one_thread):
    """``--committee 2 --max-minutes 0.4``: both members, the calibration and the
    metrics end within the budget + 10% + 5 s, each member trained."""
    budget = 0.4
    seconds, metrics = _budgeted_fit(tmp_path, budget, "--committee", "2")
    assert seconds <= 1.1 * 60 * budget + 5.0, (seconds, metrics["committee"])
    assert all(m["training"]["steps"] >= 1 for m in metrics["committee"]["members"])
    assert "uncertainty" in metrics["valid"]

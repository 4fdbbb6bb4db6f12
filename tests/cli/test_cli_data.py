"""``ml4m`` command line: help, JSON outputs, exit codes, nothing partial on error."""

from __future__ import annotations

import json
import subprocess
import sys

import ase.io
import numpy as np
import pytest

from ml4m.cli.main import COMMANDS, build_parser, main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("ml4m ")


def test_every_command_has_help_with_example():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"quickstart", "data"} <= set(sub.choices)
    for name, p in sub.choices.items():
        assert "example" in p.format_help(), name
    data = sub.choices["data"]
    actions = next(a for a in data._actions if a.dest == "data_command")
    assert set(actions.choices) == {"info", "split", "pack", "generate"}
    for name, p in actions.choices.items():
        assert "example" in p.format_help(), name
    assert all(mod.startswith("ml4m.cli.") for _, mod in COMMANDS)


def test_a_named_command_imports_only_its_own_module():
    """`ml4m analyze ...` builds and imports the analyze command alone: no other command's
    module (and none of the fitting stack) is loaded."""
    import subprocess
    import sys

    code = ("import sys\nfrom ml4m.cli.main import main\n"
            "try:\n    main(['analyze', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith(('ml4m.cli.', 'ml4m.models', "
            "'ml4m.training', 'torch', 'sklearn'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    loaded = eval(proc.stdout.strip().splitlines()[-1])
    assert loaded == ["ml4m.cli.analyze", "ml4m.cli.main"], loaded


def test_console_script_exit_code_on_bad_input(tmp_path):
    bad = tmp_path / "bad.extxyz"
    bad.write_text("")
    proc = subprocess.run([sys.executable, "-m", "ml4m", "data", "info", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"{bad}: file is empty" in proc.stderr
    assert proc.stdout == ""


def _independent_stats(paths):
    """Statistics from ASE directly, with no ml4m code."""
    frames = [a for p in paths for a in ase.io.read(p, ":")]
    species = {}
    for a in frames:
        for s in a.get_chemical_symbols():
            species[s] = species.get(s, 0) + 1
    e = np.array([a.get_potential_energy() / len(a) for a in frames])
    f = np.concatenate([a.get_forces() for a in frames])
    n_stress = sum("stress" in a.calc.results for a in frames)
    return dict(n_frames=len(frames), n_atoms=sum(len(a) for a in frames), species=species,
                e=e, f_rms=np.sqrt(np.mean(f**2)), n_stress=n_stress)


@pytest.mark.shared_data
@pytest.mark.slow
def test_data_info_json_on_shared_data(capsys, shared_data):
    paths = sorted(str(p) for p in shared_data.glob("*/*.extxyz"))
    assert paths, "no extxyz files in the shared data folder"
    code, out, err = run_cli(capsys, "data", "info", *paths, "--json")
    assert code == 0
    result = json.loads(out)  # exactly one JSON object
    ref = _independent_stats(paths)
    assert result["n_frames"] == ref["n_frames"]
    assert result["n_atoms"] == ref["n_atoms"]
    assert result["species"] == ref["species"]
    assert result["labels"] == {"energy": ref["n_frames"], "forces": ref["n_frames"],
                                "stress": ref["n_stress"]}
    epa = result["energy_per_atom_ev"]
    assert epa["min"] == pytest.approx(ref["e"].min(), rel=1e-12)
    assert epa["max"] == pytest.approx(ref["e"].max(), rel=1e-12)
    assert epa["mean"] == pytest.approx(ref["e"].mean(), rel=1e-10)
    assert result["force_rms_ev_per_a"] == pytest.approx(ref["f_rms"], rel=1e-10)
    assert [f["path"] for f in result["files"]] == paths


def test_data_info_json_keys(capsys, tmp_path):
    from ml4m.data import default_dataset_path

    code, out, _ = run_cli(capsys, "data", "info", str(default_dataset_path()), "--json")
    assert code == 0
    result = json.loads(out)
    for key in ("n_frames", "n_atoms", "species", "labels", "energy_per_atom_ev", "force_rms_ev_per_a"):
        assert key in result
    assert set(result["labels"]) == {"energy", "forces", "stress"}
    assert set(result["energy_per_atom_ev"]) >= {"min", "max", "mean"}


def test_split_writes_disjoint_files(capsys, tmp_path):
    from ml4m.data import default_dataset_path

    code, out, _ = run_cli(capsys, "data", "split", str(default_dataset_path()), "--valid", "0.2",
                           "--test", "0.1", "--seed", "3", "--by", "traj", "-o", str(tmp_path / "s"), "--json")
    assert code == 0
    counts = json.loads(out)
    parts = {p: ase.io.read(tmp_path / "s" / f"{p}.extxyz", ":") for p in ("train", "valid", "test")}
    assert {p: len(v) for p, v in parts.items()} == {k: counts[k] for k in parts}
    trajs = {p: {a.info["traj"] for a in v} for p, v in parts.items()}
    assert not trajs["train"] & trajs["valid"] and not trajs["train"] & trajs["test"]
    record = json.loads((tmp_path / "s" / "split.json").read_text())
    assert len(record["train"]) == counts["train"]


@pytest.mark.parametrize("action", ["info", "split", "pack"])
def test_bad_input_exit_2_and_nothing_written(capsys, tmp_path, action):
    bad = tmp_path / "bad.extxyz"
    good = "2\nProperties=species:S:1:pos:R:3 energy=1.0\nCu 0 0 0\nCu 2 0 0\n"
    bad.write_text(good + good.replace("Cu 2 0 0", "Cu 0.2 0 0"))
    out_path = tmp_path / "out"
    argv = {"info": ["data", "info", str(bad)],
            "split": ["data", "split", str(bad), "-o", str(out_path)],
            "pack": ["data", "pack", str(bad), "-o", str(out_path)]}[action]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert f"{bad}, frame 1: atoms 0 and 1 are 0.200 Angstrom apart" in err
    assert not out_path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.extxyz"]


def test_usage_error_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["data", "split"])
    assert info.value.code == 2


def test_pack_and_generate_json(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "data", "generate", "--system", "Cu", "--supercells", "1",
                           "--temperatures", "300", "--frames", "2", "--sample-every", "2",
                           "--equilibration-steps", "1", "--strained", "0", "--no-vacancy",
                           "--no-surface", "-o", str(tmp_path / "g.extxyz"), "--json")
    assert code == 0
    gen = json.loads(out)
    assert gen["n_frames"] == 2
    code, out, _ = run_cli(capsys, "data", "pack", str(tmp_path / "g.extxyz"), "-o",
                           str(tmp_path / "g.store"), "--json")
    assert code == 0
    packed = json.loads(out)
    assert packed["n_frames"] == 2 and packed["n_atoms"] == 8
    assert packed["labels"] == ["energy", "forces", "stress"]


def test_generate_bad_config_key(capsys, tmp_path):
    cfg = tmp_path / "g.yaml"
    cfg.write_text("system: Cu\nfrobnicate: 3\n")
    code, _, err = run_cli(capsys, "data", "generate", "--config", str(cfg), "-o", str(tmp_path / "x.extxyz"))
    assert code == 2
    assert "generate settings has unknown key(s) ['frobnicate']" in err


def test_quickstart_writes_outputs(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "quickstart", "-o", str(tmp_path / "qs"), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["data"]["n_frames"] == sum(report["data"]["split"].values())
    for name in ("energy_histogram.png", "force_histogram.png", "summary.json", "data/train.extxyz",
                 "soap.npz", "analysis/labels.npy", "analysis/decision_graph.png",
                 "analysis/dendrogram.png", "model/cu_ace.ml4m", "model/metrics.json",
                 "model/cu_ace_parity_forces.png", "md_nve.extxyz"):
        assert (tmp_path / "qs" / name).is_file(), name
    assert (tmp_path / "qs" / "energy_histogram.png").read_bytes()[:4] == b"\x89PNG"
    # the pipeline did real work: SOAP of fcc Cu has an intrinsic dimension well below its 105
    # features, the potential learns EMT to a few meV/A, and NVE conserves energy
    assert 2 < report["analysis"]["id"]["estimate"] < 40
    assert report["fit"]["test"]["forces"]["mae_mev_per_a"] < 20
    assert abs(report["md"]["energy_drift_mev_per_atom_per_ps"]) < 1.0


def test_split_keeps_every_array_and_info_key(capsys, tmp_path):
    """Frames are written as the file has them: a baseline's per-atom forces, a custom
    info key and the labels under the file's own keys survive the split."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    frames = []
    for k in range(10):
        atoms = bulk("Cu", cubic=True)
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        atoms.info["REF_energy"] = atoms.get_potential_energy()
        atoms.arrays["REF_forces"] = atoms.get_forces()
        atoms.arrays["gfn2_forces"] = np.full((len(atoms), 3), float(k))
        atoms.info["traj"], atoms.info["frame_id"] = f"t{k % 5}", k
        atoms.calc = None
        frames.append(atoms)
    ase.io.write(tmp_path / "all.extxyz", frames)
    code, _, _ = run_cli(capsys, "data", "split", str(tmp_path / "all.extxyz"), "--valid", "0.2",
                         "--test", "0.2", "--by", "traj", "-o", str(tmp_path / "s"), "--json")
    assert code == 0
    seen = []
    for part in ("train", "valid", "test"):
        for atoms in ase.io.read(tmp_path / "s" / f"{part}.extxyz", ":"):
            k = atoms.info["frame_id"]
            seen.append(k)
            np.testing.assert_allclose(atoms.arrays["gfn2_forces"], k)
            np.testing.assert_allclose(atoms.arrays["REF_forces"], frames[k].arrays["REF_forces"],
                                       atol=1e-7)
            assert atoms.info["REF_energy"] == pytest.approx(frames[k].info["REF_energy"])
            np.testing.assert_allclose(atoms.positions, frames[k].positions, atol=1e-7)
    assert sorted(seen) == list(range(10))


def test_copy_frames_in_order_and_nothing_written_past_the_end(tmp_path):
    from ml4m.data import copy_frames
    from ml4m.errors import DataError

    frames = [ase.Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.0 + 0.1 * k]]) for k in range(4)]
    for k, atoms in enumerate(frames):
        atoms.arrays["charge_like"] = np.array([k, -k], dtype=float)
    ase.io.write(tmp_path / "src.extxyz", frames)
    copy_frames(tmp_path / "src.extxyz", {tmp_path / "a.extxyz": [3, 1, 3], tmp_path / "b.extxyz": [0]})
    a = ase.io.read(tmp_path / "a.extxyz", ":")
    assert [x.arrays["charge_like"][0] for x in a] == [3, 1, 3]
    assert len(ase.io.read(tmp_path / "b.extxyz", ":")) == 1
    with pytest.raises(DataError, match=r"src.extxyz: has 4 frames; frame 4 was selected"):
        copy_frames(tmp_path / "src.extxyz", {tmp_path / "c.extxyz": [0, 4]})
    assert not (tmp_path / "c.extxyz").exists()


def test_info_of_a_store_equals_that_of_its_file(capsys, tmp_path):
    """`ml4m data info` reads a packed store (its frames streamed) and reports what it
    reports for the packed file, with the distances the store recorded."""
    from ml4m.data import default_dataset_path, read_dataset, shortest_distances

    src = str(default_dataset_path())
    assert run_cli(capsys, "data", "pack", src, "-o", str(tmp_path / "s.store"))[0] == 0
    reports = []
    for path in (src, str(tmp_path / "s.store")):
        code, out, _ = run_cli(capsys, "data", "info", path, "--json")
        assert code == 0
        reports.append(json.loads(out))
    from_file, from_store = reports
    recorded = from_store["files"][0].pop("shortest_distances_a")
    assert recorded == pytest.approx(shortest_distances(read_dataset(src), cutoff=3.0))
    for key in ("n_frames", "n_atoms", "species", "labels", "atoms_per_frame", "config_types"):
        assert from_store[key] == from_file[key], key
    for key in ("energy_per_atom_ev", "pressure_gpa"):
        assert from_store[key] == pytest.approx(from_file[key], rel=1e-12), key
    assert from_store["force_rms_ev_per_a"] == pytest.approx(from_file["force_rms_ev_per_a"])


def test_open_frames_refuses_a_store_without_a_required_label(tmp_path):
    from ase.build import molecule

    from ml4m.data import Frame, open_frames, pack_frames
    from ml4m.errors import DataError

    mol = molecule("H2O")
    pack_frames([Frame.from_atoms(mol, energy=-1.0)], tmp_path / "e.store")
    assert len(open_frames(tmp_path / "e.store", require=("energy", "stress"))) == 1
    with pytest.raises(DataError, match=r"e.store: required label\(s\) \['forces'\] missing: "
                       r"the store holds \['energy'\]"):
        open_frames(tmp_path / "e.store", require=("energy", "forces"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not an ml4m store"):
        open_frames(tmp_path / "empty")

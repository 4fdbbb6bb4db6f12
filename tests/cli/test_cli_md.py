"""``ml4m md`` and ``ml4m relax``: streamed trajectories, blow-up stops, refused models and settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.io import write

from ml4m.cli.main import main
from ml4m.data import default_dataset
from ml4m.descriptors import make_descriptor


@pytest.fixture()
def start(tmp_path):
    path = tmp_path / "start.extxyz"
    write(path, bulk("Cu", cubic=True, a=3.6).repeat(2))
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _frames(path):
    return ase.io.read(path, ":", format="extxyz")


def _kill_after_frames(argv, watched, n_frames, cwd):
    """Start ``ml4m`` with ``argv``, SIGKILL it once ``watched`` holds ``n_frames`` whole
    frames (the next frame's header seen: the last one counted is complete)."""
    proc = subprocess.Popen([sys.executable, "-m", "ml4m", *map(str, argv)], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if watched.exists() and watched.read_text().count("Lattice=") > n_frames:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it was killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


def test_killed_run_keeps_every_frame_written(start, tmp_path):
    traj = tmp_path / "md.extxyz"
    _kill_after_frames(["md", "emt", start, "--steps", "1000000", "--interval", "2", "-o", traj],
                       traj, 5, tmp_path)
    frames = _frames(traj)
    assert len(frames) >= 5
    assert [f.info["step"] for f in frames] == list(range(0, 2 * len(frames), 2))
    assert all(np.isfinite(f.get_forces()).all() for f in frames)


def test_killed_run_leaves_an_existing_trajectory_untouched(start, tmp_path):
    traj = tmp_path / "md.extxyz"
    traj.write_text("earlier run\n")
    partial = tmp_path / "md.partial.extxyz"
    _kill_after_frames(["md", "emt", start, "--steps", "1000000", "--interval", "2", "-o", traj,
                        "--overwrite"], partial, 3, tmp_path)
    assert traj.read_text() == "earlier run\n"
    assert len(_frames(partial)) >= 3
    kept = partial.read_bytes()
    # the interrupted run's frames are not written over unless asked
    assert main([str(a) for a in ["md", "emt", start, "--steps", "10", "-o", traj]]) == 2
    assert partial.read_bytes() == kept and traj.read_text() == "earlier run\n"
    # a finished run replaces it, and no partial file is left behind
    assert _run_ok(["md", "emt", start, "--steps", "10", "--interval", "5", "-o", traj, "--overwrite"])
    assert len(_frames(traj)) == 3 and not partial.exists()


def _run_ok(argv):
    return main([str(a) for a in argv]) == 0


def test_absurd_temperature_stops_with_exit_2_and_keeps_trajectory(start, tmp_path, capsys):
    traj = tmp_path / "md.extxyz"
    traj.write_text("earlier run\n")
    code, out, err = _run(capsys, "md", "emt", start, "--temperature", "100000", "--dt", "2",
                          "--steps", "500", "--interval", "5", "-o", traj, "--overwrite", "--json")
    assert code == 2 and out == ""
    message = err.strip().splitlines()[-1]
    assert "MD stopped at step" in message and "closer than 1.27 A" in message and str(traj) in message
    frames = _frames(traj)  # the stopped run's frames replaced the earlier file
    stop = frames[-1]
    d = stop.get_all_distances(mic=True)[np.triu_indices(len(stop), 1)]
    assert d.min() < 0.5 * 3.6 / np.sqrt(2)  # the frame at the stop shows the contact
    assert all(f.info["step"] % 5 == 0 for f in frames[:-1])


def test_json_stdout_is_one_object_and_log_on_stderr(start, tmp_path, capsys):
    code, out, err = _run(capsys, "md", "emt", start, "--steps", "20", "--interval", "5",
                          "--log-interval", "10", "--json")
    assert code == 0
    assert json.loads(out)["steps"] == 20 and len(out.strip().splitlines()) == 1
    logged = [line for line in err.splitlines() if line.startswith("step")]
    assert [int(line.split()[1]) for line in logged] == [0, 10, 20]
    assert all("E_tot" in line and " K " in line for line in logged)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from ml4m.models.kernel import PropertyModel
    from ml4m.models.linear import LinearACE

    d = tmp_path_factory.mktemp("md_models")
    data = default_dataset()[::8]
    write(d / "valid.extxyz", [f.to_atoms() for f in default_dataset()[4::16]])
    PropertyModel(make_descriptor("soap", species=[29], r_cut=3.0, n_max=2, l_max=2)).fit(data).save(d / "p.ml4m")
    LinearACE(make_descriptor("ace", species=[29], r_cut=4.0, n_max=4, l_max=2,
                              correlation_order=3)).fit(data).save(d / "ace.ml4m")
    return d


@pytest.mark.parametrize("command", ["md", "relax"])
def test_property_model_refused(models, start, tmp_path, capsys, command):
    code, _, err = _run(capsys, command, models / "p.ml4m", start, "-o", tmp_path / "out.extxyz")
    assert code == 2
    assert err.startswith("ml4m: error:") and "p.ml4m" in err and "not an interatomic potential" in err
    assert not (tmp_path / "out.extxyz").exists()


def test_test_with_a_property_model_prints_its_metrics(models, capsys):
    code, out, err = _run(capsys, "test", models / "p.ml4m", models / "valid.extxyz")
    assert code == 0 and "Traceback" not in err
    assert "energy_per_atom (eV/atom): MAE" in out


def test_md_with_a_model_logs_sigma(models, start, tmp_path, capsys):
    code, out, err = _run(capsys, "md", models / "ace.ml4m", start, "--steps", "20", "--interval", "5",
                          "--log-interval", "10", "--uncertainty-interval", "10", "--json")
    result = json.loads(out)
    assert code == 0 and result["uncertainty_interval"] == 10 and result["forces_sigma_max"] > 0
    assert sum("max sigma_F" in line for line in err.splitlines()) == 3


@pytest.mark.parametrize("command,args,key", [
    ("relax", ["--fmax", "-1"], "fmax"), ("relax", ["--fmax", "nan"], "fmax"),
    ("relax", ["--steps", "0"], "steps"), ("md", ["--dt", "0"], "dt"), ("md", ["--steps", "0"], "steps"),
    ("md", ["--temperature", "-5"], "temperature"), ("md", ["--interval", "0"], "interval"),
    ("md", ["--uncertainty-interval", "-1"], "uncertainty_interval"),
    ("md", ["--uncertainty-interval", "often"], "uncertainty_interval"),
    ("md", ["--ensemble", "nvt", "--friction", "inf"], "friction"),
])
def test_nonsense_settings_exit_2(start, tmp_path, capsys, command, args, key):
    out = tmp_path / "out.extxyz"
    code, _, err = _run(capsys, command, "emt", start, *args, "-o", out)
    assert code == 2 and err.startswith(f"ml4m: error: {key} must be")
    assert not out.exists()


@pytest.mark.parametrize("command", ["md", "relax"])
def test_output_onto_the_input_refused(start, capsys, command):
    before = start.read_bytes()
    code, _, err = _run(capsys, command, "emt", start, "-o", start)
    assert code == 2 and "is the input" in err
    assert start.read_bytes() == before

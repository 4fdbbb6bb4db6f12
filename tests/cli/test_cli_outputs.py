"""Every command that writes follows one output policy: nothing of the user's is lost."""

from __future__ import annotations

import json

import ase.io
import pytest

from ml4m.cli.main import main
from ml4m.data import default_dataset_path
from ml4m.outputs import output_lock

TINY_GEN = ["--supercells", "1", "--temperatures", "300", "--frames", "2", "--sample-every", "2",
            "--equilibration-steps", "1", "--strained", "0", "--no-vacancy", "--no-surface"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def folder(tmp_path):
    """A user's folder with a data file and a file of their own."""
    d = tmp_path / "d"
    d.mkdir()
    frames = ase.io.read(default_dataset_path(), ":6")
    ase.io.write(d / "train.extxyz", frames)
    (d / "notes.txt").write_text("my notes")
    return d


def _snapshot(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("argv", [
    ["data", "pack", "{d}/train.extxyz", "-o", "{d}"],                  # contains the input
    ["data", "pack", "{d}/train.extxyz", "-o", "{d}/train.extxyz"],     # is the input
    ["data", "split", "{d}/train.extxyz", "-o", "{d}"],                 # contains the input
    ["data", "split", "{d}/train.extxyz", "-o", "{d}/.."],              # contains it too
    ["data", "pack", "{d}/train.extxyz", "-o", "{d}/notes.txt/store"],  # below a file
    ["data", "generate", "--config", "{d}/notes.txt", "-o", "{d}/notes.txt"],
    ["fit", "--train", "{d}/train.extxyz", "-o", "{d}/train.extxyz.ml4m", "--valid",
     "{d}/train.extxyz.ml4m"],                                          # model is an input
    ["fit", "--train", "{d}/train.extxyz", "--valid", "{d}/metrics.json", "-o", "{d}/m"],
    ["fit", "--train", "{d}/train.extxyz", "-o", "{d}/notes.txt/m.ml4m"],
    ["fit", "--train", "{d}/train.extxyz", "-o", "{d}/"],              # a folder, not a file
    ["fit", "--train", "{d}/train.extxyz", "-o", "{d}"],
    ["fit", "--train", "{d}/train.extxyz", "-o", "{d}/new/"],          # names no file
    ["describe", "{d}/train.extxyz", "--descriptor", "acsf", "-o", "{d}/new/"],
    ["describe", "{d}/train.extxyz", "--descriptor", "acsf", "-o", "{d}"],
    ["curate", "{d}/train.extxyz", "--n", "2", "-o", "{d}/new/"],
])
def test_output_that_would_destroy_an_input_is_refused_before_work(capsys, folder, argv):
    before = _snapshot(folder.parent)
    code, out, err = run_cli(capsys, *[a.format(d=folder) for a in argv])
    assert code == 2, err
    assert err.startswith("ml4m: error: ") and "Traceback" not in err
    assert _snapshot(folder.parent) == before  # nothing changed, nothing added


def test_existing_foreign_folder_needs_overwrite(capsys, folder, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    code, _, err = run_cli(capsys, "data", "pack", folder / "train.extxyz", "-o", mine)
    assert code == 2 and "--overwrite" in err
    assert (mine / "thesis.tex").read_text() == "years of work"
    code, _, err = run_cli(capsys, "data", "split", folder / "train.extxyz", "-o", mine)
    assert code == 2 and (mine / "thesis.tex").exists()
    # the same kind of ml4m output is replaced; another kind is not
    out = tmp_path / "splits"
    for _ in range(2):
        code, _, err = run_cli(capsys, "data", "split", folder / "train.extxyz", "-o", out,
                               "--seed", "3")
        assert code == 0, err
    assert {p.name for p in out.iterdir()} >= {"train.extxyz", "split.json"}
    code, _, err = run_cli(capsys, "data", "pack", folder / "train.extxyz", "-o", out)
    assert code == 2 and "'split' output" in err
    code, _, err = run_cli(capsys, "data", "pack", folder / "train.extxyz", "-o", mine,
                           "--overwrite")
    assert code == 0 and not (mine / "thesis.tex").exists()
    code, _, err = run_cli(capsys, "data", "pack", folder / "train.extxyz", "-o", mine)
    assert code == 0, err  # a store replaced by a store
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "mine", "splits"]  # no leftovers


def test_a_fit_keeps_the_metrics_of_another_model_in_its_folder(capsys, folder, tmp_path):
    """``metrics.json`` has one name beside every model: each fit also writes its own
    ``{stem}_metrics.json``, so a second model in the folder loses no record; a
    ``metrics.json`` whose record is kept nowhere else is replaced only with
    ``--overwrite``, and the refusal comes before any work."""
    runs = tmp_path / "runs"
    fit = ["fit", "--train", folder / "train.extxyz", "--search", "off", "--json"]
    assert run_cli(capsys, *fit, "-o", runs / "a.ml4m")[0] == 0
    a = (runs / "metrics.json").read_bytes()
    assert (runs / "a_metrics.json").read_bytes() == a
    assert run_cli(capsys, *fit, "-o", runs / "b.ml4m")[0] == 0  # a's record is in its copy
    assert (runs / "a_metrics.json").read_bytes() == a
    b = json.loads((runs / "metrics.json").read_text())
    assert b["model"].endswith("b.ml4m") and b == json.loads((runs / "b_metrics.json").read_text())
    for text, why in (("my own table", "not written by ml4m"),  # the user's file
                      (json.dumps({"model": str(runs / "old.ml4m")}), "old_metrics.json")):
        (runs / "metrics.json").write_text(text)
        before = _snapshot(runs)
        code, _, err = run_cli(capsys, *fit, "-o", runs / "c.ml4m")
        assert code == 2 and why in err and "--overwrite" in err, err
        assert _snapshot(runs) == before  # nothing written, c.ml4m included
    code, _, err = run_cli(capsys, *fit, "-o", runs / "c.ml4m", "--overwrite")
    assert code == 0, err
    assert json.loads((runs / "metrics.json").read_text())["model"].endswith("c.ml4m")


def test_second_writer_of_the_same_output_fails_at_once(capsys, folder, tmp_path):
    out = tmp_path / "cu.extxyz"
    with output_lock(out):
        code, _, err = run_cli(capsys, "data", "generate", *TINY_GEN, "-o", out)
        assert code == 2 and "being written by another ml4m process" in err
        code, _, err = run_cli(capsys, "data", "pack", folder / "train.extxyz", "-o", out)
        assert code == 2 and "being written by another" in err
    assert not out.exists()


def test_generate_refuses_to_resume_under_other_settings(capsys, tmp_path):
    out = tmp_path / "cu.extxyz"
    parts = tmp_path / ".cu.extxyz.parts"
    parts.mkdir()
    (parts / "settings.json").write_text(json.dumps({"digest": "another run"}))
    (parts / "traj_00000.extxyz").write_text("finished work")
    code, _, err = run_cli(capsys, "data", "generate", *TINY_GEN, "-o", out)
    assert code == 2 and "other settings" in err and "1 finished trajector" in err
    assert (parts / "traj_00000.extxyz").read_text() == "finished work"
    code, _, err = run_cli(capsys, "data", "generate", *TINY_GEN, "-o", out, "--overwrite")
    assert code == 0, err
    assert not parts.exists() and len(ase.io.read(out, ":")) == 2


def test_generate_config_file_settings_are_used(capsys, tmp_path):
    cfg = tmp_path / "au.yaml"
    cfg.write_text("system: Au\ncalculator: emt\nsupercells: [1]\ntemperatures: [300]\n"
                   "frames_per_trajectory: 2\nsample_every: 2\nequilibration_steps: 1\n"
                   "n_strained: 0\nvacancies: false\nsurface: false\n")
    out = tmp_path / "au.extxyz"
    code, _, err = run_cli(capsys, "data", "generate", "--config", cfg, "-o", out)
    assert code == 0, err
    assert {a.get_chemical_symbols()[0] for a in ase.io.read(out, ":")} == {"Au"}
    cfg.write_text("system: Au\ntemperatures: hot\n")
    code, _, err = run_cli(capsys, "data", "generate", "--config", cfg, "-o", out)
    assert code == 2 and "temperatures" in err and str(cfg) in err


def test_sigterm_unwinds_cleanly_and_keeps_finished_parts(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "cu.extxyz"
    cmd = [sys.executable, "-m", "ml4m", "data", "generate", "--supercells", "2", "--temperatures",
           "300,600,900,1200", "--frames", "30", "--sample-every", "5", "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parts = tmp_path / ".cu.extxyz.parts"
    deadline = time.time() + 60
    while not (parts / "settings.json").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not out.exists()
    assert (parts / "settings.json").exists()  # the resumable state is kept
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != parts.name]
    assert leftovers == []  # no lock, no temporary file


def test_internal_error_is_one_line_not_a_traceback(capsys, monkeypatch):
    import ml4m.cli.data as data_cli

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.delenv("ML4M_DEBUG", raising=False)
    monkeypatch.setattr(data_cli, "run_info", broken)
    code, _, err = run_cli(capsys, "data", "info", "x.extxyz")
    assert code == 1
    assert err.count("\n") == 1 and "internal error: ZeroDivisionError: a bug" in err


def test_full_disk_is_a_clear_error(capsys, monkeypatch, tmp_path):
    import errno

    import ml4m._fileio as fileio

    real = fileio.os.replace

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(fileio.os, "replace", disk_full)
    out = tmp_path / "cu.extxyz"
    code, _, err = run_cli(capsys, "data", "generate", *TINY_GEN, "-o", out)
    monkeypatch.setattr(fileio.os, "replace", real)
    assert code == 2 and "No space left on device" in err and "Traceback" not in err
    assert not out.exists()


def test_warnings_reach_the_user_as_one_line():
    import subprocess
    import sys

    code = ("import warnings, ml4m.cli.data as d\n"
            "from ml4m.cli.main import main\n"
            "def warns(args):\n"
            "    warnings.warn('only 1 training frame', UserWarning, stacklevel=1)\n"
            "d.run_info = warns\n"
            "raise SystemExit(main(['data', 'info', 'x.extxyz']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stderr == "ml4m: warning: only 1 training frame\n"

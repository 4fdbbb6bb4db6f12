"""The output policy: nothing of the user's is replaced, one writer at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ml4m._fileio import atomic_dir
from ml4m.errors import ConfigError
from ml4m.outputs import (
    MARKER,
    OutputBusyError,
    check_output,
    claim_output,
    folder_kind_of,
    output_lock,
)


def test_output_equal_containing_or_inside_an_input_is_refused(tmp_path):
    data = tmp_path / "d" / "train.extxyz"
    data.parent.mkdir()
    data.write_text("x")
    with pytest.raises(ConfigError, match="is the input"):
        check_output(data, inputs=[data])
    with pytest.raises(ConfigError, match="contains the input"):
        check_output(tmp_path / "d", inputs=[data], folder_kind="split")
    store = tmp_path / "s.store"
    store.mkdir()
    with pytest.raises(ConfigError, match="lies inside the input"):
        check_output(store / "model.ml4m", inputs=[store])
    with pytest.raises(ConfigError, match="is the input"):  # via a relative, dotted spelling
        check_output(f"{tmp_path}/d/../d/train.extxyz", inputs=[data])
    os.link(data, tmp_path / "hardlink.extxyz")
    with pytest.raises(ConfigError, match="is the input"):
        check_output(tmp_path / "hardlink.extxyz", inputs=[data])
    with pytest.raises(ConfigError, match="metrics.json is the input"):
        check_output(tmp_path / "m.ml4m", inputs=[tmp_path / "metrics.json"],
                     companions=[tmp_path / "metrics.json"])


def test_output_below_a_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_output(tmp_path / "f" / "sub" / "model.ml4m")


def test_existing_foreign_folder_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an ml4m output.*--overwrite"):
        check_output(out, folder_kind="split")
    assert check_output(out, folder_kind="split", overwrite=True) == out
    with pytest.raises(ConfigError, match="existing folder"):
        check_output(out)  # a file output never replaces a folder
    (out / "notes.txt").unlink()
    assert check_output(out, folder_kind="split") == out  # empty: nothing to lose


def test_folder_of_the_same_kind_is_replaced_only_when_complete(tmp_path):
    out = tmp_path / "run"
    with atomic_dir(out, kind="split") as tmp:
        (tmp / "a.txt").write_text("1")
    assert folder_kind_of(out) == "split"
    assert check_output(out, folder_kind="split") == out
    with pytest.raises(ConfigError, match="an ml4m 'split' output"):
        check_output(out, folder_kind="analysis")
    with pytest.raises(RuntimeError):
        with atomic_dir(out, kind="split") as tmp:
            (tmp / "a.txt").write_text("2")
            raise RuntimeError("crash half-way")
    assert (out / "a.txt").read_text() == "1"  # the old output survives a failed run
    with atomic_dir(out, kind="split") as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "b.txt"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporaries left


def test_replacing_a_folder_never_leaves_the_name_empty(tmp_path, monkeypatch):
    """A kill between parking the old folder and moving the new one in would leave no
    folder (a learning loop's state lost): the swap is one atomic exchange. Here every
    rename raises as a kill would; the exchange alone must complete the replacement."""
    import os

    from ml4m._fileio import _exchange

    out = tmp_path / "state"
    out.mkdir()
    (out / "old.txt").write_text("1")
    probe_a, probe_b = tmp_path / "a", tmp_path / "b"
    probe_a.mkdir(), probe_b.mkdir()
    if not _exchange(probe_a, probe_b):
        pytest.skip("no atomic exchange of paths on this system (renameat2)")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed between the renames")

    monkeypatch.setattr(os, "replace", killed)
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "state"]


def test_lock_refuses_a_second_live_writer_and_takes_over_a_stale_one(tmp_path):
    out = tmp_path / "model.ml4m"
    with output_lock(out) as lock:
        record = json.loads(lock.read_text())
        assert record["pid"] == os.getpid()
        code = ("import sys; from ml4m.outputs import claim_output\n"
                "from ml4m.errors import ConfigError\n"
                "try:\n"
                f"    with claim_output({str(out)!r}): pass\n"
                "except ConfigError as e: print(e); sys.exit(2)\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == 2
        assert f"PID {os.getpid()}" in proc.stdout
    assert not lock.exists()
    # a lock left by a process that is gone (kill -9) is taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": record["host"], "process_start": 1.0}))
    with claim_output(out) as path:
        assert path == out
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_lock_of_a_reused_pid_is_stale(tmp_path):
    out = tmp_path / "x.extxyz"
    lock = tmp_path / ".x.extxyz.lock"
    import socket

    # our own PID, but a different process start time: the PID was reused
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                "process_start": 12345.0}))
    with output_lock(out):
        pass
    import psutil

    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                "process_start": psutil.Process().create_time()}))
    with pytest.raises(OutputBusyError):
        with output_lock(out):
            pass

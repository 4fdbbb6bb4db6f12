"""The one output policy of every ml4m command that writes.

A command writes only the path it was asked to write (``-o``), the companions its
documentation names (e.g. ``metrics.json`` beside a model) and temporary files beside
them. :func:`claim_output` enforces this before any work starts:

- an output that is, contains or lies inside an input is refused;
- a path below an existing *file* is refused (it could never be created);
- an existing folder is replaced only when it is an ml4m output of the same kind (its
  ``.ml4m-output.json`` marker says so) or is empty, unless ``overwrite=True``;
- an existing folder is never replaced by a file;
- a *shared* companion, a file of a fixed name that outputs of other names write beside
  theirs too (``metrics.json`` beside every model), is written twice by
  :func:`write_shared`: under its name and as the output's own copy
  ``{stem}_{name}`` (:func:`own_copy`). An existing one is replaced only when it records
  this output or its record is kept, byte for byte, in its output's own copy; otherwise
  (a ``metrics.json`` of the user's, or of a model without its copy) only with
  ``overwrite=True``. Fitting ``runs/mpnn.ml4m`` after ``runs/ace.ml4m`` keeps
  ``runs/ace_metrics.json``;
- one process at a time: a lock file ``.NAME.lock`` beside the output holds the writer's
  PID and start time; a second writer fails at once, a lock whose process is gone is
  taken over.

Content itself is written with :func:`ml4m._fileio.atomic_path` /
:func:`ml4m._fileio.atomic_dir` (temporary name, renamed once complete), so the old
output survives until the new one is whole.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from ml4m.errors import ConfigError

__all__ = ["MARKER", "OutputBusyError", "check_output", "claim_output", "folder_kind_of",
           "mark_folder", "marker_record", "output_lock", "own_copy", "write_shared"]

#: file inside every folder ml4m writes, naming the kind of output it is
MARKER = ".ml4m-output.json"

_STORE_META = "meta.json"


class OutputBusyError(ConfigError):
    """Raised when another live process holds the lock of an output path."""


def marker_record(kind: str) -> str:
    """JSON text of the marker written into an output folder of ``kind``."""
    from ml4m import __version__

    return json.dumps({"format": "ml4m-output", "kind": kind, "ml4m_version": __version__})


def mark_folder(folder: str | os.PathLike, kind: str) -> None:
    """Write ``folder``'s marker (an ml4m output of ``kind``) unless it has one; the
    marker is written atomically, so a kill never leaves a half-written one."""
    from ml4m._fileio import atomic_path

    marker = Path(folder) / MARKER
    if not marker.exists():
        with atomic_path(marker) as tmp:
            tmp.write_text(marker_record(kind))


def folder_kind_of(path: str | os.PathLike) -> str | None:
    """The kind of ml4m output folder ``path`` is, or None if it is not one.

    Reads the folder's ``.ml4m-output.json`` marker; a packed store written before
    markers existed is recognised by its ``meta.json`` (format ``ml4m-store``).
    """
    path = Path(path)
    for name, key, fmt in ((MARKER, "kind", "ml4m-output"), (_STORE_META, None, "ml4m-store")):
        try:
            record = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("format") == fmt:
            kind = record.get(key) if key else "store"
            if isinstance(kind, str):
                return kind
    return None


def _resolve(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _same_file(a: Path, b: Path) -> bool:
    """Whether two existing paths are one file (hard links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_folder_name(path: str | os.PathLike, example: str = "out") -> None:
    """Raise :class:`ConfigError` when ``path``, the name of an output file, names a
    folder: it ends with a path separator or is an existing folder (``example``: a file
    name suggested inside it)."""
    text = os.fspath(path)
    if Path(text).expanduser().is_dir():
        why = "is an existing folder"
    elif text.endswith(("/", os.sep)):
        why = "ends with a separator, so it names a folder"
    else:
        return
    raise ConfigError(f"output {text} {why}; name a file, e.g. {Path(text) / example}")


def file_with_suffix(path: str | os.PathLike, suffix: str) -> Path:
    """The output file that ``path`` names, with ``suffix`` (e.g. ``".npz"``) added when
    it has another; a name of a folder is refused (:func:`refuse_folder_name`)."""
    refuse_folder_name(path, example="out" + suffix)
    out = Path(path)
    return out if out.suffix == suffix else out.with_name(out.name + suffix)


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (),
                 folder_kind: str | None = None, overwrite: bool = False,
                 companions: Iterable[str | os.PathLike] = (),
                 shared: Iterable[tuple[str | os.PathLike, str]] = ()) -> Path:
    """Check that ``path`` may be written; raise :class:`ConfigError` naming why not.

    Parameters
    ----------
    path : str or PathLike
        The output named by the user.
    inputs : iterable of paths
        Files or folders the command reads.
    folder_kind : str, optional
        The output is a folder of this kind (``"split"``, ``"store"``, ...); None for a
        file.
    overwrite : bool
        Allow replacing an existing folder that is not an ml4m output of the same kind,
        and shared companions of other outputs.
    companions : iterable of paths
        Further files the command writes beside ``path`` (checked against the inputs).
    shared : iterable of (path, key)
        Companions of a fixed name (also in ``companions``, as their :func:`own_copy`)
        with the key of their JSON object that names the output they belong to
        (``("runs/metrics.json", "model")``): an existing one is replaced only when that
        key names a file called as ``path``, or its output's own copy holds the same
        bytes.

    Returns
    -------
    Path
        ``path`` as given (not resolved), for writing.
    """
    if folder_kind is None:
        refuse_folder_name(path)
    out = Path(path).expanduser()
    res = _resolve(out)
    label = "output folder" if folder_kind else "output"
    for ancestor in res.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise ConfigError(f"{label} {out}: {ancestor} is a file, not a folder")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise ConfigError(f"{label} {out}: folder {ancestor} is not writable")
            break
    written = [(out, res)] + [(Path(c), _resolve(c)) for c in companions]
    for given in inputs:
        inp = _resolve(given)
        for name, target in written:
            if target == inp or _same_file(target, inp):
                raise ConfigError(f"{label} {name} is the input {given}; choose another output")
            if _is_within(inp, target):
                raise ConfigError(f"{label} {name} contains the input {given}; choose another output")
            if _is_within(target, inp):
                raise ConfigError(f"{label} {name} lies inside the input {given}; "
                                  "choose another output")
    if not overwrite:
        for companion, key in shared:
            _check_shared(Path(companion), key, out)
    if not res.exists() and not res.is_symlink():
        return out
    if folder_kind is None:
        return out
    if not res.is_dir():
        if not overwrite:
            raise ConfigError(f"output folder {out} exists and is a file; choose another name "
                              "or pass --overwrite to replace it")
        return out
    found = folder_kind_of(res)
    if found == folder_kind or overwrite or not any(res.iterdir()):
        return out
    what = f"an ml4m '{found}' output" if found else "not an ml4m output"
    raise ConfigError(f"output folder {out} exists and is {what} (this command writes a "
                      f"'{folder_kind}' folder); nothing was changed. Choose another name, or pass "
                      "--overwrite to replace the folder and everything in it")


def own_copy(companion: str | os.PathLike, output: str | os.PathLike) -> Path:
    """The copy of a shared ``companion`` (e.g. ``runs/metrics.json``) that belongs to
    ``output`` alone: ``{output's stem}_{companion's name}`` beside the companion
    (``runs/ace_metrics.json`` for ``runs/ace.ml4m``)."""
    companion = Path(companion)
    return companion.with_name(f"{Path(output).stem}_{companion.name}")


def write_shared(companion: str | os.PathLike, output: str | os.PathLike, text: str) -> None:
    """Write ``text`` to the shared ``companion`` of ``output`` and to its
    :func:`own_copy`, each atomically (the copy first, so that the shared name never
    holds a record that its copy lacks)."""
    from ml4m._fileio import atomic_path

    for path in (own_copy(companion, output), Path(companion)):
        with atomic_path(path) as tmp:
            tmp.write_text(text)


def _check_shared(companion: Path, key: str, out: Path) -> None:
    """Raise :class:`ConfigError` when replacing the existing file ``companion`` could
    lose a record: it is not a JSON object whose ``key`` names a file called as ``out``,
    nor one whose output's :func:`own_copy` holds the same bytes."""
    if not companion.exists() and not companion.is_symlink():
        return
    try:
        text = companion.read_bytes()
        owner = json.loads(text).get(key)
    except (OSError, ValueError, AttributeError):
        owner = None
    if isinstance(owner, str):
        if Path(owner).name == out.name:
            return
        with contextlib.suppress(OSError):
            if own_copy(companion, owner).read_bytes() == text:
                return
        whose = f"records {owner}, whose own copy {own_copy(companion, owner).name} lacks it"
    else:
        whose = "was not written by ml4m for a model"
    raise ConfigError(f"{companion} exists and {whose}; writing {out} would replace it. "
                      f"Nothing was changed: write {out.name} to another folder, or pass "
                      "--overwrite to replace it")


def _lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


def _process_start(pid: int) -> float | None:
    """Start time of process ``pid`` (seconds since the epoch), None if it is gone."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:  # exists but not inspectable: treat as alive
        return float("nan")


def _holder_alive(record: dict) -> bool:
    """Whether the process that wrote lock ``record`` still runs (a reused PID does not)."""
    pid = record.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool):
        return False
    if record.get("host") != socket.gethostname():
        return True  # another machine's process cannot be checked from here
    now_start = _process_start(pid)
    if now_start is None:
        return False
    started = record.get("process_start")
    if math.isnan(now_start) or not isinstance(started, (int, float)):
        return True
    return abs(now_start - started) < 1.0


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of output ``path`` (file ``.NAME.lock`` beside it).

    Raises
    ------
    OutputBusyError
        Another live process holds the lock.
    """
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock_path(out)
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "process_start": _process_start(os.getpid()), "started": time.time(),
          "command": " ".join(sys.argv[:1] + sys.argv[1:][:20])}
    for attempt in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                record = json.loads(lock.read_text())
                if not isinstance(record, dict):
                    raise ValueError("not an object")
            except (OSError, ValueError):
                try:  # garbled: a writer may be half-way through; old ones are stale
                    if time.time() - lock.stat().st_mtime < 5.0:
                        time.sleep(0.2)
                        continue
                except OSError:
                    continue
                record = {}
            if record and _holder_alive(record):
                raise OutputBusyError(
                    f"output {out} is being written by another ml4m process (PID "
                    f"{record.get('pid')} on {record.get('host')}, since "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record.get('started', 0)))}"
                    f"); wait for it to finish, or delete {lock} if that process is gone") from None
            stale = lock.with_name(f"{lock.name}.stale.{os.getpid()}")
            with contextlib.suppress(OSError):
                os.replace(lock, stale)  # only one taker wins the rename
                stale.unlink()
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(me))
        break
    else:
        raise OutputBusyError(f"could not take the lock {lock} of output {out}")
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):
            record = json.loads(lock.read_text())
            if record.get("pid") == os.getpid():
                lock.unlink()


@contextlib.contextmanager
def claim_output(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (),
                 folder_kind: str | None = None, overwrite: bool = False,
                 companions: Iterable[str | os.PathLike] = (),
                 shared: Iterable[tuple[str | os.PathLike, str]] = ()) -> Iterator[Path]:
    """Check ``path`` with :func:`check_output`, then hold its lock while writing.

    Use it around the whole command, before reading any input::

        with claim_output(args.output, inputs=args.files, folder_kind="store") as out:
            ...  # work, then write ``out`` with atomic_path / atomic_dir

    The checks run again under the lock (another process may have written meanwhile).

    Yields
    ------
    Path
        The output path to write.
    """
    inputs, companions, shared = list(inputs), list(companions), list(shared)
    check_output(path, inputs, folder_kind, overwrite, companions, shared)
    with output_lock(path):
        yield check_output(path, inputs, folder_kind, overwrite, companions, shared)

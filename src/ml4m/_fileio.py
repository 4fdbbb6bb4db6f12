"""Atomic file writes: nothing partial is ever left on disk.

Writers produce a temporary file (or folder) next to the target and rename it into
place only once it is complete, so a crash or a validation error leaves the old file
(or nothing) behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_dir", "read_json_record", "save_figure"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``target``.

    Parameters
    ----------
    target : str or PathLike
        Final file name. Its folder is created if missing.

    Yields
    ------
    Path
        A path in the same folder to write to. It keeps ``target``'s suffix so that
        format detection by extension (ASE, matplotlib) works.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, kind: str | None = None) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``target``.

    Parameters
    ----------
    target : str or PathLike
        Final folder name. An existing folder of that name is replaced only after
        the new one is complete (callers check first that it may be replaced:
        :func:`ml4m.outputs.claim_output`).
    kind : str, optional
        Write the ml4m output marker of this kind into the folder
        (:data:`ml4m.outputs.MARKER`), so that later runs recognise it as theirs.

    Yields
    ------
    Path
        A fresh, empty folder beside ``target``.
    """
    from ml4m.outputs import MARKER, marker_record

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if kind is not None:
            (tmp / MARKER).write_text(marker_record(kind))
        os.chmod(tmp, 0o777 & ~_umask())
        if target.is_dir() and not target.is_symlink() and _exchange(tmp, target):
            shutil.rmtree(tmp)  # now the old output: the swap left no moment without one
        elif target.exists() or target.is_symlink():
            # a fresh empty name to park the old output: nothing else is ever removed
            if target.is_dir() and not target.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old",
                                            dir=target.parent))
            else:
                fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".old",
                                            dir=target.parent)
                os.close(fd)
                old = Path(name)
            os.replace(target, old)
            os.replace(tmp, target)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2`` with ``RENAME_EXCHANGE``);
    False where the system or file system cannot, and nothing was changed."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def read_json_record(path: str | os.PathLike, fmt: str, what: str) -> dict:
    """The JSON object in ``path`` whose ``"format"`` is ``fmt`` (a saved state).

    Raises
    ------
    DataError
        The file cannot be read or parsed (``unreadable {what}``), or holds something
        else (``not an ml4m {what}``); the file is named.
    """
    import json

    from ml4m.errors import DataError

    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable {what}: {exc}", str(path)) from None
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise DataError(f"not an ml4m {what}", str(path))
    return record


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> Path:
    """Lay out a matplotlib figure and write it to ``path`` atomically (temp + rename);
    returns the path."""
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **savefig_kwargs)
    return path

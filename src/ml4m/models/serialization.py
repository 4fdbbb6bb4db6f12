"""The ``.ml4m`` model file: arrays plus JSON metadata, loadable without running code.

A model file is a zip archive (the layout of :func:`numpy.savez`) holding one ``.npy``
entry per array and a ``meta.json`` entry::

    meta.json     {"format": "ml4m-model", "version": 1, "kind": "linear_ace",
                   "ml4m_version": ..., "params": {...}, "sha256": {"coef": "..."}}
    coef.npy      numeric arrays only (object arrays are refused)

Loading uses ``numpy.load(allow_pickle=False)`` and ``json.loads``: no pickle, no code
from the file is ever executed. Each array's SHA-256 is stored in the metadata and
checked on load, so a truncated or tampered file fails with a clear error.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ml4m._fileio import atomic_path
from ml4m.errors import DataError

__all__ = ["MODEL_FORMAT", "MODEL_SUFFIX", "save_model_file", "read_model_file",
           "register_model", "load"]

MODEL_FORMAT = "ml4m-model"
MODEL_VERSION = 1
MODEL_SUFFIX = ".ml4m"

_REGISTRY: dict[str, type] = {}


def register_model(kind: str) -> Callable[[type], type]:
    """Class decorator: models of this ``kind`` are rebuilt by ``cls.from_state``."""

    def wrap(cls: type) -> type:
        _REGISTRY[kind] = cls
        cls.kind = kind
        return cls

    return wrap


def _digest(array: np.ndarray) -> str:
    a = np.ascontiguousarray(array)
    return hashlib.sha256(a.dtype.str.encode() + str(a.shape).encode() + a.tobytes()).hexdigest()


def save_model_file(path: str | os.PathLike, kind: str, params: dict[str, Any],
                    arrays: dict[str, np.ndarray]) -> Path:
    """Write a model file atomically.

    Parameters
    ----------
    path : str or PathLike
        Output file (``.ml4m`` is appended if missing).
    kind : str
        Registered model kind.
    params : dict
        JSON-serialisable hyperparameters and metadata.
    arrays : dict of str to ndarray
        Numeric arrays (no object dtype).

    Returns
    -------
    Path
        The file written.
    """
    from ml4m import __version__

    path = Path(path)
    if path.suffix != MODEL_SUFFIX:
        path = path.with_name(path.name + MODEL_SUFFIX)
    clean = {}
    for name, value in arrays.items():
        a = np.asarray(value)
        if a.dtype == object:
            raise TypeError(f"array {name!r} has object dtype; model files hold numbers only")
        clean[name] = a
    meta = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "kind": kind,
            "ml4m_version": __version__, "params": params,
            "sha256": {k: _digest(v) for k, v in clean.items()}}
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("meta.json", json.dumps(meta))
            for name, a in clean.items():
                buf = io.BytesIO()
                np.save(buf, a, allow_pickle=False)
                zf.writestr(f"{name}.npy", buf.getvalue())
    return path


def read_model_file(path: str | os.PathLike) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    """Read and verify a model file without executing anything from it.

    Parameters
    ----------
    path : str or PathLike
        A file written by :func:`save_model_file`.

    Returns
    -------
    kind : str
    params : dict
    arrays : dict of str to ndarray

    Raises
    ------
    DataError
        Missing, truncated, tampered or foreign file; the message names the file.
    """
    name = str(path)
    if not Path(path).is_file():
        raise DataError("no such model file", name)
    try:
        with zipfile.ZipFile(path) as zf:
            try:
                meta = json.loads(zf.read("meta.json"))
            except KeyError as exc:
                raise DataError("not an ml4m model file (no meta.json)", name) from exc
            if meta.get("format") != MODEL_FORMAT:
                raise DataError(f"not an ml4m model file (format {meta.get('format')!r})", name)
            if meta.get("version") != MODEL_VERSION:
                raise DataError(f"unsupported model file version {meta.get('version')!r}", name)
            arrays = {}
            for entry, digest in meta["sha256"].items():
                try:
                    raw = zf.read(f"{entry}.npy")
                except KeyError as exc:
                    raise DataError(f"array {entry!r} is missing (truncated file?)", name) from exc
                arrays[entry] = np.load(io.BytesIO(raw), allow_pickle=False)
                if _digest(arrays[entry]) != digest:
                    raise DataError(f"array {entry!r} does not match its checksum (tampered or "
                                    "corrupted file)", name)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"cannot read model file ({type(exc).__name__}: {exc}); "
                        "truncated or corrupted?", name) from exc
    return meta["kind"], meta["params"], arrays


def load(path: str | os.PathLike):
    """Load any ml4m model saved with ``model.save(path)``.

    Parameters
    ----------
    path : str or PathLike
        A ``.ml4m`` file.

    Returns
    -------
    model
        An instance of the registered model class (e.g. ``LinearACE``).
    """
    kind, params, arrays = read_model_file(path)
    _import_model_modules()
    if kind not in _REGISTRY:
        raise DataError(f"unknown model kind {kind!r} (known: {sorted(_REGISTRY)})", str(path))
    return _REGISTRY[kind].from_state(params, arrays)


def _import_model_modules() -> None:
    """Import the modules that register model kinds (deferred to keep imports light)."""
    import importlib

    for module in ("ml4m.models.linear", "ml4m.models.kernel"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:  # a stage that does not exist yet
            if exc.name != module:
                raise

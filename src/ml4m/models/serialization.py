"""The ``.ml4m`` model file: arrays plus JSON metadata, loadable without running code.

A model file is a zip archive (the layout of :func:`numpy.savez`) holding one ``.npy``
entry per array and a ``meta.json`` entry::

    meta.json     {"format": "ml4m-model", "version": 1, "kind": "linear_ace",
                   "ml4m_version": ..., "params": {...}, "sha256": {"coef": "..."}}
    coef.npy      numeric arrays only (object arrays are refused)

Loading reads each ``.npy`` header, refuses anything but numeric dtypes (no pickle, no
code from the file is ever executed) and checks every declared size before allocating.
Each array's SHA-256 is stored in the metadata and checked on load, so a truncated or
tampered file fails with a clear error; arrays and parameters must be finite, and any
failure of the model class to rebuild itself is reported naming the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ml4m._fileio import atomic_path
from ml4m.errors import DataError, ML4MError
from ml4m.outputs import file_with_suffix
from ml4m.validation import (
    check_array,
    check_int,
    check_mapping,
    check_size_against_file,
    check_str,
)

__all__ = ["MODEL_FORMAT", "MODEL_SUFFIX", "model_file_path", "save_model_file", "read_model_file",
           "register_model", "load", "check_state_version"]

from ml4m.models.registry import register_model  # noqa: E402  (re-exported: older imports)

MODEL_FORMAT = "ml4m-model"
MODEL_VERSION = 1
MODEL_SUFFIX = ".ml4m"

def _digest(array: np.ndarray) -> str:
    a = np.ascontiguousarray(array)
    return hashlib.sha256(a.dtype.str.encode() + str(a.shape).encode() + a.tobytes()).hexdigest()


def model_file_path(path: str | os.PathLike) -> Path:
    """The model file that output ``path`` names: ``path`` with the ``.ml4m`` suffix
    added when it has another (:func:`ml4m.outputs.file_with_suffix`; a folder's name is
    refused with a :class:`~ml4m.errors.ConfigError`: a model is one file)."""
    return file_with_suffix(path, MODEL_SUFFIX)


def save_model_file(path: str | os.PathLike, kind: str, params: dict[str, Any],
                    arrays: dict[str, np.ndarray], state_version: int = 1) -> Path:
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
    state_version : int, default=1
        Version of the kind's state layout (:class:`ml4m.models.registry.ModelKind`).

    Returns
    -------
    Path
        The file written.
    """
    from ml4m import __version__

    path = model_file_path(path)
    clean = {}
    for name, value in arrays.items():
        a = np.asarray(value)
        if a.dtype == object:
            raise TypeError(f"array {name!r} has object dtype; model files hold numbers only")
        clean[name] = a
    meta = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "kind": kind,
            "state_version": int(state_version), "ml4m_version": __version__, "params": params,
            "sha256": {k: _digest(v) for k, v in clean.items()}}
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("meta.json", json.dumps(meta))
            for name, a in clean.items():
                buf = io.BytesIO()
                np.save(buf, a, allow_pickle=False)
                zf.writestr(f"{name}.npy", buf.getvalue())
    return path


#: largest |energy per atom|, |force|, |stress| or sigma (eV, Angstrom) a potential may
#: predict for the test structure of :func:`load`; far beyond any physical value
MAX_TEST_PREDICTION = 1e6
#: largest meta.json entry read, bytes
MAX_META_BYTES = 64 << 20
_NUMERIC_KINDS = "biuf"


def _memory_bytes() -> int:
    """Physical memory of this machine, bytes (a bound no model file may declare beyond)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return 1 << 40


def _check_meta(meta: Any, name: str) -> dict[str, Any]:
    """The metadata object: format, version, kind, params and checksums of the right types."""
    where = {"error": DataError, "path": name}
    meta = check_mapping("meta.json", meta, **where)
    if meta.get("format") != MODEL_FORMAT:
        raise DataError(f"not an ml4m model file (format {meta.get('format')!r})", name)
    if meta.get("version") != MODEL_VERSION:
        raise DataError(f"unsupported model file version {meta.get('version')!r}", name)
    check_mapping("meta.json", meta, required=("kind", "params", "sha256"), **where)
    check_str("meta.json 'kind'", meta["kind"], **where)
    meta["state_version"] = check_int("meta.json 'state_version'", meta.get("state_version", 1),
                                      low=1, **where)
    check_mapping("meta.json 'params'", meta["params"], **where)
    sums = check_mapping("meta.json 'sha256'", meta["sha256"], **where)
    for entry, digest in sums.items():
        check_str(f"meta.json 'sha256'[{entry!r}]", digest, **where)
    _check_finite_json(meta["params"], "params", name)
    return meta


def _check_finite_json(value: Any, key: str, name: str) -> None:
    """Refuse NaN and infinities anywhere in the JSON parameters (naming the key)."""
    if isinstance(value, float) and not np.isfinite(value):
        raise DataError(f"meta.json '{key}' is not finite ({value})", name)
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite_json(v, f"{key}.{k}", name)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite_json(v, f"{key}[{i}]", name)


def _read_array(zf: zipfile.ZipFile, entry: str, name: str, budget: int) -> np.ndarray:
    """One ``.npy`` entry, its header checked against its size before any allocation.

    The declared entry size (``ZipInfo.file_size``, which also caps what is
    decompressed) must fit ``budget`` bytes, the header must declare a numeric dtype,
    and its shape must account exactly for the entry's bytes.
    """
    try:
        info = zf.getinfo(f"{entry}.npy")
    except KeyError:
        raise DataError(f"array {entry!r} is missing (truncated file?)", name) from None
    if info.file_size > budget:
        raise DataError(f"array {entry!r} declares {info.file_size} bytes, more than this "
                        f"machine's memory allows ({budget} bytes left; corrupted file?)", name)
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = header(fh, max_header_size=10_000)
        if dtype.hasobject or dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None:
            raise DataError(f"array {entry!r} has dtype {dtype}; model files hold numbers only",
                            name)
        count = math.prod(shape)
        available = info.file_size - fh.tell()
        if count * dtype.itemsize != available:
            raise DataError(f"array {entry!r} declares shape {shape} of {dtype} "
                            f"({count * dtype.itemsize} bytes) in an entry of {available} "
                            "data bytes (corrupted file?)", name)
        out = np.empty(count, dtype=dtype)
        view = memoryview(out.view(np.uint8).reshape(-1))
        pos = 0
        while pos < available:
            got = fh.readinto(view[pos:pos + (16 << 20)])
            if not got:
                raise DataError(f"array {entry!r} ends early (truncated file?)", name)
            pos += got
    return out.reshape(shape, order="F" if fortran else "C")


def read_model_file(path: str | os.PathLike) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    """Read and verify a model file without executing anything from it.

    Returns ``(kind, params, arrays)``; see :func:`_read_model` for the checks.
    """
    meta, arrays = _read_model(path)
    return meta["kind"], meta["params"], arrays


def _read_model(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and verify a model file: its checked ``meta.json`` and its arrays.

    Sizes are checked before anything is allocated: the declared size of every entry
    against this machine's memory, and each array's header shape against its entry.
    Arrays must be numeric and finite, the JSON parameters finite, and every array must
    match its checksum.

    Parameters
    ----------
    path : str or PathLike
        A file written by :func:`save_model_file`.

    Returns
    -------
    meta : dict
        ``kind``, ``state_version``, ``params``, ...
    arrays : dict of str to ndarray

    Raises
    ------
    DataError
        Missing, truncated, tampered, oversized or foreign file, metadata that is not
        an object or has entries of the wrong type, non-numeric or non-finite arrays;
        the message names the file and the entry.
    """
    name = str(path)
    if not Path(path).is_file():
        raise DataError("no such model file", name)
    try:
        with zipfile.ZipFile(path) as zf:
            try:
                info = zf.getinfo("meta.json")
            except KeyError as exc:
                raise DataError("not an ml4m model file (no meta.json)", name) from exc
            check_size_against_file("meta.json: declared size", info.file_size, 1,
                                    MAX_META_BYTES, path=name)
            try:
                meta = json.loads(zf.read(info))
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
                raise DataError(f"meta.json is not valid JSON ({exc})", name) from exc
            meta = _check_meta(meta, name)
            budget = _memory_bytes()
            arrays = {}
            for entry, digest in meta["sha256"].items():
                a = _read_array(zf, entry, name, budget)
                budget -= a.nbytes
                if _digest(a) != digest:
                    raise DataError(f"array {entry!r} does not match its checksum (tampered or "
                                    "corrupted file)", name)
                arrays[entry] = check_array(f"array {entry!r}", a, path=name)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError,
            OSError, NotImplementedError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"cannot read model file ({type(exc).__name__}: {exc}); "
                        "truncated or corrupted?", name) from exc
    return meta, arrays


def load(path: str | os.PathLike, *, check: bool = True):
    """Load any ml4m model saved with ``model.save(path)``.

    Parameters
    ----------
    path : str or PathLike
        A ``.ml4m`` file.
    check : bool, default=True
        Predict one small test structure (one atom of each of the model's elements on a
        periodic grid) and require finite results, for a potential within
        :data:`MAX_TEST_PREDICTION`: parameters that are finite but absurd (a
        coefficient of 1e300) fail here, naming the file, not in a later run.

    Returns
    -------
    model
        An instance of the registered model class (e.g. ``LinearACE``).

    Raises
    ------
    DataError
        Naming the file: anything :func:`read_model_file` refuses, an unknown model
        kind, any entry the model class cannot rebuild from (a missing key, a value of
        the wrong type or range, inconsistent shapes), and non-finite test predictions.
    """
    name = str(path)
    from ml4m.models.registry import model_kinds

    meta, arrays = _read_model(path)
    kinds = {k.name: k for k in model_kinds()}
    if meta["kind"] not in kinds:
        raise DataError(f"unknown model kind {meta['kind']!r} (known: {sorted(kinds)})", name)
    kind = kinds[meta["kind"]]
    check_state_version(kind, meta["state_version"], "meta.json 'state_version'", name)
    try:
        model = kind.cls.from_state(meta["params"], arrays)
        if check:
            _check_predictions(model)
        return model
    except DataError as exc:
        if exc.path is not None:
            raise
        raise DataError(f"invalid model: {exc.problem}", name, exc.frame) from exc
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to rebuild names the file
        raise DataError(f"invalid model: {_explain(exc)}", name) from exc


def check_state_version(kind: Any, version: int, key: str, name: str | None = None) -> None:
    """Refuse a saved state of ``kind`` (a :class:`~ml4m.models.registry.ModelKind`)
    newer than this ml4m reads: DataError naming ``key`` (and the file ``name``)."""
    if version > kind.state_version:
        raise DataError(f"{key}: a '{kind.name}' model of state version {version}, newer than "
                        f"this ml4m reads ({kind.state_version}): update ml4m", name)


def _check_predictions(model: Any) -> None:
    """Predict a small periodic structure with every element of ``model``; all finite.

    A model inside a baseline that runs an external calculator (GFN2-xTB, DFT) is checked
    without it: the calculator's numbers are not in the file, and a made-up structure
    may not converge in it (a periodic C-H-O cell in GFN2-xTB)."""
    from ml4m.data.frames import Frame

    from ml4m.models.base import Potential
    from ml4m.models.baseline import Baselined

    if isinstance(model, Baselined) and model.baseline_.external:
        model = model.model_

    known = model.species if isinstance(model, Potential) else model.descriptor.species
    species = [int(z) for z in known]
    if not species:
        return
    side = math.ceil(len(species) ** (1 / 3))
    grid = np.array([(i, j, k) for i in range(side) for j in range(side) for k in range(side)])
    spacing = 2.6  # Angstrom: a bonded distance for most elements
    frame = Frame(numbers=np.array(species, dtype=np.int64),
                  positions=spacing * grid[: len(species)].astype(float) + 0.3,
                  cell=np.eye(3) * spacing * side, pbc=np.ones(3, dtype=bool))
    bound = np.inf
    if hasattr(model, "predict_values"):  # a structure-property model (any units)
        values = dict(zip(("value", "sigma"), model.predict_values([frame], return_std=True)))
    else:  # a potential: eV, eV/Angstrom, eV/Angstrom^3
        pred = model.predict([frame], uncertainty=model.has_uncertainty)
        values = {k: getattr(pred, k) for k in ("energy", "forces", "stress", "energy_sigma",
                                                "forces_sigma")}
        values["energy"] = values["energy"] / len(species)
        bound = MAX_TEST_PREDICTION
    for key, value in values.items():
        if value is not None and not np.all(np.abs(value) <= bound):
            raise DataError(f"the model predicts {key} {np.ravel(value)[:3].tolist()} for a test "
                            f"structure of its elements (corrupted or absurd parameters)")


def _explain(exc: Exception) -> str:
    """A one-line reason for a failure inside a model's ``from_state``."""
    if isinstance(exc, KeyError):
        return f"entry {exc.args[0]!r} is missing" if exc.args else "an entry is missing"
    if isinstance(exc, ML4MError):
        return str(exc)
    return f"malformed entry ({type(exc).__name__}: {exc})"

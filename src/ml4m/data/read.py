"""Reading labelled structures from any ASE-readable file, with validation.

Every frame is checked as it is read (see :mod:`ml4m.data.validate`); a problem raises
:class:`~ml4m.errors.DataError` naming the file and the frame, before anything is
returned or written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import ase.io
from ase.io.formats import UnknownFileTypeError

from ml4m.data.frames import LABELS, Dataset, Frame
from ml4m.data.labels import LabelKeys
from ml4m.data.validate import MIN_DISTANCE, check_consistent_labels, check_frame, coerce_labels
from ml4m.errors import DataError

__all__ = ["iter_frames", "read_dataset"]

_INFO_SKIP = {"energy", "free_energy", "stress", "virial"}


def _info(atoms, keys: LabelKeys) -> dict:
    """Scalar and string metadata of a frame (labels removed)."""
    skip = set(_INFO_SKIP)
    for label in ("energy", "stress", "virial"):
        found, _ = keys.find(atoms, label)
        if found is not None:
            skip.add(found)
    out = {}
    for k, v in atoms.info.items():
        if k in skip:
            continue
        if isinstance(v, (str, int, float, bool)) or hasattr(v, "item") and getattr(v, "size", 2) == 1:
            out[k] = v.item() if hasattr(v, "item") else v
    return out


def iter_frames(
    path: str | os.PathLike,
    keys: LabelKeys | None = None,
    format: str | None = None,
    index: str = ":",
    min_distance: float = MIN_DISTANCE,
) -> Iterator[Frame]:
    """Yield validated frames of one file, one at a time (constant memory).

    Parameters
    ----------
    path : str or PathLike
        Any file ASE can read (extxyz, ASE db, VASP OUTCAR, ...).
    keys : LabelKeys, optional
        Where to find labels; defaults accept ``energy``/``forces``/``stress`` and
        their ``REF_``/``DFT_`` forms.
    format : str, optional
        ASE format name when the extension does not tell.
    index : str, default=':'
        ASE index string (``':'`` for all frames).
    min_distance : float, default=0.5
        Smallest allowed interatomic distance, Angstrom.

    Yields
    ------
    Frame
        Each frame with ``source = (str(path), k)``.

    Raises
    ------
    DataError
        Missing, empty or unparsable file; an invalid frame (see
        :func:`ml4m.data.validate.check_frame`).
    """
    keys = keys or LabelKeys()
    name = str(path)
    p = Path(path)
    if not p.exists():
        raise DataError("no such file", name)
    if p.is_file() and p.stat().st_size == 0:
        raise DataError("file is empty", name)
    k = 0
    try:
        reader = ase.io.iread(name, index=index, format=format)
        while True:
            try:
                atoms = next(reader)
            except StopIteration:
                break
            except UnknownFileTypeError as exc:
                raise DataError(f"unknown or unsupported file format ({exc})", name) from exc
            except KeyError as exc:
                raise DataError(f"cannot parse: unknown element {exc}", name, k) from exc
            except Exception as exc:  # ASE raises many types for malformed input
                raise DataError(
                    f"cannot parse ({type(exc).__name__}: {exc})", name, k
                ) from exc
            raw = keys.extract(atoms)
            labels = coerce_labels(raw, len(atoms), name, k)
            frame = Frame.from_atoms(atoms, **labels, info=_info(atoms, keys), source=(name, k))
            check_frame(frame, min_distance=min_distance)
            yield frame
            k += 1
    except DataError:
        raise
    except UnknownFileTypeError as exc:
        raise DataError(f"unknown or unsupported file format ({exc})", name) from exc
    if k == 0:
        raise DataError("file contains no frames", name)


def read_dataset(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    keys: LabelKeys | None = None,
    format: str | None = None,
    index: str = ":",
    require: Sequence[str] = (),
    min_distance: float = MIN_DISTANCE,
) -> Dataset:
    """Read and validate one or more files into a :class:`Dataset`.

    Parameters
    ----------
    paths : path or sequence of paths
        Files ASE can read.
    keys : LabelKeys, optional
        Label keys (see :class:`LabelKeys`).
    format : str, optional
        ASE format name, for all files.
    index : str, default=':'
        ASE index string applied to each file.
    require : sequence of str, default=()
        Labels every frame must carry (e.g. ``("energy", "forces")``); stress is only
        required on fully periodic frames.
    min_distance : float, default=0.5
        Smallest allowed interatomic distance, Angstrom.

    Returns
    -------
    Dataset
        Validated frames of all files, in order.

    Raises
    ------
    DataError
        Naming the file and frame: unreadable file, invalid frame, a label that only
        some frames of a file carry, or a required label that is missing.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    unknown = set(require) - set(LABELS)
    if unknown:
        raise DataError(f"unknown label(s) required: {sorted(unknown)}; known: {list(LABELS)}")
    frames: list[Frame] = []
    for path in paths:
        part = list(iter_frames(path, keys, format, index, min_distance))
        present = {lab: sum(f.has(lab) for f in part) for lab in LABELS}
        check_consistent_labels(part, present, str(path))
        for label in require:
            for f in part:
                if not f.has(label) and not (label == "stress" and not f.pbc.all()):
                    raise DataError(f"required label '{label}' is missing", *f.source)
        frames.extend(part)
    return Dataset(frames)

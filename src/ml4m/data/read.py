"""Reading labelled structures from any ASE-readable file, with validation.

Every frame is checked as it is read (see :mod:`ml4m.data.validate`); a problem raises
:class:`~ml4m.errors.DataError` naming the file and the frame, before anything is
returned or written. Any other exception a reader raises on malformed input is turned
into a :class:`DataError` naming the file and frame.

(Extended) XYZ files are first scanned frame by frame (constant memory): every atom-count
line must be an integer that the rest of the file can hold (so a count of 999999999999
fails at once instead of a reader looping over it), a ``Properties`` string may not
declare more than :data:`MAX_COLUMNS` columns, and text after a blank line is refused
(readers stop there, silently dropping it). When the reader then fails on a frame, that
frame is parsed again column by column to name the atom and the property.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import ase.io
from ase.io.formats import UnknownFileTypeError

from ml4m.data.frames import LABELS, Dataset, Frame
from ml4m.data.labels import LabelKeys
from ml4m.data.validate import MIN_DISTANCE, check_consistent_labels, check_frame, coerce_labels
from ml4m.errors import ConfigError, DataError, ML4MError
from ml4m.validation import check_float, check_size_against_file, check_str

__all__ = ["iter_frames", "read_dataset", "open_frames", "read_structure", "scan_xyz",
           "MAX_COLUMNS"]

_INFO_SKIP = {"energy", "free_energy", "stress", "virial"}
_XYZ_FORMATS = ("extxyz", "xyz")
#: fewest bytes an atom line of an xyz file takes (``"H 0 0 0\n"``)
_MIN_ATOM_LINE = 8
#: most per-atom columns an extxyz ``Properties`` string may declare
MAX_COLUMNS = 10_000
_PROPERTIES = re.compile(rb"Properties=[\"']?([^\s\"']+)")


def _is_xyz(path: Path, format: str | None) -> bool:
    """Whether ``path`` is read by ASE's (extended) XYZ reader."""
    if format is not None:
        return format in _XYZ_FORMATS
    return path.suffix.lower() in (".xyz", ".extxyz")


def scan_xyz(path: str | os.PathLike) -> list[tuple[int, int]]:
    """Check the frame layout of an (extended) XYZ file without parsing the atoms.

    Parameters
    ----------
    path : str or PathLike
        The file.

    Returns
    -------
    list of (int, int)
        Byte offset and atom count of each frame.

    Raises
    ------
    DataError
        Naming the file, the frame and the line: an atom-count line that is not an
        integer >= 0, an atom count the rest of the file cannot hold, a frame cut short
        by the end of the file, a ``Properties`` string of more than
        :data:`MAX_COLUMNS` columns, or text after a blank line.
    """
    name = str(path)
    size = os.path.getsize(path)
    frames: list[tuple[int, int]] = []
    line_no = 0
    with open(path, "rb") as fh:
        while True:
            offset = fh.tell()
            line = fh.readline()
            line_no += 1
            if not line:
                break
            k = len(frames)
            if not line.strip():
                rest = fh.read(1 << 16)
                while rest and not rest.strip():
                    rest = fh.read(1 << 16)
                if rest:
                    raise DataError(f"blank line {line_no} is followed by more text (a blank "
                                    "line ends an xyz file; remove it)", name, k)
                break
            try:
                n_atoms = int(line)
            except ValueError:
                raise DataError(f"line {line_no}: expected the atom count of frame {k}, got "
                                f"{line.strip()[:40].decode(errors='replace')!r}", name, k) from None
            check_size_against_file(f"atom count (line {line_no})", n_atoms, _MIN_ATOM_LINE,
                                    size - fh.tell(), path=name, frame=k)
            comment = fh.readline()
            match = _PROPERTIES.search(comment)
            if match:
                _check_columns(match.group(1), name, k, line_no + 1)
            for i in range(n_atoms):
                if not fh.readline():
                    raise DataError(f"declares {n_atoms} atoms (line {line_no}) but the file "
                                    f"ends after {i} atom lines (truncated file?)", name, k)
            line_no += 1 + n_atoms
            while True:  # up to three VEC lines (cell of a plain xyz frame)
                pos = fh.tell()
                if not fh.readline().lstrip().startswith(b"VEC"):
                    fh.seek(pos)
                    break
                line_no += 1
            frames.append((offset, n_atoms))
    return frames


def _check_columns(spec: bytes, path: str, frame: int, line_no: int) -> None:
    """Refuse a ``Properties`` string that declares absurdly many columns."""
    counts = spec.split(b":")[2::3]
    try:
        total = sum(int(c) for c in counts)
    except ValueError:
        raise DataError(f"line {line_no}: Properties column counts must be integers, got "
                        f"{spec[:80].decode(errors='replace')!r}", path, frame) from None
    if total > MAX_COLUMNS or any(int(c) < 1 for c in counts):
        raise DataError(f"line {line_no}: Properties declares {total} columns per atom "
                        f"(each count must be in [1, {MAX_COLUMNS}] in total)", path, frame)


def _diagnose_xyz_frame(path: str, offset: int, n_atoms: int) -> str | None:
    """Name the atom and property of the first value an extxyz frame cannot convert."""
    from ase.io.extxyz import key_val_str_to_dict, parse_properties

    with open(path, "rb") as fh:
        fh.seek(offset)
        fh.readline()
        comment = fh.readline().decode(errors="replace").strip()
        try:
            info = key_val_str_to_dict(comment) if comment else {}
            properties, names, _, converters = parse_properties(
                info.get("Properties", "species:S:1:pos:R:3"))
        except Exception as exc:  # noqa: BLE001 - any failure means a bad comment line
            return f"comment line cannot be parsed ({type(exc).__name__}: {exc})"
        columns = [f"{n}[{c}]" if properties[n][1] > 1 else n
                   for n in names for c in range(properties[n][1])]
        for i in range(n_atoms):
            values = fh.readline().decode(errors="replace").split()
            if len(values) < len(columns):
                return (f"atom {i} has {len(values)} columns, Properties declares "
                        f"{len(columns)} ({', '.join(columns)})")
            for column, conv, value in zip(columns, converters, values):
                try:
                    ok = conv(value) is not None
                except ValueError:
                    ok = False
                if not ok:
                    return f"atom {i}, column {column}: {value[:40]!r} is not a valid value"
    return None


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
        Each frame with ``source = (str(path), k)``, ``k`` the frame's number in the
        file (for (extended) XYZ files also when ``index`` selects a part of it).

    Raises
    ------
    DataError
        Missing, empty or unparsable file; an invalid frame (see
        :func:`ml4m.data.validate.check_frame`).
    """
    keys = keys or LabelKeys()
    min_distance = check_float("min_distance", min_distance, low=0.0)
    check_str("index", index)
    name = str(path)
    p = Path(path)
    if not p.exists():
        raise DataError("no such file", name)
    if p.is_dir() and (p / "meta.json").is_file():  # what open_frames opens
        raise DataError("is a packed store (ml4m data pack); this reads structure files: "
                        "give the file the store was packed from", name)
    if p.is_file() and p.stat().st_size == 0:
        raise DataError("file is empty", name)
    layout = scan_xyz(p) if p.is_file() and _is_xyz(p, format) else None
    numbers = _frame_numbers(index, layout)
    k = 0

    def at(k: int) -> int:  # the file's frame number of the k-th frame read
        return numbers[k] if numbers is not None and k < len(numbers) else k

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
                raise DataError(f"cannot parse: unknown element {exc}", name, at(k)) from exc
            except Exception as exc:  # ASE raises many types for malformed input
                hint = None
                if layout is not None and at(k) < len(layout):
                    hint = _diagnose_xyz_frame(name, *layout[at(k)])
                raise DataError(
                    hint or f"cannot parse ({type(exc).__name__}: {exc})", name, at(k)
                ) from exc
            yield _frame(atoms, keys, name, at(k), min_distance)
            k += 1
    except ML4MError:
        raise
    except UnknownFileTypeError as exc:
        raise DataError(f"unknown or unsupported file format ({exc})", name) from exc
    except Exception as exc:  # noqa: BLE001 - a reader failing outside a frame
        raise DataError(f"cannot read ({type(exc).__name__}: {exc})", name, at(k)) from exc
    if k == 0:
        raise DataError("file contains no frames", name)


def _frame_numbers(index: str, layout: list | None) -> list[int] | None:
    """The file's frame numbers that ``index`` selects, when the layout is known."""
    if layout is None:
        return None
    from ase.io.formats import string2index

    try:
        chosen = range(len(layout))[string2index(index)]
    except (ValueError, IndexError, TypeError) as exc:
        raise ConfigError(f"index {index!r} does not select frames of a file of "
                          f"{len(layout)} frames ({exc})") from None
    return [chosen] if isinstance(chosen, int) else list(chosen)


def _frame(atoms, keys: LabelKeys, name: str, k: int, min_distance: float) -> Frame:
    """Labels found, converted and checked; any unexpected failure names file and frame."""
    try:
        raw = keys.extract(atoms)
        labels = coerce_labels(raw, len(atoms), name, k, keys=keys.found(atoms))
        frame = Frame.from_atoms(atoms, **labels, info=_info(atoms, keys), source=(name, k))
        check_frame(frame, min_distance=min_distance)
    except ML4MError:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed values of any kind
        raise DataError(f"cannot read ({type(exc).__name__}: {exc})", name, k) from exc
    return frame


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
    ConfigError
        ``require`` names a label that is not one of :data:`LABELS`.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    unknown = set(require) - set(LABELS)
    if unknown:
        raise ConfigError(f"require names unknown label(s) {sorted(unknown)}; known: {list(LABELS)}")
    frames: list[Frame] = []
    for path in paths:
        part = list(iter_frames(path, keys, format, index, min_distance))
        present = {lab: sum(f.has(lab) for f in part) for lab in LABELS}
        check_consistent_labels(part, present, str(path))
        for label in require:
            for f in part:
                if not f.has(label) and not (label == "stress" and not f.pbc.all()):
                    raise DataError(f"required label '{label}' is missing (looked for "
                                    f"{(keys or LabelKeys()).looked_for(label)})", *f.source)
        frames.extend(part)
    return Dataset(frames)


def open_frames(path: str | os.PathLike, keys: LabelKeys | None = None,
                format: str | None = None, require: Sequence[str] = ()):
    """The frames of a structure file, or of a packed store (a folder written by
    ``ml4m data pack``).

    Parameters
    ----------
    path : str or PathLike
        Any structure file ASE reads (read and validated by :func:`read_dataset`), or a
        store folder (opened lazily: its frames are read when used).
    keys, format
        Label keys and ASE format of a file (a store has its labels under fixed names).
    require : sequence of str, default=()
        Labels every frame must carry (stress only on fully periodic frames).

    Returns
    -------
    Dataset or PackedStore

    Raises
    ------
    DataError
        As :func:`read_dataset`; a folder that is not a store; a store without a
        required label.
    """
    if not Path(path).is_dir():
        return read_dataset(path, keys=keys, format=format, require=require)
    from ml4m.data.store import open_store

    store = open_store(path)
    missing = [lab for lab in require if lab not in store.labels]
    if "stress" in missing and not store.array("pbc").all(axis=1).any():
        missing.remove("stress")  # required on fully periodic frames only
    if missing:
        raise DataError(f"required label(s) {missing} missing: the store holds "
                        f"{list(store.labels) or 'no labels'}", str(path))
    return store


def read_structure(path: str | os.PathLike, frame: int = -1):
    """Frame ``frame`` of ``path`` (default the last; any ASE-readable file, validated as
    :func:`read_dataset` does) as ``ase.Atoms`` without labels: the start of an MD run,
    a relaxation, a walker or an optimisation."""
    return read_dataset(path, index=str(int(frame)))[0].to_atoms(with_labels=False)

"""A compact, memory-mapped store of labelled frames for streaming training.

Like PANNA's packed descriptor files, a store is written once and read lazily: every
array is a raw little-endian binary file that :func:`numpy.memmap` maps without
reading it, described by ``meta.json`` (dtypes, shapes, label names). A data set larger
than memory can therefore be iterated frame by frame or batch by batch. Loading a store
runs no code from the file: it is raw numbers plus JSON.

Layout of ``STORE/``::

    meta.json        format, version, counts, labels, array dtypes and shapes, and
                     ``pair_minima``: each element pair's shortest distance (Angstrom,
                     periodic images count) below ``cutoff``, found while packing
    offsets.bin      int64 (n_frames + 1,)  atom offset of each frame
    numbers.bin      uint8 (n_atoms,)
    positions.bin    float64 (n_atoms, 3)   Angstrom
    forces.bin       float64 (n_atoms, 3)   eV/Angstrom (if labelled)
    cell.bin         float64 (n_frames, 3, 3) Angstrom
    pbc.bin          bool (n_frames, 3)
    energy.bin       float64 (n_frames,)    eV (if labelled)
    stress.bin       float64 (n_frames, 6)  eV/Angstrom^3, NaN where undefined
    config_type.bin  int32 (n_frames,)      index into meta["config_types"], -1 if none
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ml4m._fileio import atomic_dir
from ml4m.data.frames import LABELS, Dataset, Frame
from ml4m.data.neighbors import PairMinima
from ml4m.data.validate import check_frame, coerce_labels
from ml4m.errors import DataError
from ml4m.validation import check_array, check_float, check_int, check_mapping, check_str
from ml4m.outputs import check_output

__all__ = ["StoreWriter", "PackedStore", "pack_frames", "open_store", "STORE_FORMAT"]

STORE_FORMAT = "ml4m-store"
STORE_VERSION = 1
#: how far the writer looks for each element pair's shortest distance, Angstrom (the
#: repulsive core's search, :data:`ml4m.models.baseline.repulsion.SEARCH_CUTOFF`, goes as
#: far and reads the record instead of the frames)
PAIR_MINIMA_CUTOFF = 3.0

_PER_ATOM = {"numbers": ("u1", ()), "positions": ("<f8", (3,)), "forces": ("<f8", (3,))}
_PER_FRAME = {
    "cell": ("<f8", (3, 3)),
    "pbc": ("|b1", (3,)),
    "energy": ("<f8", ()),
    "stress": ("<f8", (6,)),
    "config_type": ("<i4", ()),
}


class StoreWriter:
    """Append frames to a new store; the store appears only on successful close.

    Parameters
    ----------
    path : str or PathLike
        Store folder to create. An existing store there is replaced atomically once
        the new one is complete; any other existing folder is refused (ConfigError)
        unless ``overwrite`` (:func:`ml4m.outputs.check_output`).
    overwrite : bool, default=False
        Replace an existing folder that is not a store.

    Examples
    --------
    >>> with StoreWriter("train.store") as w:  # doctest: +SKIP
    ...     for frame in frames:
    ...         w.add(frame)
    """

    def __init__(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self._ctx = None
        self._files: dict[str, Any] = {}
        self._labels: tuple[str, ...] | None = None
        self._config_types: dict[str, int] = {}
        self._n_frames = 0
        self._n_atoms = 0
        self._species: set[int] = set()
        self._first_source: tuple[str, int] | None = None
        self._minima = PairMinima(PAIR_MINIMA_CUTOFF)

    def __enter__(self) -> StoreWriter:
        check_output(self.path, folder_kind="store", overwrite=self.overwrite)
        self._ctx = atomic_dir(self.path, kind="store")
        self._dir = self._ctx.__enter__()
        self._files["offsets"] = open(self._dir / "offsets.bin", "wb")
        self._files["offsets"].write(np.zeros(1, "<i8").tobytes())
        return self

    def _open(self, name: str):
        if name not in self._files:
            self._files[name] = open(self._dir / f"{name}.bin", "wb")
        return self._files[name]

    def add(self, frame: Frame) -> None:
        """Append one frame (its labels must match those of the first frame)."""
        labels = tuple(lab for lab in LABELS if frame.has(lab))
        if self._labels is None:
            self._labels = labels
            self._first_source = frame.source
        else:
            expected = set(self._labels)
            got = set(labels)
            if "stress" in expected and "stress" not in got and not frame.pbc.all():
                got.add("stress")
            if got != expected:
                where = frame.source or (None, self._n_frames)
                raise DataError(
                    f"labels {sorted(got)} differ from those of the first frame "
                    f"{sorted(expected)} (partial labels)",
                    *where,
                )
        n = len(frame)
        self._open("numbers").write(frame.numbers.astype("u1").tobytes())
        self._open("positions").write(frame.positions.astype("<f8").tobytes())
        if "forces" in self._labels:
            self._open("forces").write(frame.forces.astype("<f8").tobytes())
        self._open("cell").write(frame.cell.astype("<f8").tobytes())
        self._open("pbc").write(frame.pbc.astype("|b1").tobytes())
        if "energy" in self._labels:
            self._open("energy").write(np.float64(frame.energy).astype("<f8").tobytes())
        if "stress" in self._labels:
            s = frame.stress if frame.stress is not None else np.full(6, np.nan)
            self._open("stress").write(np.asarray(s, "<f8").tobytes())
        ct = frame.info.get("config_type")
        code = -1 if ct is None else self._config_types.setdefault(str(ct), len(self._config_types))
        self._open("config_type").write(np.int32(code).astype("<i4").tobytes())
        self._n_atoms += n
        self._n_frames += 1
        self._files["offsets"].write(np.int64(self._n_atoms).astype("<i8").tobytes())
        self._species.update(int(z) for z in np.unique(frame.numbers))
        self._minima.add(frame)

    def __exit__(self, exc_type, exc, tb) -> None:
        for f in self._files.values():
            f.close()
        if exc_type is None:
            if self._n_frames == 0:
                exc = DataError("no frames to pack", str(self.path))
                self._ctx.__exit__(type(exc), exc, None)
                raise exc
            arrays = {"offsets": {"dtype": "<i8", "shape": [self._n_frames + 1]}}
            for name in self._files:
                if name == "offsets":
                    continue
                table = _PER_ATOM if name in _PER_ATOM else _PER_FRAME
                dtype, tail = table[name]
                lead = self._n_atoms if name in _PER_ATOM else self._n_frames
                arrays[name] = {"dtype": dtype, "shape": [lead, *tail]}
            meta = {
                "format": STORE_FORMAT,
                "version": STORE_VERSION,
                "n_frames": self._n_frames,
                "n_atoms": self._n_atoms,
                "labels": list(self._labels or ()),
                "species": sorted(self._species),
                "config_types": list(self._config_types),
                "arrays": arrays,
                "pair_minima": {"cutoff": self._minima.cutoff, "pairs": self._minima.as_dict()},
            }
            (self._dir / "meta.json").write_text(json.dumps(meta, indent=1))
        self._ctx.__exit__(exc_type, exc, tb)


def pack_frames(frames: Iterable[Frame], path: str | os.PathLike,
                overwrite: bool = False) -> PackedStore:
    """Stream ``frames`` into a new store at ``path`` and open it.

    Parameters
    ----------
    frames : iterable of Frame
        Frames, e.g. :func:`ml4m.data.iter_frames` of one or more files (constant
        memory: nothing is held but the current frame).
    path : str or PathLike
        Store folder (see :class:`StoreWriter`).
    overwrite : bool, default=False
        Replace an existing folder that is not a store.

    Returns
    -------
    PackedStore
    """
    with StoreWriter(path, overwrite=overwrite) as writer:
        for frame in frames:
            writer.add(frame)
    return PackedStore(path)


class PackedStore:
    """Read-only, lazily memory-mapped view of a store written by :class:`StoreWriter`.

    Parameters
    ----------
    path : str or PathLike
        Store folder.

    Raises
    ------
    DataError
        Not a store, unknown version, or a file whose size does not match ``meta.json``
        (truncated or tampered).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        meta = _read_meta(self.path)
        self.meta = meta
        self.n_frames: int = meta["n_frames"]
        self.n_atoms: int = meta["n_atoms"]
        self.labels: tuple[str, ...] = tuple(meta["labels"])
        self.config_types: list[str] = list(meta.get("config_types", []))
        #: ``(cutoff, {"A-B": d})``: the shortest distance of each element pair below the
        #: cutoff (Angstrom), recorded when packed; None for a store written without it
        self.pair_minima: tuple[float, dict[str, float]] | None = _pair_minima(meta, self.path)
        self._specs: dict[str, tuple[Path, np.dtype, tuple[int, ...]]] = {}
        self._maps: dict[str, np.ndarray] = {}
        for name, spec in meta["arrays"].items():
            self._specs[name] = _check_array_file(self.path, name, spec, self.n_frames,
                                                  self.n_atoms)
        missing = [n for n in ("offsets", "numbers", "positions", "cell", "pbc", "config_type",
                               *self.labels) if n not in self._specs]
        if missing:
            raise DataError(f"meta.json lists no array(s) {missing}", str(self.path))
        where = {"path": str(self.path)}
        self.offsets = self._read("offsets", 0, self.n_frames + 1)
        if self.offsets[0] != 0 or self.offsets[-1] != self.n_atoms \
                or np.any(np.diff(self.offsets) < 1):
            raise DataError("array 'offsets' must rise from 0 to n_atoms "
                            f"({self.n_atoms}) by at least 1 per frame (corrupted store)", **where)
        codes = self._read("config_type", 0, self.n_frames)
        if codes.size and (codes.min() < -1 or codes.max() >= len(self.config_types)):
            raise DataError(f"array 'config_type' holds codes outside [-1, "
                            f"{len(self.config_types) - 1}] (corrupted store)", **where)

    def _read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of array ``name``, read from disk (no mapping kept)."""
        file, dtype, shape = self._specs[name]
        row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        count = (stop - start) * row
        data = np.fromfile(file, dtype=dtype, count=count, offset=start * row * dtype.itemsize)
        return data.reshape((stop - start, *shape[1:]))

    def has_array(self, name: str) -> bool:
        """Whether the store holds array ``name``."""
        return name in self._specs

    def __len__(self) -> int:
        return self.n_frames

    def __repr__(self) -> str:
        return f"PackedStore({str(self.path)!r}, n_frames={self.n_frames}, n_atoms={self.n_atoms})"

    def array(self, name: str) -> np.ndarray:
        """The whole array ``name``, memory-mapped read-only (see the module docstring).

        Pages touched through the map count towards the process's resident memory until
        the kernel evicts them; for a pass over a store larger than memory use
        :meth:`iter_batches`, which reads with plain file reads.
        """
        if name not in self._maps:
            file, dtype, shape = self._specs[name]
            self._maps[name] = np.memmap(file, dtype=dtype, mode="r", shape=shape)
        return self._maps[name]

    def __getitem__(self, k: int) -> Frame:
        if not -self.n_frames <= k < self.n_frames:
            raise IndexError(f"frame {k} out of range for a store of {self.n_frames} frames")
        k = int(k) % self.n_frames
        a, b = int(self.offsets[k]), int(self.offsets[k + 1])
        atom = {n: self._read(n, a, b) for n in _PER_ATOM if n in self._specs}
        frame = {n: self._read(n, k, k + 1)[0] for n in _PER_FRAME if n in self._specs}
        ct = int(frame["config_type"]) if "config_type" in frame else -1
        stress = frame.get("stress")
        out = Frame(
            numbers=atom["numbers"].astype(np.int64),
            positions=atom["positions"],
            cell=frame["cell"],
            pbc=frame["pbc"],
            energy=float(frame["energy"]) if "energy" in frame else None,
            forces=atom.get("forces"),
            stress=stress if stress is not None and np.isfinite(stress).all() else None,
            info={"config_type": self.config_types[ct]} if ct >= 0 else {},
            source=(str(self.path), k),
        )
        check_frame(out, min_distance=0.0)
        coerce_labels({lab: getattr(out, lab) for lab in LABELS if out.has(lab)}, len(out),
                      str(self.path), k)
        return out

    def __iter__(self) -> Iterator[Frame]:
        for k in range(self.n_frames):
            yield self[k]

    def iter_batches(self, frames_per_batch: int = 64) -> Iterator[dict[str, np.ndarray]]:
        """Yield batches of consecutive frames as flat arrays, read from disk (constant memory).

        Parameters
        ----------
        frames_per_batch : int, default=64
            Frames per batch (the last batch may be smaller).

        Yields
        ------
        dict
            ``offsets`` (relative, n+1), ``numbers``, ``positions``, per-frame
            ``cell``/``pbc`` and whichever labels the store has.
        """
        for start in range(0, self.n_frames, frames_per_batch):
            stop = min(start + frames_per_batch, self.n_frames)
            a, b = int(self.offsets[start]), int(self.offsets[stop])
            batch = {"offsets": self.offsets[start:stop + 1] - a}
            for name in self._specs:
                if name in _PER_ATOM:
                    batch[name] = self._read(name, a, b)
                elif name != "offsets":
                    batch[name] = self._read(name, start, stop)
            for name, values in batch.items():  # stress is NaN where undefined
                check_array(f"array {name!r} (frames {start} to {stop - 1})", values,
                            finite=name != "stress", path=str(self.path))
            yield batch

    def to_dataset(self) -> Dataset:
        """Load every frame into memory as a :class:`Dataset`."""
        return Dataset(iter(self))


#: largest meta.json read, bytes
_MAX_META_BYTES = 64 << 20


def _read_meta(path: Path) -> dict[str, Any]:
    """A store's meta.json: an object with the format, counts, labels and array table."""
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise DataError("not an ml4m store (meta.json missing)", str(path))
    where = {"error": DataError, "path": str(meta_path)}
    if meta_path.stat().st_size > _MAX_META_BYTES:
        raise DataError(f"meta.json is larger than {_MAX_META_BYTES} bytes", str(meta_path))
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise DataError(f"meta.json is not valid JSON ({exc})", str(meta_path)) from exc
    meta = check_mapping("meta.json", meta, **where)
    if meta.get("format") != STORE_FORMAT or meta.get("version") != STORE_VERSION:
        raise DataError(
            f"unsupported store format {meta.get('format')!r} version {meta.get('version')!r}",
            str(meta_path),
        )
    check_mapping("meta.json", meta, required=("n_frames", "n_atoms", "labels", "arrays"), **where)
    check_int("meta.json 'n_frames'", meta["n_frames"], low=1, **where)
    check_int("meta.json 'n_atoms'", meta["n_atoms"], low=meta["n_frames"], **where)
    for key in ("labels", "config_types"):
        values = meta.get(key, [])
        if not isinstance(values, list):
            raise DataError(f"meta.json '{key}' must be a list, got {values!r}", str(meta_path))
        for v in values:
            check_str(f"meta.json '{key}' entry", v, **where)
    unknown = sorted(set(meta["labels"]) - set(LABELS))
    if unknown:
        raise DataError(f"meta.json 'labels' has unknown label(s) {unknown}", str(meta_path))
    check_mapping("meta.json 'arrays'", meta["arrays"], keys=("offsets", *_PER_ATOM, *_PER_FRAME),
                  **where)
    return meta


def _pair_minima(meta: dict[str, Any], path: Path) -> tuple[float, dict[str, float]] | None:
    """meta.json's ``pair_minima`` checked: a positive cutoff and, per pair ``"A-B"`` of
    known elements (lighter first), a distance in [0, cutoff); None when absent."""
    from ase.data import atomic_numbers

    record = meta.get("pair_minima")
    if record is None:
        return None
    where = {"error": DataError, "path": str(path / "meta.json")}
    record = check_mapping("meta.json 'pair_minima'", record, required=("cutoff", "pairs"),
                           keys=("cutoff", "pairs"), **where)
    cutoff = check_float("meta.json 'pair_minima' cutoff", record["cutoff"], low=0.0,
                         low_open=True, **where)
    pairs = {}
    for key, d in check_mapping("meta.json 'pair_minima' pairs", record["pairs"],
                                **where).items():
        a, _, b = key.partition("-")
        if not (a in atomic_numbers and b in atomic_numbers and "X" not in (a, b)
                and atomic_numbers[a] <= atomic_numbers[b]):
            raise DataError(f"meta.json 'pair_minima' has pair {key!r}; expected 'A-B' of two "
                            "elements, the lighter first (tampered store)", str(path / "meta.json"))
        pairs[key] = check_float(f"meta.json 'pair_minima' {key}", d, low=0.0, high=cutoff,
                                 high_open=True, **where)
    order = sorted(pairs, key=lambda k: tuple(atomic_numbers[x] for x in k.split("-")))
    return float(cutoff), {k: pairs[k] for k in order}


def _check_array_file(path: Path, name: str, spec: Any, n_frames: int,
                      n_atoms: int) -> tuple[Path, np.dtype, tuple[int, ...]]:
    """File, dtype and shape of one array: those the layout fixes, and the file's size."""
    file = path / f"{name}.bin"
    where = {"error": DataError, "path": str(file)}
    spec = check_mapping(f"meta.json 'arrays'.{name}", spec, required=("dtype", "shape"), **where)
    if name == "offsets":
        dtype, shape = "<i8", (n_frames + 1,)
    else:
        dtype, tail = _PER_ATOM[name] if name in _PER_ATOM else _PER_FRAME[name]
        shape = (n_atoms if name in _PER_ATOM else n_frames, *tail)
    if spec["dtype"] != dtype or spec["shape"] != list(shape):
        raise DataError(f"array '{name}' must be {dtype} of shape {list(shape)}, meta.json says "
                        f"{spec['dtype']!r} of shape {spec['shape']!r} (tampered store)", str(file))
    dt = np.dtype(dtype)
    expected = int(np.prod(shape)) * dt.itemsize
    size = file.stat().st_size if file.is_file() else -1
    if size != expected:
        raise DataError(f"array file has {size} bytes, meta.json says {expected} (truncated or "
                        "tampered store)", str(file))
    return file, dt, shape


def open_store(path: str | os.PathLike) -> PackedStore:
    """Open a store written by ``ml4m data pack`` (see :class:`PackedStore`)."""
    return PackedStore(path)

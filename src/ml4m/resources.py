"""Resource guards: estimate what heavy work needs before starting it, and refuse early.

A cutoff of 10,000 Angstrom in a periodic crystal gives ~1e11 neighbours per atom: the
neighbour list alone would exhaust memory after minutes of work, or the machine would
swap. Callers estimate the bytes they will hold (:func:`estimate_neighbors` gives the
pair counts) and call :func:`check_memory`, which raises a
:class:`~ml4m.errors.ConfigError` naming the work, the estimate and the limit.

The limit is ``max_memory`` (bytes, or a string such as ``"4GB"``; the command line's
``--max-memory``), by default half of the memory available when the check runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ml4m.errors import ConfigError

__all__ = ["DEFAULT_FRACTION", "max_memory", "parse_bytes", "format_bytes", "available_memory",
           "memory_limit", "check_memory", "estimate_neighbors", "tune_allocator",
           "ALLOCATOR_SETTINGS", "USER_ALLOCATOR_SETTINGS"]

#: default limit: this fraction of the memory available (psutil) when a check runs
DEFAULT_FRACTION = 0.5
_NEGLIGIBLE = 2**24  # estimates below 16 MiB pass the default limit without asking psutil

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_bytes(value: Any, name: str = "max_memory") -> int:
    """A memory size in bytes from a number or a string like ``"4GB"``, ``"500 MB"``, ``"2GiB"``.

    Parameters
    ----------
    value : int, float or str
        Bytes, or a number with a unit (B, KB, MB, GB, TB: powers of 1000; KiB, MiB,
        GiB, TiB: powers of 1024; case-insensitive).
    name : str, default="max_memory"
        Named in the error message (e.g. ``"--max-memory"``).

    Returns
    -------
    int
        Bytes, > 0.

    Raises
    ------
    ConfigError
        Not a positive, finite size with a known unit.
    """
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*", value.lower())
        if m is None or m.group(2) not in _UNITS:
            raise ConfigError(f"{name} must be a size such as 4GB, 500MB or 2GiB, got {value!r}")
        number = float(m.group(1)) * _UNITS[m.group(2)]
    elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise ConfigError(f"{name} must be a number of bytes or a size such as 4GB, got {value!r}")
    if not math.isfinite(number) or number < 1:
        raise ConfigError(f"{name} must be a positive size, got {value!r}")
    return int(number)


def format_bytes(n: float) -> str:
    """``n`` bytes as a short decimal string, e.g. ``"1.2 GB"``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}" if n < 1e3 * scale or unit == "TB" \
                else f"{n / scale:.3e} {unit}"
    return f"{int(n)} B"


def available_memory() -> int:
    """Memory available to new allocations now (psutil), bytes."""
    import psutil

    return int(psutil.virtual_memory().available)


_LIMIT: contextvars.ContextVar[Any] = contextvars.ContextVar("ml4m_max_memory", default=None)


@contextlib.contextmanager
def max_memory(limit: Any) -> Iterator[None]:
    """Within the block, checks without an explicit limit use ``limit`` (bytes or a size
    string; None keeps the default): how ``ml4m fit --max-memory`` reaches the model."""
    if limit is not None:
        parse_bytes(limit, "--max-memory")  # refuse a bad value before any work
    token = _LIMIT.set(limit)
    try:
        yield
    finally:
        _LIMIT.reset(token)


def memory_limit(max_memory: Any = None) -> tuple[int, str]:
    """The limit in bytes and how it was set (for messages).

    Parameters
    ----------
    max_memory : int, float, str or None
        Bytes or a size string (:func:`parse_bytes`); None: :data:`DEFAULT_FRACTION`
        of :func:`available_memory`.
    """
    if max_memory is None:
        max_memory = _LIMIT.get()
    if max_memory is None:
        avail = available_memory()
        return int(DEFAULT_FRACTION * avail), \
            f"{DEFAULT_FRACTION:.0%} of the {format_bytes(avail)} available"
    return parse_bytes(max_memory), "max_memory"


def check_memory(estimate_bytes: float, what: str, limit: Any = None,
                 hint: str = "raise max_memory (--max-memory)") -> None:
    """Refuse work whose estimated memory exceeds the limit.

    Parameters
    ----------
    estimate_bytes : float
        Estimated peak memory of the work, bytes (may be inf).
    what : str
        The work, in the user's terms, e.g. ``"SOAP gradients of 10,000 atoms"``.
    limit : int, float, str or None
        ``max_memory`` (:func:`memory_limit`); None: half the available memory.
    hint : str, optional
        What the user can change, e.g. ``"lower --r-cut"``; appended to the message
        (default: raise ``max_memory``, ``--max-memory``).

    Raises
    ------
    ConfigError
        ``estimate_bytes`` exceeds the limit; the message gives both.
    """
    if limit is None and _LIMIT.get() is None and estimate_bytes <= _NEGLIGIBLE:
        return  # no need to ask the system
    cap, how = memory_limit(limit)
    if not estimate_bytes <= cap:  # also NaN
        msg = (f"{what} would need about {format_bytes(estimate_bytes)} of memory, more than "
               f"the limit of {format_bytes(cap)} ({how})")
        raise ConfigError(f"{msg}; {hint}" if hint else msg)


def _geometry(frame: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    positions = np.asarray(frame.positions, dtype=np.float64)
    cell = np.asarray(frame.cell[:] if hasattr(frame.cell, "array") else frame.cell,
                      dtype=np.float64).reshape(3, 3)
    pbc = np.broadcast_to(np.asarray(frame.pbc, dtype=bool), (3,))
    return positions, cell, pbc


def _frame_neighbors(frame: Any, r_cut: float) -> float:
    """Expected neighbours per atom of one structure within ``r_cut`` (see
    :func:`estimate_neighbors`)."""
    positions, cell, pbc = _geometry(frame)
    n = len(positions)
    if n == 0:
        return 0.0
    periodic = cell[pbc]
    if len(periodic) and np.linalg.matrix_rank(periodic, tol=1e-6) < len(periodic):
        periodic = periodic[:0]  # degenerate cell: counted as open (the data checks catch it)
    # directions not spanned by the periodic vectors: the atoms' extent, at least 4 r / 3
    # (an atom of a slab thinner than that sees pi r^2 of it per unit thickness)
    if len(periodic) == 3:  # fully periodic: the cell's volume
        free = np.zeros((0, 3))
    elif len(periodic):
        _, _, vt = np.linalg.svd(periodic)
        free = vt[len(periodic):]
    else:
        free = np.eye(3)
    if len(free) and np.all(np.isfinite(positions)):
        extent = np.ptp(positions @ free.T, axis=0)
    else:
        extent = np.zeros(len(free))
    sides = free * np.maximum(extent, 4.0 * r_cut / 3.0)[:, None]
    volume = abs(float(np.linalg.det(np.vstack([periodic, sides]))))
    per_atom = n / volume * 4.0 / 3.0 * math.pi * r_cut**3 if volume > 0 else math.inf
    return min(per_atom, n - 1.0) if len(periodic) == 0 else per_atom


def estimate_neighbors(frames: Any, r_cut: float, per_frame: bool = False) -> float | np.ndarray:
    """Expected neighbours per atom within ``r_cut``, from each structure's number density.

    Periodic structures: ``n / V * 4/3 pi r_cut^3`` (images included, no upper bound);
    open directions use the atoms' extent (at least ``4/3 r_cut``) in place of a cell
    vector, and a fully open structure (molecule, cluster) has at most ``n - 1``. An
    estimate for sizing memory: exact for a uniform density, an upper bound for a
    compact molecule.

    Parameters
    ----------
    frames : Frame, ase.Atoms, or an iterable of them (e.g. a Dataset)
        Structures (anything with ``positions``, ``cell`` and ``pbc``).
    r_cut : float
        Cutoff radius, Angstrom.
    per_frame : bool, default=False
        Return one value per structure instead of the mean over all atoms.

    Returns
    -------
    float or ndarray of shape (n_frames,)
        Neighbours per atom (the atom-weighted mean over frames, or per frame).
    """
    if hasattr(frames, "positions"):
        frames = [frames]
    r_cut = float(r_cut)
    if not math.isfinite(r_cut) or r_cut <= 0:
        raise ConfigError(f"r_cut must be a finite number > 0 (Angstrom), got {r_cut}")
    items: Iterable[Any] = frames
    values, sizes = [], []
    for f in items:
        values.append(_frame_neighbors(f, r_cut))
        sizes.append(len(f.positions))
    nn = np.asarray(values, dtype=np.float64)
    if per_frame:
        return nn
    total = float(np.sum(sizes))
    return float(np.dot(nn, sizes) / total) if total > 0 else 0.0


#: glibc ``mallopt`` settings of :func:`tune_allocator`: (parameter number, bytes)
ALLOCATOR_SETTINGS = {
    "M_TOP_PAD": (-2, 256 << 20),  # grow the heap in large steps (virtual until touched)
    "M_TRIM_THRESHOLD": (-1, 1 << 30),  # keep up to 1 GiB of freed heap for reuse
    "M_MMAP_THRESHOLD": (-3, 32 << 20),  # blocks below 32 MiB come from the heap
}


#: environment variables through which a user sets glibc's malloc: :func:`tune_allocator`
#: then leaves it alone
USER_ALLOCATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                           "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_", "GLIBC_TUNABLES")


def tune_allocator() -> bool:
    """Keep freed memory for reuse instead of returning it to the kernel (glibc only).

    numpy temporaries and torch tensors of one to tens of MiB are allocated and freed at
    every step of MD or of a fit. With glibc's defaults many of them are mapped from and
    returned to the kernel each time, and every page faults in again zeroed
    (``benchmarks/results/mpnn_speed.md``, session 30: up to a third of a network
    call's CPU time). With
    :data:`ALLOCATOR_SETTINGS` they are reused from the heap; the resident memory then
    stays at its peak instead of shrinking between steps. Process-wide: the command line
    calls it once at start, and so does :meth:`~ml4m.models.base.Potential.as_calculator`
    (the MD path of a Python script); library users may call it themselves. A user's own
    malloc settings (:data:`USER_ALLOCATOR_SETTINGS` in the environment) are kept.

    Returns
    -------
    bool
        True when every setting was applied (Linux with glibc), False elsewhere or when
        the environment sets malloc.
    """
    import ctypes
    import os
    import sys

    if (not sys.platform.startswith("linux")
            or any(name in os.environ for name in USER_ALLOCATOR_SETTINGS)):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return all(mallopt(number, value) == 1 for number, value in ALLOCATOR_SETTINGS.values())

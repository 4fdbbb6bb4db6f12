"""Reuse of freed memory between network evaluations (glibc's malloc only).

Every evaluation of a network allocates and frees the same few hundred tensors. With
glibc's defaults a freed block above the mmap threshold (128 KiB at start, raised up to
32 MiB as blocks are freed) goes back to the kernel, and so does free memory at the top
of the heap beyond the trim threshold; the next evaluation then faults every page in
again and the kernel zeroes it. On a virtual machine that is a large share of the CPU
time: 100,000 page faults and 230 ms of system time per call on a 864-atom Cu cell
(470 ms of user time), 6,000 and 16 ms on 108 atoms (``benchmarks/results/mpnn_speed.md``,
session 30). :func:`retain_freed_memory` asks malloc to serve blocks below 32 MiB from
its heap and to keep up to 1 GiB of freed heap for the next call: the faults vanish,
the peak resident memory is unchanged (each call touches the same amount anyway), and
up to 1 GiB of freed memory stays with the process between calls instead of going back
to the system.

A user's own malloc settings win: nothing is changed when any of ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_MAX_`` or
``GLIBC_TUNABLES`` is set in the environment, or when ``ML4M_RETAIN_MEMORY=0``.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "retain_freed_memory"]

#: blocks below this size (bytes) come from malloc's heap: glibc's largest allowed value
MMAP_THRESHOLD = 32 << 20
#: freed memory at the top of the heap kept for reuse (bytes)
TRIM_THRESHOLD = 1 << 30
#: environment variables through which a user sets malloc's behaviour themselves
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                 "MALLOC_MMAP_MAX_", "GLIBC_TUNABLES")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Set malloc's mmap threshold to :data:`MMAP_THRESHOLD` and its trim threshold to
    :data:`TRIM_THRESHOLD` (module docstring), once per process.

    Returns
    -------
    bool
        True when the settings are in force (set now or by an earlier call); False on
        a platform without glibc's ``mallopt``, when the user's environment sets malloc
        (:data:`USER_SETTINGS`) or ``ML4M_RETAIN_MEMORY=0``, or when glibc refuses.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if (not sys.platform.startswith("linux") or os.environ.get("ML4M_RETAIN_MEMORY") == "0"
            or any(name in os.environ for name in USER_SETTINGS)):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # absent outside glibc (musl, macOS)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                    and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied

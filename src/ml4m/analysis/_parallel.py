"""Blocks of rows on all cores with threads (numpy releases the GIL in its loops)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor


def run_blocks(fn: Callable[[int], None], starts: Sequence[int]) -> None:
    """Call ``fn(s)`` for every block start ``s``; blocks must write disjoint outputs."""
    workers = min(os.cpu_count() or 1, len(starts))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(fn, starts))
    else:
        for s in starts:
            fn(s)

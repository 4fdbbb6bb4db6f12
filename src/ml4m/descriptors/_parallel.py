"""Map a function over frames on several threads, with an optional progress bar.

Threads rather than processes: the heavy work is in numpy/scipy kernels that
release the GIL, and nothing has to be serialised between workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ml4m.errors import ConfigError

__all__ = ["resolve_n_jobs", "map_frames"]


def resolve_n_jobs(n_jobs: int | None) -> int:
    """Number of workers: ``None`` or 1 is serial, ``-1`` all cores, ``-k`` all but k-1.

    Parameters
    ----------
    n_jobs : int or None
        Requested number of workers.

    Returns
    -------
    int
        At least 1.
    """
    if n_jobs is None:
        return 1
    if int(n_jobs) != n_jobs or n_jobs == 0:
        raise ConfigError(f"n_jobs must be a non-zero integer (or None), got {n_jobs!r}")
    n_cpu = os.cpu_count() or 1
    if n_jobs < 0:
        return max(1, n_cpu + 1 + int(n_jobs))
    return int(n_jobs)


def map_frames(
    func: Callable[[int], Any], n_items: int, n_jobs: int | None = 1,
    progress: bool = False, label: str = "descriptors",
) -> list[Any]:
    """``[func(k) for k in range(n_items)]`` in order, on ``n_jobs`` threads.

    Parameters
    ----------
    func : callable
        Called with the item index.
    n_items : int
        Number of items.
    n_jobs : int or None, default=1
        See :func:`resolve_n_jobs`.
    progress : bool, default=False
        Show a rich progress bar on stderr.
    label : str
        Progress bar description.
    """
    workers = min(resolve_n_jobs(n_jobs), max(1, n_items))
    bar = None
    task = None
    if progress:
        from rich.console import Console
        from rich.progress import Progress

        bar = Progress(console=Console(stderr=True), transient=True)
        bar.start()
        task = bar.add_task(label, total=n_items)

    def step(k: int) -> Any:
        out = func(k)
        if bar is not None:
            bar.advance(task)
        return out

    try:
        if workers == 1:
            return [step(k) for k in range(n_items)]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(step, range(n_items)))
    finally:
        if bar is not None:
            bar.stop()

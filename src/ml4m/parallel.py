"""The one way ml4m runs work on threads: every worker calls BLAS single-threaded.

Threads rather than processes: the heavy work is in numpy/scipy kernels that release
the GIL, and nothing has to be serialised between workers. But a BLAS library with its
own thread pool (OpenBLAS, MKL) called from several threads at once, each call fanning
out over that pool, oversubscribes the cores and can crash the process (3BPA sparse GP
fit: SIGSEGV inside OpenBLAS's threaded ``dsyrk`` while prefetch threads multiplied).

So while any pool of this module is alive, BLAS and OpenMP libraries run one thread per
call (:func:`blas_single_threaded`, through threadpoolctl), in the workers and in the
thread that started the pool; the previous limits come back when the last pool ends.
OpenBLAS keeps one process-wide setting, so the limit is reference-counted across
pools; OpenMP keeps one per thread, so each worker also sets it for itself when it
starts. The workers give the cores the parallelism BLAS threads would have given.
Code that must not run a threaded BLAS call outside a pool either (e.g. around a
library bug) wraps it in :func:`blas_single_threaded` itself.

* :func:`thread_map` -- ``[func(x) for x in items]`` on ``n_jobs`` threads, in order;
* :func:`prefetch` -- ``func(x)`` for the next few ``items`` computed in the background
  while the caller works on the current one;
* :func:`resolve_n_jobs` -- the ``n_jobs`` convention (``-1``: all cores);
* :func:`limit_blas_threads` -- one BLAS thread for good, as a worker's initializer;
* :func:`guard_blas_races` -- one thread, for good, in BLAS builds whose threaded
  level-3 kernels race (``RACY_OPENBLAS``).

A BLAS build can be unsafe on its own: OpenBLAS 0.3.30, which scipy 1.17's wheels
bundle, has a threaded level-3 optimisation that races (reverted in 0.3.31: "could
cause race conditions and invalid results in GEMM"); scipy's ``dsyrk`` then crashed
the 3BPA sparse GP fit in ``dgemm_otcopy`` inside OpenBLAS's own worker threads.
Modules that run scipy's level-3 BLAS/LAPACK call :func:`guard_blas_races` on import,
which pins such a build to one thread (numpy's own OpenBLAS, a separate and fixed
build, keeps its threads; ml4m's Gram updates go through numpy).
"""

from __future__ import annotations

import contextvars
import math
import numbers
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from ml4m.errors import ConfigError

__all__ = ["resolve_n_jobs", "blas_single_threaded", "limit_blas_threads", "thread_map",
           "prefetch", "guard_blas_races", "RACY_OPENBLAS"]

#: OpenBLAS versions whose threaded level-3 kernels race (pinned to one thread)
RACY_OPENBLAS = ("0.3.30",)

T = TypeVar("T")
R = TypeVar("R")

_lock = threading.Lock()
_depth = 0
_limiter: Any = None


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

    Raises
    ------
    ConfigError
        ``n_jobs`` is 0 or not an integer.
    """
    if n_jobs is None:
        return 1
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, numbers.Real) \
            or not math.isfinite(n_jobs) or int(n_jobs) != n_jobs or n_jobs == 0:
        raise ConfigError("n_jobs (--n-jobs) must be a non-zero integer (or None; -1: all "
                          f"cores), got {n_jobs!r}")
    n_cpu = os.cpu_count() or 1
    if n_jobs < 0:
        return max(1, n_cpu + 1 + int(n_jobs))
    return int(n_jobs)


def guard_blas_races() -> list[str]:
    """Pin every loaded OpenBLAS of a version in ``RACY_OPENBLAS`` to one thread.

    Process-wide and lasting (a later :func:`blas_single_threaded` restores the pinned
    value); call it after importing the module that loads the library (``scipy.linalg``).

    Returns
    -------
    list of str
        File paths of the libraries pinned now.
    """
    from threadpoolctl import ThreadpoolController

    with _lock:
        controller = ThreadpoolController()
        racy = controller.select(internal_api="openblas")
        racy = [lib for lib in racy.lib_controllers
                if str(lib.version).startswith(RACY_OPENBLAS) and lib.num_threads != 1]
        for lib in racy:
            lib.set_num_threads(1)
        return [lib.filepath for lib in racy]


@contextmanager
def blas_single_threaded() -> Iterator[None]:
    """Limit BLAS and OpenMP libraries to one thread per call while inside.

    Re-entrant and thread-safe: the first entry sets the limits, the last exit restores
    those found at the first entry. OpenBLAS's setting is process-wide (it covers every
    thread); OpenMP's covers the calling thread (workers set their own, see
    :func:`thread_map`).
    """
    global _depth, _limiter
    from threadpoolctl import threadpool_limits

    with _lock:
        if _depth == 0:
            _limiter = threadpool_limits(limits=1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _limiter.restore_original_limits()
                _limiter = None


def limit_blas_threads() -> None:
    """One BLAS/OpenMP thread from now on in the calling thread (OpenMP) and process
    (OpenBLAS): the initializer of a pool's workers, threads or processes, that share
    the cores among themselves."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


@contextmanager
def _pool(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A thread pool whose workers, and the caller, call BLAS single-threaded; on exit
    (also by an exception) pending tasks are cancelled and running ones awaited."""
    with blas_single_threaded():
        pool = ThreadPoolExecutor(max_workers=workers, initializer=limit_blas_threads)
        try:
            yield pool
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def thread_map(
    func: Callable[[T], R], items: Iterable[T], n_jobs: int | None = 1,
    progress: bool = False, label: str = "",
) -> list[R]:
    """``[func(x) for x in items]`` in order, on ``n_jobs`` threads.

    With one worker (or one item) it runs in the calling thread, BLAS unchanged.
    The first exception (in item order) is raised once the running calls end; calls
    not yet started are cancelled.

    Parameters
    ----------
    func : callable
        Called with each item; calls run concurrently, so they must write disjoint
        outputs.
    items : iterable
        Arguments, e.g. ``range(n_frames)``.
    n_jobs : int or None, default=1
        See :func:`resolve_n_jobs`.
    progress : bool, default=False
        Show a rich progress bar on stderr.
    label : str
        Progress bar description.

    Returns
    -------
    list
        One result per item, in item order.
    """
    items = list(items)
    workers = min(resolve_n_jobs(n_jobs), max(1, len(items)))
    bar = task = None
    if progress:
        from rich.console import Console
        from rich.progress import Progress

        bar = Progress(console=Console(stderr=True), transient=True)
        bar.start()
        task = bar.add_task(label, total=len(items))

    def step(x: T) -> R:
        out = func(x)
        if bar is not None:
            bar.advance(task)
        return out

    try:
        if workers == 1:
            return [step(x) for x in items]
        with _pool(workers) as pool:
            # each task in a copy of the caller's context (ml4m.resources.max_memory)
            futures = [pool.submit(contextvars.copy_context().run, step, x) for x in items]
            return [f.result() for f in futures]
    finally:
        if bar is not None:
            bar.stop()


def prefetch(func: Callable[[T], R], items: Sequence[T], ahead: int = 2) -> Iterator[R]:
    """``func(x)`` for each item in order, the next ``ahead`` computed on as many threads
    while the caller works on the current one.

    The caller's own work between items also runs with single-threaded BLAS (it
    overlaps the workers'); the limits are restored when the iterator is exhausted or
    closed. ``ahead=0`` computes each item on demand in the calling thread.

    Parameters
    ----------
    func : callable
        Called with each item.
    items : sequence
        Arguments.
    ahead : int, default=2
        Items computed in advance (threads).

    Yields
    ------
    The results, in item order.
    """
    if ahead < 1 or len(items) < 2:
        for x in items:
            yield func(x)
        return
    with _pool(int(ahead)) as pool:
        def submit(x: T) -> Future[R]:  # in a copy of the caller's context (max_memory)
            return pool.submit(contextvars.copy_context().run, func, x)

        pending: deque[Future[R]] = deque(submit(x) for x in items[:ahead])
        for k in range(len(items)):
            result = pending.popleft().result()
            if k + ahead < len(items):
                pending.append(submit(items[k + ahead]))
            yield result

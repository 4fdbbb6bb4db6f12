"""ml4m.parallel: order, errors, n_jobs, and single-threaded BLAS while a pool is alive."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from ml4m.errors import ConfigError
from ml4m.parallel import blas_single_threaded, prefetch, resolve_n_jobs, thread_map


def _threads(api: str) -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == api]


@pytest.fixture
def two_blas_threads():
    """BLAS (and OpenMP) at two threads for the test, whatever the environment says."""
    if not _threads("blas"):
        pytest.skip("no BLAS library visible to threadpoolctl")
    with threadpool_limits(limits=2):
        yield


def test_resolve_n_jobs():
    cpus = os.cpu_count() or 1
    assert resolve_n_jobs(None) == 1 and resolve_n_jobs(3) == 3
    assert resolve_n_jobs(-1) == cpus and resolve_n_jobs(-cpus - 5) == 1
    assert resolve_n_jobs(np.int64(2)) == 2
    for bad in (0, 1.5, "2", True, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="n_jobs"):
            resolve_n_jobs(bad)


def test_thread_map_keeps_order_and_uses_threads():
    names = set()

    def work(k):
        names.add(threading.current_thread().name)
        time.sleep(0.01 * (5 - k % 5))  # later items finish first
        return k * k

    assert thread_map(work, range(10), n_jobs=3) == [k * k for k in range(10)]
    assert len(names) > 1
    assert thread_map(work, [], n_jobs=3) == []


def test_thread_map_raises_the_first_error_and_cancels_the_rest():
    started = []

    def work(k):
        started.append(k)
        if k == 1:
            raise ValueError("item 1")
        time.sleep(0.02)
        return k

    with pytest.raises(ValueError, match="item 1"):
        thread_map(work, range(200), n_jobs=2)
    assert len(started) < 200  # items not started when the error came are cancelled


def test_workers_and_caller_call_blas_single_threaded(two_blas_threads):
    before = _threads("blas")
    assert max(before) == 2
    seen = []

    def work(k):
        seen.append((max(_threads("blas")), max(_threads("openmp"), default=1)))
        return k

    thread_map(work, range(6), n_jobs=2)
    assert seen and all(s == (1, 1) for s in seen)
    assert _threads("blas") == before  # restored after the pool

    caller = []
    for _ in prefetch(work, list(range(5)), ahead=2):
        caller.append(max(_threads("blas")))  # the caller overlaps the workers
    assert caller == [1] * 5 and all(s == (1, 1) for s in seen)
    assert _threads("blas") == before


def test_serial_paths_leave_blas_alone(two_blas_threads):
    seen = []
    thread_map(lambda k: seen.append(max(_threads("blas"))), range(3), n_jobs=1)
    list(prefetch(lambda k: seen.append(max(_threads("blas"))), [1, 2], ahead=0))
    assert seen == [2] * 5


def test_limit_is_reference_counted_across_threads(two_blas_threads):
    """Nested and concurrent pools: the limit holds until the last one ends."""
    inner_seen = []

    def outer(k):
        inner_seen.extend(thread_map(lambda j: max(_threads("blas")), range(3), n_jobs=2))
        return k

    thread_map(outer, range(4), n_jobs=2)
    assert inner_seen == [1] * 12
    with blas_single_threaded():
        with blas_single_threaded():
            assert max(_threads("blas")) == 1
        assert max(_threads("blas")) == 1
    assert max(_threads("blas")) == 2


def test_prefetch_order_errors_and_restore(two_blas_threads):
    assert list(prefetch(lambda x: 2 * x, [1, 2, 3, 4], ahead=2)) == [2, 4, 6, 8]
    assert list(prefetch(lambda x: 2 * x, [5], ahead=2)) == [10]

    def boom(x):
        if x == 2:
            raise RuntimeError("block 2")
        return x

    with pytest.raises(RuntimeError, match="block 2"):
        list(prefetch(boom, [0, 1, 2, 3], ahead=2))
    assert max(_threads("blas")) == 2
    it = prefetch(lambda x: x, list(range(10)), ahead=2)
    next(it)
    it.close()  # a consumer that stops early restores the limits too
    assert max(_threads("blas")) == 2


def test_guard_blas_races_pins_only_racy_openblas(monkeypatch):
    """A library at a racy version goes to one thread; others keep theirs."""
    import threadpoolctl

    from ml4m.parallel import RACY_OPENBLAS, guard_blas_races

    class Lib:
        def __init__(self, path, version, threads):
            self.filepath, self.version, self.num_threads = path, version, threads

        def set_num_threads(self, n):
            self.num_threads = n

    libs = [Lib("scipy_openblas", RACY_OPENBLAS[0], 2), Lib("numpy_openblas", "0.3.31.188.0", 2),
            Lib("pinned_already", RACY_OPENBLAS[0], 1)]

    class Controller:
        def select(self, internal_api):
            assert internal_api == "openblas"
            return type("Selection", (), {"lib_controllers": libs})()

    monkeypatch.setattr(threadpoolctl, "ThreadpoolController", Controller)
    assert guard_blas_races() == ["scipy_openblas"]
    assert [lib.num_threads for lib in libs] == [1, 2, 1]
    assert guard_blas_races() == []  # idempotent


def test_linear_algebra_modules_leave_no_racy_blas_threaded():
    import subprocess
    import sys

    code = ("import ml4m.models.linear\n"
            "from threadpoolctl import threadpool_info\n"
            "from ml4m.parallel import RACY_OPENBLAS\n"
            "bad = [l for l in threadpool_info() if l['internal_api'] == 'openblas' and "
            "str(l['version']).startswith(RACY_OPENBLAS) and l['num_threads'] != 1]\n"
            "print(len(bad))")
    env = {"OPENBLAS_NUM_THREADS": "2", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout
    assert out.strip() == "0"

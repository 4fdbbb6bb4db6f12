"""ml4m.resources: sizes, the memory check, and neighbour estimates against exact counts."""

from __future__ import annotations

import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule

from ml4m.data.neighbors import neighbor_list
from ml4m.errors import ConfigError
from ml4m.resources import (
    available_memory,
    check_memory,
    estimate_neighbors,
    format_bytes,
    memory_limit,
    parse_bytes,
)


@pytest.mark.parametrize("text, value", [("4GB", 4e9), ("500MB", 5e8), ("500 mb", 5e8),
                                         ("2GiB", 2 * 2**30), ("1.5G", 1.5e9), ("123", 123),
                                         (1e6, 1e6), (2048, 2048)])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == int(value)


@pytest.mark.parametrize("bad", ["4 parsecs", "-1GB", "GB", "", "nan", 0, -5, float("inf"),
                                 True, None])
def test_parse_bytes_rejects(bad):
    with pytest.raises(ConfigError, match="--max-memory"):
        parse_bytes(bad, "--max-memory")


def test_format_bytes():
    assert format_bytes(1.2e9) == "1.2 GB" and format_bytes(512) == "512 B"
    assert "TB" in format_bytes(3e17)


def test_check_memory_names_work_estimate_and_limit():
    check_memory(1e6, "small work", limit="2MB")
    with pytest.raises(ConfigError) as err:
        check_memory(5e9, "SOAP gradients of 10,000 atoms", limit="4GB", hint="lower --r-cut")
    msg = str(err.value)
    for part in ("SOAP gradients of 10,000 atoms", "5 GB", "4 GB", "lower --r-cut"):
        assert part in msg
    with pytest.raises(ConfigError, match=r"endless work .*available\); raise max_memory "
                                          r"\(--max-memory\)"):
        check_memory(float("inf"), "endless work")


def test_default_limit_is_half_the_available_memory():
    limit, how = memory_limit()
    assert 0.3 * available_memory() < limit < 0.7 * available_memory()
    assert "available" in how
    check_memory(1e3, "tiny")  # below any plausible limit


def _exact_mean(atoms, r_cut):
    return len(neighbor_list(atoms, r_cut)) / len(atoms)


@pytest.mark.parametrize("r_cut", [4.0, 6.0, 9.0])
def test_periodic_estimate_matches_a_crystal(r_cut):
    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    assert estimate_neighbors(cu, r_cut) == pytest.approx(_exact_mean(cu, r_cut), rel=0.35)


def test_open_and_mixed_estimates():
    mol = molecule("CH3CH2OH")
    # a molecule: at most n - 1, at least the exact count
    est = estimate_neighbors(mol, 5.0)
    assert _exact_mean(mol, 5.0) <= est <= len(mol) - 1
    assert estimate_neighbors(mol, 1e4) == len(mol) - 1
    far = Atoms("H2", positions=[[0, 0, 0], [1e6, 0, 0]])
    assert estimate_neighbors(far, 5.0) <= 1.0
    slab = fcc111("Cu", (4, 4, 4), vacuum=8.0)
    exact = _exact_mean(slab, 5.0)  # surfaces see fewer: the estimate errs high, boundedly
    assert exact <= estimate_neighbors(slab, 5.0) <= 2 * exact
    # a huge cutoff in a crystal: ~1e11 neighbours per atom, no work done to know it
    assert estimate_neighbors(bulk("Cu", "fcc", a=3.6), 1e4) > 1e11


def test_estimate_over_frames():
    frames = [molecule("H2O"), bulk("Cu", "fcc", a=3.6, cubic=True)]
    per = estimate_neighbors(frames, 3.0, per_frame=True)
    assert per.shape == (2,) and per[0] == 2.0
    mean = estimate_neighbors(frames, 3.0)
    assert mean == pytest.approx((3 * per[0] + 4 * per[1]) / 7)
    with pytest.raises(ConfigError, match="r_cut"):
        estimate_neighbors(frames, -1.0)


def test_max_memory_reaches_worker_threads():
    """A limit set by max_memory holds in thread_map's and prefetch's workers too."""
    from ml4m.parallel import prefetch, thread_map
    from ml4m.resources import max_memory, memory_limit

    with max_memory("1GB"):
        seen = thread_map(lambda _: memory_limit()[0], range(4), n_jobs=2)
        seen += list(prefetch(lambda _: memory_limit()[0], range(4), ahead=2))
    assert seen == [10**9] * 8


_FAULTS = r"""
import resource, sys
import numpy as np
from ml4m.resources import tune_allocator
applied = tune_allocator() if sys.argv[1] == "tuned" else None
sizes = np.random.default_rng(0).integers(1 << 17, 40 << 20, 150) // 8
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for n in sizes:  # temporaries of 1-40 MiB, as an MD step makes them
    a = np.ones(n); b = np.ones(n // 2); del a; c = np.ones(n // 3); del b, c
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_tuned_allocator_reuses_freed_temporaries():
    """After tune_allocator, freed numpy temporaries are reused instead of being faulted
    in again: far fewer page faults for the same allocations (glibc)."""
    import subprocess
    import sys

    def faults(mode):
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True,
                             text=True, timeout=120, check=True).stdout.split()
        return out[0], int(out[1])

    applied, tuned = faults("tuned")
    if applied != "True":
        pytest.skip("not Linux with glibc: nothing to tune")
    _, plain = faults("plain")
    assert tuned < plain / 4, (tuned, plain)


@pytest.mark.parametrize("name, value", [("MALLOC_TRIM_THRESHOLD_", "131072"),
                                         ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072")])
def test_the_users_malloc_settings_are_kept(name, value):
    """With malloc set in the environment, tune_allocator changes nothing: the same
    allocations fault as often as without tuning (the user's small trim threshold)."""
    import os
    import subprocess
    import sys

    def faults(mode, **env):
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True,
                             text=True, timeout=120, check=True, env={**clean, **env})
        return out.stdout.split()[0], int(out.stdout.split()[1])

    applied, tuned = faults("tuned")
    if applied != "True":
        pytest.skip("not Linux with glibc: nothing to tune")
    _, plain = faults("plain", **{name: value})
    kept_applied, kept = faults("tuned", **{name: value})
    assert kept_applied == "False"
    assert kept > plain / 2 and kept > 4 * tuned, (kept, plain, tuned)

"""retain_freed_memory: memory freed by one evaluation is reused by the next one
instead of being returned to the kernel and faulted in again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="page-fault counts and mallopt are Linux/glibc")

#: rounds of "allocate 10 blocks of 8 MiB, touch them, free them all", like the tensors
#: of one network evaluation; prints whether the settings applied and the page faults
#: of the last rounds
ROUNDS = r"""
import json, resource
import numpy as np
from ml4m.models.memory import retain_freed_memory

applied = retain_freed_memory()
again = retain_freed_memory()

def round_():
    blocks = [np.ones(1 << 20) for _ in range(10)]  # 8 MiB each, every page written
    return sum(float(b[-1]) for b in blocks)

for _ in range(2):
    round_()
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    round_()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 3
print(json.dumps({"applied": applied, "again": again, "faults": faults}))
"""
#: pages written per round
PAGES = 10 * (8 << 20) // 4096


def _run(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "ML4M_RETAIN_MEMORY")}
    out = subprocess.run([sys.executable, "-c", ROUNDS], env={**clean, **env},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_freed_blocks_are_reused_without_page_faults():
    kept = _run()
    if not kept["applied"]:
        pytest.skip("this C library has no glibc mallopt")
    assert kept["again"] is True  # once per process, the same answer after
    control = _run(ML4M_RETAIN_MEMORY="0")
    assert control["applied"] is False
    if control["faults"] < 0.1 * PAGES:  # a fault may map several pages (fault-around)
        pytest.skip("this malloc keeps freed memory by itself: nothing to compare")
    assert kept["faults"] < 0.02 * control["faults"], (kept, control)


@pytest.mark.parametrize("name", ["MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"])
def test_the_users_malloc_settings_win(name):
    value = "glibc.malloc.trim_threshold=131072" if name == "GLIBC_TUNABLES" else "131072"
    result = _run(**{name: value})
    assert result["applied"] is False and result["again"] is False
    assert result["faults"] > 0.1 * PAGES  # the user's small trim threshold is in force

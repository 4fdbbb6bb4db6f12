"""Packing benchmark: a >= 2 GB store streamed end to end with small peak memory.

Frames are made by the project's generator (the embedded Cu/EMT set, from
``ml4m data generate``) and replicated with random rattles until the store reaches the
target size; labels are copied (this measures I/O, not physics). The store is written
with :class:`ml4m.data.StoreWriter` (constant memory), then read end to end in a fresh
process with ``PackedStore.iter_batches``, recording wall time and peak RSS.

Usage::

    .venv/bin/python benchmarks/pack_store.py --gb 2.2 [--dir PARENT]

Writes ``benchmarks/results/pack_store.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

READER = r"""
import json, resource, sys, time
import numpy as np
from ml4m.data import open_store
t0 = time.perf_counter()
store = open_store(sys.argv[1])
n_frames = n_atoms = 0
checksum = 0.0
for batch in store.iter_batches(frames_per_batch=int(sys.argv[2])):
    n_frames += len(batch["offsets"]) - 1
    n_atoms += len(batch["numbers"])
    checksum += float(np.abs(batch["forces"]).sum()) + float(batch["energy"].sum())
seconds = time.perf_counter() - t0
rng = np.random.default_rng(0)
t1 = time.perf_counter()
for k in rng.integers(0, len(store), size=2000):
    store[int(k)]
random_seconds = time.perf_counter() - t1
print(json.dumps({"n_frames": n_frames, "n_atoms": n_atoms, "seconds": seconds,
                  "random_access_us": random_seconds / 2000 * 1e6, "checksum": checksum,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_store(path: Path, gb: float) -> float:
    """A store of about ``gb`` GB at ``path``: the embedded Cu/EMT frames again and again,
    each rattled by 0.01 A (labels copied), written in constant memory; seconds taken."""
    from ml4m.data import Frame, StoreWriter, default_dataset

    base = default_dataset()
    per_frame = np.mean([len(f) * (1 + 48) + 72 + 3 + 8 + 48 + 4 + 8 for f in base])
    n_target = int(gb * 1e9 / per_frame)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    with StoreWriter(path) as w:
        for k in range(n_target):
            f = base[k % len(base)]
            w.add(Frame(f.numbers, f.positions + rng.normal(scale=0.01, size=f.positions.shape),
                        f.cell, f.pbc, energy=f.energy, forces=f.forces, stress=f.stress, info=f.info))
    return time.perf_counter() - t0


def store_bytes(path: Path) -> int:
    """Size of a store on disk, bytes."""
    return sum(p.stat().st_size for p in path.iterdir())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.2, help="target store size in GB")
    ap.add_argument("--dir", default=None, help="where the scratch folder is made (default: the system's temporary folder); only that new folder is removed")
    ap.add_argument("--batch", type=int, default=256, help="frames per batch when reading")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="ml4m_pack_bench_", dir=args.dir))  # ours to remove
    store_path = scratch / "big.store"
    write_s = write_store(store_path, args.gb)
    write_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = store_bytes(store_path)
    def read_once(cold: bool) -> dict:
        if cold:  # drop the page cache (root only): the read then comes from disk
            subprocess.run(["sync"], check=True)
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        out = subprocess.run([sys.executable, "-c", READER, str(store_path), str(args.batch)],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    reads = [read_once(cold=False) for _ in range(args.repeats)]
    try:
        cold = read_once(cold=True)
    except OSError:
        cold = None
    med = lambda key: float(np.median([r[key] for r in reads]))  # noqa: E731
    row = {
        "store_gb": size / 1e9,
        "n_frames": reads[0]["n_frames"],
        "n_atoms": reads[0]["n_atoms"],
        "write_s": write_s,
        "write_peak_rss_mb": write_rss,
        "read_s_median": med("seconds"),
        "read_gb_per_s": size / 1e9 / med("seconds"),
        "read_peak_rss_mb_median": med("peak_rss_mb"),
        "random_access_us_per_frame": med("random_access_us"),
        "cold_read_s": cold["seconds"] if cold else None,
        "cold_read_peak_rss_mb": cold["peak_rss_mb"] if cold else None,
    }
    print(json.dumps(row, indent=1))
    lines = [
        "# Packing benchmark: memory-mapped store streamed end to end",
        "",
        f"Command: `.venv/bin/python benchmarks/pack_store.py --gb {args.gb}` "
        f"(median of {args.repeats} reads in fresh processes; {platform.processor() or platform.machine()}, "
        f"2 cores, {os.environ.get('ML4M_BENCH_MACHINE', 'otherwise idle')}; the store was in the page "
        "cache after writing).",
        "",
        "| store size | frames | atoms | write time | write peak RSS | read time (median) | read throughput | read peak RSS | random access |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {row['store_gb']:.2f} GB | {row['n_frames']:,} | {row['n_atoms']:,} | {write_s:.0f} s | "
        f"{write_rss:.0f} MB | {row['read_s_median']:.1f} s | {row['read_gb_per_s']:.2f} GB/s | "
        f"{row['read_peak_rss_mb_median']:.0f} MB | {row['random_access_us_per_frame']:.0f} us/frame |",
        "",
        (f"Cold read (page cache dropped first, data from disk): {row['cold_read_s']:.1f} s "
         f"({size / 1e9 / row['cold_read_s']:.2f} GB/s), peak RSS {row['cold_read_peak_rss_mb']:.0f} MB."
         if cold else "Cold read: not measured (dropping the page cache needs root)."),
        "",
        f"Peak RSS while reading is {row['read_peak_rss_mb_median'] / (size / 1e6) * 100:.1f}% of the store size "
        "(the reader holds one batch of 256 frames at a time; the Python interpreter with numpy "
        "and ASE accounts for most of it).",
    ]
    out = Path(__file__).parent / "results" / "pack_store.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())
    shutil.rmtree(scratch)


if __name__ == "__main__":
    main()

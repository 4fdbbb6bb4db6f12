"""Fit time and peak memory of linear ACE and sparse GP versus the number of training frames.

The training set is made by ml4m's own generator (fcc Cu, 32-atom cells, EMT, several
temperatures and strained cells)::

    ml4m data generate --system Cu --calculator emt --supercells 2 \\
        --temperatures 300,600,900,1200,1500 --trajectories 8 --frames 200 --sample-every 10 \\
        --equilibration-steps 100 --strained 10 --seed 7 -o /work/bench_data/cu_10k.extxyz

Each fit runs in a fresh process (peak RSS from getrusage). Linear ACE accumulates the
normal equations block by block, so its memory should not grow with the data.

Usage::

    .venv/bin/python benchmarks/potentials_fit_scaling.py --data /work/bench_data/cu_10k.extxyz

Writes ``benchmarks/results/potentials_fit_scaling.md`` (and ``.json``; rows of earlier runs
of other models or sizes are kept, so ``--models gp --sizes 100,1000`` adds to the table).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

WORKER = r"""
import json, resource, sys, time
from ml4m.data import read_dataset
from ml4m.descriptors import make_descriptor
spec = json.loads(sys.argv[1])
ds = read_dataset(spec["data"])
idx = [int(i) for i in __import__("numpy").random.default_rng(0).permutation(len(ds))[:spec["n"]]]
train = ds[idx]
if spec["model"] == "ace":
    from ml4m.models.linear import LinearACE
    m = LinearACE(make_descriptor("ace", species=[29], r_cut=5.0, n_max=6, l_max=3, correlation_order=3, total_degree=12))
else:
    from ml4m.models.kernel import SparseGPPotential
    m = SparseGPPotential(make_descriptor("soap", species=[29], r_cut=5.0, n_max=6, l_max=4), n_sparse=400, zeta=4)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter(); m.fit(train); s = time.perf_counter() - t
print(json.dumps({"n": len(train), "atoms": train.n_atoms, "seconds": s,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_after_read_mb": base}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--models", nargs="+", default=["ace", "gp"])
    args = ap.parse_args()
    store = HERE / "results" / "potentials_fit_scaling.json"
    # earlier rows (other models or sizes) are kept; a rerun of the same (model, n) replaces them
    rows = json.loads(store.read_text()) if store.exists() else []
    for model in args.models:
        for n in [int(x) for x in args.sizes.split(",")]:
            spec = {"data": args.data, "n": n, "model": model}
            proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(spec)], capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["model"] = model
            rows = [x for x in rows if (x["model"], x["n"]) != (model, r["n"])] + [r]
            store.write_text(json.dumps(rows, indent=1))
            print(r, flush=True)
    lines = ["# Potentials: fit time and peak memory versus training-set size", "",
             f"Command: `.venv/bin/python benchmarks/potentials_fit_scaling.py --data {args.data}` "
             "(fcc Cu 32-atom frames from `ml4m data generate`, EMT labels; energies, forces and stresses "
             "fitted; one fresh process per fit; 2-core machine, otherwise idle).", "",
             "| model | frames | atoms | fit time (s) | peak RSS (MB) | RSS after reading data (MB) |", "|---|---|---|---|---|---|"]
    rows.sort(key=lambda x: (x["model"], x["n"]))
    for r in rows:
        lines.append(f"| {r['model']} | {r['n']} | {r['atoms']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['rss_after_read_mb']:.0f} |")
    for model in sorted({r["model"] for r in rows}):
        sub = [r for r in rows if r["model"] == model]
        if len(sub) > 1:
            k = np.polyfit(np.log([r["n"] for r in sub]), np.log([r["seconds"] for r in sub]), 1)[0]
            lines.append(f"\n{model}: fit time grows as N^{k:.2f} over this range.")
    (HERE / "results" / "potentials_fit_scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

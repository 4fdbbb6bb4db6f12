"""Inference throughput (energy + forces) of ml4m potentials beside EMT and MACE.

Atom-steps per second on fcc Cu cells of 108 and 864 atoms (median of repeated calls on
rattled copies, so nothing is cached), with one thread for every code. ml4m's models are
fitted on the Cu/EMT training set with the settings of ``potentials_accuracy.py``; MACE's
model (trained by ``mace_peer.py``) is re-timed in the same run, in its own venv, by
``mace_peer.py --skip-train`` (same cells, one thread), when that venv and model exist.

Usage::

    .venv/bin/python benchmarks/potentials_speed.py

Writes ``benchmarks/results/potentials_speed.md``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("ML4M_SHARED_DATA", HERE.parents[1] / "shared" / "data"))

WORKER = r"""
import json, sys, time
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ml4m.data import read_dataset
from ml4m.descriptors import make_descriptor
sys.path.insert(0, sys.argv[2])
from potentials_accuracy import SETTINGS
train = read_dataset(sys.argv[1])[::4]
models = {}
from ml4m.models.linear import LinearACE
from ml4m.models.kernel import SparseGPPotential
s = SETTINGS["ace"]["cu_emt"]
models["ml4m linear ACE"] = LinearACE(make_descriptor("ace", species=[29], **s["descriptor"])).fit(train)
s = SETTINGS["gp"]["cu_emt"]
models["ml4m sparse GP"] = SparseGPPotential(make_descriptor("soap", species=[29], **s["descriptor"]), **s["params"]).fit(train)
out = {}
for reps in (3, 6):
    base = bulk("Cu", cubic=True, a=3.61).repeat(reps)
    n = len(base)
    calcs = {"ASE EMT": EMT(), **{k: m.as_calculator(uncertainty=False) for k, m in models.items()}}
    for name, calc in calcs.items():
        times = []
        for k in range(6):
            a = base.copy(); a.rattle(0.01, seed=k); a.calc = calc
            t = time.perf_counter(); a.get_potential_energy(); a.get_forces(); times.append(time.perf_counter() - t)
        out.setdefault(name, {})[str(n)] = n / float(np.median(times[1:]))
print(json.dumps(out))
"""


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mace-python", default="/work/peers/dadapy/bin/python",
                    help="Python of the venv with mace-torch: re-times the MACE model trained by "
                         "mace_peer.py in this same run (skipped when absent)")
    ap.add_argument("--mace-workdir", default="/tmp/mace_peer")
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if Path(args.mace_python).exists() and (Path(args.mace_workdir) / "cu_emt" / "mace.model").exists():
        subprocess.run([args.mace_python, str(HERE / "mace_peer.py"), "--set", "cu_emt", "--skip-train",
                        "--workdir", args.mace_workdir], env=env, check=True, capture_output=True)
    proc = subprocess.run([sys.executable, "-c", WORKER, str(SHARED / "cu_emt" / "train.extxyz"), str(HERE)],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    rates = json.loads(proc.stdout.strip().splitlines()[-1])
    mace = HERE / "results" / "mace_cu_emt.json"
    if mace.exists():
        peer = json.loads(mace.read_text())
        rates[f"MACE (mace-torch, {peer['hidden_irreps']}, float32, "
              f"{peer.get('speed_threads', 1)} thread)"] = peer["atom_steps_per_s"]
    ace = rates["ml4m linear ACE"]
    lines = ["# Potentials: inference throughput (energy + forces), fcc Cu, one thread", "",
             "Command: `.venv/bin/python benchmarks/potentials_speed.py` (median of 5 calls on rattled "
             "cells; OMP/BLAS threads = 1; 2-core machine, otherwise idle). Ratio = linear ACE / other.", "",
             "| code | 108 atoms (atom-steps/s) | 864 atoms (atom-steps/s) | ACE / code (108) | ACE / code (864) |",
             "|---|---|---|---|---|"]
    for name, r in rates.items():
        lines.append(f"| {name} | {r['108']:,.0f} | {r['864']:,.0f} | {ace['108'] / r['108']:.2f} | {ace['864'] / r['864']:.2f} |")
    (HERE / "results" / "potentials_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

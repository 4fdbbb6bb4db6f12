"""MACE (mace-torch) as the peer of ml4m's potentials: train, evaluate, time inference.

Run with the Python of a separate venv that has mace-torch (never an ml4m dependency)::

    /work/peers/mace/bin/python benchmarks/mace_peer.py --set cu_emt --minutes 60

Trains MACE on ``shared/data/SET/train.extxyz`` (validation on ``valid.extxyz``) until its
validation loss stops improving (patience) or the wall-time budget ends, whichever comes
first; a run cut by the budget is finalised from its latest checkpoint. Reports the
wall and CPU seconds of training, epochs, valid energy/force MAE and the inference
throughput (energy + forces) on fcc Cu cells of 108 and 864 atoms. Writes
``benchmarks/results/mace_SET.json``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("ML4M_SHARED_DATA", HERE.parents[1] / "shared" / "data"))


def relabel(src: Path, dst: Path) -> None:
    """Copy frames with labels under REF_ keys (MACE's recommended convention)."""
    import ase.io

    out = []
    for a in ase.io.read(src, ":"):
        b = a.copy()
        b.info["REF_energy"] = a.get_potential_energy()
        b.arrays["REF_forces"] = a.get_forces()
        if "stress" in a.calc.results:
            b.info["REF_stress"] = a.get_stress(voigt=False)
        out.append(b)
    ase.io.write(dst, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default="cu_emt")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default="/tmp/mace_peer")
    ap.add_argument("--hidden-irreps", default="32x0e + 32x1o")
    ap.add_argument("--speed-threads", type=int, default=1,
                    help="threads for the inference timing (1, as in potentials_speed.py)")
    ap.add_argument("--skip-train", action="store_true",
                    help="reuse WORKDIR/SET/mace.model and the training figures of an earlier run")
    args = ap.parse_args()
    work = Path(args.workdir) / args.set
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    out_json = HERE / "results" / f"mace_{args.set}.json"
    if args.skip_train:
        train_info = {k: v for k, v in json.loads(out_json.read_text()).items()
                      if k in ("train_wall_s", "train_cpu_s", "threads", "cut_by_budget", "epochs", "note")}
    else:
        train_info = train(args, work)
        out_json.parent.mkdir(exist_ok=True)  # kept even if the evaluation fails
        out_json.write_text(json.dumps({"set": args.set, **train_info,
                                        "hidden_irreps": args.hidden_irreps}, indent=1))
    evaluate(args, train_info, out_json)


def train(args, work: Path) -> dict:
    """Run ``mace_run_train`` under the wall-time budget; returns the training figures."""
    relabel(SHARED / args.set / "train.extxyz", work / "train.extxyz")
    relabel(SHARED / args.set / "valid.extxyz", work / "valid.extxyz")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    common = ["--name", "mace", "--train_file", "train.extxyz", "--valid_file", "valid.extxyz",
              "--E0s", "average", "--model", "MACE", "--hidden_irreps", args.hidden_irreps,
              "--r_max", "5.0", "--batch_size", "5", "--valid_batch_size", "10", "--patience", "15",
              "--eval_interval", "1", "--energy_key", "REF_energy", "--forces_key", "REF_forces",
              "--default_dtype", "float32", "--device", "cpu", "--seed", "1", "--ema", "--ema_decay", "0.99",
              "--error_table", "PerAtomMAE", "--save_cpu"]
    bindir = Path(sys.executable).parent
    t0 = time.perf_counter()
    proc = subprocess.run(["timeout", f"{int(args.minutes * 60)}", str(bindir / "mace_run_train"),
                           *common, "--max_num_epochs", "2000"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = ru.ru_utime + ru.ru_stime
    (work / "train.log").write_text(proc.stdout + proc.stderr)
    epochs = [int(m) for m in re.findall(r"epoch-(\d+)", " ".join(glob.glob("checkpoints/*.pt")))]
    cut = proc.returncode == 124
    if cut or not Path("mace.model").exists():
        # finalise from the latest checkpoint without training further: MACE resumes at
        # the checkpoint's epoch and trains while epoch < max_num_epochs
        last = max(epochs) if epochs else 0
        subprocess.run([str(bindir / "mace_run_train"), *common, "--max_num_epochs", str(last),
                        "--restart_latest"], env=env, capture_output=True, text=True)
    return {"train_wall_s": wall, "train_cpu_s": cpu, "threads": args.threads, "cut_by_budget": cut,
            "epochs": (max(epochs) + 1) if epochs else None}


def evaluate(args, train_info: dict, out_json: Path) -> None:
    """Valid-set errors and inference throughput of the trained model."""
    from mace.calculators import MACECalculator
    import ase.io
    from ase.build import bulk

    import torch

    torch.set_num_threads(args.speed_threads)
    calc = MACECalculator(model_paths="mace.model", device="cpu", default_dtype="float32")
    valid = ase.io.read(SHARED / args.set / "valid.extxyz", ":")
    de, df = [], []
    for a in valid:
        b = a.copy()
        b.calc = calc
        de.append((b.get_potential_energy() - a.get_potential_energy()) / len(a))
        df.append(b.get_forces() - a.get_forces())
    df = np.concatenate(df)
    speed = {}
    for reps in ((3, 6) if args.set == "cu_emt" else ()):  # throughput on fcc Cu cells
        atoms = bulk("Cu", cubic=True, a=3.61).repeat(reps)
        atoms.calc = calc
        times = []
        for k in range(5):
            atoms.rattle(0.01, seed=k)
            t = time.perf_counter()
            atoms.get_forces()
            times.append(time.perf_counter() - t)
        speed[str(len(atoms))] = len(atoms) / float(np.median(times[1:]))
    result = {"set": args.set, **train_info, "speed_threads": args.speed_threads,
              "energy_mae_mev_per_atom": float(np.mean(np.abs(de)) * 1000),
              "forces_mae_mev_per_a": float(np.mean(np.abs(df)) * 1000),
              "atom_steps_per_s": speed, "hidden_irreps": args.hidden_irreps}
    print(json.dumps(result))
    out_json.parent.mkdir(exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Training throughput (frames per second) of ml4m's default MPNN beside MACE's.

Usage (one process at a time: the MACE part runs in a child process with the Python of
MACE's venv, ``$MACE_PYTHON``, default ``../peers/mace/bin/python``, while this one
waits)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_speed.py

For each set (3BPA: ``shared/data/bpa_xtb/train.extxyz``, 27-atom molecule, energy and
forces; Cu: ``shared/data/cu_emt/train.extxyz``, periodic 32-atom cells, energy, forces
and stress) the first 64 training frames are turned into graphs once (not timed), then
optimiser steps on batches of ``TrainSettings().batch_size`` frames (ml4m's default, 4)
are timed, ml4m first, MACE right after it on the same frames and batch size, one torch
thread each. Protocol (:func:`timed_steps`, shared by both sides): 2 warm-up steps, 3
probe steps whose wall time picks N, the number of steps that makes one measurement
about ``--target-seconds`` (30 s) of wall time, then 3 measurements of N steps; the
figure is frames per second, ``N * batch size / median seconds``, from the process CPU
time (``time.process_time``; comparable on a machine shared with other work) and from the
wall clock.

ml4m's step is the Trainer's own: :meth:`ml4m.training.loop.TrainingRun.step`, the
method :meth:`~ml4m.training.Trainer.fit` calls for every batch (via
``TrainingRun.train_epoch``), on a ``TrainingRun`` built with the default
:class:`~ml4m.training.TrainSettings` (batch 4, AdamW lr 0.01 weight decay 0, loss
weights energy 1 / forces 100 / stress 100, gradient clipping at norm 10, a weight
average with decay 0.99), ``MPNN()`` with its default hyperparameters (float32) prepared
as the Trainer prepares it, and batches in the Trainer's order (``epoch_batches``). A step
joins the batch's cached graphs (``collate``), computes the energies and, by autograd with
``create_graph``, forces and the strain derivative (the stress term has weight 100 by
default, so it is taken on the molecule too, where it has no label and adds nothing to
the loss), the loss, backward, clipping, AdamW and the weight-average update. What
``Trainer.fit`` does besides the steps (preparing the model, validation and the scheduler
at each epoch's end, the last-layer posterior after training) is not timed.

MACE's step is ``mace_peer.py --train-speed``: ``mace.tools.train.take_step`` (MACE's
own training step) on batches of MACE's ``torch_geometric`` ``DataLoader`` (shuffled, as
``mace_run_train``), the model of ``mace_peer.untrained_mace`` (32x0e + 32x1o, r_max 5.0
A, float32, MACE's defaults otherwise), ``WeightedEnergyForcesLoss`` (3BPA) or
``WeightedEnergyForcesStressLoss`` (Cu) with weights energy 1, forces 100, stress 100,
``torch.optim.AdamW`` (lr 0.01, weight decay 0), gradient clipping at norm 10 (MACE's
default ``--clip_grad``) and ``torch_ema`` with decay 0.99 (what ``--ema --ema_decay 0.99``
adds, as ``mace_peer.py`` trains MACE): forward with ``training=True``,
``compute_force=True`` and ``compute_stress`` for Cu only.

Writes ``benchmarks/results/train_speed.json`` (raw seconds of every measurement) and
``benchmarks/results/train_speed.md`` (the table; lines after the table are kept).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
SHARED = Path(os.environ.get("ML4M_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
MACE_PY = os.environ.get("MACE_PYTHON", str(HERE.parents[1] / "peers" / "mace" / "bin" / "python"))
#: table name -> folder of ``shared/data``
SETS = {"3BPA": "bpa_xtb", "Cu": "cu_emt"}
OUT = HERE / "results" / "train_speed"


def timed_steps(step: Callable[[], int], target_seconds: float = 30.0, repeats: int = 3,
                warmup: int = 2, probe: int = 3) -> dict:
    """Time optimiser steps: ``warmup`` steps, ``probe`` steps whose wall time sets
    ``steps`` (so that one measurement takes about ``target_seconds`` of wall time, at
    least 5 steps), then ``repeats`` measurements of ``steps`` steps.

    ``step()`` does one optimiser step and returns the number of frames it trained on.
    Returns the seconds of every measurement (wall and process CPU), the frames of
    each, and the frames per second from the medians.
    """
    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(probe):
        step()
    steps = max(5, round(target_seconds * probe / (time.perf_counter() - t)))
    wall, cpu, frames = [], [], []
    for _ in range(repeats):
        t, c, n = time.perf_counter(), time.process_time(), 0
        for _ in range(steps):
            n += step()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        frames.append(n)
    w, c, n = float(np.median(wall)), float(np.median(cpu)), float(np.median(frames))
    return {"warmup_steps": warmup, "probe_steps": probe, "steps": steps, "repeats": repeats,
            "wall_s": wall, "cpu_s": cpu, "frames": frames,
            "frames_per_s_wall": n / w, "frames_per_s_cpu": n / c,
            "ms_per_step_wall": 1000 * w / steps, "ms_per_step_cpu": 1000 * c / steps}


def cycle(batches: Callable[[int], Iterator]) -> Iterator:
    """The batches of epoch 0, 1, 2, ... one after the other, without end."""
    epoch = 0
    while True:
        yield from batches(epoch)
        epoch += 1


def ml4m_step(frames) -> tuple[Callable[[], int], dict]:
    """One step of ml4m's Trainer (``TrainingRun.step``, default settings) on ``frames``
    with a fresh default ``MPNN``; returns it and the model's facts."""
    import math

    from ml4m.models.mpnn import MPNN
    from ml4m.training import TrainSettings
    from ml4m.training.batches import as_graph_set, epoch_batches
    from ml4m.training.distributed import Distributed
    from ml4m.training.loop import Clock, TrainingRun
    from ml4m.training.trainer import prepare_model

    s = TrainSettings(progress=False)
    train_set = as_graph_set(frames, "train")
    model = prepare_model(MPNN(), train_set, s.seed)
    n = len(train_set)
    s = s.resolved(len(epoch_batches(n, s.batch_size, s.seed, 0)), model.training_defaults)
    run = TrainingRun(s, model, train_set, None, Distributed())
    train_set.graphs(range(n), model.cutoff, model.species_, model.dtype)  # built once, untimed
    clock = Clock(math.inf)
    batches = cycle(lambda epoch: epoch_batches(n, s.batch_size, s.seed, epoch))

    def step() -> int:
        idx = next(batches)
        run.step(idx, clock)
        return len(idx)

    facts = {"model": "ml4m.models.mpnn.MPNN() (defaults)", "params": model.get_params(),
             "n_params": model.n_parameters,
             "settings": s.as_dict(), "loss_terms": list(run.terms)}
    return step, facts


def package_versions(names: tuple[str, ...]) -> dict:
    """Versions of Python and of the packages ``names``."""
    from importlib.metadata import version

    return {"python": platform.python_version(), **{p: version(p) for p in names}}


def run_mace(name: str, batch_size: int, args: argparse.Namespace) -> dict:
    """``mace_peer.py --train-speed`` on set ``name`` in MACE's venv; its JSON."""
    with tempfile.TemporaryDirectory(prefix="train_speed_") as tmp:
        out = Path(tmp) / "mace.json"
        cmd = [MACE_PY, str(HERE / "mace_peer.py"), "--train-speed", "--set", SETS[name],
               "--frames", str(args.frames), "--batch-size", str(batch_size),
               "--target-seconds", str(args.target_seconds), "--repeats", str(args.repeats),
               "--out", str(out)]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH="")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"MACE failed ({proc.returncode}): {proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def report(result: dict, path: Path) -> None:
    """The markdown table, protocol, commands, machine and versions; notes kept."""
    from _common import notes_below_table

    notes = notes_below_table(path)
    m, v = result["machine"], result["versions"]
    lines = [
        "# Training throughput: ml4m MPNN (defaults) against MACE (32x0e + 32x1o)", "",
        "Frames per second of optimiser steps (forward, autograd forces (and stress), loss, "
        "backward, clipping, AdamW, weight average), one torch thread, first "
        f"{result['frames']} training frames of each set, batch size = ml4m's default. "
        "Protocol and what each step does: the docstring of `benchmarks/train_speed.py`. "
        "CPU = process CPU time (comparable on a shared machine), wall = wall clock.", "",
        f"- date: {result['date']}",
        f"- machine: {m['cpu']}, {m['cores']} cores, load average {m['loadavg_before'][0]:.2f} "
        f"before, {m['loadavg_after'][0]:.2f} after (1-minute load averages; they count "
        "this benchmark's own process and whatever else ran)",
        f"- ml4m side: torch {v['ml4m']['torch']}, ml4m {v['ml4m']['ml4m']}, "
        f"Python {v['ml4m']['python']}",
        f"- MACE side: torch {v['mace']['torch']}, mace-torch {v['mace']['mace-torch']}, "
        f"e3nn {v['mace']['e3nn']}, Python {v['mace']['python']}",
        "- parameters: " + "; ".join(
            f"{side} " + ", ".join(f"{k} {r[side]['n_params']:,}" for k, r in result["sets"].items())
            for side in ("ml4m", "mace")),
        "- commands:", "", "```", *result["commands"], "```", "",
        "| set | batch | ml4m frames/s (CPU) | MACE frames/s (CPU) | ratio (CPU) "
        "| ml4m frames/s (wall) | MACE frames/s (wall) | ratio (wall) | steps x repeats (ml4m; MACE) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["sets"].items():
        a, b = row["ml4m"]["timing"], row["mace"]["timing"]
        lines.append(
            f"| {name} | {row['batch_size']} | {a['frames_per_s_cpu']:.1f} | "
            f"{b['frames_per_s_cpu']:.1f} | {row['ratio_cpu']:.2f} | "
            f"{a['frames_per_s_wall']:.1f} | {b['frames_per_s_wall']:.1f} | "
            f"{row['ratio_wall']:.2f} | {a['steps']} x {a['repeats']}; {b['steps']} x {b['repeats']} |")
    path.write_text("\n".join(lines + notes) + "\n")


def main() -> None:
    import torch

    from ml4m.data import read_dataset
    from ml4m.resources import tune_allocator
    from ml4m.training import TrainSettings

    tune_allocator()  # as the command line (ml4m fit) does at start

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--frames", type=int, default=64, help="first training frames used")
    ap.add_argument("--target-seconds", type=float, default=30.0,
                    help="wall seconds of one measurement (sets the number of steps)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT, help="results path without suffix")
    args = ap.parse_args()
    torch.set_num_threads(1)
    batch_size = TrainSettings().batch_size
    load_before = os.getloadavg()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    sets, mace_versions = {}, {}
    print("| set | batch | ml4m frames/s (CPU) | MACE frames/s (CPU) | ratio (CPU) "
          "| ml4m (wall) | MACE (wall) | ratio (wall) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.sets:
        frames = read_dataset(SHARED / SETS[name] / "train.extxyz", index=f":{args.frames}",
                              require=("energy", "forces"))
        step, facts = ml4m_step(frames)
        mine = {**facts, "timing": timed_steps(step, args.target_seconds, args.repeats)}
        del step
        mace = run_mace(name, batch_size, args)
        mace_versions = mace.pop("versions")
        a, b = mine["timing"], mace["timing"]
        row = {"data": str(SHARED / SETS[name] / "train.extxyz"), "n_frames": len(frames),
               "atoms_per_frame": sorted({len(f) for f in frames}), "batch_size": batch_size,
               "ratio_cpu": a["frames_per_s_cpu"] / b["frames_per_s_cpu"],
               "ratio_wall": a["frames_per_s_wall"] / b["frames_per_s_wall"],
               "ml4m": mine, "mace": mace}
        sets[name] = row
        print(f"| {name} | {batch_size} | {a['frames_per_s_cpu']:.1f} | "
              f"{b['frames_per_s_cpu']:.1f} | {row['ratio_cpu']:.2f} | "
              f"{a['frames_per_s_wall']:.1f} | {b['frames_per_s_wall']:.1f} | "
              f"{row['ratio_wall']:.2f} |", flush=True)
    from nequip_peer import cpu_name

    argv = " ".join(sys.argv[1:])
    result = {
        "date": date, "frames": args.frames, "target_seconds": args.target_seconds,
        "torch_threads": torch.get_num_threads(),
        "commands": [f"OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_speed.py {argv}".rstrip(),
                     f"# runs, per set: OMP_NUM_THREADS=1 {MACE_PY} benchmarks/mace_peer.py "
                     f"--train-speed --set SET --frames {args.frames} --batch-size {batch_size} "
                     f"--target-seconds {args.target_seconds:g} --repeats {args.repeats} --out JSON"],
        "versions": {"ml4m": package_versions(("ml4m", "torch", "numpy", "ase")),
                     "mace": mace_versions},
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg()},
        "sets": sets}
    args.out.parent.mkdir(exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    report(result, args.out.with_suffix(".md"))


if __name__ == "__main__":
    main()

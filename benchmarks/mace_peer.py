"""MACE (mace-torch) as the peer of ml4m's potentials: train, evaluate, time inference.

Run with the Python of a separate venv that has mace-torch (never an ml4m dependency)::

    /work/peers/mace/bin/python benchmarks/mace_peer.py --set cu_emt --minutes 60

Trains MACE on ``shared/data/SET/train.extxyz`` (validation on ``valid.extxyz``) until its
validation loss stops improving (patience) or the wall-time budget ends, whichever comes
first; a run cut by the budget is finalised from its latest checkpoint. Reports the
wall and CPU seconds of training, epochs, valid energy/force MAE and the inference
throughput (energy + forces) on fcc Cu cells of 108 and 864 atoms. Writes
``benchmarks/results/mace_SET.json``.

``--speed-only`` trains nothing and times untrained models instead, with the protocol of
``mpnn_speed.py`` and ``nequip_peer.py`` (whose ``structures`` and ``timed`` it uses):
fcc Cu cells of 108 and 864 atoms (``bulk('Cu', cubic=True, a=3.61).repeat(3 | 6)``) and
the 3BPA molecule (first frame of ``shared/data/bpa_xtb/valid.extxyz``, 27 atoms), one
torch thread, each repeat on a freshly rattled copy (0.01 A, seed = repeat) through
``MACECalculator`` (energy, forces and stress in one call), the first call a warm-up,
the median of 5 repeats as wall and as process CPU seconds (on a machine shared with
other work only the CPU time is comparable between runs). The models are built as
``mace_run_train --model MACE`` builds them with the arguments :func:`train` passes
(``--hidden-irreps``, r_max 5.0 A, float32) and MACE's defaults for the rest (two
interactions, correlation 3, l_max 3 of the spherical harmonics, 8 Bessel functions, radial
MLP 3 x 64), one per element set (Cu; H, C, N, O), ``avg_num_neighbors`` the mean
neighbour count of the first structure; the cost does not depend on the weights. Writes
``benchmarks/results/mace_speed.json``::

    OMP_NUM_THREADS=1 /work/peers/mace/bin/python benchmarks/mace_peer.py --speed-only

``--train-speed`` trains nothing either: it times MACE's own training step
(``mace.tools.train.take_step``) on the first ``--frames`` training frames of SET in
batches of ``--batch-size``, with the protocol of ``train_speed.py`` (which runs it, per
set, right after timing ml4m's step) and writes the JSON file ``--out`` (see
:func:`train_speed`)::

    OMP_NUM_THREADS=1 /work/peers/mace/bin/python benchmarks/mace_peer.py --train-speed \\
        --set bpa_xtb --batch-size 4 --out /tmp/mace_train_speed.json
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("ML4M_SHARED_DATA", HERE.parents[1] / "shared" / "data"))


def relabelled(frames: list) -> list:
    """Copies of ``ase.Atoms`` frames with their calculator's labels under REF_ keys
    (MACE's recommended convention): energy (eV), forces (eV/A), stress (3 x 3, eV/A^3)."""
    out = []
    for a in frames:
        b = a.copy()
        b.info["REF_energy"] = a.get_potential_energy()
        b.arrays["REF_forces"] = a.get_forces()
        if "stress" in a.calc.results:
            b.info["REF_stress"] = a.get_stress(voigt=False)
        out.append(b)
    return out


def relabel(src: Path, dst: Path) -> None:
    """Copy frames with labels under REF_ keys (:func:`relabelled`)."""
    import ase.io

    ase.io.write(dst, relabelled(ase.io.read(src, ":")))


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
    ap.add_argument("--speed-only", action="store_true",
                    help="no training: time untrained models on Cu 108, Cu 864 and 3BPA "
                         "(the protocol of mpnn_speed.py), write results/mace_speed.json")
    ap.add_argument("--repeats", type=int, default=5,
                    help="timed calls per structure (--speed-only), measurements of "
                         "N steps (--train-speed)")
    ap.add_argument("--train-speed", action="store_true",
                    help="no training run: time MACE's training step on the first --frames "
                         "frames of SET (train_speed.py's protocol), write --out")
    ap.add_argument("--frames", type=int, default=64, help="first training frames (--train-speed)")
    ap.add_argument("--batch-size", type=int, default=4, help="frames per step (--train-speed)")
    ap.add_argument("--target-seconds", type=float, default=30.0,
                    help="wall seconds of one measurement (--train-speed)")
    ap.add_argument("--out", type=Path, help="JSON file of --train-speed")
    args = ap.parse_args()
    if args.speed_only:
        speed_only(args, HERE / "results" / "mace_speed.json")
        return
    if args.train_speed:
        train_speed(args)
        return
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
    if proc.returncode not in (0, 124):  # e.g. schnetpack's torchmetrics==1.0.1 pin
        raise SystemExit(f"mace_run_train failed (exit {proc.returncode}); the end of "
                         f"{work / 'train.log'}:\n{(proc.stdout + proc.stderr)[-2000:]}")
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
    from _common import calculator_errors

    de, df = calculator_errors(calc, ase.io.read(SHARED / args.set / "valid.extxyz", ":"))
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


def default_train_args(hidden_irreps: str) -> argparse.Namespace:
    """The ``argparse.Namespace`` of ``mace_run_train`` with the model arguments that
    :func:`train` passes (``--model MACE``, ``hidden_irreps``, r_max 5.0 A, float32) and
    MACE's defaults for all others."""
    from mace.tools import build_default_arg_parser

    return build_default_arg_parser().parse_args(
        ["--name", "mace", "--train_file", "train.extxyz", "--model", "MACE",
         "--hidden_irreps", hidden_irreps, "--r_max", "5.0", "--default_dtype", "float32"])


def untrained_mace(z: list[int], hidden_irreps: str, avg_num_neighbors: float,
                   seed: int = 1) -> torch.nn.Module:
    """A fresh float32 ``ScaleShiftMACE`` for the atomic numbers ``z``, built as
    ``mace_run_train --model MACE`` builds it (``configure_model`` / ``_build_model``
    of mace-torch 0.3.16) from :func:`default_train_args`, with zero reference energies,
    scale 1 and shift 0 (eV) and ``avg_num_neighbors`` (neighbours within r_max)."""
    import ast

    import torch
    from e3nn import o3
    from mace import modules

    a = default_train_args(hidden_irreps)
    first = a.interaction_first  # what _build_model does for --model MACE
    if first not in ("RealAgnosticInteractionBlock", "RealAgnosticDensityInteractionBlock"):
        first = "RealAgnosticInteractionBlock"
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(seed)
    model = modules.ScaleShiftMACE(
        r_max=a.r_max, num_bessel=a.num_radial_basis, num_polynomial_cutoff=a.num_cutoff_basis,
        max_ell=a.max_ell, interaction_cls=modules.interaction_classes[a.interaction],
        interaction_cls_first=modules.interaction_classes[first],
        num_interactions=a.num_interactions, num_elements=len(z),
        hidden_irreps=o3.Irreps(a.hidden_irreps),
        edge_irreps=o3.Irreps(a.edge_irreps) if a.edge_irreps else None,
        atomic_energies=np.zeros(len(z)), apply_cutoff=a.apply_cutoff,
        avg_num_neighbors=avg_num_neighbors, atomic_numbers=list(z),
        use_reduced_cg=a.use_reduced_cg, use_so3=a.use_so3,
        use_edge_irreps_first=a.use_edge_irreps_first, cueq_config=None,
        pair_repulsion=a.pair_repulsion, distance_transform=a.distance_transform,
        correlation=a.correlation, gate=modules.gate_dict[a.gate],
        MLP_irreps=o3.Irreps(a.MLP_irreps), atomic_inter_scale=1.0, atomic_inter_shift=[0.0],
        radial_MLP=ast.literal_eval(a.radial_MLP), radial_type=a.radial_type,
        heads=["Default"], embedding_specs=a.embedding_specs,
        use_embedding_readout=a.use_embedding_readout,
        use_last_readout_only=a.use_last_readout_only,
        use_agnostic_product=a.use_agnostic_product)
    return model.eval()


def hyperparameters(hidden_irreps: str) -> dict:
    """The model arguments of :func:`untrained_mace` that set its size (r_max in A)."""
    a = default_train_args(hidden_irreps)
    keys = ("hidden_irreps", "r_max", "num_interactions", "correlation", "max_ell",
            "num_radial_basis", "num_cutoff_basis", "radial_MLP", "MLP_irreps", "interaction",
            "gate", "use_reduced_cg", "default_dtype")
    return {k: getattr(a, k) for k in keys}


def mean_neighbours(atoms, r_max: float = 5.0) -> float:
    """Mean number of neighbours of an atom of ``atoms`` within ``r_max`` (A)."""
    from ase.neighborlist import neighbor_list

    return len(neighbor_list("i", atoms, r_max)) / len(atoms)


def versions() -> dict:
    """Versions of Python and of the packages that run the model."""
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    out.update({p: version(p) for p in ("mace-torch", "torch", "e3nn", "ase", "numpy",
                                        "matscipy")})
    return out


def speed_only(args: argparse.Namespace, out_json: Path) -> None:
    """Time untrained MACE models on the structures of ``mpnn_speed.py``; write
    ``out_json``: per structure the median wall and CPU seconds of one energy + forces
    call and the atom-steps per second from each, with the model, versions, date, CPU
    name and the load averages before and after."""
    import torch
    from ase.data import atomic_numbers
    from mace.calculators import MACECalculator

    from nequip_peer import cpu_name, structures, timed  # the same protocol

    torch.set_num_threads(args.speed_threads)
    load_before = os.getloadavg()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    calcs, models, rows = {}, {}, {}  # calculators and model facts per element set
    print("| structure | atom-steps/s (wall) | atom-steps/s (CPU time) |")
    print("|---|---|---|")
    for name, atoms in structures().items():
        symbols = sorted(set(atoms.get_chemical_symbols()), key=atomic_numbers.get)
        elements = " ".join(sorted(symbols))
        if elements not in calcs:
            avg = mean_neighbours(atoms)
            model = untrained_mace([atomic_numbers[s] for s in symbols], args.hidden_irreps, avg)
            calcs[elements] = MACECalculator(models=model, device="cpu", default_dtype="float32")
            models[elements] = {"atomic_numbers": [atomic_numbers[s] for s in symbols],
                                "n_params": sum(p.numel() for p in model.parameters()),
                                "avg_num_neighbors": avg}
        wall, cpu = timed(calcs[elements], atoms, args.repeats)
        n = len(atoms)
        rows[name] = {"n_atoms": n, "elements": elements, "wall_s": wall, "cpu_s": cpu,
                      "atom_steps_per_s_wall": n / wall, "atom_steps_per_s_cpu": n / cpu}
        print(f"| {name} | {n / wall:.0f} | {n / cpu:.0f} |", flush=True)
    result = {"model": "mace.modules.ScaleShiftMACE (untrained, eager, through MACECalculator)",
              "hyperparameters": hyperparameters(args.hidden_irreps), "models": models,
              "torch_threads": torch.get_num_threads(), "repeats": args.repeats, "date": date,
              "versions": versions(),
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                          "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
              "structures": rows}
    out_json.parent.mkdir(exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1))


def train_speed(args: argparse.Namespace) -> None:
    """Time MACE's training step with the protocol of ``train_speed.py`` (its
    :func:`~train_speed.timed_steps`); write ``args.out`` (JSON): the timing, the model's
    size and the versions.

    The first ``args.frames`` frames of ``shared/data/SET/train.extxyz`` become
    ``AtomicData`` (neighbour lists within r_max 5.0 A) once, untimed; a step takes the
    next batch of MACE's ``torch_geometric`` ``DataLoader`` (``args.batch_size`` frames,
    shuffled each pass, as ``mace_run_train``'s training loader) and runs
    ``mace.tools.train.take_step``: forward with ``training=True``, forces and, when
    every frame has a stress label, stress by autograd; ``WeightedEnergyForcesLoss``
    (energy 1, forces 100) or ``WeightedEnergyForcesStressLoss`` (energy 1, forces 100,
    stress 100); backward; clipping at norm 10 (MACE's ``--clip_grad`` default);
    ``torch.optim.AdamW`` (lr 0.01, weight decay 0, as ml4m's default); the ``torch_ema``
    average with decay 0.99 (``--ema --ema_decay 0.99``, as :func:`train` runs it). The
    model is :func:`untrained_mace` for the set's elements with ``avg_num_neighbors`` the
    mean over the frames.
    """
    import ase.io
    import torch
    from mace import data, modules, tools
    from mace.tools import torch_geometric
    from mace.tools.train import take_step
    from torch_ema import ExponentialMovingAverage

    from nequip_peer import cpu_name
    from train_speed import cycle, timed_steps  # the protocol of the ml4m side

    torch.set_num_threads(args.speed_threads)
    torch.set_default_dtype(torch.float32)
    atoms = relabelled(ase.io.read(SHARED / args.set / "train.extxyz", f":{args.frames}"))
    z = sorted({int(n) for a in atoms for n in a.numbers})
    stress = all("REF_stress" in a.info for a in atoms)
    keys = data.KeySpecification(info_keys={"energy": "REF_energy", "stress": "REF_stress"},
                                 arrays_keys={"forces": "REF_forces"})
    r_max = float(default_train_args(args.hidden_irreps).r_max)
    graphs = [data.AtomicData.from_config(c, z_table=tools.AtomicNumberTable(z), cutoff=r_max,
                                          heads=["Default"])
              for c in data.config_from_atoms_list(atoms, key_specification=keys)]
    loader = torch_geometric.dataloader.DataLoader(graphs, batch_size=args.batch_size,
                                                   shuffle=True, drop_last=True)
    avg = float(np.mean([mean_neighbours(a, r_max) for a in atoms]))
    model = untrained_mace(z, args.hidden_irreps, avg).train()
    loss_fn = (modules.WeightedEnergyForcesStressLoss(1.0, 100.0, 100.0) if stress
               else modules.WeightedEnergyForcesLoss(1.0, 100.0))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.0)
    ema = ExponentialMovingAverage(model.parameters(), decay=0.99)
    outputs = {"forces": True, "virials": False, "stress": stress}
    batches = cycle(lambda epoch: iter(loader))

    def step() -> int:
        batch = next(batches)
        take_step(model, loss_fn, batch, opt, ema, outputs, 10.0, torch.device("cpu"))
        return int(batch.num_graphs)

    timing = timed_steps(step, args.target_seconds, args.repeats)
    result = {"model": "mace.modules.ScaleShiftMACE (mace_peer.untrained_mace), trained by "
                       "mace.tools.train.take_step",
              "hyperparameters": hyperparameters(args.hidden_irreps), "atomic_numbers": z,
              "avg_num_neighbors": avg, "n_params": sum(p.numel() for p in model.parameters()),
              "loss": repr(loss_fn), "outputs": outputs, "optimizer": "AdamW(lr=0.01, weight_decay=0)",
              "clip_grad": 10.0, "ema_decay": 0.99, "batch_size": args.batch_size,
              "torch_threads": torch.get_num_threads(), "cpu": cpu_name(),
              "versions": versions(), "timing": timing}
    print(json.dumps({k: result[k] for k in ("n_params", "timing")}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

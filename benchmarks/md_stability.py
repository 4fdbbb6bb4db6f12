"""MD stability of fitted potentials with and without the repulsive core (issue #21).

Protocol: Langevin NVT (``ml4m.md.run_md``, friction 0.01/fs) from the first frame of
the valid set, time step 0.5 fs, ``--seeds`` seeds per temperature. A run fails at the
first step where

* a bond (a pair closer than 1.2 x the sum of covalent radii at the start) is longer
  than ``--bond-factor`` (1.5) x its starting length;
* two atoms are closer than ``--close-factor`` (0.7) x the shortest distance of their
  element pair in the training set (pairs absent there: of the shortest of any pair);
* or ``run_md``'s own checks stop it (non-finite forces, runaway temperature).

Reported per system, model and temperature: the fraction of stable runs and the time
to failure (ps) of the others.

Models: ``ace`` is ``ml4m fit --model ace`` with no other setting (fitted once per
system into ``--workdir``), ``gp``, ``mpnn`` and ``bpnn`` likewise ``ml4m fit --model
KIND``; ``ace[r_in]`` the same as ``ace`` with ``descriptor: {pair_r_in: auto}``
(each element pair's radial basis starts 0.25 A below its shortest training distance and
is constant below: no force from the fitted model there). ``FIT+core`` is that model
inside :class:`ml4m.models.baseline.Baselined` with a
:class:`~ml4m.models.baseline.PairRepulsion` fitted on the training set. The core is zero
at every training distance, so fitting ``Baselined(ace, PairRepulsion())`` gives exactly
the ``ace`` coefficients; the script wraps the fitted model (``Baselined.from_fitted``)
instead of fitting it again.

Usage::

    .venv/bin/python benchmarks/md_stability.py --ps 2 --seeds 3 --temperatures 300 600
    .venv/bin/python benchmarks/md_stability.py --ps 10 --seeds 10   # the issue's protocol
    .venv/bin/python benchmarks/md_stability.py --ps 20 --seeds 10 --temperatures 300 600 1200
    .venv/bin/python benchmarks/md_stability.py --systems bpa_xtb --models ace --ps 10 \
        --model-file bpa_xtb/ace=learn_out/model.ml4m     # a model from elsewhere

A peer's model runs under the same protocol and checks through its own ASE calculator:
run the script with the peer venv's Python and ml4m's sources on the path (the peer is
never installed beside ml4m), e.g. MACE as trained by ``mace_peer.py``::

    PYTHONPATH=src /work/peers/mace/bin/python benchmarks/md_stability.py \
        --systems bpa_xtb --fits --peer bpa_xtb/mace=/tmp/ml4m_mace/bpa_xtb/mace.model

Prints a markdown table (the figures of ``benchmarks/results/md_stability.md``) and writes
the JSON of every run to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = Path(os.environ.get("ML4M_SHARED_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(HERE))
from _common import PeerModel, parse_peers  # noqa: E402


class Failed(Exception):
    """A run left the stable range: ``kind`` (bond, close) at ``step``."""

    def __init__(self, kind: str, step: int, detail: str) -> None:
        super().__init__(f"{kind} at step {step}: {detail}")
        self.kind, self.step, self.detail = kind, step, detail


class StabilityCheck:
    """:class:`ml4m.data.stability.StabilityCheck` on one run's atoms, raising
    :class:`Failed` (called after every step)."""

    def __init__(self, atoms, shortest: dict[str, float], bond_factor: float,
                 close_factor: float) -> None:
        from ml4m.data.stability import StabilityCheck as Check

        self.atoms = atoms
        self.check = Check(atoms, shortest, bond_factor, close_factor)

    def __call__(self, step: int) -> None:
        bad = self.check(self.atoms)
        if bad is not None:
            raise Failed(bad.kind, step, f"atoms {bad.i}-{bad.j} at {bad.distance:.2f} A")


def _fits() -> dict[str, tuple[str, dict]]:
    """The fits compared: name -> (``ml4m fit --model`` kind, descriptor settings added):
    every potential kind of the registry, and ``ace[r_in]``."""
    from ml4m.models.registry import fit_choices, model_kind

    fits = {name: (name, {}) for name in fit_choices() if model_kind(name).potential}
    return {**fits, "ace[r_in]": ("ace", {"pair_r_in": "auto"})}


FITS = _fits()


def fit_model(system: str, fit: str, workdir: Path, given: dict[str, Path] | None = None) -> Path:
    """``ml4m fit --model KIND`` on ``system`` with the descriptor settings of
    ``FITS[fit]`` (kept in ``workdir`` and reused), or the file ``given["SYSTEM/FIT"]``."""
    if given and f"{system}/{fit}" in given:
        return given[f"{system}/{fit}"]
    tag = fit.replace("[", "_").replace("]", "")
    out = workdir / system / f"{tag}.ml4m"
    if not out.exists():
        import yaml

        folder = SHARED / system
        kind, descriptor = FITS[fit]
        config = {"model": kind, "train": str(folder / "train.extxyz"),
                  "valid": str(folder / "valid.extxyz"), "output": str(out)}
        if descriptor:
            config["descriptor"] = descriptor
        out.parent.mkdir(parents=True, exist_ok=True)
        path = out.with_suffix(".yaml")
        path.write_text(yaml.safe_dump(config))
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ml4m", "fit", str(path)], check=True,
                       capture_output=True, text=True)
        print(f"fitted {fit} on {system} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def models(system: str, fits: list[str], workdir: Path, given: dict[str, Path] | None = None,
           peers: dict[str, Path] | None = None) -> tuple[dict, dict[str, float], object]:
    """Each fit of a system with and without the core (``NAME+core``), the peers' models
    of the system (``peers[(SYSTEM, KIND)]``: a :class:`PeerModel`), its training shortest
    distances, its start frame."""
    import ml4m
    from ml4m.data import read_dataset, shortest_distances
    from ml4m.models.baseline import Baselined, PairRepulsion

    train = read_dataset(SHARED / system / "train.extxyz")
    start = read_dataset(SHARED / system / "valid.extxyz", index="0")[0]
    core = PairRepulsion().fit(train)
    built = {kind: PeerModel(kind, path) for (sys_, kind), path in (peers or {}).items()
             if sys_ == system}
    for fit in fits:
        built[fit] = ml4m.load(fit_model(system, fit, workdir, given))
        # ml4m fit puts the core around ace by default: such a model is its own "+core"
        built[f"{fit}+core"] = (built[fit] if isinstance(built[fit], Baselined)
                                else Baselined.from_fitted(built[fit], core))
    return built, shortest_distances(train), start


def run_one(model, start, shortest, temperature: float, seed: int, args) -> dict:
    """One NVT run; its outcome, time to failure and wall time."""
    from ml4m.errors import SimulationError
    from ml4m.md import run_md

    atoms = start.to_atoms(with_labels=False)
    atoms.calc = model.as_calculator()
    steps = int(round(args.ps * 1000 / args.dt))
    check = StabilityCheck(atoms, shortest, args.bond_factor, args.close_factor)
    t0 = time.perf_counter()
    outcome, step, detail = "stable", steps, ""
    try:
        run_md(atoms, ensemble="nvt", temperature_k=temperature, steps=steps, dt_fs=args.dt,
               friction=args.friction, seed=seed, interval=100, uncertainty_interval=0,
               on_step=check)
    except Failed as exc:
        outcome, step, detail = exc.kind, exc.step, exc.detail
    except SimulationError as exc:
        outcome, detail = "md_check", str(exc)
        step = _step_of(str(exc), steps)
    return {"outcome": outcome, "step": step, "t_ps": step * args.dt / 1000, "detail": detail,
            "seconds": time.perf_counter() - t0}


_BUILT: dict[str, tuple] = {}


def _one_thread() -> None:
    """A worker's initializer: one BLAS/OpenMP thread, one torch thread."""
    from ml4m.parallel import limit_blas_threads

    limit_blas_threads()
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


def _task(task: tuple, args) -> dict:
    """One run of ``(system, model, temperature, seed)`` (models built once per process)."""
    system, name, temperature, seed = task
    if system not in _BUILT:
        _BUILT[system] = models(system, args.fits, args.workdir, args.model_file, args.peer)
    built, shortest, start = _BUILT[system]
    run = run_one(built[name], start, shortest, temperature, seed, args)
    print(system, name, temperature, seed, run, flush=True)
    return run


def _step_of(message: str, default: int) -> int:
    import re

    found = re.search(r"step (\d+)", message)
    return int(found.group(1)) if found else default


def summarise(runs: list[dict]) -> tuple[str, str]:
    """``"k/n"`` stable and the failure times (ps) of the others."""
    stable = sum(r["outcome"] == "stable" for r in runs)
    fails = sorted(r["t_ps"] for r in runs if r["outcome"] != "stable")
    times = ", ".join(f"{t:.2f}" for t in fails) if fails else "-"
    return f"{stable}/{len(runs)}", times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--systems", nargs="+", default=["ethanol_pbe", "bpa_xtb"])
    parser.add_argument("--temperatures", nargs="+", type=float, default=[300.0, 600.0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds run: FIRST_SEED .. FIRST_SEED + SEEDS - 1 (extends "
                             "an earlier run of the same models)")
    parser.add_argument("--ps", type=float, default=2.0, help="length of each run, ps")
    parser.add_argument("--dt", type=float, default=0.5, help="time step, fs")
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    parser.add_argument("--bond-factor", type=float, default=1.5)
    parser.add_argument("--close-factor", type=float, default=0.7)
    parser.add_argument("--fits", nargs="*", default=["ace"], choices=sorted(FITS),
                        help="ace, gp, mpnn, bpnn: `ml4m fit --model KIND`; ace[r_in]: with "
                             "pair_r_in: auto")
    parser.add_argument("--models", nargs="+", default=None,
                        help="which of FIT and FIT+core to run (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (processes)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ml4m_md_stability"))
    parser.add_argument("--model-file", nargs="+", default=[], metavar="SYSTEM/FIT=PATH",
                        help="run this model file as FIT of SYSTEM instead of fitting one "
                             "(e.g. bpa_xtb/ace=learn_out/model.ml4m)")
    parser.add_argument("--peer", nargs="+", default=[], metavar="SYSTEM/KIND=PATH",
                        help="also run a peer's model file (KIND: mace), with the peer venv's "
                             "Python (e.g. bpa_xtb/mace=/tmp/ml4m_mace/bpa_xtb/mace.model)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON of every run (default: WORKDIR/md_stability.json)")
    args = parser.parse_args(argv)
    try:
        args.model_file = {key: Path(path) for key, path in
                           (item.split("=", 1) for item in args.model_file)}
    except ValueError:
        parser.error("--model-file takes SYSTEM/NAME=PATH")
    args.peer = parse_peers(parser, args.peer)
    args.out = args.out or args.workdir / "md_stability.json"

    for system in args.systems:  # fitted once, before any worker starts
        for fit in args.fits:
            fit_model(system, fit, args.workdir, args.model_file)
    peers = sorted({kind for _, kind in args.peer})
    args.models = args.models or [*(m for f in args.fits for m in (f, f"{f}+core")), *peers]
    tasks = [(system, name, temperature, seed) for system in args.systems
             for name in args.models if name not in peers or (system, name) in args.peer
             for temperature in args.temperatures
             for seed in range(args.first_seed, args.first_seed + args.seeds)]
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        # the runs share the cores: one BLAS and torch thread each (threaded GEMMs of a
        # small molecule in several processes at once spin on each other's cores)
        with ProcessPoolExecutor(args.jobs, initializer=_one_thread) as pool:
            done = list(pool.map(_task, tasks, [args] * len(tasks)))
    else:
        done = [_task(task, args) for task in tasks]
    results = []
    for task, run in zip(tasks, done):
        group = task[:3]
        if not results or (results[-1]["system"], results[-1]["model"],
                           results[-1]["temperature_k"]) != group:
            results.append({"system": group[0], "model": group[1], "temperature_k": group[2],
                            "runs": []})
        results[-1]["runs"].append(run)
    write(results, args, argv)
    return 0


def write(results: list[dict], args, argv) -> None:
    """The markdown table and the JSON of every run."""
    command = "python benchmarks/md_stability.py " + " ".join(argv or sys.argv[1:])
    lines = [f"# MD stability: `{command.strip()}`", "",
             f"Langevin NVT from the first valid frame, dt {args.dt} fs, friction "
             f"{args.friction}/fs, {args.ps:g} ps per run, seeds {args.first_seed}-"
             f"{args.first_seed + args.seeds - 1}. A run "
             f"fails when a bond exceeds {args.bond_factor} x its starting length, two atoms come "
             f"closer than {args.close_factor} x their pair's shortest training distance, or "
             "run_md's own checks stop it.", "",
             "| system | model | T (K) | stable | failure times (ps) | failure kinds | "
             "wall s per run |", "|---|---|---|---|---|---|---|"]
    for r in results:
        stable, times = summarise(r["runs"])
        kinds = ", ".join(sorted({x["outcome"] for x in r["runs"] if x["outcome"] != "stable"}))
        wall = np.mean([x["seconds"] for x in r["runs"]])
        lines.append(f"| {r['system']} | {r['model']} | {r['temperature_k']:g} | {stable} | "
                     f"{times} | {kinds or '-'} | {wall:.0f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"command": command, "results": results}, fh, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

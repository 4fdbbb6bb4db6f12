"""Bayesian optimisation of the 3BPA conformer over its three torsions, against random and
grid search with GFN2-xTB (tblite) as the reference.

Each reference call sets the torsions C1-C6-O7-C8, C6-O7-C8-C9 and O7-C8-C9-C10 of the
first frame of ``bpa_xtb/train.extxyz`` and, with ``--relax-steps N`` > 0, relaxes the
rest with them held (FIRE, ``--fmax``, at most N steps); with 0 (the default) the call is
the energy of the rigidly turned molecule. The target is the best energy of the exhaustive grid
(``--grid`` levels per torsion) plus 1 meV; the table gives, per method and seed, the
reference calls until a call reaches it and the best energy after the budget.

Run (1 thread per process; the parts may run at once and resume when killed)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bayesopt.py --part grid --grid 12
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bayesopt.py --part bo --budget 60
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bayesopt.py --part random --budget 60
    .venv/bin/python benchmarks/bayesopt.py --part report --grid 12   # the markdown table

(the same flags with ``--relax-steps 100 --fmax 0.05`` for constrained relaxations).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

DATA = Path("/work/shared/data/bpa_xtb/train.extxyz")
TORSIONS = ([1, 6, 7, 8], [6, 7, 8, 9], [7, 8, 9, 10])
XTB = {"method": "GFN2-xTB", "accuracy": 0.1, "electronic_temperature": 300.0, "verbosity": 0}


def settings(method: str, seed: int, budget: int, relax_steps: int, fmax: float, **extra):
    from ml4m.md.optimize_settings import OptimizeSettings

    return OptimizeSettings.from_mapping({
        "structure": str(DATA), "frame": 0,
        "reference": {"calculator": "xtb", "kwargs": XTB},
        "dofs": [{"type": "torsion", "atoms": t} for t in TORSIONS],
        "method": method, "seed": seed, "budget": budget, "n_initial": 8,
        "relax": {"fmax": fmax, "steps": relax_steps}, **extra}, source="bayesopt")


def run(method: str, seed: int, budget: int, root: Path, relax_steps: int, fmax: float,
        **extra) -> dict:
    """One search in ``root/method_seed`` (resumed when a state is there)."""
    from ml4m.md.optimize import run_optimize

    out = root / f"{method}_{seed}"
    resume = (out / "state.json").is_file()

    def log(status) -> None:
        print(f"{method} seed {seed} call {status.call}/{status.budget} E {status.energy:.4f} "
              f"best {status.best_energy:.4f} eV ({status.seconds:.1f} s)", flush=True)

    return run_optimize(settings(method, seed, budget, relax_steps, fmax, **extra), out,
                        resume=resume, on_call=log)


def report(root: Path, grid: int, budget: int, seeds: list[int]) -> str:
    from ml4m.md.optimize_search import calls_to_reach

    def energies(name: str) -> np.ndarray:
        hist = json.loads((root / name / "summary.json").read_text())["history"]
        return np.array([h["energy_ev"] for h in hist])

    e_grid = energies("grid_0")
    best_grid = float(e_grid.min())
    target = best_grid + 1e-3
    best_all = min([best_grid] + [float(energies(f"{m}_{s}").min())
                                  for m in ("bo", "random") for s in seeds])
    lines = [f"target: best of the {grid}^3 grid {best_grid:.4f} eV + 1 meV; lowest energy "
             f"seen by any run {best_all:.4f} eV", "",
             "| method | seed | calls to target | best after the budget (meV above target - 1 meV) |",
             "|---|---|---|---|"]
    reached = calls_to_reach(e_grid, target)
    lines.append(f"| grid {grid}^3 | - | {reached} of {len(e_grid)} | 0.0 |")
    means = []
    for method in ("bo", "random"):
        gaps, hits = [], []
        for s in seeds:
            e = energies(f"{method}_{s}")
            n = calls_to_reach(e, target)
            hits.append(n)
            gaps.append((e.min() - best_grid) * 1e3)
            lines.append(f"| {method} | {s} | {n if n is not None else f'not in {len(e)}'} | "
                         f"{gaps[-1]:.1f} |")
        reached = [n for n in hits if n is not None]
        means.append(f"{method}: target reached by {len(reached)} of {len(seeds)} seeds"
                     + (f" (calls {reached})" if reached else "")
                     + f", mean gap after {budget} calls {np.mean(gaps):.1f} meV")
    return "\n".join(lines + [""] + means)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("grid", "bo", "random", "report"), required=True)
    p.add_argument("--grid", type=int, default=5, help="levels per torsion of the grid")
    p.add_argument("--budget", type=int, default=30, help="calls of bo and random")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--relax-steps", type=int, default=0,
                   help="FIRE steps at most per call (0: rigid torsion scan)")
    p.add_argument("--fmax", type=float, default=0.05, help="eV/A, of the relaxations")
    p.add_argument("--xi", type=float, default=0.01, help="EI's least improvement (bo)")
    p.add_argument("--acquisition", choices=("ei", "lcb"), default="ei")
    p.add_argument("--root", type=Path, default=Path("/tmp/ml4m_bayesopt"))
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    root = args.root / (f"relax{args.relax_steps}_fmax{args.fmax:g}" if args.relax_steps
                        else "rigid")
    if args.part == "report":
        print(report(root, args.grid, args.budget, seeds))
    elif args.part == "grid":
        run("grid", 0, args.grid ** len(TORSIONS), root, args.relax_steps, args.fmax)
    else:
        extra = {"xi": args.xi, "acquisition": args.acquisition} if args.part == "bo" else {}
        for s in seeds:
            run(args.part, s, args.budget, root, args.relax_steps, args.fmax, **extra)


if __name__ == "__main__":
    main()

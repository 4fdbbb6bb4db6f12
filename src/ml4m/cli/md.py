"""``ml4m md``: molecular dynamics with a model (or a reference ASE calculator)."""

from __future__ import annotations

import argparse

from ml4m.cli._common import emit

HELP = "molecular dynamics through ASE"
DESCRIPTION = """\
Run NVE, NVT (Langevin) or NPT (Langevin-BAOAB) dynamics with a fitted model (.ml4m) or a
reference ASE calculator (emt). STRUCTURE is any ASE-readable file (its last frame).

examples:
  ml4m md cu_ace.ml4m start.extxyz --ensemble nve --temperature 600 --steps 1000 --dt 2 -o md.extxyz
  ml4m md emt start.extxyz --ensemble nvt --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=".ml4m file, or emt / an ASE calculator path")
    p.add_argument("structure", metavar="STRUCTURE", help="starting structure (last frame used)")
    p.add_argument("--ensemble", choices=["nve", "nvt", "npt"], default="nve")
    p.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    p.add_argument("--pressure", type=float, default=0.0, help="GPa, NPT only (default 0)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--dt", type=float, default=1.0, help="time step in fs (default 1)")
    p.add_argument("--interval", type=int, default=10, help="steps between trajectory frames")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", metavar="TRAJ", help="trajectory (extxyz)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def read_structure(path: str):
    """The last frame of ``path`` as ASE atoms (validated)."""
    from ml4m.data import read_dataset

    return read_dataset(path, index="-1")[0].to_atoms(with_labels=False)


def run(args: argparse.Namespace) -> int:
    from ml4m.md import load_calculator, run_md

    atoms = read_structure(args.structure)
    atoms.calc = load_calculator(args.model)
    result = run_md(atoms, ensemble=args.ensemble, temperature_k=args.temperature, steps=args.steps,
                    dt_fs=args.dt, pressure_gpa=args.pressure, trajectory=args.output,
                    interval=args.interval, seed=args.seed)
    drift = result.energy_drift_mev_per_atom_per_ps
    emit(args.json, result.as_dict(),
            f"{result.ensemble.upper()} {result.steps} steps of {result.n_atoms} atoms in "
            f"{result.seconds:.1f} s ({result.atom_steps_per_s:,.0f} atom-steps/s), "
            f"<T> = {result.temperature_k_mean:.0f} K"
            + (f", drift {drift:.3f} meV/atom/ps" if drift is not None else ""))
    return 0

"""``ml4m relax``: geometry optimisation with a model (or a reference calculator)."""

from __future__ import annotations

import argparse

from ml4m.cli._common import emit

HELP = "geometry optimisation (positions, optionally the cell)"
DESCRIPTION = """\
Relax a structure with FIRE (and the cell with a Frechet cell filter) until the largest
force is below --fmax. Exit code 1 when not converged within --steps.

example:
  ml4m relax cu_ace.ml4m start.extxyz --cell -o relaxed.extxyz
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=".ml4m file, or emt / an ASE calculator path")
    p.add_argument("structure", metavar="STRUCTURE")
    p.add_argument("--cell", action="store_true", help="relax the cell too")
    p.add_argument("--fmax", type=float, default=0.01, help="eV/A, > 0 (default 0.01)")
    p.add_argument("--steps", type=int, default=500, help="most optimiser steps, >= 1 (default 500)")
    p.add_argument("-o", "--output", metavar="OUT", help="relaxed structure (extxyz)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from ml4m.cli.md import claim
    from ml4m.data import read_structure
    from ml4m.md import check_relax_settings, load_calculator, relax

    check_relax_settings(args.fmax, args.steps)
    with claim(args.output, [args.structure, args.model], args.overwrite) as out:
        atoms = read_structure(args.structure)
        atoms.calc = load_calculator(args.model)
        result = relax(atoms, fmax=args.fmax, steps=args.steps, cell=args.cell)
        if out is not None:
            import ase.io

            from ml4m._fileio import atomic_path

            with atomic_path(out) as tmp:
                ase.io.write(tmp, atoms, format="extxyz")
            result["output"] = str(out)
    emit(args.json, result, f"{'converged' if result['converged'] else 'NOT converged'} after "
         f"{result['steps']} steps: E = {result['energy']:.4f} eV, max |F| = {result['fmax']:.4f} eV/A")
    return 0 if result["converged"] else 1

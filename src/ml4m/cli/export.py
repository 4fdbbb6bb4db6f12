"""``ml4m export``: a network potential as a program that plain PyTorch runs."""

from __future__ import annotations

import argparse

from ml4m.cli._common import emit

HELP = "write a network potential as a torch.export program (runs without ml4m)"
DESCRIPTION = """\
Write a fitted network potential (mpnn or bpnn) as a torch.export program (.pt2) that
plain PyTorch loads with torch.export.load and runs without ml4m, plus FILE.json with
its inputs, species and cutoff. The program takes positions, atomic numbers, cells,
the atoms' structure index and a full neighbour list (edge_index, shifts) and returns
energies; forces and stress come by autograd (see ml4m.models.export). The repulsive
core that ml4m fit puts around a network by default is part of the program; a network
learnt on an external calculator's residuals (baseline:) does not export.

example:
  ml4m export cu_mpnn.ml4m -o cu_mpnn.pt2
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=".ml4m file of an mpnn or bpnn potential")
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="program file (.pt2)")
    p.add_argument("--example", metavar="STRUCTURE",
                   help="structure to trace with (default: a small periodic cell of the "
                        "model's elements; the program accepts any structure)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from ml4m.cli.md import claim
    from ml4m.data import read_structure
    from ml4m.models.export import export_potential
    from ml4m.models.serialization import load

    inputs = [args.model] + ([args.example] if args.example else [])
    with claim(args.output, inputs, args.overwrite, (f"{args.output}.json",)) as out:
        model = load(args.model)
        example = [read_structure(args.example)] if args.example else None
        meta = export_potential(model, out, example)
    result = {"output": str(out), "metadata": f"{out}.json", **meta}
    emit(args.json, result, f"wrote {out} ({meta['kind']}, species {meta['species']}, "
         f"cutoff {meta['cutoff']:g} A) and {out}.json")
    return 0

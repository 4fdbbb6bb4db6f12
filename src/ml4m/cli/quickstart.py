"""``ml4m quickstart``: the whole pipeline on the embedded Cu data set, offline."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ml4m.cli._common import console, print_json

HELP = "run the whole pipeline on the embedded Cu data set (offline, minutes)"
DESCRIPTION = """\
Run the ml4m pipeline on the embedded Cu data set (fcc Cu labelled by ASE's EMT, made by
`ml4m data generate`): validate and summarise it, split it by trajectory, and write plots
and a summary to the output folder.

example:
  ml4m quickstart -o quickstart_out
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="quickstart_out", metavar="DIR",
                   help="output folder for plots and summary (default quickstart_out)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout")


def run(args: argparse.Namespace) -> int:
    from ml4m._fileio import atomic_path
    from ml4m.cli.data import _summary_table
    from ml4m.data import default_dataset, default_dataset_path, split_dataset, summarize
    from ml4m.data.plots import plot_label_histograms
    from ml4m.data.reference import fit_reference_energies
    from ml4m.data.write import write_extxyz

    out = console(stderr=args.json)
    outdir = Path(args.output)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"output": str(outdir)}

    out.rule("[bold]1. data")
    dataset = default_dataset()
    summary = summarize(dataset)
    out.print(_summary_table(f"embedded data: {default_dataset_path().name}", summary))
    split, parts = split_dataset(dataset, valid=0.15, test=0.15, seed=args.seed, by="traj")
    for name, part in parts.items():
        write_extxyz(part, outdir / "data" / f"{name}.extxyz")
    e0 = fit_reference_energies(parts["train"])
    out.print(f"split by trajectory: train {len(parts['train'])}, valid {len(parts['valid'])}, "
              f"test {len(parts['test'])} frames -> {outdir / 'data'}/")
    out.print("fitted E0 (eV): " + ", ".join(f"Z={z}: {v:.4f}" for z, v in e0.items()))
    plots = plot_label_histograms(dataset, outdir)
    out.print("plots: " + ", ".join(str(p) for p in plots))
    report["data"] = {
        "n_frames": summary["n_frames"],
        "n_atoms": summary["n_atoms"],
        "split": {k: len(v) for k, v in parts.items()},
        "energy_per_atom_ev": summary["energy_per_atom_ev"],
        "force_rms_ev_per_a": summary["force_rms_ev_per_a"],
    }
    report["plots"] = [str(p) for p in plots]
    report["seconds"] = time.perf_counter() - t0
    with atomic_path(outdir / "summary.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    out.rule(f"[bold]done in {report['seconds']:.1f} s")
    if args.json:
        print_json(report)
    return 0

"""``ml4m describe``: descriptors of every atom (or frame) of a structure file, to .npz."""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

HELP = "compute ACSF / SOAP / ACE / MBTR descriptors of a structure file"
DESCRIPTION = """\
Compute descriptors of every atom (or, with --average, every frame) and write them to
an .npz file with arrays
  features  (rows, n_features)   rows = atoms in file order, or frames with --average
  frame     (rows,)              frame index of each row
  numbers   (rows,)              atomic number per row; -1 for --average (per-frame) rows
  names     (n_features,)        column names (stable order)
  meta      ()                   JSON string of the settings
MBTR is a global descriptor: it always gives one row per frame.

examples:
  ml4m describe train.extxyz --descriptor soap --r-cut 5 --n-max 8 --l-max 6 -o soap.npz
  ml4m describe train.extxyz --descriptor acsf --species Cu,Au -o acsf.npz
  ml4m describe train.extxyz --descriptor ace --average -o ace_per_frame.npz
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="structures (any ASE-readable file)")
    from ml4m.training.config import DESCRIPTOR_CHOICES

    p.add_argument("--descriptor", required=True, choices=list(DESCRIPTOR_CHOICES),
                   help="descriptor family")
    p.add_argument("--species", help="comma-separated elements, e.g. Cu,Au (default: those in FILE)")
    p.add_argument("--r-cut", type=float, metavar="A", help="cutoff radius in Angstrom "
                   "(defaults: acsf 6, soap 5, ace 5, mbtr 6)")
    p.add_argument("--n-max", type=int, metavar="N", help="radial basis size (soap, ace)")
    p.add_argument("--l-max", type=int, metavar="L", help="largest angular momentum (soap, ace)")
    p.add_argument("--average", action="store_true", help="one row per frame (mean over atoms)")
    p.add_argument("--n-jobs", type=int, default=-1,
                   help="worker threads over frames (default -1: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--format", help="ASE file format when the extension does not tell")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="refuse work estimated above this memory, e.g. 4GB, 500MB "
                        "(default: half the available memory)")
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    p.add_argument("-o", "--output", required=True, metavar="OUT.npz",
                   help="output file (.npz appended when missing)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT.npz (a file output is always replaced whole; accepted "
                        "for symmetry with the folder outputs)")


def run(args: argparse.Namespace) -> int:
    from ml4m._fileio import atomic_path
    from ml4m.cli._common import print_json
    from ml4m.data.read import read_dataset
    from ml4m.descriptors import make_descriptor, species_of
    from ml4m.descriptors.base import parse_species
    from ml4m.outputs import claim_output, file_with_suffix
    from ml4m.parallel import resolve_n_jobs
    from ml4m.resources import parse_bytes

    t0 = time.perf_counter()
    max_memory = None if args.max_memory is None else parse_bytes(args.max_memory, "--max-memory")
    resolve_n_jobs(args.n_jobs)
    out = str(file_with_suffix(args.output, ".npz"))
    with claim_output(out, inputs=[args.file], overwrite=args.overwrite) as target:
        # build the descriptor first when species are given: bad parameters fail fast
        desc = None
        if args.species:
            desc = make_descriptor(args.descriptor, parse_species(args.species), args.r_cut,
                                   args.n_max, args.l_max, args.average)
        data = read_dataset(args.file, format=args.format)
        if desc is None:
            desc = make_descriptor(args.descriptor, species_of(data), args.r_cut, args.n_max,
                                   args.l_max, args.average)
        show = not args.no_progress and sys.stderr.isatty()
        res = desc.compute(data, n_jobs=args.n_jobs, progress=show, max_memory=max_memory)
        meta = desc.settings()
        meta.update(source=str(args.file), n_frames=len(data), rows="frames" if desc.average
                    else "atoms", numbers_note="-1 marks per-frame (averaged) rows")
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, features=res.features, frame=res.frame, numbers=res.numbers,
                         names=np.array(desc.feature_names()), meta=np.array(json.dumps(meta)))
    summary = {"output": out, "descriptor": desc.name, "rows": int(res.features.shape[0]),
               "n_features": int(desc.n_features), "species": desc.species_symbols,
               "seconds": time.perf_counter() - t0}
    if args.json:
        print_json(summary)
    else:
        from ml4m.cli._common import console

        console(stderr=True).print(
            f"{desc.name}: {summary['rows']} rows x {summary['n_features']} features -> {out}")
    return 0

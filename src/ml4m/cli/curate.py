"""``ml4m curate``: a diverse, non-redundant subset of the frames of a pool."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "select a diverse, non-redundant training subset of a pool of frames"
DESCRIPTION = """\
Select N frames of POOL (a structure file or a packed store from `ml4m data pack`,
labelled or not) by their descriptors, and write
  SUBSET                      the selected frames (extxyz, labels kept), in the order picked
  {stem}_indices.txt          their frame numbers in POOL (0-based), in the same order
  {stem}_projection.png       the pool's first two principal components, picks on top
The pool is streamed in chunks: only one feature row per frame is held (one per
atom with --level atoms).

methods: fps (farthest-point sampling), cur (CUR leverage), density (every density
  basin kept, frames drawn with probability ~ density^-alpha: rare environments kept,
  dense basins thinned), doptimal (greedy maximum information gain of a linear model
  on the frame rows; from a fitted model's posterior with --model), random (baseline).

examples:
  ml4m curate pool.extxyz --n 500 -o subset.extxyz
  ml4m curate pool.store --n 0.1 --method density --descriptor soap --r-cut 5 -o sub.extxyz
  ml4m curate pool.extxyz --n 200 --method doptimal --model cu_ace.ml4m -o more.extxyz
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ml4m.cli._common import add_label_key_arguments, add_output_arguments
    from ml4m.training.config import DESCRIPTOR_CHOICES  # names only: no descriptor import

    p.add_argument("pool", metavar="POOL", help="structures (any ASE-readable file) or a store")
    p.add_argument("--n", required=True, metavar="N",
                   help="frames to select: a count (500) or a fraction of the pool (0.1)")
    p.add_argument("--method", default="fps", metavar="METHOD",
                   help="fps, cur, density, doptimal or random (default fps)")
    p.add_argument("--descriptor", default="ace", choices=sorted(DESCRIPTOR_CHOICES),
                   help="descriptor of the atoms (default ace); frames get species-resolved "
                        "means of their atoms' descriptors")
    p.add_argument("--level", default="frames", choices=["frames", "atoms"],
                   help="select on one row per frame (default), or on atomic environments, "
                        "frames taken in the order their first environment is picked")
    p.add_argument("--species", help="comma-separated elements (default: those in POOL)")
    p.add_argument("--r-cut", type=float, metavar="A", help="cutoff radius in Angstrom")
    p.add_argument("--n-max", type=int, metavar="N", help="radial basis size (soap, ace)")
    p.add_argument("--l-max", type=int, metavar="L", help="largest angular momentum (soap, ace)")
    p.add_argument("--model", metavar="MODEL.ml4m",
                   help="a fitted linear potential (linear ACE, sparse GP): frame rows in its "
                        "feature space, and doptimal starts from its posterior")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choices (default 0)")
    p.add_argument("--alpha", type=float, default=1.0,
                   help="density: exponent of 1/density (0 random, 1 uniform; default 1)")
    p.add_argument("--chunk-frames", type=int, default=256,
                   help="frames described at once (default 256)")
    p.add_argument("--n-jobs", type=int, default=-1,
                   help="worker threads over frames (default -1: all cores)")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="refuse work estimated above this memory, e.g. 4GB "
                        "(default: half the available memory)")
    add_label_key_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    add_output_arguments(p, "SUBSET.extxyz", "extxyz file of the selected frames")


def companions(output: str | Path) -> tuple[Path, Path]:
    """The indices file and the projection plot written beside ``output``."""
    out = Path(output)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(f"{stem}_indices.txt"), out.with_name(f"{stem}_projection.png")


def _write_subset(pool: str, indices, keys, fmt: str | None, target: Path) -> None:
    """Read the picked frames (one more pass over the pool) and write them in pick order:
    a file's frames as the file has them (every array and info key kept), a store's with
    their labels."""
    from ml4m.data import Dataset, copy_frames, write_extxyz
    from ml4m.md.curation import iter_pool

    if not Path(pool).is_dir():
        copy_frames(pool, {target: [int(i) for i in indices]}, format=fmt)
        return
    wanted = {int(i): k for k, i in enumerate(indices)}
    picked: list = [None] * len(wanted)
    for n, frame in enumerate(iter_pool(pool, keys, fmt)):
        if n in wanted:
            picked[wanted[n]] = frame
    write_extxyz(Dataset(picked), target)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ml4m._fileio import atomic_path
    from ml4m.cli._common import emit, label_keys_from_args
    from ml4m.descriptors import make_descriptor
    from ml4m.descriptors.base import parse_species
    from ml4m.md.curation import (
        SELECTORS,
        check_curation_memory,
        frame_rows,
        pool_features,
        pool_species,
        projection_figure,
        resolve_n_select,
        select,
    )
    from ml4m.outputs import claim_output
    from ml4m.parallel import resolve_n_jobs
    from ml4m.resources import parse_bytes
    from ml4m.validation import check_choice, check_float, check_int

    t0 = time.perf_counter()
    # every parameter is checked before the pool is read
    check_choice("--method", args.method, SELECTORS)
    check_int("--seed", args.seed, low=0)
    check_int("--chunk-frames", args.chunk_frames, low=1)
    check_float("--alpha", args.alpha, low=0.0)
    resolve_n_jobs(args.n_jobs)
    resolve_n_select(args.n, 1 << 62)
    max_memory = None if args.max_memory is None else parse_bytes(args.max_memory, "--max-memory")
    keys = label_keys_from_args(args)
    indices_path, plot_path = companions(args.output)
    inputs = [args.pool] + ([args.model] if args.model else [])
    with claim_output(args.output, inputs=inputs, companions=[indices_path, plot_path],
                      overwrite=args.overwrite) as target:
        fmap = covariance = None
        if args.model:
            from ml4m.md.curation import linear_model_prior
            from ml4m.models.serialization import load

            desc, fmap, covariance = linear_model_prior(load(args.model))
        given = parse_species(args.species) if args.species else None
        found, n_pool, n_atoms = pool_species(args.pool, keys, args.format)
        n = resolve_n_select(args.n, n_pool)
        if not args.model:
            desc = make_descriptor(args.descriptor, given or found, args.r_cut, args.n_max,
                                   args.l_max)
        n_features = fmap.n_features if fmap is not None else desc.n_species * desc.n_features
        check_curation_memory(n_atoms if args.level == "atoms" else n_pool, n_features, n,
                              args.method, max_memory)
        pool = pool_features(args.pool, desc, keys=keys, format=args.format,
                             chunk_frames=args.chunk_frames, n_jobs=args.n_jobs,
                             max_memory=max_memory, feature_map=fmap, level=args.level)
        chosen = select(pool, n, args.method, seed=args.seed, alpha=args.alpha,
                        covariance=covariance)
        fig = projection_figure(frame_rows(pool), chosen.indices,
                                f"{args.method}: {n} of {n_pool} frames")
        # all three appear together: each is renamed into place only when all are complete
        with atomic_path(target) as tmp_subset, atomic_path(indices_path) as tmp_indices, \
                atomic_path(plot_path) as tmp_plot:
            np.savetxt(tmp_indices, chosen.indices, fmt="%d",
                       header=f"frame numbers in {args.pool} (0-based), method {args.method}, "
                              f"seed {args.seed}, in the order picked")
            fig.savefig(tmp_plot, dpi=120, format="png")
            _write_subset(args.pool, chosen.indices, keys, args.format, tmp_subset)
    summary = {"n_pool": n_pool, "n_selected": n, "method": args.method,
               "indices": chosen.indices, "seconds": time.perf_counter() - t0,
               "output": str(target), "indices_file": str(indices_path),
               "projection": str(plot_path), "descriptor": desc.name,
               "n_features": int(pool.features.shape[1]), "seed": args.seed}
    emit(args.json, summary, f"{args.method}: {n} of {n_pool} frames -> {target} "
                             f"(indices {indices_path.name}, plot {plot_path.name})")
    return 0

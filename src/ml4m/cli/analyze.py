"""``ml4m analyze``: intrinsic dimension, density and density peaks of a feature table."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ml4m.errors import ConfigError, DataError

HELP = "intrinsic dimension, density and density peaks of a feature table"
DESCRIPTION = """\
Data-manifold analysis of a feature table (.npy, .npz, .csv, .txt; rows = points) or of
structures (any ASE-readable file, with --descriptor): intrinsic dimension (TwoNN or
GRIDE), log-density (kNN, k*-NN or PAk) and density-peak clusters (ADP or DPC).
--cluster without --density uses PAk. With -o DIR: labels.npy, log_density.npy,
summary.json and PNG plots when computed (ID versus scale, decision graph, dendrogram of the
peaks, PCA projection coloured by cluster).

examples:
  ml4m analyze soap.npz --key features --density pak --cluster adp --z 1.65 -o analysis/
  ml4m analyze cvs.csv --id gride --maxk 50 --json
  ml4m analyze train.extxyz --descriptor soap --average --cluster adp -o analysis/
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``ml4m analyze`` (see PRODUCT.md)."""
    p.add_argument("input", metavar="INPUT", help="feature table (.npy/.npz/.csv/.txt) or structures")
    p.add_argument("--id", choices=("twonn", "gride"), default="twonn",
                   help="intrinsic-dimension estimator (default twonn)")
    p.add_argument("--density", choices=("knn", "kstar", "pak"), help="density estimator")
    p.add_argument("--cluster", choices=("dpc", "adp"), help="density-peak clustering")
    p.add_argument("--z", type=float, default=1.65, metavar="Z",
                   help="ADP merging significance (default 1.65)")
    p.add_argument("--maxk", type=int, metavar="K",
                   help="neighbours per point (default min(100, N-1))")
    p.add_argument("--key", help="array name inside a .npz (default: 'features' or the only array)")
    p.add_argument("--backend", choices=("auto", "brute", "kdtree", "ivf"), default="auto",
                   help="neighbour search (default auto; ivf is approximate, needs numba)")
    p.add_argument("--period", type=float, help="periodic box length (all features)")
    g = p.add_argument_group("structures (with --descriptor)")
    g.add_argument("--descriptor", metavar="NAME", help="describe structures first (acsf, soap, ace, mbtr)")
    g.add_argument("--species", help="comma-separated species (default: those in INPUT)")
    g.add_argument("--r-cut", type=float, default=5.0, help="cutoff radius in Angstrom (default 5)")
    g.add_argument("--n-max", type=int, default=8, help="radial basis size (default 8)")
    g.add_argument("--l-max", type=int, default=6, help="angular channels (default 6)")
    g.add_argument("--average", action="store_true", help="one row per structure")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="refuse work estimated above this memory, e.g. 4GB, 500MB "
                        "(default: half the available memory)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("-o", "--output", metavar="DIR", help="folder for arrays and plots "
                   "(replaced whole; an existing folder must be an earlier analysis output)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DIR even when it is not an ml4m analysis folder")


def load_table(path: str | Path, key: str | None = None) -> np.ndarray:
    """Read a feature table from .npy, .npz (array ``key``), .csv or .txt.

    Raises
    ------
    DataError
        Missing or empty file, unknown key, non-numeric content, not 2-D.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path)
    if path.stat().st_size == 0:
        raise DataError("file is empty", path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                names = list(z.keys())
                if key is None:
                    key = "features" if "features" in names else (names[0] if len(names) == 1 else None)
                if key is None or key not in names:
                    raise DataError(f"give --key, one of {names}" if key is None
                                    else f"no array {key!r} (has {names})", path)
                arr = z[key]
        elif suffix in (".csv", ".txt", ".dat", ".tsv"):
            arr = _read_text(path, "," if suffix == ".csv" else None)
        else:
            raise DataError(f"unknown table format {suffix!r}: use .npy, .npz, .csv or .txt, "
                            "or --descriptor for structures", path)
    except DataError:
        raise
    except (ValueError, OSError) as exc:
        raise DataError(f"cannot read table ({exc})", path) from None
    if arr.dtype.kind not in "biuf":
        raise DataError(f"features must be numeric, got dtype {arr.dtype}", path)
    if arr.ndim != 2:
        raise DataError(f"features must be a 2-D table (points x features), got shape {arr.shape}; "
                        "reshape a single feature to (N, 1)", path)
    return arr


def _read_text(path: Path, delimiter: str | None) -> np.ndarray:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise DataError("file is empty", path)
    rows = []
    for i, ln in enumerate(lines):
        parts = ln.split(delimiter) if delimiter else ln.split()
        try:
            rows.append([float(x) for x in parts])
        except ValueError:
            if i == 0:  # header line
                continue
            raise DataError(f"non-numeric value in line {ln[:60]!r}", path, len(rows)) from None
    if not rows:
        raise DataError("no numeric rows", path)
    width = len(rows[0])
    for i, r in enumerate(rows):
        if len(r) != width:
            raise DataError(f"row has {len(r)} values, expected {width}", path, i)
    return np.array(rows, dtype=np.float64).reshape(len(rows), width)


def _describe(args, max_memory: int | None) -> np.ndarray:
    try:
        from ml4m.descriptors import describe_frames
    except ImportError:
        raise ConfigError("--descriptor needs ml4m.descriptors") from None
    from ml4m.data import read_dataset

    frames = list(read_dataset(args.input))
    species = [s for s in args.species.split(",") if s] if args.species else None
    features, _, _ = describe_frames(frames, args.descriptor, species=species, r_cut=args.r_cut,
                                     n_max=args.n_max, l_max=args.l_max, average=args.average,
                                     n_jobs=-1, max_memory=max_memory)
    return np.asarray(features)


class _Steps:
    """Rich progress on stderr, one task per pipeline step (when stderr is a terminal,
    as the other sub-commands: no rich import and no refresh thread otherwise)."""

    def __init__(self, enabled: bool):
        self.progress = None
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            from ml4m.cli._common import console

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                     TimeElapsedColumn(), console=console(stderr=True),
                                     transient=True)

    def __enter__(self):
        if self.progress:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress:
            self.progress.__exit__(*exc)

    def task(self, name: str):
        if not self.progress:
            return lambda done, total: None
        tid = self.progress.add_task(name, total=None)

        def update(done: int, total: int) -> None:
            self.progress.update(tid, completed=done, total=total)
        return update


def run(args: argparse.Namespace) -> int:
    """Run the analysis; print JSON or a summary; write outputs to ``-o DIR``; return 0.

    Options are checked and the output folder claimed (:func:`ml4m.outputs.claim_output`)
    before any input is read."""
    from ml4m.outputs import claim_output
    from ml4m.resources import parse_bytes

    t0 = time.perf_counter()
    max_memory = None if args.max_memory is None else parse_bytes(args.max_memory, "--max-memory")
    if not args.descriptor and (args.species or args.average):
        raise ConfigError("--species and --average need --descriptor")
    if args.z < 0:
        raise ConfigError(f"--z must be >= 0, got {args.z}")
    if args.maxk is not None and args.maxk < 2:
        raise ConfigError(f"--maxk must be >= 2, got {args.maxk}")
    if args.output is None:
        return _analyze(args, max_memory, None, t0)
    with claim_output(args.output, inputs=[args.input], folder_kind="analysis",
                      overwrite=args.overwrite) as out:
        return _analyze(args, max_memory, out, t0)


def _analyze(args: argparse.Namespace, max_memory: int | None, output: Path | None,
             t0: float) -> int:
    """Everything after the checks of :func:`run`: read, analyse, write ``output``."""
    from ml4m.analysis import Manifold, decision_graph, id_scaling
    from ml4m.analysis._validation import check_features

    if args.descriptor:
        X = check_features(_describe(args, max_memory), min_rows=3, path=args.input)
    else:
        X = check_features(load_table(args.input, args.key), min_rows=3, path=args.input)
    n, dim = X.shape
    if args.maxk is None:
        maxk = min(100, n - 1)
    else:
        maxk = args.maxk
        if maxk > n - 1:
            raise DataError(f"--maxk {maxk} needs at least {maxk + 1} points, got {n}", args.input)

    with _Steps(enabled=sys.stderr.isatty()) as steps:
        m = Manifold(X, maxk, backend=args.backend, period=args.period,
                     progress=steps.task("neighbours"), max_memory=max_memory)
        idr = m.intrinsic_dimension(args.id)
        out: dict[str, Any] = {
            "n": n, "dim": dim,
            "id": {"method": args.id, "estimate": idr.estimate, "error": idr.error,
                   "scale": idr.scale},
            "maxk": m.graph.maxk, "backend": m.graph.backend, "recall": m.graph.recall,
        }
        den = cl = None
        if args.density or args.cluster:
            steps.task("density")
            den = m.density(args.density or "pak", intrinsic_dim=idr.estimate)
            if args.density:
                out["density"] = {"method": den.method, "log_density_mean": den.log_density_mean,
                                  "error_mean": float(np.mean(den.error))}
        if args.cluster:
            steps.task("clusters")
            cl = m.clusters(args.cluster, Z=args.z, density=den)
            out["clusters"] = {"method": cl.method, "n": cl.n_clusters,
                               "sizes": cl.sizes.tolist(), "centers": cl.centers.tolist()}
            if cl.method == "adp":
                out["clusters"]["z"] = args.z
        if output is not None:
            steps.task("plots")
            scaling = id_scaling(m.graph)
            dg = None
            if den is not None:
                dg = cl.decision if cl is not None and cl.decision is not None else \
                    decision_graph(m.graph, den.log_density, X)
            out["files"] = _write_outputs(output, X, scaling, den, cl, dg, out)
    out["seconds"] = time.perf_counter() - t0
    if args.json:
        from ml4m.cli._common import print_json

        print_json(out)
    else:
        _print_summary(out)
    return 0


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def _save_fig(path: Path, fig) -> None:
    fig.savefig(path, dpi=120, format="png")


def _write_outputs(target: Path, X, scaling, den, cl, dg, summary) -> list[str]:
    """Every file into a fresh folder that replaces ``target`` once complete."""
    from ml4m._fileio import atomic_dir

    with atomic_dir(target, kind="analysis") as folder:
        return _write_files(folder, X, scaling, den, cl, dg, summary)


def _write_files(folder: Path, X, scaling, den, cl, dg, summary) -> list[str]:
    from ml4m.analysis import plots

    written = []
    _save_fig(folder / "id_scaling.png", plots.id_scaling_figure(scaling))
    written.append("id_scaling.png")
    if den is not None:
        _save_npy(folder / "log_density.npy", den.log_density)
        _save_npy(folder / "log_density_error.npy", den.error)
        written += ["log_density.npy", "log_density_error.npy"]
        _save_fig(folder / "decision_graph.png",
                  plots.decision_graph_figure(dg, None if cl is None else cl.centers))
        written.append("decision_graph.png")
    labels = np.zeros(len(X), dtype=np.int64) if cl is None else cl.labels
    if cl is not None:
        _save_npy(folder / "labels.npy", cl.labels)
        _save_npy(folder / "saddle_log_density.npy", cl.saddle_log_density)
        _save_fig(folder / "dendrogram.png", plots.dendrogram_figure(cl))
        written += ["labels.npy", "saddle_log_density.npy", "dendrogram.png"]
    _save_fig(folder / "projection.png", plots.projection_figure(X, labels))
    written.append("projection.png")
    from ml4m.cli._common import _clean

    (folder / "summary.json").write_text(
        json.dumps(_clean({**summary, "files": written}), indent=1) + "\n")
    written.append("summary.json")
    return written


def _print_summary(out: dict[str, Any]) -> None:
    from ml4m.cli._common import console

    c = console()
    idr = out["id"]
    recall = f", measured recall {out['recall']:.3f}" if out.get("recall") is not None else ""
    c.print(f"{out['n']} points, {out['dim']} features, maxk {out['maxk']} ({out['backend']}"
            f"{recall})")
    c.print(f"intrinsic dimension ({idr['method']}): {idr['estimate']:.3f} +- {idr['error']:.3f}")
    if "density" in out:
        c.print(f"mean log density ({out['density']['method']}): {out['density']['log_density_mean']:.3f}")
    if "clusters" in out:
        cl = out["clusters"]
        c.print(f"{cl['n']} clusters ({cl['method']}), sizes {cl['sizes'][:20]}")
    if "files" in out:
        c.print(f"wrote {', '.join(out['files'])}")
    c.print(f"{out['seconds']:.2f} s")

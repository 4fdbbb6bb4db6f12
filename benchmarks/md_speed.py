"""MD throughput of ``ml4m md``: ASE EMT against a linear ACE model, with and without uncertainty.

NVE dynamics of fcc Cu cells of 108 and 864 atoms (300 K start, 1 fs), one thread for
every code (OMP/OpenBLAS/MKL threads = 1). Each configuration is timed

* through the command line: ``ml4m md MODEL start.extxyz --steps N --json`` in a fresh
  process, reading ``atom_steps_per_s`` (the dynamics' own clock: no start-up, the first
  force evaluation included);
* in-process: :func:`ml4m.md.run_md` after a warm-up run, in one worker process.

Repeats are interleaved (every configuration once, then again) so that a change of
machine load hits all of them alike; the medians are reported. The models are linear ACE
potentials fitted on the Cu/EMT training set (``shared/data/cu_emt/train.extxyz``) by
``ml4m fit``: ``default`` is ``ml4m fit --model ace`` with no other setting; ``accurate``
has the descriptor of ``potentials_accuracy.py`` (r_cut 5, n_max 6, l_max 3, order 3,
degree 12). With uncertainty, sigma is computed every ``--uncertainty-interval`` steps
(``auto``, ml4m's default: spaced by its measured cost to add at most 8% of wall time).

Usage::

    .venv/bin/python benchmarks/md_speed.py [--steps 500] [--repeats 3] [--models default accurate]

Writes ``benchmarks/results/md_speed.md``; fitted models are kept in ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = Path(os.environ.get("ML4M_SHARED_DATA", ROOT.parent / "shared" / "data"))
ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
SIZES = {108: 3, 864: 6}  # atoms: repeats of the 4-atom cubic cell
MODELS = {
    "default": {"model": "ace"},
    "accurate": {"model": "ace", "descriptor": {"r_cut": 5.0, "n_max": 6, "l_max": 3,
                                                "correlation_order": 3, "total_degree": 12}},
}

WORKER = r"""
import json, statistics, sys, time
import ase.io
from ase.calculators.emt import EMT
from ml4m.md import load_calculator, run_md
spec = json.loads(sys.argv[1])
start, steps, repeats = spec["structures"], spec["steps"], spec["repeats"]
out, times = {}, {}
def atoms_of(calc_spec, path):
    atoms = ase.io.read(path)
    atoms.calc = EMT() if calc_spec == "emt" else load_calculator(calc_spec)
    return atoms
for name, (calc_spec, interval) in spec["configs"].items():
    for path in start.values():
        run_md(atoms_of(calc_spec, path), steps=20, uncertainty_interval=interval)  # warm-up
for k in range(repeats):
    for name, (calc_spec, interval) in spec["configs"].items():
        for n, path in start.items():
            r = run_md(atoms_of(calc_spec, path), steps=steps, uncertainty_interval=interval)
            out.setdefault(name, {}).setdefault(n, []).append(r.atom_steps_per_s)
# one force evaluation of each model with and without sigma (864 atoms), s
import numpy as np
for name, (calc_spec, interval) in spec["configs"].items():
    if calc_spec == "emt" or interval == 0 or calc_spec in times:
        continue
    from ml4m.models.serialization import load
    model = load(calc_spec)
    atoms = ase.io.read(start[max(start, key=int)])
    model.predict([atoms]); model.predict([atoms], uncertainty=True)
    for unc in (False, True):
        ts = []
        for _ in range(5):
            t = time.perf_counter(); model.predict([atoms], uncertainty=unc); ts.append(time.perf_counter() - t)
        times.setdefault(calc_spec, {})[str(unc)] = float(np.median(ts))
print(json.dumps({"rates": out, "predict_s": times}))
"""


def fit_model(name: str, workdir: Path) -> Path:
    """The model ``name`` fitted by ``ml4m fit`` (kept in ``workdir``)."""
    path = workdir / f"cu_ace_{name}.ml4m"
    if path.exists():
        return path
    cfg = workdir / f"{name}.yaml"
    cfg.write_text(json.dumps({**MODELS[name], "train": str(SHARED / "cu_emt" / "train.extxyz")}))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ml4m", "fit", str(cfg), "-o", str(path),
                           "--json"], env=ENV, check=True, capture_output=True, text=True)
    (workdir / f"{name}_fit.json").write_text(proc.stdout)
    print(f"fitted {name} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return path


def model_size(name: str, workdir: Path) -> str:
    """``N features`` of a fitted model, from its ``ml4m fit --json`` record."""
    try:
        record = json.loads((workdir / f"{name}_fit.json").read_text())
        return f"{record['n_features']} features"
    except (OSError, ValueError, KeyError):
        return "size not recorded"


def structures(workdir: Path) -> dict[int, Path]:
    """fcc Cu cells (a = 3.61 A) as extxyz files, by number of atoms."""
    from ase.build import bulk
    from ase.io import write

    out = {}
    for n, reps in SIZES.items():
        out[n] = workdir / f"cu{n}.extxyz"
        write(out[n], bulk("Cu", cubic=True, a=3.61).repeat(reps))
    return out


def cli_rate(calc: str, start: Path, steps: int, interval: int) -> float:
    """``atom_steps_per_s`` of one ``ml4m md --json`` run."""
    cmd = [sys.executable, "-m", "ml4m", "md", calc, str(start), "--ensemble", "nve", "--steps",
           str(steps), "--uncertainty-interval", str(interval), "--json"]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    return float(json.loads(proc.stdout)["atom_steps_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--uncertainty-interval", nargs="+", default=["auto", "10"],
                    help="steps between sigma evaluations, or auto; one row per value "
                         "(default auto 10)")
    ap.add_argument("--models", nargs="+", default=["default", "accurate"], choices=list(MODELS))
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/ml4m_md_speed"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "md_speed.md")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    start = structures(args.workdir)
    configs = {"ASE EMT": ("emt", 0)}
    for name in args.models:
        path = str(fit_model(name, args.workdir))
        configs[f"ACE {name}, no sigma"] = (path, 0)
        for k in args.uncertainty_interval:
            label = "sigma auto (default)" if k == "auto" else f"sigma every {k}"
            configs[f"ACE {name}, {label}"] = (path, k if k == "auto" else int(k))
    load = os.getloadavg()[0]
    cli: dict[str, dict[int, list[float]]] = {}
    for _ in range(args.repeats):
        for name, (calc, interval) in configs.items():
            for n, path in start.items():
                cli.setdefault(name, {}).setdefault(n, []).append(cli_rate(calc, path, args.steps, interval))
    spec = {"structures": {str(n): str(p) for n, p in start.items()}, "steps": args.steps,
            "repeats": args.repeats, "configs": configs}
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(spec)], env=ENV,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    worker = json.loads(proc.stdout.strip().splitlines()[-1])
    inproc = {name: {int(n): v for n, v in d.items()} for name, d in worker["rates"].items()}
    report = render(args, configs, cli, inproc, worker["predict_s"], load, os.getloadavg()[0])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)


def render(args, configs, cli, inproc, predict_s, load_before: float, load_after: float) -> str:
    """The Markdown report: medians, ratios to EMT and to the model without sigma."""
    ks = args.uncertainty_interval
    sources = (("cli", cli), ("in-process", inproc))
    med = {src: {name: {n: statistics.median(v) for n, v in d.items()} for name, d in rates.items()}
           for src, rates in sources}
    best = {src: {name: {n: max(v) for n, v in d.items()} for name, d in rates.items()}
            for src, rates in sources}
    lines = [
        "# MD throughput: `ml4m md`, NVE fcc Cu, one thread",
        "",
        f"Command: `.venv/bin/python benchmarks/md_speed.py --steps {args.steps} --repeats {args.repeats} "
        f"--uncertainty-interval {' '.join(map(str, ks))} --models {' '.join(args.models)}`. NVE, 300 K start, dt 1 fs, "
        f"{args.steps} steps, no trajectory; OMP/OpenBLAS/MKL threads = 1; median of {args.repeats} "
        "interleaved repeats. CLI: `ml4m md MODEL cuN.extxyz --steps N --json` in a fresh process "
        "(its `atom_steps_per_s`: the dynamics' clock, step 0's evaluation and the blow-up checks "
        "included); in-process: `ml4m.md.run_md` after a 20-step warm-up. "
        f"Machine: {os.cpu_count()} cores, load average {load_before:.1f} before / {load_after:.1f} after "
        "(other work was running on it).",
        "",
        "Models: linear ACE fitted by `ml4m fit` on `shared/data/cu_emt/train.extxyz` (1,136 frames); "
        f"`default` = `ml4m fit --model ace` ({model_size('default', args.workdir)}, its basis "
        "chosen by the default search), `accurate` = the descriptor of `potentials_accuracy.py` "
        f"(r_cut 5, n_max 6, l_max 3, order 3, degree 12; {model_size('accurate', args.workdir)}).",
        "",
        "| code | via | 108 atoms (atom-steps/s) | 864 atoms (atom-steps/s) | / EMT (108) | / EMT (864) "
        "| / no sigma (108) | / no sigma (864) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def ratios(table, name, src):
        r, emt = table[src][name], table[src]["ASE EMT"]
        base = table[src].get(name.split(", ")[0] + ", no sigma")
        rel = (" | ".join(f"{r[n] / base[n]:.2f}" for n in SIZES) if base and "no sigma" not in name
               else "- | -")
        return f"{r[108] / emt[108]:.2f} | {r[864] / emt[864]:.2f} | {rel}"

    for src, _ in sources:
        for name in configs:
            r = med[src][name]
            lines.append(f"| {name} | {src} | {r[108]:,.0f} | {r[864]:,.0f} | {ratios(med, name, src)} |")
    lines += ["", "The same ratios from the best of the repeats (least disturbed by other load):", "",
              "| code | via | / EMT (108) | / EMT (864) | / no sigma (108) | / no sigma (864) |",
              "|---|---|---|---|---|---|"]
    for src, _ in sources:
        for name in configs:
            lines.append(f"| {name} | {src} | {ratios(best, name, src)} |")
    lines += ["", "One force evaluation at 864 atoms (`predict`, median of 5), s:", ""]
    for path, t in predict_s.items():
        ratio = t["True"] / t["False"]
        fixed = "".join(f"{int(k) / (int(k) - 1 + ratio):.2f} at every {k} steps; "
                        for k in ks if k != "auto")
        lines.append(f"- {Path(path).name}: energy + forces {t['False']:.3f}, with sigma {t['True']:.3f} "
                     f"({ratio:.1f}x); expected throughput with sigma / without: {fixed}"
                     f">= 0.90 from every {max(1, math.ceil(9 * (ratio - 1)))} steps")
    raw = {src: {name: {n: [round(x) for x in v] for n, v in d.items()} for name, d in rates.items()}
           for src, rates in sources}
    lines += ["", "Raw rates (atom-steps/s):", "", "```json", json.dumps(raw, indent=1), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

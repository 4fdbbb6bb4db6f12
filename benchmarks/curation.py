"""Curated against random training subsets: test force error of the same fit.

For one pool and one test set: the pool's frame features are computed once
(:func:`ml4m.md.curation.pool_features`, the model's own ACE descriptor); each selector
picks ``--fraction`` of the pool for every seed (``cur`` and ``doptimal`` are
deterministic: one run); a linear ACE potential (the model ``ml4m fit --model ace``
builds, with the ``--ace`` descriptor settings and ``--uncertainty``) is fitted on the
subset and its energy and force MAE measured on the test set, the force MAE also per
``config_type`` of the test frames (the worst type shows whether rare configurations
are covered). With ``--model mpnn`` (or ``bpnn``) the subset is fitted instead by ``ml4m
fit --model KIND --train SUBSET --seed SEED`` with default flags and no valid file (a
network has far more parameters than a 10% subset has force rows: the data-limited
regime), ``--jobs`` fits at a time, one thread each; ``cur`` and ``doptimal`` are then run
for every seed too (the fit's seed changes). Rows are appended to a
JSON file as they finish, so a rerun of the same command resumes.

Usage::

    .venv/bin/python benchmarks/curation.py --name cu_emt_pool \\
        --pool /tmp/h4/cu_pool.extxyz --test /tmp/h4/cu_test.extxyz
    .venv/bin/python benchmarks/curation.py --name bpa_xtb \\
        --pool ../shared/data/bpa_xtb/train.extxyz --test ../shared/data/bpa_xtb/valid.extxyz \\
        --ace '{"total_degree": 6}' --uncertainty posterior
    .venv/bin/python benchmarks/curation.py --name bpa_xtb_mpnn --model mpnn --jobs 2 \\
        --pool ../shared/data/bpa_xtb/train.extxyz --test ../shared/data/bpa_xtb/valid.extxyz
    .venv/bin/python benchmarks/curation.py --table      # markdown table of every result

Writes ``benchmarks/results/curation_<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
METHODS = ("fps", "cur", "density", "doptimal", "random")
DETERMINISTIC = ("cur", "doptimal")


def _fit_linear(train, species, ace: dict, uncertainty: str):
    """The linear ACE of ``ml4m fit --model ace`` with these descriptor settings, fitted."""
    from ml4m.descriptors import make_descriptor
    from ml4m.models.linear import LinearACE

    return LinearACE(make_descriptor("ace", species, **ace), uncertainty=uncertainty).fit(train)


def _fit_cli(train, kind: str, seed: int, max_minutes: float | None):
    """``ml4m fit --model KIND --train SUBSET --seed SEED [--max-minutes M]`` (default
    flags otherwise, one thread) in a fresh process; the fitted model."""
    import ase.io

    import ml4m

    with tempfile.TemporaryDirectory(prefix="ml4m_curation_") as tmp:
        subset = Path(tmp) / "subset.extxyz"
        ase.io.write(subset, [f.to_atoms(with_labels=True) for f in train])
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-m", "ml4m", "fit", "--model", kind, "--train",
                               str(subset), "--seed", str(seed), "-o", f"{tmp}/model.ml4m",
                               *(["--max-minutes", str(max_minutes)] if max_minutes else [])],
                              env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"ml4m fit --model {kind} failed: {proc.stderr[-2000:]}")
        return ml4m.load(f"{tmp}/model.ml4m")


def _fit_and_test(train, test, species, ace: dict, args, seed: int) -> dict:
    from ml4m.models.metrics import error_metrics

    t0 = time.perf_counter()
    model = (_fit_linear(train, species, ace, args.uncertainty)
             if args.model == "ace" else _fit_cli(train, args.model, seed, args.max_minutes))
    fit_s = time.perf_counter() - t0
    pred = model.predict(test, uncertainty=False)
    err = error_metrics(pred, test)
    types = np.repeat([str(f.info.get("config_type", "-")) for f in test], [len(f) for f in test])
    abs_err = np.abs(pred.forces - np.concatenate([f.forces for f in test]))
    per_type = {t: 1000.0 * float(abs_err[types == t].mean()) for t in np.unique(types)}
    return {"force_mae_mev_per_a": err["forces"]["mae_mev_per_a"],
            "energy_mae_mev_per_atom": err["energy"]["mae_mev_per_atom"], "fit_seconds": fit_s,
            "n_parameters": model.n_parameters, "force_mae_by_type": per_type}


def run(args: argparse.Namespace) -> None:
    from ml4m.data import read_dataset
    from ml4m.descriptors import make_descriptor
    from ml4m.md.curation import pool_features, resolve_n_select, select

    out = RESULTS / f"curation_{args.name}.json"
    record = json.loads(out.read_text()) if out.exists() else {"rows": []}
    done = {(r["method"], r["seed"]) for r in record["rows"]}
    pool = read_dataset(args.pool)
    test = read_dataset(args.test)
    species = [int(z) for z in pool.atomic_numbers]
    ace = json.loads(args.ace)
    t0 = time.perf_counter()
    feats = pool_features(args.pool, make_descriptor("ace", species, **ace), n_jobs=args.n_jobs)
    record.update(name=args.name, pool=str(args.pool), test=str(args.test), n_pool=len(pool),
                  n_test=len(test), fraction=args.fraction, ace=ace, uncertainty=args.uncertainty,
                  model=args.model, n_features=int(feats.features.shape[1]),
                  feature_seconds=time.perf_counter() - t0)
    n = resolve_n_select(args.fraction, len(pool))
    once = DETERMINISTIC if args.model == "ace" else ()  # a network's fit has a seed
    tasks = []
    for method in args.methods:
        for seed in (args.seeds[:1] if method in once else args.seeds):
            if (method, seed) in done:
                continue
            t1 = time.perf_counter()
            sel = select(feats, n, method, seed=seed)
            tasks.append(({"method": method, "seed": seed, "n_selected": n,
                           "select_seconds": time.perf_counter() - t1}, sel.indices))

    def fit(task):
        row, indices = task
        return {**row, **_fit_and_test([pool[int(i)] for i in indices], test, species, ace,
                                       args, row["seed"])}

    # network fits are processes; linear fits run here, one at a time
    with ThreadPoolExecutor(args.jobs if args.model != "ace" else 1) as workers:
        for future in as_completed([workers.submit(fit, t) for t in tasks]):
            record["rows"].append(future.result())
            tmp = out.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(record, indent=1))
            tmp.replace(out)
            print(json.dumps(record["rows"][-1]), flush=True)


def table() -> str:
    """Markdown: mean and spread of the test force MAE per set and method."""
    lines = ["| set | pool | subset | method | runs | F MAE (meV/A), mean +- std | vs random | "
             "worst config_type F MAE (meV/A) | E MAE (meV/atom) | select (s) | fit (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(RESULTS.glob("curation_*.json")):
        rec = json.loads(path.read_text())
        by = {m: [r for r in rec["rows"] if r["method"] == m] for m in METHODS}
        ref = np.mean([r["force_mae_mev_per_a"] for r in by["random"]]) if by["random"] else None
        for m, rows in by.items():
            if not rows:
                continue
            f = np.array([r["force_mae_mev_per_a"] for r in rows])
            e = np.mean([r["energy_mae_mev_per_atom"] for r in rows])
            rel = f"{f.mean() / ref:.2f}" if ref else "-"
            worst = "-"
            if all("force_mae_by_type" in r for r in rows):
                by_type = [r["force_mae_by_type"] for r in rows]
                means = {t: np.mean([b[t] for b in by_type]) for t in by_type[0]}
                top = max(means, key=means.get)
                worst = f"{means[top]:.1f} ({top})"
            lines.append(
                f"| {rec['name']} | {rec['n_pool']} | {rows[0]['n_selected']} | {m} | {len(rows)} | "
                f"{f.mean():.2f} +- {f.std():.2f} | {rel} | {worst} | {e:.2f} | "
                f"{np.mean([r['select_seconds'] for r in rows]):.1f} | "
                f"{np.mean([r['fit_seconds'] for r in rows]):.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", help="result name (curation_<name>.json)")
    p.add_argument("--pool", help="pool of labelled frames")
    p.add_argument("--test", help="held-out labelled test frames")
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    p.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    p.add_argument("--ace", default="{}", help="ACE settings as JSON (default: fit's defaults)")
    p.add_argument("--uncertainty", default="calibrated", choices=["calibrated", "posterior"])
    p.add_argument("--model", default="ace", choices=["ace", "mpnn", "bpnn"],
                   help="ace: linear ACE in this process; mpnn, bpnn: `ml4m fit` defaults")
    p.add_argument("--n-jobs", type=int, default=1, help="threads of the pool's descriptors")
    p.add_argument("--jobs", type=int, default=1, help="fits at once (mpnn, bpnn)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="budget of each network fit (default: the fit's default steps)")
    p.add_argument("--table", action="store_true", help="print the table of all results")
    args = p.parse_args()
    if args.table:
        print(table())
        return
    if not (args.name and args.pool and args.test):
        p.error("--name, --pool and --test are required (or --table)")
    run(args)


if __name__ == "__main__":
    main()

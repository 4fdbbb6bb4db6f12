"""Uncertainty of the networks: last-layer posterior against a committee (issue #22).

For each ``--sets`` set, trains ``--members`` networks with default flags and seeds
0..K-1, exactly as documented::

    ml4m fit --model mpnn --train train.extxyz --valid valid.extxyz --seed k -o member_k.ml4m

joins them with :meth:`ml4m.models.Committee.from_members` into ``committee.ml4m``
(its spread calibrated on the valid file, as ``ml4m fit`` calibrates the last layer), and
scores member 0 (its last-layer posterior, fitted and calibrated by ``ml4m fit``) and
the committee with ``ml4m test FILE valid.extxyz --json``: per-atom Spearman of the force
sigma against the absolute force error, and the calibration ratio (force RMSE / RMS
sigma). The extra inference cost is the CPU time (one thread, median of 3) of
``predict(frames, uncertainty=True)`` over ``predict(frames)`` of member 0, on
``--cost-frames`` evenly spaced valid frames. ``--reuse`` takes member files already in
the work folder (their valid errors from ``ml4m test``) instead of fitting them.

Usage::

    .venv/bin/python benchmarks/network_uncertainty.py [--sets ethanol_pbe] [--model mpnn]
        [--members 4] [--max-minutes M] [--jobs 2] [--workdir /tmp/ml4m_net_sigma]

Writes ``benchmarks/results/network_uncertainty.md`` (notes below its table are kept)
and ``.json`` (rows of other sets and models are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("ML4M_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from _common import notes_below_table, run_json  # noqa: E402


def _one_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the ml4m processes


def fit_member(name: str, model: str, k: int, workdir: Path, max_minutes: float | None,
               reuse: bool = False) -> dict:
    d = SHARED / name
    out = workdir / name / f"{model}_member{k}.ml4m"
    if reuse and out.is_file():
        test, _ = run_json(["test", str(out), str(d / "valid.extxyz")])
        return {"path": str(out), "wall_s": None, "valid": test, "test": test}
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = ["--max-minutes", str(max_minutes)] if max_minutes else []
    fit, wall = run_json(["fit", "--model", model, "--train", str(d / "train.extxyz"),
                          "--valid", str(d / "valid.extxyz"), "--seed", str(k), "-o", str(out)]
                         + extra)
    return {"path": str(out), "wall_s": wall, "valid": fit["valid"]}


def cpu_seconds(model, frames, uncertainty: bool, repeats: int = 3) -> float:
    """Median CPU time (s, one torch thread) of ``model.predict(frames, uncertainty)``."""
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        model.predict(frames, uncertainty=uncertainty)
        times.append(time.process_time() - t0)
    return float(np.median(times))


def _scores(test: dict) -> dict:
    u = test.get("uncertainty", {})
    return {"forces_mae_mev_per_a": test["forces"]["mae_mev_per_a"],
            "energy_mae_mev_per_atom": test["energy"]["mae_mev_per_atom"],
            "spearman": u.get("force_sigma_spearman"), "ratio": u.get("force_rmse_over_sigma"),
            "attainable": u.get("force_sigma_spearman_attainable"),
            "sigma_rms_mev_per_a": u.get("force_sigma_rms_mev_per_a")}


def run_set(name: str, args) -> dict:
    import torch

    import ml4m
    from ml4m.data import read_dataset
    from ml4m.models import Committee

    runs = [(name, args.model, k, args.workdir, args.max_minutes, args.reuse)
            for k in range(args.members)]
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, initializer=_one_thread) as pool:
            members = list(pool.map(fit_member, *zip(*runs)))
    else:
        members = [fit_member(*run) for run in runs]
    valid = SHARED / name / "valid.extxyz"
    valid_frames = list(read_dataset(valid))
    joined = Committee.from_members([ml4m.load(m["path"]) for m in members])
    joined.calibrate(valid_frames)  # on valid, as ml4m fit calibrates the last layer
    committee_path = joined.save(args.workdir / name / f"{args.model}_committee.ml4m")
    # a reused member 0 was scored on valid already (its ``ml4m test``)
    last_layer = members[0].get("test") or run_json(["test", members[0]["path"], str(valid)])[0]
    committee, _ = run_json(["test", str(committee_path), str(valid)])
    torch.set_num_threads(1)
    frames = [valid_frames[int(i)] for i in np.unique(np.linspace(
        0, len(valid_frames) - 1, args.cost_frames).astype(int))]
    first, joined = ml4m.load(members[0]["path"]), ml4m.load(committee_path)
    plain = cpu_seconds(first, frames, False)
    return {"set": name, "model": args.model, "members": args.members,
            "max_minutes": args.max_minutes,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "fit_wall_s": [m["wall_s"] for m in members],
            "member_forces_mae_mev_per_a": [m["valid"]["forces"]["mae_mev_per_a"]
                                            for m in members],
            "last_layer": {**_scores(last_layer),
                           "cost": cpu_seconds(first, frames, True) / plain},
            "committee": {**_scores(committee), "calibration": joined.calibration_,
                          "cost": cpu_seconds(joined, frames, True) / plain},
            "predict_cpu_s": plain, "cost_frames": len(frames)}


def _bound(scores: dict) -> str:
    """`` (of X)``, X the attainable Spearman, where the row has it (rows since session 25)."""
    return f" (of {scores['attainable']:.2f})" if scores.get("attainable") is not None else ""


def write(rows: list[dict], argv: list[str]) -> None:
    path = RESULTS / "network_uncertainty.json"
    if path.exists():
        ran = {(r["set"], r["model"]) for r in rows}
        rows = [r for r in json.loads(path.read_text()) if (r["set"], r["model"]) not in ran] + rows
    lines = ["# Network uncertainty: last-layer posterior against a committee", "",
             "Last command: `.venv/bin/python benchmarks/network_uncertainty.py " + " ".join(argv)
             + "`. Default `ml4m fit` flags, seeds 0..K-1; scored with `ml4m test ... --json` "
             "on the whole valid file (rows of other sets keep their own runs). Spearman: per atom, force sigma against |force error| "
             "(\"of X\": the most any sigma could reach on the same errors, `force_sigma_spearman_attainable`); "
             "ratio: force RMSE / RMS sigma (1: calibrated); cost: CPU time of the prediction "
             "with sigmas over the plain prediction of one member (one thread).", "",
             "| set | model | K | member budget (min) | member valid F MAE (meV/A) "
             "| last layer: Spearman, ratio, cost | committee: F MAE, Spearman, ratio, cost |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ll, c = r["last_layer"], r["committee"]
        maes = ", ".join(f"{v:.1f}" for v in r["member_forces_mae_mev_per_a"])
        budget = r.get("max_minutes") or "- (default steps)"
        raw = (f" (raw spread x{c['calibration']['forces']:.2f})" if "calibration" in c
               else "")
        lines.append(f"| {r['set']} | {r['model']} | {r['members']} | {budget} | {maes} | "
                     f"{ll['spearman']:.2f}{_bound(ll)}, {ll['ratio']:.2f}, {ll['cost']:.1f}x | "
                     f"{c['forces_mae_mev_per_a']:.1f}, {c['spearman']:.2f}{_bound(c)}, "
                     f"{c['ratio']:.2f}{raw}, {c['cost']:.1f}x |")
    lines += notes_below_table(RESULTS / "network_uncertainty.md")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "network_uncertainty.md").write_text("\n".join(lines).rstrip("\n") + "\n")
    path.write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=["ethanol_pbe"])
    ap.add_argument("--model", default="mpnn", choices=["mpnn", "bpnn"])
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--max-minutes", type=float)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/ml4m_net_sigma"))
    ap.add_argument("--cost-frames", type=int, default=20,
                    help="evenly spaced valid frames the extra cost is timed on")
    ap.add_argument("--reuse", action="store_true",
                    help="take member files already in --workdir instead of fitting them")
    args = ap.parse_args(argv)
    write([run_set(name, args) for name in args.sets], argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

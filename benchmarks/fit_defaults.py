"""What a user gets from ``ml4m fit`` with default flags, beside the hand-picked settings.

For each shared set, runs in a fresh process, exactly as documented::

    ml4m fit --model MODEL --train train.extxyz --valid valid.extxyz -o FILE --json
    ml4m test FILE test.extxyz --json

and reports the wall time, the basis the search chose, valid and test errors (energy
MAE meV/atom, force MAE meV/A, stress MAE GPa where labelled) and the Spearman of the
predicted force sigma against the force error, beside the hand-picked figures of
``benchmarks/results/potentials_accuracy.json`` (same data, fixed settings) and MACE's
(``benchmarks/results/mace_SET.json``, 60 minutes of training), for each ``--models``
kind (every potential kind of ``ml4m fit --model``: ``ace`` linear ACE, ``gp`` the
sparse GP, ``mpnn`` and ``bpnn`` the networks).

Usage::

    .venv/bin/python benchmarks/fit_defaults.py [--sets cu_emt cuau_emt bpa_xtb ethanol_pbe]
        [--models ace gp] [--max-minutes M] [--jobs J]

``--jobs`` runs that many fits at once, each with one thread (for networks trained on
their own budget; the searches of ``ace`` and ``gp`` scale to the machine they get).

Writes ``benchmarks/results/fit_defaults.md`` (and ``.json``); models go to ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("ML4M_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from _common import run_json  # noqa: E402


def hand_picked() -> dict[tuple[str, str], dict]:
    """The fixed-settings rows of potentials_accuracy.json, by (set, model)."""
    path = RESULTS / "potentials_accuracy.json"
    if not path.exists():
        return {}
    return {(r["set"], r.get("model")): r for r in json.loads(path.read_text())}


def _potential_fits() -> list[str]:
    """Every ``ml4m fit --model`` value that fits a potential (from the model registry)."""
    from ml4m.models.registry import fit_choices, model_kind

    return [name for name in fit_choices() if model_kind(name).potential]


def run_one(name: str, kind: str, workdir: Path, max_minutes: float | None) -> dict:
    """Fit ``kind`` on set ``name`` with default flags (and the budget), score its test
    file when there is one; the row of the report."""
    d = SHARED / name
    model = workdir / name / f"{kind}.ml4m"
    model.parent.mkdir(parents=True, exist_ok=True)
    extra = ["--max-minutes", str(max_minutes)] if max_minutes else []
    load = os.getloadavg()[0]
    fit, wall = run_json(["fit", "--model", kind, "--train", str(d / "train.extxyz"),
                          "--valid", str(d / "valid.extxyz"), "-o", str(model)] + extra)
    test = {}  # held-back test sets are not shared; scored when present
    if (d / "test.extxyz").exists():
        test, _ = run_json(["test", str(model), str(d / "test.extxyz")])
    search = fit.get("search", {})
    table = [{k: row[k] for k in ("rung", "n_coefficients", "cv_forces_rmse_mev_per_a",
                                  "score", "seconds")} for row in search.get("table", [])]
    row = {"set": name, "model": kind, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "load_before": load, "load_after": os.getloadavg()[0], "wall_s": wall,
           "n_coefficients": fit["n_features"], "descriptor": search.get("descriptor"),
           "params": search.get("params") or fit.get("config", {}).get("params"),
           "search_stopped": search.get("stopped"), "pass_seconds": search.get("pass_seconds"),
           "search_table": table, "training": fit.get("training"), "valid": fit["valid"],
           "test": test}
    print(json.dumps(row, default=str)[:400], flush=True)
    return row


def _one_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the ml4m processes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=["cu_emt", "cuau_emt", "bpa_xtb", "ethanol_pbe"])
    ap.add_argument("--models", nargs="+", default=["ace"], choices=_potential_fits())
    ap.add_argument("--max-minutes", type=float, help="passed to ml4m fit (default: its own)")
    ap.add_argument("--jobs", type=int, default=1, help="fits at once, one thread each")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/ml4m_fit_defaults"))
    args = ap.parse_args()
    runs = [(n, k, args.workdir, args.max_minutes) for k in args.models for n in args.sets]
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, initializer=_one_thread) as pool:
            rows = list(pool.map(run_one, *zip(*runs)))
    else:
        rows = [run_one(*run) for run in runs]
    write_report(rows, args)


def mace() -> dict[str, dict]:
    """MACE's figures after 60 minutes of training, by set (``mace_SET.json``)."""
    return {p.stem[len("mace_"):]: json.loads(p.read_text())
            for p in sorted(RESULTS.glob("mace_*.json"))}


def _cell(m: dict, key: str, sub: str, fmt: str = "{:.2f}") -> str:
    value = m.get(key, {}).get(sub)
    return "-" if value is None else fmt.format(value)


def _notes() -> list[str]:
    """The hand-written notes of the last report (lines between its table and ``Raw:``),
    kept when the table is rewritten."""
    path = RESULTS / "fit_defaults.md"
    if not path.exists():
        return []
    text = path.read_text().split("\nRaw:\n", 1)[0].splitlines()
    last_row = max((k for k, line in enumerate(text) if line.startswith("|")), default=len(text))
    notes = text[last_row + 1:]
    while notes and not notes[0].strip():
        notes.pop(0)
    return notes + [""] if notes else []


def write_report(rows: list[dict], args) -> None:
    """Write the table; sets not run this time keep their row of the last report."""
    ref = hand_picked()
    old = RESULTS / "fit_defaults.json"
    if old.exists():
        done = {(r["set"], r["model"]) for r in rows}
        rows = [r for r in json.loads(old.read_text())
                if (r["set"], r.get("model", "ace")) not in done] + rows
    load = os.getloadavg()[0]
    lines = ["# `ml4m fit` with default flags (basis search) beside hand-picked settings",
             "", f"Command: `.venv/bin/python benchmarks/fit_defaults.py --sets {' '.join(args.sets)}"
             + f" --models {' '.join(args.models)}"
             + (f" --max-minutes {args.max_minutes}" if args.max_minutes else "")
             + (f" --jobs {args.jobs}" if args.jobs > 1 else "") + "`. "
             f"Machine: {os.cpu_count()} cores, load average {load:.1f} at the end "
             "(the search's budget is wall time, so a busy machine gets a smaller basis; each "
             "row gives the 1-minute load before and after its fit).", "",
             "| set | model | date | load before, after | wall (s) | coefficients | chosen (order, degrees; "
             "per species) | valid E MAE (meV/atom) | valid F MAE (meV/A) | valid S MAE (GPa) "
             "| valid sigma-error Spearman | test F MAE | hand-picked valid F MAE "
             "| MACE (60 min) valid E, F MAE |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    peer = mace()
    for r in rows:
        v, t = r["valid"], r["test"]
        d = r["descriptor"] or {}
        rho = v.get("uncertainty", {}).get("force_sigma_spearman")
        kind = r.get("model", "ace")
        hp = ref.get((r["set"], kind), {}).get("forces", {}).get("mae_mev_per_a")
        per = (r.get("params") or {}).get("species_degree")
        loads = (f"{r['load_before']:.1f}, {r['load_after']:.1f}" if "load_before" in r else "-")
        m = peer.get(r["set"])
        ref_mace = (f"{m['energy_mae_mev_per_atom']:.2f}, {m['forces_mae_mev_per_a']:.1f}"
                    if m else "-")
        lines.append(
            f"| {r['set']} | {kind} | {r.get('date', '-')} | {loads} | {r['wall_s']:.0f} | "
            f"{r['n_coefficients']:,} | {d.get('correlation_order', '-')}, "
            f"{d.get('total_degree', '-')}{'; ' + str(per) if per else ''} | "
            f"{_cell(v, 'energy', 'mae_mev_per_atom')} | {_cell(v, 'forces', 'mae_mev_per_a', '{:.1f}')} | "
            f"{_cell(v, 'stress', 'mae_gpa', '{:.3f}')} | {'-' if rho is None else f'{rho:.2f}'} | "
            f"{_cell(t, 'forces', 'mae_mev_per_a', '{:.1f}')} | {'-' if hp is None else f'{hp:.1f}'} "
            f"| {ref_mace} |")
    lines += ["", *_notes(), "Raw:", "", "```json", json.dumps(rows, indent=1, default=str)[:20000],
              "```", ""]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fit_defaults.md").write_text("\n".join(lines))
    (RESULTS / "fit_defaults.json").write_text(json.dumps(rows, indent=1, default=str))
    print("\n".join(lines[:8 + len(rows)]))


if __name__ == "__main__":
    main()

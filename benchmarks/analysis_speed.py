"""Speed and memory of the full analysis pipeline, ml4m beside DADApY 0.3.4.

Pipeline (both): 100-neighbour graph, TwoNN, GRIDE scaling, k* + PAk, ADP (Z = 1.65).
Every run is a fresh process (``_workers.py``); ml4m and DADApY runs are interleaved
and the report gives medians and ratios of medians (peer time / ml4m time), with
peak resident memory (``ru_maxrss``). Data: ``_common.manifold_data`` (ID 10 in 50-D,
five density peaks).

Usage (parts can be run separately; each appends JSON to results/analysis_speed.json
and rewrites results/analysis_speed.md)::

    PYTHONPATH=src /work/main/.venv/bin/python benchmarks/analysis_speed.py side-by-side --n 50000 --repeats 3
    PYTHONPATH=src /work/main/.venv/bin/python benchmarks/analysis_speed.py scaling --ns 25000,50000,100000,200000,400000
    PYTHONPATH=src /work/main/.venv/bin/python benchmarks/analysis_speed.py scaling --ns 1000000
    PYTHONPATH=src /work/main/.venv/bin/python benchmarks/analysis_speed.py peer-scaling --ns 25000,50000,100000
    /work/main/.venv/bin/python benchmarks/analysis_speed.py cli --n 50000 --repeats 5

``cli`` times whole processes: ``ml4m analyze X.npy --id gride --density pak --cluster adp
--json`` with default flags (the installed ``ml4m`` command beside this interpreter) against
DADApY's same pipeline (neighbours, GRIDE at n1 = 1, PAk at that ID, ADP at Z = 1.65) as one
script in the peer venv (``DADAPY_PYTHON``), from process start to exit, interleaved, with
the load average before each run. ``ml4m-one-parser`` runs the same ``analyze`` module
behind a parser of that sub-command only: the cost of building every sub-command's parser
(and what it imports) is the difference. ``ml4m-help`` is ``ml4m analyze --help``: start-up
and parser alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import PEER_PY, machine_note, manifold_data, run_worker  # noqa: E402

RESULTS = Path(__file__).parent / "results"
JSON = RESULTS / "analysis_speed.json"
MD = RESULTS / "analysis_speed.md"
MAXK = 100


def _record(entry: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = json.loads(JSON.read_text()) if JSON.exists() else []
    data.append(entry)
    JSON.write_text(json.dumps(data, indent=1))
    _report(data)


def _fit_exponent(points):
    if len(points) < 2:
        return float("nan")
    n, t = np.array(points, dtype=float).T
    return float(np.polyfit(np.log(n), np.log(t), 1)[0])


def _report(data) -> None:
    lines = ["# ml4m.analysis speed and memory beside DADApY 0.3.4", "",
             f"Machine: {machine_note()}.", "Pipeline: 100-neighbour graph, TwoNN, GRIDE scaling, "
             "k* + PAk, ADP (Z = 1.65). Data: ID 10 on a curved manifold in 50-D, 5 modes. "
             "`ivf` = approximate neighbours: from 2026-12-01 ml4m's cell search (k-means cells of "
             "~56 points, each compared with its 160 nearest cells in float32 BLAS blocks, numba "
             "selection, exact float64 distances, one local join; recall@100 0.992 at N = 50,000); "
             "earlier sessions used faiss IVF (nprobe 64, recall 0.992). `brute` = exact (faiss float32 brute force on the "
             "rank-reduced data, rows certified against the rounding bound, float64 refinement; "
             "entries before 2026-11-25 used scikit-learn's arg-k-min). Rows of one table made at "
             "different times are not comparable (shared machine); ratios within a side-by-side "
             "block are.", ""]
    cli_rows = [d for d in data if d["part"] == "cli"]
    if cli_rows:
        lines += _report_cli(cli_rows)
    side = [d for d in data if d["part"] == "side-by-side"]
    if side:
        lines += ["## Side by side (medians of interleaved repeats)", "",
                  "`median s` is the pipeline (graph to clusters); library imports are timed apart "
                  "(`import` stage, recorded from 2026-12-01) and the last ratio adds them to both.", "",
                  "| N | runner | repeats | median s | peak MiB | DADApY / ml4m time | "
                  "with imports | clusters | stages (median s) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for d in side:
            peer = d["runs"]["dadapy"]
            for name, r in d["runs"].items():
                ratio = "" if name == "dadapy" else f"**{peer['median'] / r['median']:.2f}x**"
                both = "import" in r["stages"] and "import" in peer["stages"]
                with_imp = "" if name == "dadapy" or not both else (
                    f"{(peer['median'] + peer['stages']['import']) / (r['median'] + r['stages']['import']):.2f}x")
                stages = ", ".join(f"{k} {v:.2f}" for k, v in r["stages"].items() if k != "total")
                lines.append(f"| {d['n']} | {name} | {len(r['times'])} | {r['median']:.2f} | "
                             f"{r['peak_mib']:.0f} | {ratio} | {with_imp} | {r['clusters']} | {stages} |")
        lines.append("")
    for who in ("ml4m", "dadapy"):
        rows = [d for d in data if d["part"] == ("scaling" if who == "ml4m" else "peer-scaling")]
        if not rows:
            continue
        lines += [f"## Scaling: {who}", "", "| N | backend | total s | peak MiB | stages s |",
                  "|---|---|---|---|---|"]
        for d in sorted(rows, key=lambda d: (d.get("backend", ""), d["n"])):
            stages = ", ".join(f"{k} {v:.1f}" for k, v in d["stages"].items() if k != "total")
            lines.append(f"| {d['n']} | {d.get('backend', 'sklearn')} | {d['total']:.1f} | "
                         f"{d['peak_mib']:.0f} | {stages} |")
        for be in sorted({d.get("backend", "sklearn") for d in rows}):
            pts = [(d["n"], d["total"]) for d in rows if d.get("backend", "sklearn") == be]
            pts_nb = [(d["n"], d["total"] - d["stages"]["neighbours"]) for d in rows
                      if d.get("backend", "sklearn") == be]
            lines.append("")
            lines.append(f"Growth exponent (log-log fit of time vs N, {be}): total "
                         f"**{_fit_exponent(pts):.2f}**, without the neighbour search "
                         f"{_fit_exponent(pts_nb):.2f} (N log N over this range fits ~1.1).")
        lines.append("")
    peer = [d for d in data if d["part"] == "peer-scaling"]
    if len(peer) >= 3:
        n = np.array([d["n"] for d in peer], float)
        mem = np.array([d["peak_mib"] for d in peer], float)
        last = peer[int(np.argmax(n))]
        t_nb = last["stages"]["neighbours"]
        rest = last["total"] - t_nb
        # brute-force neighbours cost N^2 exactly; the other stages are fitted
        rest_all = np.array([d["total"] - d["stages"]["neighbours"] for d in peer], float)
        slope = np.polyfit(np.log(n), np.log(rest_all), 1)[0]

        def t_at(m):
            return t_nb * (m / last["n"]) ** 2 + rest * (m / last["n"]) ** slope

        ms, mi = np.polyfit(n, mem, 1)
        n8 = (8192 - mi) / ms
        lines += ["## DADApY at larger N (extrapolated from the runs above)", "",
                  f"From the largest run (N = {last['n']:,}): brute-force neighbours scale as N^2, "
                  f"the other stages as N^{slope:.2f} (fit); peak memory grows by "
                  f"{1e5 * ms:.0f} MiB per 100,000 points (linear fit). Extrapolated: N = 1,000,000 "
                  f"would take ~{t_at(1e6) / 3600:.1f} h and ~{mi + ms * 1e6:,.0f} MiB; memory "
                  f"reaches 8 GiB near N ~ {n8:,.0f}. Within 8 GiB DADApY would complete "
                  f"N ~ {min(n8, 1e6):,.0f} in ~{t_at(min(n8, 1e6)) / 3600:.1f} h (extrapolation, not "
                  "run).", ""]
    MD.write_text("\n".join(lines))


def _summ(res_list):
    times = [r["times"]["total"] for r in res_list]
    stages = {k: float(np.median([r["times"][k] for r in res_list])) for k in res_list[0]["times"]}
    return {"times": times, "median": float(np.median(times)), "stages": stages,
            "peak_mib": float(max(r["peak_mib"] for r in res_list)),
            "clusters": int(len(res_list[0]["centers"]))}


def side_by_side(n: int, repeats: int, runners) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "x.npy", manifold_data(n, seed=0))
        out = {r: [] for r in runners}
        # rep -1: one untimed warm-up run per runner (file caches; numba compiles its
        # kernels once into its on-disk cache, as on a user's second call)
        for rep in range(-1, repeats):
            for r in runners:
                which, backend = ("dadapy", "auto") if r == "dadapy" else ("ml4m", r.split("-")[1])
                res = run_worker(which, tmp / "x.npy", tmp / f"{r}.npz", MAXK, 1.65, backend)
                if rep >= 0:
                    out[r].append(res)
                print(rep, r, res["times"]["total"], res["peak_mib"], flush=True)
    _record({"part": "side-by-side", "n": n, "runs": {r: _summ(v) for r, v in out.items()}})


def scaling(ns, backend: str, peer: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in ns:
            np.save(tmp / "x.npy", manifold_data(n, seed=0))
            res = run_worker("dadapy" if peer else "ml4m", tmp / "x.npy", tmp / "r.npz", MAXK,
                             1.65, backend)
            print(n, res["times"], res["peak_mib"], flush=True)
            entry = {"part": "peer-scaling" if peer else "scaling", "n": n,
                     "total": res["times"]["total"], "stages": res["times"],
                     "peak_mib": res["peak_mib"], "clusters": int(len(res["centers"]))}
            if not peer:
                entry["backend"] = backend
            _record(entry)


#: DADApY's pipeline of ``ml4m analyze --id gride --density pak --cluster adp`` (100
#: neighbours: DADApY's maxk counts the point itself), as one script
DADAPY_CLI = """
import json, sys
import numpy as np
from dadapy import Data
d = Data(np.load(sys.argv[1]), maxk=101, verbose=False)
d.compute_distances()
ids, errs, _ = d.return_id_scaling_gride(range_max=100)
d.set_id(ids[0])
d.compute_density_PAk()
d.compute_clustering_ADP(Z=1.65)
print(json.dumps({"id": float(ids[0]), "error": float(errs[0]),
                  "clusters": len(d.cluster_centers)}))
"""

#: ``ml4m analyze`` behind a parser of that sub-command only
ONE_PARSER = """
import argparse, sys
from ml4m.cli import analyze
p = argparse.ArgumentParser(prog="ml4m analyze")
analyze.add_arguments(p)
sys.exit(analyze.run(p.parse_args(sys.argv[1:])))
"""


def _peer_python() -> str:
    for py in (os.environ.get("DADAPY_PYTHON"), PEER_PY, "/work/peers/venv/bin/python"):
        if py and Path(py).exists():
            return py
    raise SystemExit("DADApY's interpreter not found: set DADAPY_PYTHON")


def _timed(cmd: list[str]) -> dict:
    """Run ``cmd`` to completion: wall seconds, peak MiB (its own rusage), its JSON."""
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}):\n{err[-3000:]}")
    last = out.strip().splitlines()[-1] if out.strip() else ""
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
            "peak_mib": usage.ru_maxrss / 1024.0, "load": load,
            "out": json.loads(last) if last.startswith("{") else None}


def cli(n: int, repeats: int, runners) -> None:
    """Whole processes, interleaved, one warm-up each (file cache, numba's kernel cache)."""
    ml4m = str(Path(sys.executable).with_name("ml4m"))
    flags = ["--id", "gride", "--density", "pak", "--cluster", "adp", "--json"]
    with tempfile.TemporaryDirectory() as tmp:
        x = str(Path(tmp) / "x.npy")
        np.save(x, manifold_data(n, seed=0))
        cmds = {"dadapy": [_peer_python(), "-c", DADAPY_CLI, x],
                "ml4m": [ml4m, "analyze", x, *flags],
                "ml4m-one-parser": [sys.executable, "-c", ONE_PARSER, x, *flags],
                "ml4m-help": [ml4m, "analyze", "--help"]}
        runs = {r: [] for r in runners}
        for rep in range(-1, repeats):
            for r in runners:
                res = _timed(cmds[r])
                print(rep, r, f"{res['wall']:.2f} s, load {res['load']:.1f}", flush=True)
                if rep >= 0:
                    runs[r].append(res)
    entry = {"part": "cli", "n": n, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             "runs": {}}
    for r, res in runs.items():
        out = res[0]["out"] or {"id": {"estimate": None, "error": None}, "clusters": {"n": None}}
        ident = {"id": out["id"], "error": out["error"]} if r == "dadapy" else \
            {"id": out["id"]["estimate"], "error": out["id"]["error"]}
        entry["runs"][r] = {
            "times": [x["wall"] for x in res], "median": float(np.median([x["wall"] for x in res])),
            "cpu_median": float(np.median([x["cpu"] for x in res])),
            "peak_mib": max(x["peak_mib"] for x in res), "loads": [x["load"] for x in res],
            "id": ident["id"], "id_error": ident["error"],
            "clusters": out["clusters"] if r == "dadapy" else out["clusters"]["n"],
            "backend": out.get("backend"), "recall": out.get("recall")}
    _record(entry)


def _report_cli(rows) -> list[str]:
    lines = ["## Whole process: `ml4m analyze FILE --id gride --density pak --cluster adp` "
             "beside DADApY", "",
             "Default flags; wall time from process start to exit (imports, reading, parsing "
             "included), medians of interleaved repeats after one warm-up each. `load`: the "
             "1-minute load average before each run (2 cores; other engineers' jobs). `CPU s`: "
             "user + system time of the process and its threads (median), less sensitive to "
             "the load than wall time.", "",
             "| date | N | runner | repeats | median s | times s | load | CPU s | peak MiB | "
             "DADApY / runner (wall, CPU) | clusters | ID +- error | backend (recall) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in rows:
        peer = d["runs"].get("dadapy")
        for name, r in d["runs"].items():
            ratio = "" if name in ("dadapy", "ml4m-help") or peer is None else \
                f"**{peer['median'] / r['median']:.2f}x**"
            cpu = r.get("cpu_median")
            if ratio and cpu:
                ratio += f", {peer['cpu_median'] / cpu:.2f}x"
            ident = "" if r["id"] is None else f"{r['id']:.3f} +- {r['id_error']:.3f}"
            be = "" if r["backend"] is None else f"{r['backend']} ({r['recall']:.4f})" \
                if r["recall"] is not None else r["backend"]
            lines.append(
                f"| {d['date']} | {d['n']} | {name} | {len(r['times'])} | {r['median']:.2f} | "
                f"{', '.join(f'{t:.2f}' for t in r['times'])} | "
                f"{min(r['loads']):.1f}-{max(r['loads']):.1f} | "
                f"{'' if cpu is None else f'{cpu:.2f}'} | {r['peak_mib']:.0f} | {ratio} | "
                f"{r['clusters'] or ''} | {ident} | {be} |")
    lines.append("")
    for d in rows:
        runs = d["runs"]
        if not {"dadapy", "ml4m", "ml4m-help"} <= set(runs) or "cpu_median" not in runs["ml4m"]:
            continue
        ml, hp, pe = runs["ml4m"], runs["ml4m-help"], runs["dadapy"]
        lines.append(
            f"{d['date']}: of ml4m's {ml['cpu_median']:.2f} CPU s, start-up and the parser of every "
            f"sub-command (`ml4m analyze --help`) take {hp['cpu_median']:.2f} "
            f"({hp['median']:.2f} s wall); the rest, {ml['cpu_median'] - hp['cpu_median']:.2f} CPU s, "
            f"is {pe['cpu_median'] / (ml['cpu_median'] - hp['cpu_median']):.1f}x below DADApY's "
            f"{pe['cpu_median']:.2f}.")
    return lines + [""]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=("cli", "side-by-side", "scaling", "peer-scaling", "report"))
    p.add_argument("--n", type=int, default=50000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ns", default="25000,50000,100000")
    p.add_argument("--backend", default="ivf")
    p.add_argument("--runners", help="side-by-side: dadapy,ml4m-brute,ml4m-ivf (default); "
                   "cli: dadapy,ml4m,ml4m-one-parser,ml4m-help (default)")
    a = p.parse_args()
    ns = [int(x) for x in a.ns.split(",")]
    if a.part == "cli":
        cli(a.n, a.repeats, (a.runners or "dadapy,ml4m,ml4m-one-parser,ml4m-help").split(","))
    elif a.part == "side-by-side":
        side_by_side(a.n, a.repeats, (a.runners or "dadapy,ml4m-brute,ml4m-ivf").split(","))
    elif a.part == "scaling":
        scaling(ns, a.backend, peer=False)
    elif a.part == "peer-scaling":
        scaling(ns, "auto", peer=True)
    else:
        _report(json.loads(JSON.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training a network from a packed store: peak memory against the store's size.

The networks issue asks that data larger than RAM trains, batches of graphs streamed
from the packed store of ``ml4m data pack``, with the peak RSS while training on a
2.2 GB store as the benchmark. Two stores are written (:func:`pack_store.write_store`:
the embedded Cu/EMT frames again and again, rattled by 0.01 A, labels copied, so this
measures memory, not physics): one of ``--gb`` GB and a small one of ``--small-gb``.
Each is trained on, in a fresh process, exactly as documented::

    ml4m fit --model mpnn --train STORE --max-minutes M -o DIR/model.ml4m --json

(default flags otherwise, one torch thread), and the peak resident memory of that process
(``os.wait4``'s ``ru_maxrss``: anonymous memory and the store's pages it touched) is
tabulated with the wall time and the steps the fit made. If streaming works, the two
peaks are close and both far below the large store's size.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_store.py [--gb 2.2]
        [--small-gb 0.02] [--minutes 3] [--dir PARENT]

Writes ``benchmarks/results/train_store.md`` (notes below its table are kept) and
``.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from _common import notes_below_table  # noqa: E402
from pack_store import store_bytes, write_store  # noqa: E402


def train_once(store: Path, out: Path, minutes: float) -> dict:
    """``ml4m fit --model mpnn --train store`` in a fresh process: its report, wall time
    and peak RSS (MB)."""
    args = [sys.executable, "-m", "ml4m", "fit", "--model", "mpnn", "--train", str(store),
            "--max-minutes", str(minutes), "-o", str(out), "--json"]
    t0 = time.perf_counter()
    with open(out.with_suffix(".stdout"), "w") as stdout, \
            open(out.with_suffix(".stderr"), "w") as stderr:
        proc = subprocess.Popen(args, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"{' '.join(args)} failed: {out.with_suffix('.stderr').read_text()[-2000:]}")
    report = json.loads(out.with_suffix(".stdout").read_text())
    return {"report": report, "seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=2.2, help="size of the large store, GB")
    ap.add_argument("--small-gb", type=float, default=0.02, help="size of the small store, GB")
    ap.add_argument("--minutes", type=float, default=3.0, help="--max-minutes of each fit")
    ap.add_argument("--dir", default=None, help="where the scratch folder is made (default: the system's temporary folder); only that new folder is removed")
    args = ap.parse_args()

    from ml4m.data import open_store

    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="ml4m_train_store_", dir=args.dir))  # ours to remove
    rows = []
    for name, gb in (("small", args.small_gb), ("large", args.gb)):
        store = scratch / f"{name}.store"
        write_s = write_store(store, gb)
        result = train_once(store, scratch / f"{name}.ml4m", args.minutes)
        training = result["report"].get("training", {})
        rows.append({"store": name, "store_gb": store_bytes(store) / 1e9,
                     "frames": len(open_store(store)), "write_s": write_s,
                     "fit_s": result["seconds"], "peak_rss_mb": result["peak_rss_mb"],
                     "steps": training.get("steps"), "epochs": training.get("epochs")})
        print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(store)
    shutil.rmtree(scratch)
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "command": " ".join(["benchmarks/train_store.py", *sys.argv[1:]]), "rows": rows}
    (RESULTS / "train_store.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = ["# Training a network from a packed store: peak memory", "",
             f"Command: `OMP_NUM_THREADS=1 .venv/bin/python {record['command']}` ({record['date']}, "
             f"{record['machine']}). Each store trained by `ml4m fit --model mpnn --train STORE "
             f"--max-minutes {args.minutes:g} -o M --json` in a fresh process; peak RSS of that "
             "process (`os.wait4`).", "",
             "| store | size | frames | write (s) | fit wall (s) | steps | peak RSS (MB) | "
             "peak RSS / store size |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['store']} | {r['store_gb']:.2f} GB | {r['frames']:,} | "
                     f"{r['write_s']:.0f} | {r['fit_s']:.0f} | "
                     f"{r['steps'] if r['steps'] is not None else '-'} | {r['peak_rss_mb']:.0f} | "
                     f"{r['peak_rss_mb'] / (r['store_gb'] * 1e3):.1%} |")
    lines += notes_below_table(RESULTS / "train_store.md")
    (RESULTS / "train_store.md").write_text("\n".join(lines).rstrip("\n") + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

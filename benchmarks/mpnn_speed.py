"""Inference throughput (energy + forces) of ml4m's MPNN beside MACE's.

Atom-steps per second of ``MPNN.as_calculator()`` on fcc Cu cells of 108 and 864 atoms
and on a 3BPA molecule (27 atoms), in float32 and float64, one torch thread: each
repeat evaluates a freshly rattled copy (nothing cached), the first call is a warm-up,
and the figure is the median of 5 repeats (wall clock; the CPU time of the process is
printed beside it: on a machine shared with other work only the CPU time is
comparable between runs, and with MACE's older wall-clock figures taken near idle). The
calculator computes the stress of periodic cells too. MACE's figures (one thread,
float32) are the CPU-time ones of ``benchmarks/results/mace_speed.json`` (``mace_peer.py
--speed-only``: same structures and protocol) where it exists, else the wall-clock ones of
the Cu cells in ``benchmarks/results/mace_*.json`` (``mace_peer.py`` after training);
NequIP's (same structures and protocol, float32, AOTInductor-compiled where
``nequip_peer.py`` compiled it, CPU time) from ``benchmarks/results/nequip_speed.json``.

Usage::

    .venv/bin/python benchmarks/mpnn_speed.py [--model cu.ml4m] [--params '{"n_channels": 32}']

Without ``--model`` the network has its default hyperparameters (``--params`` overrides
them) and untrained weights: throughput does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# the peers' protocol, shared: same structures, same timing (nequip is imported lazily)
from nequip_peer import structures, timed  # noqa: E402


def build(model_path: str | None, params: dict, dtype: str, atoms):
    """The trained model at ``model_path`` in ``dtype`` (its network's; a repulsive core
    or baseline around it is kept and timed with it), or a fresh one prepared on
    ``atoms`` (statistics only)."""
    from ml4m.models import load
    from ml4m.models.mpnn import MPNN

    if model_path:
        import torch

        model = load(model_path)
        net = getattr(model, "model_", model)  # the network under a core or baseline
        net.set_params(dtype=dtype)
        net.module_ = net.module_.to(dtype=getattr(torch, dtype))
        return model
    return MPNN(**params, dtype=dtype).prepare([atoms])


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a trained .ml4m MPNN (default: fresh weights)")
    ap.add_argument("--params", default="{}", help="JSON hyperparameters of a fresh MPNN")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    params = json.loads(args.params)
    mace, mace_clock = {}, "wall"
    mace_json = HERE / "results" / "mace_speed.json"
    if mace_json.exists():  # CPU time, same structures and protocol
        rows = json.loads(mace_json.read_text())["structures"]
        mace = {name: row["atom_steps_per_s_cpu"] for name, row in rows.items()}
        mace_clock = "CPU time"
    else:  # wall clock of the Cu cells, timed after training
        for path in sorted((HERE / "results").glob("mace_*.json")):
            for n, v in json.loads(path.read_text()).get("atom_steps_per_s", {}).items():
                mace[f"Cu {n}"] = v
    nequip = {}  # CPU time (comparable on a loaded machine), AOTInductor where compiled
    nequip_json = HERE / "results" / "nequip_speed.json"
    if nequip_json.exists():
        for name, row in json.loads(nequip_json.read_text())["structures"].items():
            nequip[name] = row.get("aoti", row["eager"])["atom_steps_per_s_cpu"]
    print("| structure | dtype | atom-steps/s (wall) | atom-steps/s (CPU time) "
          f"| MACE ({mace_clock}) | CPU-time / MACE | NequIP (CPU time) | CPU-time / NequIP |")
    print("|---|---|---|---|---|---|---|---|")
    for name, atoms in structures().items():
        for dtype in ("float32", "float64"):
            model = build(args.model, params, dtype, atoms)
            if not set(atoms.numbers) <= set(model.species.tolist()):
                continue  # a trained model only runs on its own elements
            wall, cpu = timed(model.as_calculator(), atoms, args.repeats)
            n = len(atoms)
            ref = mace.get(name) if dtype == "float32" else None
            ratio = f"{n / cpu / ref:.1f}" if ref else ""
            nq = nequip.get(name) if dtype == "float32" else None
            nq_ratio = f"{n / cpu / nq:.1f}" if nq else ""
            print(f"| {name} | {dtype} | {n / wall:.0f} | {n / cpu:.0f} | "
                  f"{f'{ref:.0f}' if ref else ''} | {ratio} | "
                  f"{f'{nq:.0f}' if nq else ''} | {nq_ratio} |", flush=True)


if __name__ == "__main__":
    main()

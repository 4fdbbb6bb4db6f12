"""Energy along a stretched bond: how far a potential's well reaches (issue #22, MD).

The MD check of ``md_stability.py`` fails a run when a bond passes 1.5 x its starting
length. Training sets sampled at 300 K never hold such bonds, so how steeply a model's
energy rises beyond them decides whether it survives 600 K. This script stretches, one
at a time, each bond of the element pair ``--pair`` (``A-B``, bonded as in
``md_stability``: closer than 1.2 x the sum of covalent radii) in the first valid frame
of ``--system``: atom B moves along the bond, the rest stays. It reports, per model,

* ``E(1.5 d0)``: the energy at 1.5 x the starting length ``d0`` over the energy at
  ``d0`` (eV; the work a run must do to fail there), mean and smallest over the bonds;
* ``max``: the highest energy of the scan up to ``--to`` x ``d0`` over that at ``d0``
  (eV), mean over the bonds, and the largest separation (x ``d0``) where a bond's energy
  falls again (a barrier: the model lets the bond go);

beside the reference calculator that labelled the set (``--reference``, a name of
``ml4m data generate``: ``xtb`` for ``bpa_xtb``; the shared sets' settings are those of
its ``README.md``).

Usage::

    .venv/bin/python benchmarks/bond_scan.py --system bpa_xtb --pair C-H \\
        --model bpnn=/tmp/fd/bpa_xtb/bpnn.ml4m mpnn=/tmp/fd/bpa_xtb/mpnn.ml4m

``--model`` also takes ``NAME=PATH`` of a peer's model run with the peer venv (see
``md_stability.py``'s ``--peer``). Prints a markdown table; ``--out`` writes the scans as
JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("ML4M_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
sys.path.insert(0, str(HERE))
from _common import PeerModel  # noqa: E402

#: the reference settings of the shared sets (their README.md)
REFERENCE_SETTINGS = {"xtb": {"accuracy": 0.1, "electronic_temperature": 300.0}}


def pair_bonds(atoms, pair: str) -> list[tuple[int, int, float]]:
    """``(a, b, d0)`` of every bond (:func:`ml4m.data.stability.bonds`) between elements
    ``A`` and ``B`` (``pair = "A-B"``), ``b`` the atom of element B that is moved."""
    from ase.data import atomic_numbers

    from ml4m.data.stability import bonds

    za, zb = (atomic_numbers[s] for s in pair.split("-"))
    z = atoms.numbers
    found = []
    for i, j in zip(*bonds(atoms)):
        for a, b in ((i, j), (j, i)):
            if z[a] == za and z[b] == zb:
                found.append((int(a), int(b), float(atoms.get_distance(a, b))))
                break
    return found


def scan(atoms, calc, bond: tuple[int, int, float], factors: np.ndarray) -> np.ndarray:
    """Energies (eV) with atom ``b`` at ``factors * d0`` from ``a`` along the bond, less the
    energy at ``d0``."""
    a, b, d0 = bond
    unit = (atoms.positions[b] - atoms.positions[a]) / d0
    energies = []
    for f in [1.0, *factors]:
        moved = atoms.copy()
        moved.positions[b] = atoms.positions[a] + f * d0 * unit
        moved.calc = calc
        energies.append(moved.get_potential_energy())
    return np.asarray(energies[1:]) - energies[0]


def summary(factors: np.ndarray, scans: list[np.ndarray]) -> dict:
    """The table's figures of one model (see the module docstring)."""
    at = int(np.argmin(np.abs(factors - 1.5)))
    beyond = factors >= 1.0
    drops = [float(factors[beyond][int(np.argmax(s[beyond]))]) for s in scans
             if np.argmax(s[beyond]) < beyond.sum() - 1]
    return {"e_at_1.5": float(np.mean([s[at] for s in scans])),
            "e_at_1.5_min": float(np.min([s[at] for s in scans])),
            "max": float(np.mean([s[beyond].max() for s in scans])),
            "barriers": len(drops), "first_drop": min(drops) if drops else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--system", default="bpa_xtb")
    parser.add_argument("--pair", default="C-H", help="A-B: bonds from A to B; B moves")
    parser.add_argument("--model", nargs="+", default=[], metavar="NAME=PATH")
    parser.add_argument("--reference", default="xtb",
                        help="the set's reference calculator (ml4m data generate's name); "
                             "'none' to skip")
    parser.add_argument("--to", type=float, default=2.2, help="last separation, x d0")
    parser.add_argument("--bonds", type=int, default=0, help="at most this many (0: all)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from ml4m.data import read_dataset
    from ml4m.data.generation import make_calculator

    atoms = read_dataset(SHARED / args.system / "valid.extxyz", index="0")[0].to_atoms(
        with_labels=False)
    chosen = pair_bonds(atoms, args.pair)[: args.bonds or None]
    if not chosen:
        parser.error(f"no {args.pair} bond in the first valid frame of {args.system}")
    factors = np.round(np.arange(0.85, args.to + 1e-9, 0.05), 3)
    calcs = {}
    if args.reference != "none":
        calcs[f"reference ({args.reference})"] = make_calculator(
            args.reference, REFERENCE_SETTINGS.get(args.reference))
    for item in args.model:
        name, _, path = item.partition("=")
        if name in PeerModel.KINDS:
            calcs[name] = PeerModel(name, Path(path)).as_calculator()
        else:
            import ml4m

            calcs[name] = ml4m.load(path).as_calculator()
    results = {name: [scan(atoms, calc, bond, factors) for bond in chosen]
               for name, calc in calcs.items()}
    lines = [f"{args.system}, {len(chosen)} {args.pair} bonds of the first valid frame "
             f"(d0 {min(b[2] for b in chosen):.3f}-{max(b[2] for b in chosen):.3f} A), "
             f"scanned to {args.to} x d0", "",
             "| model | E(1.5 d0) - E(d0), mean (eV) | smallest (eV) | max to "
             f"{args.to} d0, mean (eV) | bonds with a barrier | first barrier (x d0) |",
             "|---|---|---|---|---|---|"]
    for name, scans in results.items():
        s = summary(factors, scans)
        first = "-" if s["first_drop"] is None else f"{s['first_drop']:.2f}"
        lines.append(f"| {name} | {s['e_at_1.5']:.2f} | {s['e_at_1.5_min']:.2f} | "
                     f"{s['max']:.2f} | {s['barriers']}/{len(scans)} | {first} |")
    print("\n".join(lines))
    if args.out:
        from ml4m._fileio import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps({
                "command": "python benchmarks/bond_scan.py " + " ".join(argv or sys.argv[1:]),
                "factors": factors.tolist(), "bonds": chosen,
                "scans": {k: [s.tolist() for s in v] for k, v in results.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

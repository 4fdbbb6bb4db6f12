"""How a linear potential's force error grows out of distribution, beside its sigmas.

For a fitted linear ACE or sparse GP model with calibrated uncertainty (inside a
baseline or not) and labelled frame sets, prints per set and species the RMS of the
per-atom force error ``|F_pred - F_ref|``, of the calibrated sigma and of the
posterior sigma (both as vector norms), and the median novelty of the atoms'
descriptors: the norm of the part of the standardised descriptor outside the error
model's leading principal components. On the first set (in distribution: the valid
file) it fits ``log |error| = a + b log(s)`` for the posterior sigma and for the
novelty: ``b`` is how fast the error grows with them where the error model learnt.
Beside it, the growth exponents out of distribution: ``log(err_set / err_first) /
log(s_set / s_first)`` per species.

Usage::

    .venv/bin/python benchmarks/error_growth.py MODEL NAME=FILE [NAME=FILE ...] [--frames 40]
        [--out JSON]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _linear(model):
    """The fitted linear model with the error models (inside a baseline or not)."""
    inner = getattr(model, "model_", model)
    if getattr(inner, "error_model_", None) is None:
        raise SystemExit("the model has no calibrated error model (uncertainty: calibrated)")
    return inner


def atom_table(model, frames) -> dict[str, np.ndarray]:
    """Per atom: species index, |force error|, calibrated and posterior sigma (norms,
    eV/A) and novelty (norm outside the error model's principal components); the
    descriptors once for all of them."""
    inner = _linear(model)
    em = inner.error_model_
    rows, X, sidx = inner._rows(frames, True, True)
    pred = inner._rows_prediction(frames, rows, X, sidx, uncertainty=True)
    forces = pred.forces
    if inner is not model:  # the baseline's forces (a ZBL core) join the inner model's
        forces = forces + model.baseline_.evaluate(frames).forces
    Z = (X - em.mean_) / em.scale_
    outside = Z - (Z @ em.components_) @ em.components_.T
    ref = np.concatenate([f.forces for f in frames])
    return {"species": sidx, "error": np.linalg.norm(forces - ref, axis=1),
            "calibrated": np.linalg.norm(pred.forces_sigma, axis=1),
            "posterior": np.linalg.norm(inner.posterior_force_sigma(rows), axis=1),
            "novelty": np.linalg.norm(outside, axis=1)}


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(a ** 2)))


def main(argv: list[str] | None = None) -> int:
    from ml4m import load
    from ml4m.data import read_dataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("sets", nargs="+", metavar="NAME=FILE", help="the first is in distribution")
    ap.add_argument("--frames", type=int, default=40, help="first frames of each file")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    model = load(args.model)
    from ase.data import chemical_symbols

    symbols = [chemical_symbols[int(z)] for z in _linear(model).species]
    rows, first = [], {}
    print("| set | species | atoms | RMS error (meV/A) | RMS calibrated sigma | RMS posterior sigma "
          "| median novelty | error growth exponent vs posterior sigma, novelty |")
    print("|---|---|---|---|---|---|---|---|")
    for k, spec in enumerate(args.sets):
        name, path = spec.split("=", 1)
        t = atom_table(model, list(read_dataset(path))[:args.frames])
        for s in np.unique(t["species"]):
            m = t["species"] == s
            row = {"set": name, "species": symbols[s],
                   "atoms": int(m.sum()), "error": 1000 * _rms(t["error"][m]),
                   "calibrated": 1000 * _rms(t["calibrated"][m]),
                   "posterior": 1000 * _rms(t["posterior"][m]),
                   "novelty": float(np.median(t["novelty"][m]))}
            if k == 0:
                first[s] = row
                y = np.log(t["error"][m] + 1e-12)
                for key in ("posterior", "novelty"):
                    A = np.column_stack([np.ones(m.sum()), np.log(t[key][m] + 1e-300)])
                    row[f"slope_{key}"] = float(np.linalg.lstsq(A, y, rcond=None)[0][1])
                growth = (f"in distribution: slope {row['slope_posterior']:.2f}, "
                          f"{row['slope_novelty']:.2f}")
            else:
                f0 = first[s]
                row["exponent_posterior"], row["exponent_novelty"] = (
                    float(np.log(row["error"] / f0["error"]) / np.log(row[key] / f0[key]))
                    for key in ("posterior", "novelty"))
                growth = f"{row['exponent_posterior']:.1f}, {row['exponent_novelty']:.1f}"
            rows.append(row)
            print(f"| {name} | {row['species']} | {row['atoms']} | {row['error']:.2f} | "
                  f"{row['calibrated']:.2f} | {row['posterior']:.3f} | {row['novelty']:.1f} | "
                  f"{growth} |")
    if args.out:
        from ml4m._fileio import atomic_path

        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(json.dumps({"model": args.model, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Delta learning on ethanol_pbe: a learning curve of the direct and the delta model.

The networks issue's goal: the model that learns PBE minus GFN2-xTB (``baseline:`` the
set's ``gfn2_energy``/``gfn2_forces`` labels, GFN2-xTB through tblite for new
structures) at 30 training frames beats the direct model at 120. For each ``--models``
kind and each ``--sizes`` N, ``N`` frames evenly spaced over ``train.extxyz`` (every
trajectory represented) are fitted twice, in fresh processes, exactly as documented::

    ml4m fit --model MODEL --train sub.extxyz --valid valid.extxyz -o direct.ml4m --json
    ml4m fit delta.yaml -o delta.ml4m --json     # the same, plus baseline: {labels: ..., calculator: xtb}

with default settings otherwise (``--max-minutes`` passed to both when given; with
``--seeds K`` each fit K times with ``--seed 0 .. K-1``), and the valid errors (energy MAE
meV/atom, force MAE meV/A) of ``ml4m fit``'s report are tabulated with the wall times
(means over the seeds, the force MAE of each seed beside them).

``--pretrain N`` (networks): first N cheap GFN2-xTB MD frames of ethanol (tblite; 3/5 of
them at 300 K, 2/5 at 500 K, five trajectories, a frame per 10 fs; N/15 more at 300 K
as their validation) and a network fitted on them with default flags
(``--pretrain-minutes``); both fits then start from it (``--init``: the rows' model is
``MODEL+init``)::

    ml4m fit --model mpnn --train gfn2.extxyz --valid gfn2_valid.extxyz --max-minutes M -o pre.ml4m
    ml4m fit --model mpnn --init pre.ml4m --train sub.extxyz --valid valid.extxyz ...

Usage::

    .venv/bin/python benchmarks/delta_learning.py [--models ace] [--sizes 30 60 120]
        [--max-minutes M] [--seeds K] [--workdir DIR] [--pretrain N --pretrain-minutes M]

Writes ``benchmarks/results/delta_learning.md`` (hand-written notes below its table are
kept) and ``.json`` (rows of other models are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("ML4M_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from _common import notes_below_table, run_json  # noqa: E402

#: the delta model's baseline: the set's own GFN2-xTB labels, tblite for new structures
BASELINE = {"labels": {"energy": "gfn2_energy", "forces": "gfn2_forces"},
            "calculator": "xtb", "calculator_kwargs": {"method": "GFN2-xTB"}}


def subset(frames_path: Path, n: int, out: Path) -> Path:
    """``n`` frames evenly spaced over the file, written with every label kept."""
    import ase.io

    from ml4m.data import evenly_spaced

    frames = ase.io.read(frames_path, ":")
    ase.io.write(out, [frames[k] for k in evenly_spaced(len(frames), n)], format="extxyz")
    return out


def pretrained(model: str, n_frames: int, minutes: float, workdir: Path) -> Path:
    """A ``model`` network fitted with default flags in ``minutes`` on ``n_frames``
    GFN2-xTB MD frames of ethanol (:func:`active_learning.xtb_md` from the set's first
    geometry: 3/5 at 300 K, 2/5 at 500 K in five trajectories of seeds 11-15, a frame per
    20 steps after 20 skipped; its validation frames: ``n_frames // 15`` more at 300 K,
    seed 16). Returns the model file."""
    import ase.io

    from active_learning import ethanol, xtb_md

    d = workdir / f"pretrain_{model}_{n_frames}"
    d.mkdir(parents=True, exist_ok=True)
    per = n_frames // 5
    runs = {"gfn2.extxyz": [(11, 300.0, per), (12, 300.0, per), (13, 300.0, per),
                            (14, 500.0, per), (15, 500.0, n_frames - 4 * per)],
            "gfn2_valid.extxyz": [(16, 300.0, max(1, n_frames // 15))]}
    for name, trajectories in runs.items():
        frames = [f for seed, temperature, n in trajectories
                  for f in xtb_md(ethanol(), temperature, temperature, 20 * (n + 20), seed,
                                  every=20)[20:]]
        ase.io.write(d / name, [f.to_atoms() for f in frames], format="extxyz")
    out = d / "pretrained.ml4m"
    metrics, seconds = run_json(["fit", "--model", model, "--train", str(d / "gfn2.extxyz"),
                                 "--valid", str(d / "gfn2_valid.extxyz"), "--max-minutes",
                                 str(minutes), "-o", str(out)])
    print(json.dumps({"pretrained": str(out), "seconds": seconds,
                      "gfn2_valid_forces_mae_mev_per_a": metrics["valid"]["forces"]["mae_mev_per_a"]}),
          flush=True)
    return out


def fit_pair(model: str, n: int, workdir: Path, max_minutes: float | None,
             seed: int = 0, init: Path | None = None) -> list[dict]:
    """The direct and the delta fit on ``n`` frames with ``seed`` (both started from the
    network ``init`` when given): one row each."""
    folder = SHARED / "ethanol_pbe"
    label = model if init is None else f"{model}+init"
    d = workdir / f"{label}_{n}"
    d.mkdir(parents=True, exist_ok=True)
    train = subset(folder / "train.extxyz", n, d / "train.extxyz")
    extra = ["--seed", str(seed)]
    extra += [] if max_minutes is None else ["--max-minutes", str(max_minutes)]
    extra += [] if init is None else ["--init", str(init)]
    rows = []
    for variant in ("direct", "delta"):
        out = d / (f"{variant}.ml4m" if seed == 0 else f"{variant}_seed{seed}.ml4m")
        if variant == "direct":
            args = ["fit", "--model", model, "--train", str(train), "--valid",
                    str(folder / "valid.extxyz"), "-o", str(out), *extra]
        else:
            config = d / "delta.yaml"
            spec = {"model": model, "train": str(train), "valid": str(folder / "valid.extxyz"),
                    "baseline": BASELINE}
            config.write_text(json.dumps(spec, indent=1))
            args = ["fit", str(config), "-o", str(out), *extra]
        metrics, seconds = run_json(args)
        valid = metrics["valid"]
        rows.append({"model": label, "variant": variant, "n_train": n, "seed": seed,
                     "energy_mae_mev_per_atom": valid["energy"]["mae_mev_per_atom"],
                     "forces_mae_mev_per_a": valid["forces"]["mae_mev_per_a"],
                     "n_parameters": metrics.get("n_features"), "seconds": seconds})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def write(rows: list[dict], argv: list[str]) -> None:
    path = RESULTS / "delta_learning.json"
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    models = {r["model"] for r in rows}
    rows = [r for r in old if r["model"] not in models] + rows
    path.write_text(json.dumps({"rows": rows}, indent=1))
    lines = ["# Delta learning on ethanol_pbe (PBE minus GFN2-xTB)", "",
             "Command: `.venv/bin/python benchmarks/delta_learning.py " + " ".join(argv) + "`", "",
             "Training frames evenly spaced over `train.extxyz` (4 trajectories, 300 K); valid: "
             "the independent 30-frame trajectory. Default `ml4m fit` settings for both; the "
             "delta model's config adds `baseline: {labels: {energy: gfn2_energy, forces: "
             "gfn2_forces}, calculator: xtb}`. Goal (networks issue): the delta model at 30 "
             "frames below the direct model at 120.", "",
             "| model | frames | direct: E MAE (meV/atom), F MAE (meV/A), s | delta: E MAE, "
             "F MAE, s |", "|---|---|---|---|"]
    for model in sorted({r["model"] for r in rows}):
        for n in sorted({r["n_train"] for r in rows if r["model"] == model}):
            cell = {}
            for variant in ("direct", "delta"):
                runs = [r for r in rows if (r["model"], r["n_train"], r["variant"])
                        == (model, n, variant)]
                if runs:
                    forces = [r["forces_mae_mev_per_a"] for r in runs]
                    each = (" (" + " / ".join(f"{f:.1f}" for f in forces) + ")"
                            if len(runs) > 1 else "")
                    cell[variant] = (
                        f"{sum(r['energy_mae_mev_per_atom'] for r in runs) / len(runs):.2f}, "
                        f"{sum(forces) / len(forces):.1f}{each}, "
                        f"{sum(r['seconds'] for r in runs) / len(runs):.0f}")
            lines.append(f"| {model} | {n} | {cell.get('direct', '-')} | {cell.get('delta', '-')} |")
    lines += notes_below_table(RESULTS / "delta_learning.md")
    (RESULTS / "delta_learning.md").write_text("\n".join(lines).rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ace"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[30, 60, 120])
    parser.add_argument("--max-minutes", type=float)
    parser.add_argument("--seeds", type=int, default=1, help="fits per variant and size")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ml4m_delta"))
    parser.add_argument("--pretrain", type=int, metavar="N",
                        help="networks: start both fits from a network fitted on N GFN2-xTB frames")
    parser.add_argument("--pretrain-minutes", type=float, default=20.0)
    parser.add_argument("--init", type=Path, metavar="MODEL",
                        help="start both fits from this fitted network (e.g. an earlier "
                        "--pretrain's) instead of pretraining")
    args = parser.parse_args(argv)
    if not (SHARED / "ethanol_pbe" / "train.extxyz").exists():
        sys.exit(f"no ethanol_pbe under {SHARED}")
    inits = {model: (args.init if args.pretrain is None else
                     pretrained(model, args.pretrain, args.pretrain_minutes, args.workdir))
             for model in args.models}
    rows = [row for model in args.models for n in args.sizes for seed in range(args.seeds)
            for row in fit_pair(model, n, args.workdir, args.max_minutes, seed, inits[model])]
    write(rows, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

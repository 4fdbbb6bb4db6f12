"""Out-of-distribution errors and calibration of fitted potentials (issues #21 and #23).

The shared sets keep their out-of-distribution tests back. This script builds analogues
with the same reference methods (cached in ``--workdir``; each is labelled by the
calculator of its set):

* ``cu_emt``: bulk Cu (108 atoms) at 1500 and 2000 K (above the 1200 K of train; liquid
  at 2000 K), and cells strained up to 6% (train: 3%), ``ml4m data generate`` with EMT;
* ``cuau_emt``: Au-rich Cu(0.25)Au(0.75) at 300 and 900 K (train: x = 0.1-0.5) and
  CuAu(0.5) at 1500 K, the same way;
* ``bpa_xtb``: GFN2-xTB Langevin MD of the molecule at 600 and 1200 K (train: 300 K),
  from the first frame of each valid trajectory, the set's own protocol (friction
  0.01/fs, 1 fs, 0.5 ps of equilibration, a frame every 20 fs).

Each model file found as ``--models-dir/SET/KIND.ml4m`` (``benchmarks/fit_defaults.py``
writes the default fits there) is scored on valid and on each group of frames by
``ml4m test MODEL FILE --json``, as a user would: force and energy MAE, the Spearman of
the predicted force sigma against the force error, the Spearman that the true per-atom
error scale would reach on the same errors (``force_sigma_spearman_attainable``: the most
any sigma can reach there), and the calibration ratio (observed force RMSE over RMS
predicted sigma; 1 when calibrated, #23 asks for 0.5-2).

A peer's model file (``--peer SET/mace=PATH``, as trained by ``mace_peer.py``) is scored
on the same frames through its own ASE calculator (force and energy MAE, force RMSE; it
predicts no sigma). Run the script with the peer venv's Python and ml4m's sources on the
path for that (the groups must be cached already: generating them needs ml4m's venv)::

    PYTHONPATH=src /work/peers/mace/bin/python benchmarks/ood.py --sets bpa_xtb --kinds \\
        --peer bpa_xtb/mace=/tmp/ml4m_mace/bpa_xtb/mace.model

Usage::

    .venv/bin/python benchmarks/ood.py [--sets cu_emt cuau_emt bpa_xtb] [--kinds ace gp]
        [--models-dir /tmp/ml4m_fit_defaults] [--workdir /tmp/ml4m_ood]

Writes ``benchmarks/results/ood.md`` and ``ood.json``.
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
from _common import (PeerModel, calculator_errors, notes_below_table,  # noqa: E402
                     parse_named_paths, parse_peers, run_json)

#: ``ml4m data generate`` arguments of each crystalline out-of-distribution group
GENERATE = {
    "cu_emt": {
        "hot_1500_2000K": ["--system", "Cu", "--supercells", "3", "--temperatures", "1500,2000",
                           "--trajectories", "2", "--frames", "10", "--strained", "0",
                           "--no-vacancy", "--no-surface", "--seed", "101"],
        "strained6pct_300K": ["--system", "Cu", "--supercells", "2,3", "--temperatures", "300",
                              "--trajectories", "1", "--frames", "2", "--strained", "12",
                              "--max-strain", "0.06", "--no-vacancy", "--no-surface",
                              "--seed", "102"],
    },
    "cuau_emt": {
        "x0.75_300_900K": ["--system", "Cu-Au", "--fractions", "0.75", "--supercells", "3",
                           "--temperatures", "300,900", "--trajectories", "2", "--frames", "5",
                           "--strained", "0", "--no-vacancy", "--no-surface", "--seed", "103"],
        "x0.5_1500K": ["--system", "Cu-Au", "--fractions", "0.5", "--supercells", "3",
                       "--temperatures", "1500", "--trajectories", "2", "--frames", "5",
                       "--strained", "0", "--no-vacancy", "--no-surface", "--seed", "104"],
    },
}
#: molecular groups: temperature (K) of GFN2-xTB MD from each valid trajectory's first frame
MOLECULE = {"bpa_xtb": {"md_600K": 600.0, "md_1200K": 1200.0}}


def generate_crystal(out: Path, args: list[str]) -> None:
    """``ml4m data generate ARGS`` with EMT into ``OUT.generated.extxyz``, then the frames
    of the group (the generator adds one bulk trajectory to a strained-cell run) to
    ``out`` via temp + rename: a kill leaves no ``out`` that holds the wrong frames."""
    if out.exists():
        return
    import ase.io

    raw = out.with_name(f"{out.stem}.generated.extxyz")
    if not raw.exists():
        run_json(["data", "generate", "--calculator", "emt", *args, "-o", str(raw)])
    frames = ase.io.read(raw, ":")
    if "--strained" in args and args[args.index("--strained") + 1] != "0":
        frames = [a for a in frames if a.info["config_type"].startswith("strained")]
    tmp = out.with_suffix(".tmp.extxyz")
    ase.io.write(tmp, frames)
    tmp.replace(out)
    raw.unlink()


def generate_molecule(system: str, out: Path, temperature: float, frames: int = 20,
                      equilibration: int = 500, every: int = 20, seed: int = 0) -> None:
    """GFN2-xTB Langevin MD (friction 0.01/fs, 1 fs) from the first frame of each valid
    trajectory of ``system``: ``frames`` frames each, one every ``every`` steps after
    ``equilibration`` steps; written via temp + rename. ASE's integrator as the shared
    set's own generator ran it (centre of mass fixed), not ``ml4m.md.run_md``, so that
    the frames follow the set's protocol."""
    if out.exists():
        return
    import ase.io
    import numpy as np
    from ase import units
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation

    from ml4m.data import make_calculator

    valid = ase.io.read(SHARED / system / "valid.extxyz", ":")
    starts = {}
    for atoms in valid:
        starts.setdefault(atoms.info.get("traj"), atoms)
    kept = []
    for k, (traj, start) in enumerate(sorted(starts.items(), key=lambda kv: str(kv[0]))):
        atoms = start.copy()
        atoms.calc = make_calculator("xtb")
        rng = np.random.default_rng(seed + k)
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
        Stationary(atoms)
        ZeroRotation(atoms)
        dyn = Langevin(atoms, 1.0 * units.fs, temperature_K=temperature, friction=0.01 / units.fs,
                       fixcm=True, rng=rng)
        dyn.run(equilibration)
        for f in range(frames):
            dyn.run(every)
            snap = atoms.copy()
            snap.info = {"config_type": f"md_{int(temperature)}K", "T_K": temperature,
                         "traj": f"ood_{traj}_{int(temperature)}K", "t_fs": (f + 1) * every}
            snap.calc = SinglePointCalculator(snap, energy=atoms.get_potential_energy(),
                                              forces=atoms.get_forces())
            kept.append(snap)
        print(f"{system}: {traj} at {temperature:g} K done", flush=True)
    tmp = out.with_suffix(".tmp.extxyz")
    ase.io.write(tmp, kept)
    tmp.replace(out)


def groups(system: str, workdir: Path) -> dict[str, Path]:
    """The out-of-distribution files of ``system`` (generated when missing)."""
    out = {}
    folder = workdir / system
    folder.mkdir(parents=True, exist_ok=True)
    for name, args in GENERATE.get(system, {}).items():
        out[name] = folder / f"{name}.extxyz"
        generate_crystal(out[name], args)
    for name, temperature in MOLECULE.get(system, {}).items():
        out[name] = folder / f"{name}.extxyz"
        generate_molecule(system, out[name], temperature)
    return out


def score(model: Path, path: Path) -> dict:
    """The figures of ``ml4m test MODEL PATH --json`` this report gives."""
    res, _ = run_json(["test", str(model), str(path)])
    unc = res.get("uncertainty", {})
    return {"n_frames": res["n_frames"], "force_mae": res["forces"]["mae_mev_per_a"],
            "force_rmse": res["forces"]["rmse_mev_per_a"],
            "energy_mae": res["energy"]["mae_mev_per_atom"],
            "spearman": unc.get("force_sigma_spearman"),
            "attainable": unc.get("force_sigma_spearman_attainable"),
            "sigma_rms": unc.get("force_sigma_rms_mev_per_a"),
            "rmse_over_sigma": unc.get("force_rmse_over_sigma")}


def score_peer(calc, path: Path) -> dict:
    """Force and energy errors of a peer's ASE calculator on the frames of ``path`` (the
    figures :func:`score` gives, without the sigma's)."""
    import ase.io
    import numpy as np

    frames = ase.io.read(path, ":")
    de, df = calculator_errors(calc, frames)
    return {"n_frames": len(frames), "force_mae": float(np.mean(np.abs(df)) * 1000),
            "force_rmse": float(np.sqrt(np.mean(df ** 2)) * 1000),
            "energy_mae": float(np.mean(np.abs(de)) * 1000),
            "spearman": None, "attainable": None, "sigma_rms": None, "rmse_over_sigma": None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=["cu_emt", "cuau_emt", "bpa_xtb"])
    ap.add_argument("--kinds", nargs="*", default=["ace", "gp"],
                    help="model files SET/KIND.ml4m of --models-dir")
    ap.add_argument("--models-dir", type=Path, default=Path("/tmp/ml4m_fit_defaults"))
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/ml4m_ood"))
    ap.add_argument("--peer", nargs="+", default=[], metavar="SET/KIND=PATH",
                    help="also score a peer's model file (KIND: mace), with the peer venv's "
                         "Python")
    ap.add_argument("--model", nargs="+", default=[], metavar="SET/NAME=PATH",
                    help="also score an ml4m model file from elsewhere, e.g. "
                         "bpa_xtb/committee=runs/committee.ml4m")
    args = ap.parse_args(argv)
    args.peer = parse_peers(ap, args.peer)
    args.model = parse_named_paths(ap, args.model, "--model")
    rows = []
    for system in args.sets:
        files = {"valid": SHARED / system / "valid.extxyz", **groups(system, args.workdir)}
        named = [(kind, args.models_dir / system / f"{kind}.ml4m") for kind in args.kinds]
        named += [(name, path) for (s, name), path in args.model.items() if s == system]
        for kind, model in named:
            if not model.exists():
                print(f"skipped {model}: not found", flush=True)
                continue
            for name, path in files.items():
                rows.append({"set": system, "model": kind, "group": name, **score(model, path)})
                print(json.dumps(rows[-1]), flush=True)
        for (peer_set, kind), path in args.peer.items():
            if peer_set != system:
                continue
            calc = PeerModel(kind, path).as_calculator()  # loaded once for every group
            for name, frames in files.items():
                rows.append({"set": system, "model": kind, "group": name,
                             **score_peer(calc, frames)})
                print(json.dumps(rows[-1]), flush=True)
    write(rows, args, argv)
    return 0


def _f(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def write(rows: list[dict], args, argv) -> None:
    """The markdown table and the JSON of every row; rows of sets and models not run this
    time are kept from the last report, and hand-written notes below the table too."""
    old = RESULTS / "ood.json"
    if old.exists():
        ran = {(r["set"], r["model"]) for r in rows}
        rows = [r for r in json.loads(old.read_text()) if (r["set"], r["model"]) not in ran] + rows
        rows.sort(key=lambda r: (r["set"], r["model"]))
    notes = notes_below_table(RESULTS / "ood.md")
    command = "python benchmarks/ood.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# Out of distribution: errors and calibration of fitted potentials", "",
             f"Last run: `{command.strip()}` at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
             f"(models `{args.models_dir}/SET/KIND.ml4m`); rows of other sets and models are "
             "kept from earlier runs (the notes below say which). Figures of `ml4m test "
             "--json`; ratio = force RMSE / RMS predicted force sigma (1: calibrated).", "",
             "| set | model | group | frames | force MAE (meV/A) | energy MAE (meV/atom) | "
             "Spearman | attainable Spearman | RMS sigma (meV/A) | ratio |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['set']} | {r['model']} | {r['group']} | {r['n_frames']} | "
                     f"{r['force_mae']:.1f} | {r['energy_mae']:.2f} | {_f(r['spearman'], '{:.2f}')} | "
                     f"{_f(r.get('attainable'), '{:.2f}')} | "
                     f"{_f(r['sigma_rms'], '{:.1f}')} | {_f(r['rmse_over_sigma'], '{:.2f}')} |")
    lines += notes
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ood.md").write_text("\n".join(lines).rstrip("\n") + "\n")
    (RESULTS / "ood.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

"""FLARE's own on-the-fly learning (mir-flare 1.4.0, the C++ sparse GP) on the Cu/EMT
protocol of ``benchmarks/active_learning.py accuracy``, for a side-by-side comparison with
``ml4m learn``: EMT reference calls and held-out force errors.

Run with the Python of FLARE's own venv (``benchmarks/install_flare.sh``); it never imports
ml4m, and ml4m never imports FLARE::

    OMP_NUM_THREADS=1 /work/peers/flare/bin/python benchmarks/flare_otf.py \\
        --tolerances -0.002 -0.001 -0.0005 [--steps 1500] [--work /tmp/flare_otf]
    OMP_NUM_THREADS=1 /work/peers/flare/bin/python benchmarks/flare_otf.py \\
        --tolerances -0.0001 --append
    OMP_NUM_THREADS=1 /work/peers/flare/bin/python benchmarks/flare_otf.py \\
        --random-baseline --baseline-max-calls 30 --draws 3

(the runs of ``benchmarks/results/flare_otf_cu.json``; the last adds FLARE's random-frames
baseline to the runs of up to 30 calls).

This script mirrors ``benchmarks/active_learning.py accuracy`` and must stay in step with it:
both build the structures and the reference MD with ``benchmarks/cu_protocol.py`` (ASE
only), and the seeds here are that script's, so the initial frames, the liquid start and
the held-out test frames are the same numbers given the same ASE EMT (``--dump-frames``
writes them for a cross-check with ml4m's venv). The
walkers' velocities are drawn as ``ml4m learn`` draws them (``thermalize_momenta`` and
``Stationary`` with ``default_rng(seed)``, seeds 0 and 1, the same generator then driving
the Langevin noise) and their thermostat target after ``step`` of ``steps`` is
``t0 + (t1 - t0) * step / steps`` (``WalkerSettings.target``).

Protocol: two walkers of 32 Cu atoms, Langevin NVT (2 fs, friction 0.02/fs), 1500 steps
each: (a) the fcc crystal (a = 3.65 A) heated linearly from 300 to 1500 K; (b) a liquid
(a = 3.80 A, melted by EMT at 3000 K, then 0.4 ps at 1500 K) at 1500 K. Initial training
set: 4 EMT frames of the crystal at 300 K. Test: EMT MD of both states with other seeds,
30 frames each, force MAE and RMSE in meV/A.

FLARE's OTF (:class:`flare.learners.otf.OTF`, ASE's ``Langevin`` as its MD engine, EMT as
its "DFT") follows one trajectory, so the two walkers are two OTF runs that share one
sparse GP, one after the other: the solid first, then the liquid, continuing with the same
model (each run counts its own DFT calls, so ``train_hyps`` applies to the first calls of
each). The heating ramp: :class:`RampOTF` sets the Langevin target before each MD step.
Before the solid run the sparse GP is seeded with the 4 initial frames (all their atoms
as sparse environments, as OTF's ``init_atoms`` default does for its first frame) and its
hyperparameters are optimised once. Reference calls are counted by a counting EMT
(:class:`CountingEMT`), checked against OTF's own ``dft_count``. Training is on forces
only (OTF's default ``force_only=True``; with energies and stresses as well the
hyperparameter optimisation settled on a force noise of 40 meV/A and the errors of a fit
on 24 frames (cutoff 5 A) were 2-3 times larger, so ``--with-energy-stress`` is optional).
Each call adds every atom of the frame as a sparse environment (``update_style="add_n"``,
``max_atoms_added=-1``).
``--random-baseline`` adds, per run, the same sparse GP fitted on the 4 initial frames plus
as many random frames as the run's calls (the pool of ``_against_random``).

Prints one JSON object (FLARE's own prints go to stderr) and writes it to ``--out``
(default ``benchmarks/results/flare_otf_cu.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.calculators.emt import EMT
from ase.io import read, write
from ase.md.velocitydistribution import Stationary

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from cu_protocol import DT_FS, FRICTION, emt_md, thermalize_momenta  # noqa: E402
from cu_protocol import liquid as _liquid  # noqa: E402
from cu_protocol import solid as _solid  # noqa: E402

#: the walkers of ``accuracy``: start, t0 (K), t1 (K), seed (``WalkerSettings``)
SOLID_WALKER = ("solid", 300.0, 1500.0, 0)
LIQUID_WALKER = ("liquid", 1500.0, 1500.0, 1)
#: FLARE's sparse GP (its ASE/OTF examples: B2 "ACE-like" descriptor with a quadratic
#: cutoff and Chebyshev radial basis, normalised dot-product kernel of power 2, local
#: uncertainties)
SGP = {"cutoff": 4.5, "n_max": 8, "l_max": 3, "radial_basis": "chebyshev",
       "cutoff_function": "quadratic", "kernel": "NormalizedDotProduct", "kernel_sigma": 2.0,
       "power": 2, "energy_noise": 0.01, "force_noise": 0.05, "stress_noise": 0.005,
       "variance_type": "local", "max_iterations": 20, "opt_method": "BFGS"}


# --- the protocol of benchmarks/active_learning.py (ASE only) ---------------------------

def protocol(steps: int, n_initial: int = 4) -> dict:
    """Liquid start, initial frames and test frames, as ``accuracy`` builds them."""
    liquid = _liquid()
    return {"liquid": liquid,
            "initial": emt_md(_solid(), 300.0, 300.0, 20 * n_initial, seed=1, every=20),
            "tests": {"heated solid (300-1500 K)":
                      emt_md(_solid(), 300.0, 1500.0, steps, seed=200, every=50),
                      "liquid (1500 K)": emt_md(liquid, 1500.0, 1500.0, steps, seed=201, every=50)}}


# --- FLARE --------------------------------------------------------------------------------

class CountingEMT(EMT):
    """EMT that counts its calculations (a class attribute: OTF deep-copies its DFT
    calculator before each call)."""

    calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        from ase.calculators.calculator import all_changes

        super().calculate(atoms, list(properties),
                          all_changes if system_changes is None else system_changes)
        CountingEMT.calls += 1


def _import_flare():
    """FLARE's OTF module imports ``wandb`` at the top although it only uses it with
    ``wandb_log``; an empty stand-in module lets it import without wandb installed."""
    if "wandb" not in sys.modules:
        try:
            import wandb  # noqa: F401
        except ImportError:
            sys.modules["wandb"] = types.ModuleType("wandb")
    from flare.bffs.sgp import SGP_Wrapper
    from flare.bffs.sgp._C_flare import B2, NormalizedDotProduct
    from flare.bffs.sgp.calculator import SGP_Calculator
    from flare.learners.otf import OTF
    return OTF, SGP_Wrapper, SGP_Calculator, B2, NormalizedDotProduct


@contextlib.contextmanager
def _stdout_to_stderr():
    """FLARE prints (Python and C++) to stdout; send them to stderr at the file-descriptor
    level so stdout carries only the JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _flare_stress(ase_stress: np.ndarray) -> np.ndarray:
    """ASE stress (xx, yy, zz, yz, xz, xy) as FLARE's (xx, xy, xz, yy, yz, zz), sign flipped,
    as ``OTF.update_gp`` converts it."""
    s = ase_stress
    return -np.array([s[0], s[5], s[4], s[1], s[3], s[2]])


def make_sgp(keep: list):
    """A fresh sparse GP calculator with :data:`SGP`. The kernel and descriptor objects go
    into ``keep``: the C++ model holds raw pointers to them."""
    _, SGP_Wrapper, SGP_Calculator, B2, NormalizedDotProduct = _import_flare()
    kernel = NormalizedDotProduct(SGP["kernel_sigma"], SGP["power"])
    descriptor = B2(SGP["radial_basis"], SGP["cutoff_function"], [0.0, SGP["cutoff"]], [],
                    [1, SGP["n_max"], SGP["l_max"]])
    gp = SGP_Wrapper([kernel], [descriptor], SGP["cutoff"], SGP["energy_noise"],
                     SGP["force_noise"], SGP["stress_noise"], {29: 0},
                     variance_type=SGP["variance_type"], single_atom_energies={0: 0.0},
                     max_iterations=SGP["max_iterations"], opt_method=SGP["opt_method"])
    keep.extend([kernel, descriptor, gp])
    return SGP_Calculator(gp)


def seed_sgp(calc, frames: list[Atoms], force_only: bool) -> None:
    """Add ``frames`` to the sparse GP (every atom a sparse environment) and optimise its
    hyperparameters once."""
    gp = calc.gp_model
    for f in frames:
        gp.update_db(f, f.info["forces"], custom_range=list(range(len(f))),
                     energy=None if force_only else f.info["energy"],
                     stress=None if force_only else _flare_stress(f.info["stress"]),
                     mode="specific")
    gp.train()


def _ramp_otf_class():
    OTF = _import_flare()[0]

    class RampOTF(OTF):
        """OTF whose Langevin target goes linearly from ``t_start`` to ``t_end`` over the
        run: set before each MD step (``t0 + (t1 - t0) * step / steps``)."""

        def __init__(self, *args, t_start: float, t_end: float, max_calls: int, **kwargs):
            super().__init__(*args, **kwargs)
            self.t_start, self.t_end, self.max_calls = t_start, t_end, max_calls
            self.stopped_at = None

        def md_step(self):
            if self.dft_count >= self.max_calls:  # OTF.run ends its loop on StopIteration
                self.stopped_at = self.curr_step
                raise StopIteration
            frac = self.curr_step / self.number_of_steps
            self.md.set_temperature(temperature_K=self.t_start + (self.t_end - self.t_start) * frac)
            super().md_step()

    return RampOTF


def run_walker(calc, start: Atoms, t0: float, t1: float, seed: int, steps: int, name: str,
               settings: dict, work: Path) -> dict:
    """One OTF run of ``steps`` steps from ``start`` with ``calc`` (updated in place)."""
    RampOTF = _ramp_otf_class()
    atoms = start.copy()
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature_K=t0, rng=rng)
    Stationary(atoms)
    calls0, n_struc0 = CountingEMT.calls, len(calc.gp_model.training_data)
    otf = RampOTF(atoms, dt=DT_FS / 1000, number_of_steps=steps, dft_calc=CountingEMT(),
                  md_engine="Langevin",
                  md_kwargs={"temperature_K": t0, "friction": FRICTION / units.fs,
                             "fixcm": False, "rng": rng},
                  flare_calc=calc, t_start=t0, t_end=t1, max_calls=settings["max_calls"],
                  output_name=str(work / name),
                  write_model=0, force_only=settings["force_only"],
                  std_tolerance_factor=settings["std_tolerance_factor"],
                  max_atoms_added=settings["max_atoms_added"],
                  update_style=settings["update_style"],
                  update_threshold=settings["update_threshold"],
                  train_hyps=settings["train_hyps"],
                  min_steps_with_model=settings["min_steps_with_model"], skip=100)
    tic = time.perf_counter()
    otf.run()
    seconds = time.perf_counter() - tic
    sparse = calc.gp_model.sparse_gp.sparse_indices[0]
    return {"emt_calls": CountingEMT.calls - calls0, "otf_dft_count": otf.dft_count,
            "call_steps": [int(s) for s in otf.dft_frames],
            "atoms_added": int(sum(len(sparse[k]) for k in range(n_struc0, len(sparse)))),
            "final_temperature_k": float(otf.atoms.get_temperature()),
            "stopped_at_step": otf.stopped_at,
            "seconds": seconds}


def force_errors(calc, frames: list[Atoms]) -> dict:
    """Force MAE and RMSE (meV/A) of ``calc`` on ``frames`` (all components)."""
    err = []
    for f in frames:
        atoms = f.copy()
        atoms.calc = calc
        err.append(atoms.get_forces() - f.info["forces"])
    err = np.concatenate(err)
    return {"mae_mev_per_a": 1000 * float(np.mean(np.abs(err))),
            "rmse_mev_per_a": 1000 * float(np.sqrt(np.mean(err ** 2)))}


def one_setting(tolerance: float, data: dict, steps: int, args, work: Path) -> dict:
    keep: list = []
    tic = time.perf_counter()
    calc = make_sgp(keep)
    settings = {"std_tolerance_factor": tolerance, "max_atoms_added": args.max_atoms_added,
                "update_style": args.update_style,
                "update_threshold": (None if args.update_style == "add_n"
                                     else args.update_threshold_ratio * abs(tolerance)),
                "train_hyps": tuple(args.train_hyps),
                "min_steps_with_model": args.min_steps_with_model,
                "force_only": args.force_only, "max_calls": args.max_calls}
    seed_sgp(calc, data["initial"], args.force_only)
    hyps_initial = [float(h) for h in calc.gp_model.hyps]
    tag = f"tol{abs(tolerance):g}"
    walkers = {}
    for (kind, t0, t1, seed) in (SOLID_WALKER, LIQUID_WALKER):
        start = data["starts"][kind]
        walkers[kind] = run_walker(calc, start, t0, t1, seed, steps, f"{tag}_{kind}", settings,
                                   work)
        print(f"{tag} {kind}: {walkers[kind]['emt_calls']} calls, "
              f"{walkers[kind]['atoms_added']} atoms added, {walkers[kind]['seconds']:.0f} s",
              file=sys.stderr, flush=True)
    loop_seconds = time.perf_counter() - tic
    t_eval = time.perf_counter()
    errors = {k: force_errors(calc, v) for k, v in data["tests"].items()}
    sparse = calc.gp_model.sparse_gp.sparse_indices[0]
    return {"std_tolerance_factor": tolerance, "settings": settings,
            "reference_calls": sum(w["emt_calls"] for w in walkers.values()),
            "calls_per_walker": [walkers["solid"]["emt_calls"], walkers["liquid"]["emt_calls"]],
            "walkers": walkers,
            "training_structures": len(calc.gp_model.training_data),
            "sparse_environments": int(sum(len(s) for s in sparse)),
            "hyps_after_initial_fit": hyps_initial,
            "hyps_final": [float(h) for h in calc.gp_model.hyps],
            "hyp_labels": ["signal sigma", "energy noise (eV)", "force noise (eV/A)",
                           "stress noise"],
            "errors": errors, "loop_seconds": loop_seconds,
            "eval_seconds": time.perf_counter() - t_eval,
            "total_seconds": time.perf_counter() - tic}


def random_baseline(data: dict, steps: int, calls: list[int], draws: int,
                    force_only: bool) -> dict:
    """FLARE's sparse GP (:data:`SGP`, not OTF) fitted on the 4 initial frames plus ``n``
    frames drawn at random from EMT MD of the two states with other seeds (the pool of
    ``active_learning._against_random``: seeds 100 and 101, a frame every 10 steps), every
    atom a sparse environment as in the OTF runs, hyperparameters optimised once on all
    frames; force errors on the test sets for each ``n`` in ``calls``, ``draws`` draws
    (seeds 0 ..) each."""
    pool = emt_md(_solid(), 300.0, 1500.0, steps, seed=100, every=10) + \
        emt_md(data["liquid"], 1500.0, 1500.0, steps, seed=101, every=10)
    out = {}
    for n in calls:
        rows = []
        for seed in range(draws):
            pick = np.random.default_rng(seed).choice(len(pool), size=n, replace=False)
            keep: list = []
            calc = make_sgp(keep)
            tic = time.perf_counter()
            seed_sgp(calc, data["initial"] + [pool[i] for i in sorted(pick)], force_only)
            rows.append({"seed": seed, "solid_frames": int(np.sum(pick < len(pool) // 2)),
                         "fit_seconds": time.perf_counter() - tic,
                         "hyps": [float(h) for h in calc.gp_model.hyps],
                         "errors": {k: force_errors(calc, v) for k, v in data["tests"].items()}})
        mean = {k: {m: float(np.mean([r["errors"][k][m] for r in rows]))
                    for m in ("mae_mev_per_a", "rmse_mev_per_a")} for k in data["tests"]}
        spread = {k: float(np.std([r["errors"][k]["mae_mev_per_a"] for r in rows]))
                  for k in data["tests"]}
        out[str(n)] = {"mean": mean, "mae_std": spread, "draws": rows}
    return out


def _dump_frames(path: Path, data: dict) -> None:
    """Energies, forces and positions of the initial and test frames and the liquid start
    (``.npz``) for a cross-check against ``active_learning.py``'s in ml4m's venv."""
    out = {"liquid_positions": data["liquid"].positions}
    sets = {"initial": data["initial"], "test_solid": data["tests"]["heated solid (300-1500 K)"],
            "test_liquid": data["tests"]["liquid (1500 K)"]}
    for name, frames in sets.items():
        out[f"{name}_energy"] = np.array([f.info["energy"] for f in frames])
        out[f"{name}_forces"] = np.array([f.info["forces"] for f in frames])
        out[f"{name}_positions"] = np.array([f.positions for f in frames])
    np.savez(path, **out)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tolerances", type=float, nargs="+", default=[-0.002, -0.001, -0.0005],
                   help="OTF std_tolerance_factor values (< 0: absolute bound on FLARE's "
                        "local uncertainty, which is relative to the signal sigma)")
    p.add_argument("--steps", type=int, default=1500, help="MD steps per walker")
    p.add_argument("--max-atoms-added", type=int, default=-1, help="-1: all atoms")
    p.add_argument("--update-style", choices=("add_n", "threshold"), default="add_n")
    p.add_argument("--update-threshold-ratio", type=float, default=0.5,
                   help="update_style threshold: update_threshold = ratio * |tolerance|")
    p.add_argument("--min-steps-with-model", type=int, default=0)
    p.add_argument("--train-hyps", type=int, nargs=2, default=[1, 10],
                   help="OTF train_hyps: optimise after the i-th to j-th call of each run")
    p.add_argument("--with-energy-stress", dest="force_only", action="store_false",
                   help="train on energy and stress as well (OTF's force_only=False; default: "
                        "forces only, OTF's default)")
    p.add_argument("--max-calls", type=int, default=100,
                   help="safety: stop a walker's run after this many calls (recorded)")
    p.add_argument("--work", type=Path, default=Path("/tmp/flare_otf"))
    p.add_argument("--out", type=Path, default=HERE / "results" / "flare_otf_cu.json")
    p.add_argument("--dump-frames", type=Path, default=None,
                   help="write the protocol's frames to this .npz and stop")
    p.add_argument("--random-baseline", action="store_true",
                   help="no OTF: add to the JSON at --out, for each of its runs, FLARE's sparse "
                        "GP fitted on the initial frames plus as many random pool frames as "
                        "the run's calls (see random_baseline)")
    p.add_argument("--draws", type=int, default=3, help="--random-baseline: draws per run")
    p.add_argument("--baseline-max-calls", type=int, default=None,
                   help="--random-baseline: skip runs with more calls (fits grow with them)")
    p.add_argument("--append", action="store_true",
                   help="add the runs to those of the JSON at --out instead of replacing it")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    data = protocol(args.steps)
    if args.dump_frames is not None:
        _dump_frames(args.dump_frames, data)
        return {"dumped": str(args.dump_frames)}
    # the walkers start from extxyz files, as ``accuracy`` writes them for ``ml4m learn``
    write(args.work / "solid.extxyz", _solid())
    write(args.work / "liquid.extxyz", data["liquid"])
    data["starts"] = {k: read(args.work / f"{k}.extxyz") for k in ("solid", "liquid")}
    protocol_seconds = time.perf_counter() - t_start
    if args.random_baseline:
        result = json.loads(args.out.read_text())
        cap = args.baseline_max_calls
        todo = [r for r in result["runs"] if "random_baseline" not in r and
                (cap is None or r["reference_calls"] <= cap)]
        calls = sorted({r["reference_calls"] for r in todo})
        with _stdout_to_stderr():
            base = random_baseline(data, args.steps, calls, args.draws, args.force_only)
        for r in todo:
            r["random_baseline"] = {"frames_added": r["reference_calls"],
                                    **base[str(r["reference_calls"])]}
        result["random_baseline_seconds"] = result.get("random_baseline_seconds", 0.0) + \
            time.perf_counter() - t_start
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        return result
    import flare

    runs = []
    with _stdout_to_stderr():
        for tol in args.tolerances:
            runs.append(one_setting(tol, data, args.steps, args, args.work))
    tests = data["tests"]
    result = {
        "code": f"FLARE (mir-flare {getattr(flare, '__version__', '1.4.0')}), sparse GP, "
                "flare.learners.otf.OTF",
        "ase": __import__("ase").__version__, "numpy": np.__version__,
        "protocol": "benchmarks/active_learning.py accuracy (Cu/EMT, 2 x 32 atoms)",
        "steps_per_walker": args.steps, "dt_fs": DT_FS, "friction_per_fs": FRICTION,
        "walkers": ["solid a=3.65 A, 300 -> 1500 K, seed 0", "liquid a=3.80 A, 1500 K, seed 1"],
        "walker_order": "one OTF run per walker, sharing one sparse GP: solid, then liquid",
        "initial_frames": len(data["initial"]), "sgp": SGP,
        "test_frames": {k: len(v) for k, v in tests.items()},
        "test_energy_ev_per_atom": {k: float(np.mean([f.info["energy"] / len(f) for f in v]))
                                    for k, v in tests.items()},
        "test_first_frame_energy_ev": {k: float(v[0].info["energy"]) for k, v in tests.items()},
        "protocol_seconds": protocol_seconds, "runs": runs,
        "total_seconds": time.perf_counter() - t_start,
        "threads": os.environ.get("OMP_NUM_THREADS")}
    if args.append and args.out.exists():
        old = json.loads(args.out.read_text())
        result["runs"] = old["runs"] + runs
        result["total_seconds"] += old["total_seconds"]
        if "random_baseline_seconds" in old:
            result["random_baseline_seconds"] = old["random_baseline_seconds"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))

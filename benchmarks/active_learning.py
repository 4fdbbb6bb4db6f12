"""Active learning on Cu with EMT and on ethanol with GFN2-xTB: reference calls and
held-out force error against random selection; wall time of the loop with 1, 2, 4
labelling workers on a slow reference.

    python benchmarks/active_learning.py accuracy [--steps 1500] [--seeds 3]
    python benchmarks/active_learning.py molecule [--steps 4000] [--threshold 4x]
    python benchmarks/active_learning.py parallel [--calls 16]

``accuracy``: two walkers of 32 Cu atoms (NVT, 2 fs): a solid (a = 3.65 A) heated from
300 to 1500 K, and a liquid (a = 3.80 A, melted at 3000 K by EMT first) at 1500 K, share a
linear ACE model fitted on 4 frames; frames whose largest force sigma passes the
threshold are labelled by EMT. Baseline: the same 4 frames plus as many frames as the
loop labelled, drawn at random from EMT MD of the same two states (other seeds), fitted
with the same settings. Test: EMT MD of the same states with other seeds again, solid
and liquid apart. ``parallel``: 4 walkers, a threshold every check passes, EMT slowed
by a 1 s sleep per call; wall time of the loop with 1, 2 and 4 workers (a process pool,
and a local Dask cluster when ``distributed`` is installed).

``molecule``: ethanol (9 atoms, no cell; Langevin NVT, 0.5 fs, 0.01/fs): a walker heated
from 300 to 1200 K and one at 600 K share a linear ACE model (the ACE descriptor's
defaults) fitted on 4 frames of 300 K GFN2-xTB MD; frames whose largest force sigma
passes the threshold are labelled by GFN2-xTB (tblite). Baseline: the same 4 frames plus
as many frames as the loop labelled, drawn at random from xTB MD of the same two states
(other seeds). Test: xTB MD at 300, 600, 900 and 1200 K (other seeds), each apart. Run it
with ``OMP_NUM_THREADS=1``.

``--defaults`` (``accuracy`` and ``molecule``): the loop is the ``ml4m learn`` command with
default settings (the protocol's keys, ``--threshold`` and ``fit: {model: ace}``), and the
random fits are fitted as the loop fits (the basis search of ``ml4m fit``).

The machine these ran on has 2 cores shared with other jobs: runs are kept short.
Prints one JSON object; the figures are in ``benchmarks/results/active_learning.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.emt import EMT
from ase.io import write

from ml4m.data import Frame
from ml4m.md.learning import Reference, reference_executor, run_learning
from ml4m.md.learning_settings import LearnSettings, WalkerSettings, parse_threshold

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import cu_protocol  # noqa: E402  (ASE only: flare_otf.py builds the same structures)
from _common import run_json  # noqa: E402
from cu_protocol import langevin_frames  # noqa: E402

FIT = {"model": "ace", "descriptor": {"r_cut": 4.5, "n_max": 6, "l_max": 3, "correlation_order": 3},
       "params": {"uncertainty": "posterior"}}
#: --basis large: 620 coefficients instead of 70
LARGE = {"r_cut": 5.0, "n_max": 8, "l_max": 4, "correlation_order": 3, "total_degree": 14}
#: ``ml4m learn``'s default number of reference calls between re-optimisations
LEARN_REOPTIMISE = LearnSettings.__dataclass_fields__["reoptimise_every"].default
ETHANOL = Path("/work/shared/data/ethanol_pbe/train.extxyz")
#: ``molecule``: the ACE descriptor's defaults (the loop fits without a basis search)
MOLECULE_FIT = {"model": "ace", "search": "off", "params": {"uncertainty": "posterior"}}
MOLECULE_DT_FS = 0.5
MOLECULE_FRICTION = 0.01
TEST_TEMPERATURES = (300, 600, 900, 1200)


class SlowEMT(EMT):
    """EMT with a 1 s sleep per calculation (a stand-in for an expensive reference)."""

    def calculate(self, *args, **kwargs):
        time.sleep(1.0)
        super().calculate(*args, **kwargs)


def reference_md(start: Atoms, calculator, t0: float, t1: float, steps: int, seed: int,
                 every: int, dt_fs: float = 2.0, friction: float = 0.02) -> list[Frame]:
    """:func:`cu_protocol.langevin_frames` as labelled frames (``info``: ``step``,
    ``T_target``)."""
    return [Frame.from_atoms(a, energy=a.info["energy"], forces=a.info["forces"],
                             stress=a.info["stress"],
                             info={"step": a.info["step"], "T_target": a.info["T_target"]})
            for a in langevin_frames(start, calculator, t0, t1, steps, seed, every, dt_fs,
                                     friction)]


def emt_md(start: Atoms, t0: float, t1: float, steps: int, seed: int, every: int) -> list[Frame]:
    """EMT Langevin MD (2 fs, 0.02/fs): :func:`reference_md`."""
    return reference_md(start, EMT(), t0, t1, steps, seed, every)


_solid, _liquid = cu_protocol.solid, cu_protocol.liquid


def _progress(status) -> None:
    if status.labelled or status.rounds % 20 == 0:
        print(f"step {status.step} sigma {[round(x, 4) for x in status.sigma]} threshold "
              f"{status.threshold:.4f} calls {status.calls} labelled {list(status.labelled)}",
              file=sys.stderr, flush=True)


def _force_errors(model, frames: list[Frame]) -> dict[str, float]:
    """Force MAE and RMSE (meV/A); with a sigma, its RMS (meV/A) and the calibration ratio
    RMSE / RMS sigma (1: calibrated)."""
    pred = model.predict(frames, uncertainty=model.has_uncertainty)
    ref = np.concatenate([f.forces for f in frames])
    err = pred.forces - ref
    out = {"mae_mev_per_a": 1000 * float(np.mean(np.abs(err))),
           "rmse_mev_per_a": 1000 * float(np.sqrt(np.mean(err**2)))}
    if pred.forces_sigma is not None:
        rms = float(np.sqrt(np.mean(pred.forces_sigma ** 2)))
        out.update(rms_sigma_mev_per_a=1000 * rms,
                   rmse_over_sigma=out["rmse_mev_per_a"] / (1000 * rms) if rms > 0 else None)
    return out


def _number_or_text(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _fit(frames: list[Frame], fit: dict | None = None):
    """The model the loop starts from (``fit``, default ``FIT``), fitted afresh on
    ``frames`` as the loop fits it (:func:`ml4m.md.learning.fit_one`: its repulsive core,
    and its basis search when ``fit`` sets no descriptor)."""
    from ml4m.md.learning import fit_one
    from ml4m.training.config import FitConfig

    return fit_one(FitConfig.from_mapping({**(fit or FIT), "train": "frames"}), frames)


def _against_random(al_model, al_train: list[Frame], initial: list[Frame],
                    pools: list[list[Frame]], tests: dict[str, list[Frame]], seeds: int,
                    fit: dict | None = None) -> dict:
    """Force errors (meV/A) on each test set of the loop's model, a refit on its frames,
    and refits on ``initial`` plus as many frames drawn at random from the ``pools`` (one
    trajectory per walker, frames equally spaced in time) as the loop labelled (mean and
    standard deviation over ``seeds`` draws). The drawn frames are ordered as the loop
    orders its frames, by time and then walker: the fit's CV folds are contiguous chunks
    of frames without trajectory tags, so frames sorted walker by walker would make each
    fold one state, and the search choose by extrapolation between states."""
    pool = [f for trajectory in pools for f in trajectory]
    order = [(k, w) for w, trajectory in enumerate(pools) for k in range(len(trajectory))]
    n_new = len(al_train) - len(initial)
    rows = {"loop model (incremental updates)": {k: _force_errors(al_model, v) for k, v in tests.items()}}
    refit = _fit(al_train, fit)
    rows["active-learning frames, refit"] = {k: _force_errors(refit, v) for k, v in tests.items()}
    random_rows = []
    for seed in range(seeds):
        pick = np.random.default_rng(seed).choice(len(pool), size=n_new, replace=False)
        model = _fit(initial + [pool[i] for i in sorted(pick, key=order.__getitem__)], fit)
        random_rows.append({k: _force_errors(model, v) for k, v in tests.items()})
    metrics = ("mae_mev_per_a", "rmse_mev_per_a")
    rows[f"random frames, refit (mean of {seeds} seeds)"] = {
        k: {m: float(np.mean([r[k][m] for r in random_rows])) for m in metrics} for k in tests}
    rows["random frames, spread (std)"] = {
        k: {m: float(np.std([r[k][m] for r in random_rows])) for m in metrics} for k in tests}
    rows["random frames, per seed"] = random_rows
    return rows


def _protocol_config(work: Path, steps: int, threshold: str, walker_seed: int = 0) -> dict:
    """The keys of an ``ml4m learn`` config that the protocol fixes (reference, the
    initial frames, the two walkers, the MD) and the one a user must give (the
    threshold), nothing else: with ``fit: {model: ace}`` every other setting is
    ``ml4m learn``'s default."""
    return {"reference": "emt", "fit": {"model": "ace"}, "initial": str(work / "initial.extxyz"),
            "threshold": _number_or_text(threshold),
            "walkers": [{"structure": str(work / "solid.extxyz"), "temperature": 300.0,
                         "temperature_end": 1500.0, "seed": walker_seed},
                        {"structure": str(work / "liquid.extxyz"), "temperature": 1500.0,
                         "seed": walker_seed + 1}],
            "ensemble": "nvt", "steps": steps, "dt": 2.0, "friction": 0.02}


def _learn_cli(config: dict, work: Path) -> dict:
    """``ml4m learn CONFIG -o work/al --json`` in a fresh process (the documented command)."""
    import yaml

    path = work / "learn.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    print(path.read_text(), file=sys.stderr)
    out, seconds = run_json(["learn", str(path), "-o", str(work / "al")])
    return {**out, "cli_seconds": seconds}


def accuracy(steps: int, seeds: int, threshold: str, min_gap: int, work: Path,
             n_initial: int = 4, reoptimise_every: int = LEARN_REOPTIMISE,
             defaults: bool = False, walker_seed: int = 0) -> dict:
    """The Cu heating protocol. ``defaults``: the loop is ``ml4m learn`` with default
    settings but the threshold (:func:`_protocol_config`; ``min_gap`` and
    ``reoptimise_every`` unused), and the random fits use its ``fit``. The walkers'
    seeds are ``walker_seed`` and the next."""
    t_start = time.perf_counter()
    liquid = _liquid()
    write(work / "solid.extxyz", _solid())
    write(work / "liquid.extxyz", liquid)
    initial = emt_md(_solid(), 300.0, 300.0, 20 * n_initial, seed=1, every=20)
    write(work / "initial.extxyz", [f.to_atoms() for f in initial])
    t0 = time.perf_counter()
    if defaults:
        config = _protocol_config(work, steps, threshold, walker_seed)
        fit = config["fit"]
        result = _learn_cli(config, work)
        min_gap = reoptimise_every = None  # ml4m learn's defaults
    else:
        walkers = (WalkerSettings(str(work / "solid.extxyz"), 300.0, 1500.0, walker_seed),
                   WalkerSettings(str(work / "liquid.extxyz"), 1500.0, None, walker_seed + 1))
        fit = FIT
        settings = LearnSettings(walkers=walkers, fit=FIT, initial=str(work / "initial.extxyz"),
                                 ensemble="nvt", steps=steps, dt_fs=2.0, friction=0.02,
                                 threshold=parse_threshold(_number_or_text(threshold)),
                                 check_interval=10, min_steps_between_calls=min_gap,
                                 max_calls=200, reoptimise_every=reoptimise_every)
        result = run_learning(settings, work / "al", on_round=_progress)
    loop_seconds = time.perf_counter() - t0
    import ml4m
    from ml4m.data import read_dataset

    al_model = ml4m.load(work / "al" / "model.ml4m")
    al_train = list(read_dataset(work / "al" / "train.extxyz"))
    # pool of the same states (EMT MD, other seeds) and held-out test (other seeds again)
    pools = [emt_md(_solid(), 300.0, 1500.0, steps, seed=100, every=10),
             emt_md(liquid, 1500.0, 1500.0, steps, seed=101, every=10)]
    test_solid = emt_md(_solid(), 300.0, 1500.0, steps, seed=200, every=50)
    test_liquid = emt_md(liquid, 1500.0, 1500.0, steps, seed=201, every=50)
    tests = {"heated solid (300-1500 K)": test_solid, "liquid (1500 K)": test_liquid}
    rows = _against_random(al_model, al_train, initial, pools, tests, seeds, fit)
    inner = getattr(al_model, "model_", al_model)  # inside the repulsive core
    per_walker = [sum(1 for f in al_train[len(initial):] if f.info.get("walker") == k) for k in (0, 1)]
    return {"steps_per_walker": steps, "dt_fs": 2.0, "threshold": threshold,
            "min_steps_between_calls": min_gap, "reoptimise_every": reoptimise_every,
            "learn_defaults": defaults, "fit": fit, "walker_seed": walker_seed,
            "descriptor": inner.descriptor.settings() if defaults else FIT["descriptor"],
            "uncertainty": getattr(inner, "uncertainty", None),
            "threshold_ev_per_a_final": result["threshold_ev_per_a"],
            "initial_frames": len(initial), "reference_calls": result["reference_calls"],
            "calls_per_walker": per_walker, "loop_seconds": loop_seconds,
            "pool_frames": sum(map(len, pools)), "test_frames": {k: len(v) for k, v in tests.items()},
            "test_energy_ev_per_atom": {k: float(np.mean([f.energy / len(f) for f in v]))
                                        for k, v in tests.items()},
            "n_parameters": result["n_parameters"], "errors": rows,
            "total_seconds": time.perf_counter() - t_start}


def ethanol() -> Atoms:
    """Ethanol (9 atoms, no cell): the first frame of the shared ethanol_pbe train set (a
    300 K GFN2-xTB MD geometry), or ASE's ``molecule('CH3CH2OH')`` without it."""
    if ETHANOL.exists():
        from ase.io import read

        atoms = read(ETHANOL, index=0)
        return Atoms(atoms.numbers, atoms.positions)
    from ase.build import molecule as build_molecule

    return build_molecule("CH3CH2OH")


def xtb_md(start: Atoms, t0: float, t1: float, steps: int, seed: int, every: int) -> list[Frame]:
    """GFN2-xTB Langevin MD (0.5 fs, 0.01/fs): :func:`reference_md`."""
    from ml4m.data import make_calculator

    return reference_md(start, make_calculator("xtb"), t0, t1, steps, seed, every,
                        dt_fs=MOLECULE_DT_FS, friction=MOLECULE_FRICTION)


def molecule(steps: int, seeds: int, threshold: str, min_gap: int, max_calls: int, work: Path,
             n_initial: int = 4, test_frames: int = 40, walker_seed: int = 0,
             defaults: bool = False) -> dict:
    """The loop on ethanol with GFN2-xTB against random selection at equal calls (the
    walkers' seeds: ``walker_seed`` and the next; those of the pool and test MD are
    fixed). ``defaults``: ``ml4m learn`` (the CLI) with default settings but the
    threshold and ``max_calls`` (``min_gap`` unused), ``fit: {model: ace}``; the random
    fits use that ``fit``."""
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    start = ethanol()
    write(work / "ethanol.extxyz", start)
    # initial frames: 300 K xTB MD, one frame every 100 steps (50 fs)
    initial = xtb_md(start, 300.0, 300.0, 100 * n_initial, seed=1, every=100)
    write(work / "initial.extxyz", [f.to_atoms() for f in initial])
    t0 = time.perf_counter()
    fit = MOLECULE_FIT
    if defaults:
        fit = {"model": "ace"}
        start_file = str(work / "ethanol.extxyz")
        result = _learn_cli({
            "reference": "xtb", "fit": fit, "initial": str(work / "initial.extxyz"),
            "threshold": _number_or_text(threshold),
            "walkers": [{"structure": start_file, "temperature": 300.0, "temperature_end": 1200.0,
                         "seed": walker_seed},
                        {"structure": start_file, "temperature": 600.0, "seed": walker_seed + 1}],
            "ensemble": "nvt", "steps": steps, "dt": MOLECULE_DT_FS, "friction": MOLECULE_FRICTION,
            "max_calls": max_calls}, work)
        min_gap = None
    else:
        walkers = (WalkerSettings(str(work / "ethanol.extxyz"), 300.0, 1200.0, walker_seed),
                   WalkerSettings(str(work / "ethanol.extxyz"), 600.0, None, walker_seed + 1))
        settings = LearnSettings(walkers=walkers, reference="xtb", fit=MOLECULE_FIT,
                                 initial=str(work / "initial.extxyz"), ensemble="nvt",
                                 steps=steps, dt_fs=MOLECULE_DT_FS, friction=MOLECULE_FRICTION,
                                 threshold=parse_threshold(_number_or_text(threshold)),
                                 check_interval=10, min_steps_between_calls=min_gap,
                                 max_calls=max_calls, reoptimise_every=10)
        result = run_learning(settings, work / "al", on_round=_progress)
    loop_seconds = time.perf_counter() - t0
    import ml4m
    from ml4m.data import read_dataset

    al_model = ml4m.load(work / "al" / "model.ml4m")
    al_train = list(read_dataset(work / "al" / "train.extxyz"))
    t0 = time.perf_counter()
    # pool: xTB MD of the walkers' two states, other seeds; test: constant T, other seeds
    pools = [xtb_md(start, 300.0, 1200.0, steps, seed=100, every=10),
             xtb_md(start, 600.0, 600.0, steps, seed=101, every=10)]
    skip = 400  # steps of equilibration (200 fs) before the first test frame
    tests = {f"{t} K": xtb_md(start, float(t), float(t), skip + 50 * test_frames, seed=200 + k,
                               every=50)[skip // 50:]
             for k, t in enumerate(TEST_TEMPERATURES)}
    xtb_seconds = time.perf_counter() - t0
    rows = _against_random(al_model, al_train, initial, pools, tests, seeds, fit)
    labelled = al_train[len(initial):]
    return {"molecule": "ethanol (C2H5OH, 9 atoms)", "reference": "GFN2-xTB (tblite)",
            "walkers": [f"NVT 300 -> 1200 K (seed {walker_seed})",
                        f"NVT 600 K (seed {walker_seed + 1})"],
            "steps_per_walker": steps, "dt_fs": MOLECULE_DT_FS, "friction_per_fs": MOLECULE_FRICTION,
            "threshold": threshold, "min_steps_between_calls": min_gap, "max_calls": max_calls,
            "fit": fit, "learn_defaults": defaults,
            "threshold_ev_per_a_final": result["threshold_ev_per_a"],
            "initial_frames": len(initial), "reference_calls": result["reference_calls"],
            "calls_per_walker": [sum(1 for f in labelled if f.info.get("walker") == k)
                                 for k in (0, 1)],
            "labelled_steps": [[int(f.info["walker"]), int(f.info["step"])] for f in labelled],
            "loop_seconds": loop_seconds, "xtb_md_seconds": xtb_seconds,
            "pool_frames": sum(map(len, pools)), "test_frames": {k: len(v) for k, v in tests.items()},
            "n_parameters": result["n_parameters"], "errors": rows,
            "load_average_start": list(load_start), "load_average_end": list(os.getloadavg()),
            "total_seconds": time.perf_counter() - t_start}


def parallel(calls: int, work: Path) -> dict:
    """Loop wall time with 1, 2, 4 workers labelling ``calls`` frames by SlowEMT."""
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    write(work / "solid.extxyz", _solid())
    initial = emt_md(_solid(), 300.0, 300.0, 60, seed=1, every=20)
    write(work / "initial.extxyz", [f.to_atoms() for f in initial])
    walkers = tuple(WalkerSettings(str(work / "solid.extxyz"), 300.0 + 100 * k, None, k) for k in range(4))
    settings = LearnSettings(walkers=walkers, fit=FIT, initial=str(work / "initial.extxyz"),
                             steps=5 * calls // 4, dt_fs=2.0, threshold=parse_threshold(1e-9),
                             check_interval=5, max_calls=calls, reoptimise_every=0)
    reference = Reference("active_learning:SlowEMT")
    out: dict = {"calls": calls, "walkers": 4, "runs": []}
    backends = ["process pool"]
    try:
        import distributed

        backends.append(f"dask LocalCluster (distributed {distributed.__version__})")
    except ImportError:
        out["dask"] = "distributed not installed"
    t0 = time.perf_counter()  # the loop's own work: the same run with EMT at full speed
    run_learning(settings, work / "no_sleep", reference=Reference("emt"))
    out["loop_seconds_without_sleep_inline"] = time.perf_counter() - t0
    coefs = []
    for backend in backends:
        for workers in (1, 2, 4):
            t0 = time.perf_counter()
            with _executor(backend, workers) as ex:
                t_pool = time.perf_counter() - t0
                t1 = time.perf_counter()
                res = run_learning(settings, work / f"run_{len(out['runs'])}", executor=ex,
                                   reference=reference)
                loop = time.perf_counter() - t1
            import ml4m

            model = ml4m.load(work / f"run_{len(out['runs'])}" / "model.ml4m")
            coefs.append(getattr(model, "model_", model).coef_)  # inside its repulsive core
            out["runs"].append({"backend": backend, "workers": workers, "loop_seconds": loop,
                                "executor_start_seconds": t_pool, "calls": res["reference_calls"]})
            print(out["runs"][-1], flush=True)
    out["identical_models"] = bool(all(np.array_equal(c, coefs[0]) for c in coefs))
    return out


def _executor(backend: str, workers: int):
    if backend == "process pool":
        return reference_executor(workers)
    import contextlib

    @contextlib.contextmanager
    def dask():
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            yield client.get_executor()

    return dask()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--steps", type=int, default=1500)
    a.add_argument("--seeds", type=int, default=3)
    a.add_argument("--threshold", default="1x",
                   help="eV/A, or Fx: F times the model's fitted force noise (default 1x)")
    a.add_argument("--basis", choices=["small", "large"], default="small",
                   help="ACE basis: small (70 coefficients) or large (620)")
    a.add_argument("--uncertainty", choices=["posterior", "calibrated"], default="posterior",
                   help="the model's force sigma (calibrated needs --initial 10 or more)")
    a.add_argument("--initial", type=int, default=4, help="initial frames (300 K crystal)")
    a.add_argument("--reoptimise-every", type=int,
                   default=LEARN_REOPTIMISE,
                   help="reference calls between re-optimisations (and error-model refits); "
                        "default: ml4m learn's")
    a.add_argument("--min-gap", type=int, default=0,
                   help="min_steps_between_calls of the loop (default 0)")
    a.add_argument("--defaults", action="store_true",
                   help="run `ml4m learn` (the CLI) with default settings: only the protocol's "
                        "keys, --threshold and fit: {model: ace}; --min-gap, --basis, "
                        "--uncertainty and --reoptimise-every are then not used")
    a.add_argument("--walker-seed", type=int, default=0, choices=range(50), metavar="0..49",
                   help="seeds of the two walkers: this and the next (default 0)")
    b = sub.add_parser("parallel")
    b.add_argument("--calls", type=int, default=16)
    m = sub.add_parser("molecule")
    m.add_argument("--steps", type=int, default=4000, help="MD steps per walker (0.5 fs)")
    m.add_argument("--seeds", type=int, default=3)
    m.add_argument("--threshold", default="1x",
                   help="eV/A, or Fx: F times the model's fitted force noise (default 1x)")
    m.add_argument("--min-gap", type=int, default=100,
                   help="min_steps_between_calls of the loop (default 100)")
    m.add_argument("--max-calls", type=int, default=60)
    m.add_argument("--initial", type=int, default=4, help="initial frames (300 K xTB MD)")
    m.add_argument("--test-frames", type=int, default=40, help="test frames per temperature")
    m.add_argument("--walker-seed", type=int, default=0, choices=range(50), metavar="0..49",
                   help="seeds of the two walkers: this and the next (default 0)")
    m.add_argument("--defaults", action="store_true",
                   help="run `ml4m learn` (the CLI) with default settings: the protocol's keys, "
                        "--threshold, --max-calls and fit: {model: ace}; --min-gap unused")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.what == "accuracy":
            if args.basis == "large":
                FIT["descriptor"] = LARGE
            FIT["params"] = {"uncertainty": args.uncertainty}
            out = accuracy(args.steps, args.seeds, args.threshold, args.min_gap, Path(tmp),
                           args.initial, args.reoptimise_every, args.defaults, args.walker_seed)
        elif args.what == "molecule":
            out = molecule(args.steps, args.seeds, args.threshold, args.min_gap, args.max_calls,
                           Path(tmp), args.initial, args.test_frames, args.walker_seed,
                           args.defaults)
        else:
            out = parallel(args.calls, Path(tmp))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

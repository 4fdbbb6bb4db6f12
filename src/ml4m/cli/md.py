"""``ml4m md``: molecular dynamics with a model (or a reference ASE calculator)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator

from ml4m.cli._common import console, emit

HELP = "molecular dynamics through ASE"
DESCRIPTION = """\
Run NVE, NVT (Langevin) or NPT (Langevin-BAOAB) dynamics with a fitted model (.ml4m) or a
reference ASE calculator (emt). STRUCTURE is any ASE-readable file (its last frame).

The trajectory is written frame by frame as the run goes (a killed run keeps every frame
written so far); an existing TRAJ is replaced only when the run ends: until then the frames
go to TRAJ's sibling NAME.partial.EXT. A log line every --log-interval steps goes to stderr.
The run stops with exit code 2, keeping its trajectory, if it blows up: non-finite energy
or forces, two atoms closer than half their shortest distance in STRUCTURE, or a
temperature above 10 x target + 1000 K. With a model that has uncertainty, the force
sigma is computed every --uncertainty-interval steps (shown in the log, stored in the
frames on those steps); by default (auto) on steps spaced by its measured cost so that it
adds at most 5% to the run's wall time.

examples:
  ml4m md cu_ace.ml4m start.extxyz --ensemble nve --temperature 600 --steps 1000 --dt 2 -o md.extxyz
  ml4m md emt start.extxyz --ensemble nvt --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=".ml4m file, or emt / an ASE calculator path")
    p.add_argument("structure", metavar="STRUCTURE", help="starting structure (last frame used)")
    p.add_argument("--ensemble", choices=["nve", "nvt", "npt"], default="nve")
    p.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    p.add_argument("--pressure", type=float, default=0.0, help="GPa, NPT only (default 0)")
    p.add_argument("--friction", type=float, default=0.01,
                   help="Langevin friction, 1/fs, NVT and NPT (default 0.01)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--dt", type=float, default=1.0, help="time step in fs (default 1)")
    p.add_argument("--interval", type=int, default=10, help="steps between trajectory frames")
    p.add_argument("--uncertainty-interval", default="auto", metavar="N|auto",
                   help="steps between force-sigma evaluations of a model with uncertainty "
                        "(0: never; default auto: spaced to add at most 5%% to the wall time)")
    p.add_argument("--log-interval", type=int,
                   help="steps between log lines on stderr (default: about 20 per run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", metavar="TRAJ", help="trajectory (extxyz)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def claim(output: str | None, inputs: list[str], overwrite: bool, companions: tuple = ()):
    """:func:`ml4m.outputs.claim_output` of a command writing one file (a no-op without
    one); ``inputs`` that are not files (``emt``) are left out."""
    if output is None:
        return contextlib.nullcontext(None)
    from pathlib import Path

    from ml4m.outputs import claim_output

    return claim_output(output, inputs=[p for p in inputs if Path(p).exists()], overwrite=overwrite,
                        companions=companions)


def log_line(status) -> str:
    """One log line of an :class:`~ml4m.md.MDStatus`."""
    line = (f"step {status.step:>7}  t {status.time_ps:9.4f} ps  T {status.temperature_k:7.1f} K  "
            f"E_pot {status.energy_pot_ev:.4f} eV  E_tot {status.energy_tot_ev:.4f} eV")
    if status.forces_sigma_max is not None:
        line += f"  max sigma_F {status.forces_sigma_max:.4f} eV/A"
    return line


@contextlib.contextmanager
def reporter(steps: int, bar: bool) -> Iterator[tuple]:
    """``(on_log, on_step)`` for :func:`~ml4m.md.run_md`: log lines on stderr, and a rich
    progress bar there when ``bar``."""
    err = console(stderr=True)
    if not bar:
        yield (lambda s: err.print(log_line(s), soft_wrap=True), None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("MD"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True) as progress:
        task = progress.add_task("md", total=steps)
        yield (lambda s: progress.console.print(log_line(s), soft_wrap=True),
               lambda step: progress.update(task, completed=step))


def run(args: argparse.Namespace) -> int:
    from ml4m.data import read_structure
    from ml4m.md import check_md_settings, load_calculator, partial_path, run_md

    check_md_settings(args.ensemble, args.temperature, args.steps, args.dt, args.friction,
                      args.pressure, args.interval, args.uncertainty_interval)
    companions = (partial_path(args.output),) if args.output else ()
    with claim(args.output, [args.structure, args.model], args.overwrite, companions) as out:
        atoms = read_structure(args.structure)
        atoms.calc = load_calculator(args.model)
        with reporter(args.steps, bar=not args.json and sys.stderr.isatty()) as (on_log, on_step):
            result = run_md(atoms, ensemble=args.ensemble, temperature_k=args.temperature,
                            steps=args.steps, dt_fs=args.dt, friction=args.friction,
                            pressure_gpa=args.pressure, trajectory=out, interval=args.interval,
                            seed=args.seed, uncertainty_interval=args.uncertainty_interval,
                            log_interval=args.log_interval, on_log=on_log, on_step=on_step,
                            overwrite=args.overwrite)
    drift = result.energy_drift_mev_per_atom_per_ps
    emit(args.json, result.as_dict(),
         f"{result.ensemble.upper()} {result.steps} steps of {result.n_atoms} atoms in "
         f"{result.seconds:.1f} s ({result.atom_steps_per_s:,.0f} atom-steps/s), "
         f"<T> = {result.temperature_k_mean:.0f} K"
         + (f", drift {drift:.3f} meV/atom/ps" if drift is not None else "")
         + (f", max sigma_F {result.forces_sigma_max:.3f} eV/A"
            if result.forces_sigma_max is not None else "")
         + (f"; {result.n_frames} frames in {result.trajectory}" if result.trajectory else ""))
    return 0

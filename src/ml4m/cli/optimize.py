"""``ml4m optimize``: the lowest-energy structure over a few degrees of freedom."""

from __future__ import annotations

import argparse

HELP = "Bayesian optimisation of torsions, distances or an adsorption site (GP surrogate)"
DESCRIPTION = """\
Minimise the energy of a reference ASE calculator over a few degrees of freedom of a
structure: torsions (the side of the bond turns), distances (the side of the second atom
moves) and adsorption sites (fractions of the surface cell vectors). Each reference call
sets them, then relaxes everything else with them held (FIRE; relax.steps 0: the energy
of the set geometry). The next values come from a Gaussian-process surrogate (periodic
features for torsions and sites, Matern 5/2, fitted noise) and expected improvement or a
lower confidence bound, after a Latin-hypercube design of n_initial calls; --method
random or grid spends the same budget without a surrogate, for comparison.

DIR holds evaluations.extxyz (every relaxed structure, appended as produced, with the
degrees of freedom and REF_energy in info) and state.json, replaced after every call: a
killed run continues with --resume (refused under other settings). At the end:
DIR/best.extxyz, DIR/summary.json (best energy, best values, the history of calls) and
DIR/progress.png (best energy against calls).

CONFIG.yaml:
  structure: start.extxyz            # any ASE-readable file
  frame: 0                           # its frame (default: the last)
  reference: xtb                     # emt (default), xtb (tblite's GFN2-xTB), or
                                     # {calculator: pkg.module:Class, kwargs: {...}}
  dofs:
    - {type: torsion, atoms: [1, 6, 7, 8]}             # range default [-180, 180] deg
    - {type: distance, atoms: [0, 5], range: [1.0, 3.0]}  # Angstrom
    - {type: site, atoms: [12, 13]}  # first atom's fractions of a, b: [[0, 1], [0, 1]]
  fix: [0, 1, 2, 3]                  # atoms held in every relaxation
  method: bo                         # bo, random, grid
  budget: 50                         # reference calls
  n_initial: 8
  acquisition: ei                    # ei or lcb
  xi: 0.01                           # ei: least improvement, in std of the energies
  kappa: 2.0                         # lcb: mu - kappa sigma
  seed: 0
  relax: {fmax: 0.05, steps: 200}    # eV/A, FIRE steps per call

examples:
  ml4m optimize bpa.yaml -o bpa_opt
  ml4m optimize bpa.yaml -o bpa_random --method random --seed 1 --json
  ml4m optimize bpa.yaml -o bpa_opt --resume
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ml4m.cli._common import add_output_arguments

    p.add_argument("config", metavar="CONFIG.yaml", help="settings of the search (see above)")
    add_output_arguments(p, "DIR", "output folder (evaluations, state, best structure, plot)")
    p.add_argument("--method", choices=("bo", "random", "grid"),
                   help="replaces the config's method")
    p.add_argument("--seed", type=int, help="replaces the config's seed")
    p.add_argument("--budget", type=int, help="reference calls; replaces the config's budget")
    p.add_argument("--resume", action="store_true", help="continue the state saved in DIR")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _log_line(status) -> str:
    """One line of an :class:`~ml4m.md.optimize.OptimizeStatus`."""
    values = " ".join(f"{v:9.3f}" for v in status.values)
    flag = "" if status.converged else "  (relaxation not converged)"
    return (f"call {status.call:>4}/{status.budget}  [{values}]  E {status.energy:.5f} eV  "
            f"best {status.best_energy:.5f} eV  {status.seconds:.1f} s{flag}")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ml4m.cli._common import console, emit
    from ml4m.config import load_yaml
    from ml4m.md.optimize import FOLDER_KIND, run_optimize
    from ml4m.md.optimize_settings import OptimizeSettings
    from ml4m.outputs import claim_output

    settings = OptimizeSettings.from_mapping(load_yaml(args.config), source=args.config,
                                             method=args.method, seed=args.seed,
                                             budget=args.budget)
    inputs = [p for p in (args.config, settings.structure) if Path(p).exists()]
    err = console(stderr=True)
    with claim_output(args.output, inputs=inputs, folder_kind=FOLDER_KIND,
                      overwrite=args.overwrite) as out:
        result = run_optimize(settings, out, resume=args.resume, overwrite=args.overwrite,
                              on_call=lambda status: err.print(_log_line(status),
                                                               soft_wrap=True))
    emit(args.json, result,
         f"{result['calls']} reference calls ({result['method']}) in {result['seconds']:.1f} s: "
         f"best E = {result['best_energy_ev']:.5f} eV at call {result['best_call']} ("
         + ", ".join(f"{k} = {v:.3f}" for k, v in result["best_dofs"].items())
         + f"); structure {result['best']}, plot {result['plot']}")
    return 0

"""``ml4m test``: errors of a saved model on labelled structures."""

from __future__ import annotations

import argparse

from ml4m.cli._common import add_label_key_arguments, console, label_keys_from_args, print_json

HELP = "errors of a model on labelled structures"
DESCRIPTION = """\
Energy, force and stress errors of a saved potential on a labelled file or a packed store
(`ml4m data pack`; a structure-property model: the errors of its target, on a file); for models with uncertainty also the Spearman correlation
between predicted sigma and absolute error.

example:
  ml4m test cu_ace.ml4m valid.extxyz --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=".ml4m model file")
    p.add_argument("file", metavar="FILE", help="labelled structures, or a store")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_label_key_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ml4m.training import test_model

    result = test_model(args.model, args.file, keys=label_keys_from_args(args))
    if args.json:
        print_json(result)
        return 0
    out = console()
    out.print(f"{result['n_frames']} frames of {args.file}")
    if "property" in result:  # a structure-property model: one value per structure
        p = result["property"]
        out.print(f"{result['target']}{' (eV/atom)' if result['target'] == 'energy_per_atom' else ''}: "
                  f"MAE {p['mae']:.4g}, RMSE {p['rmse']:.4g}")
    else:
        _print_potential_errors(out, result)
    for k, v in result.get("uncertainty", {}).items():
        out.print(f"{k}: {v:.3f}" if v is not None else f"{k}: n/a")
    return 0


def _print_potential_errors(out, result: dict) -> None:
    e = result["energy"]
    out.print(f"energy: MAE {e['mae_mev_per_atom']:.2f} meV/atom, RMSE {e['rmse_mev_per_atom']:.2f} meV/atom")
    if "forces" in result:
        f = result["forces"]
        out.print(f"forces: MAE {f['mae_mev_per_a']:.1f} meV/A, RMSE {f['rmse_mev_per_a']:.1f} meV/A")
    if "stress" in result:
        out.print(f"stress: MAE {result['stress']['mae_gpa']:.3f} GPa")

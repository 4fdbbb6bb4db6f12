"""``ml4m fit``: fit a potential or property model from a YAML config and/or flags."""

from __future__ import annotations

import argparse

from ml4m.cli._common import console, print_json

HELP = "fit a model (linear ACE, sparse GP, kernel ridge, BP or message-passing network)"
DESCRIPTION = """\
Fit a model to labelled structures. Settings come from an optional YAML file (keys:
model, train, valid, output, keys, descriptor, descriptor_type, e0, sigmas, params,
training, target, seed, max_minutes, search, device, committee, init); command-line flags
override it.
Writes the model (.ml4m), metrics.json (also as {stem}_metrics.json, so that several
models fitted into one folder keep theirs) and parity plots next to it.

A linear ACE fit (--model ace, the default) without descriptor settings chooses its basis:
a ladder of nested bases is scored by 3-fold cross-validation inside --train (by
trajectory when the frames carry one; the valid file is never used), within the budget
(--max-minutes, default 10, the final fit included). The table goes to metrics.json
("search"), the CV errors against model size to {stem}_search.png, and the chosen settings
to {stem}_chosen.yaml, which refits the same model without a search (ml4m fit
{stem}_chosen.yaml -o MODEL). --search off keeps the descriptor's defaults. Networks (bpnn, mpnn) also write
their learning curve ({stem}_learning_curve.png) and per-epoch log ({stem}_training.csv),
and keep a checkpoint (.{stem}.ckpt) until the model is written: after an interruption,
the same command with --resume continues the training. --train may name a packed store
(ml4m data pack) to stream data larger than memory. --committee K (networks) trains K
networks with seeds seed, ..., seed+K-1 within the one budget, each written as
{stem}_member{k}.ml4m (no sigma of its own) with its log and curve, and writes their
committee as MODEL: the members' mean, their spread (calibrated on --valid) as the
sigma; --resume keeps the members a killed run finished. --init MODEL (networks) starts
from the weights of a fitted network of the same kind (fine-tuning, e.g. a network
pretrained on many cheap GFN2-xTB frames, tuned on a few DFT ones): its architecture and
elements are kept and its energy reference (E0s) refitted on --train (elements --train
lacks keep theirs).

examples:
  ml4m fit --model ace --train train.extxyz --valid valid.extxyz -o cu_ace.ml4m
  ml4m fit cu_ace_chosen.yaml -o cu_ace_again.ml4m   # the chosen basis, no search
  ml4m fit --model mpnn --train train.extxyz --valid valid.extxyz --max-minutes 30 -o cu.ml4m
  ml4m fit --model mpnn ... --max-minutes 30 --committee 4 -o cu_committee.ml4m
                                       # four networks, 7 min each, one calibrated sigma
  ml4m fit --model mpnn --init xtb.ml4m --train dft.extxyz --valid v.extxyz -o dft.ml4m
  ml4m fit config.yaml --seed 1
  ml4m fit config.yaml --resume        # continue an interrupted network training

a network's config, e.g.:
  model: bpnn
  train: train.extxyz
  valid: valid.extxyz
  training: {batch_size: 8, lr: 0.005, max_epochs: 200, weights: {energy: 1, forces: 100}}
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", metavar="CONFIG.yaml", help="settings file")
    from ml4m.models.registry import fit_choices

    p.add_argument("--model", choices=fit_choices(), help="model kind (default ace)")
    p.add_argument("--train", metavar="FILE", help="training structures")
    p.add_argument("--valid", metavar="FILE", help="validation structures")
    p.add_argument("--max-minutes", type=float,
                   help="wall-time budget of the whole fit, the basis search included (default "
                   "10 with a search); without a search two probe fits measure the cost per "
                   "frame, then the fit uses as many evenly spaced training frames as fit; "
                   "a network without max_epochs trains until the budget ends")
    p.add_argument("--search", choices=["auto", "off"],
                   help="auto (default): linear ACE without descriptor settings chooses its "
                   "basis by cross-validation inside --train; off: the descriptor defaults")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="memory the fit may plan for, e.g. 8GB (default: half the available); "
                   "a fit that needs more stops before it starts")
    p.add_argument("--seed", type=int)
    p.add_argument("--committee", type=int, metavar="K",
                   help="networks: train K of them (seeds seed..seed+K-1, the budget shared) "
                   "and write their committee, its spread calibrated on --valid")
    p.add_argument("--init", metavar="MODEL",
                   help="networks: start from this fitted network's weights (fine-tuning; "
                   "same kind and architecture, E0s refitted on --train)")
    p.add_argument("--resume", action="store_true",
                   help="networks: continue the training saved in the checkpoint beside the "
                   "model (same settings), e.g. after the process was killed")
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("-o", "--output", metavar="MODEL",
                   help="model file (.ml4m); metrics.json ({stem}_metrics.json too) and "
                   "plots go beside it")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a metrics.json beside MODEL whose record is kept nowhere "
                   "else (e.g. a file of your own)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    from ml4m.config import load_yaml
    from ml4m.training import FitConfig, fit_model

    mapping = load_yaml(args.config) if args.config else {}
    for key in ("model", "train", "valid", "max_minutes", "search", "seed", "device", "output",
                "committee", "init"):
        value = getattr(args, key)
        if value is not None:
            mapping[key] = value
    cfg = FitConfig.from_mapping(mapping, source=args.config or "command line")
    from ml4m.resources import max_memory

    with max_memory(args.max_memory):
        metrics = fit_model(cfg, progress=not args.json, resume=args.resume,
                            overwrite=args.overwrite)
    if "model" not in metrics:  # a further process of a data-parallel run: rank 0 reports
        return 0
    if args.json:
        print_json(metrics)
        return 0
    if "cv" in metrics:  # a structure-property model
        out = console()
        out.print(f"kernel ridge on {metrics['train']['target']}: CV MAE {metrics['cv']['cv_mae']:.4g} "
                  f"(alpha {metrics['cv']['alpha']:.1e}, gamma {metrics['cv']['gamma']:.3g}) -> {metrics['model']}")
        for name in ("train", "valid"):
            if name in metrics:
                p = metrics[name]["property"]
                out.print(f"{name}: MAE {p['mae']:.4g}, RMSE {p['rmse']:.4g}")
        return 0
    from rich.table import Table

    t = Table(title=f"{metrics['kind']} fitted in {metrics['fit_seconds']:.1f} s -> {metrics['model']}")
    for col in ("set", "E MAE (meV/atom)", "E RMSE", "F MAE (meV/A)", "F RMSE", "S MAE (GPa)", "sigma-error rho (F)"):
        t.add_column(col)
    for name in ("train", "valid"):
        if name in metrics:
            m = metrics[name]
            rho = m.get("uncertainty", {}).get("force_sigma_spearman")
            t.add_row(name, f"{m['energy']['mae_mev_per_atom']:.2f}", f"{m['energy']['rmse_mev_per_atom']:.2f}",
                      f"{m['forces']['mae_mev_per_a']:.1f}" if "forces" in m else "-",
                      f"{m['forces']['rmse_mev_per_a']:.1f}" if "forces" in m else "-",
                      f"{m['stress']['mae_gpa']:.3f}" if "stress" in m else "-",
                      f"{rho:.2f}" if rho is not None else "-")
    console().print(t)
    if "search" in metrics:
        _print_search(metrics["search"])
    if "training" in metrics:
        tr = metrics["training"]
        console().print(f"trained {tr['epochs']} epochs ({tr['steps']} steps, stopped by "
                        f"{tr['stop_reason'].replace('_', ' ')}); log: {tr['log']}")
        if tr.get("regime"):
            _print_regime(tr["regime"])
    if "committee" in metrics:
        _print_committee(metrics["committee"])
    if "budget" in metrics and "valid_frames" in metrics["budget"]:  # a network, a committee
        b = metrics["budget"]
        console().print(f"budget {b['budget_seconds'] / 60:.1f} min: validated on "
                        f"{b['valid_frames']} frames, errors on {b['train_frames']} training "
                        "frames")
    elif "budget" in metrics:
        b = metrics["budget"]
        console().print(f"budget {b['budget_seconds'] / 60:.1f} min: fitted on {b['n_frames_used']} of "
                        f"{b['n_frames_total']} training frames (probes: {b['probe_frames']} frames in "
                        f"{', '.join(f'{t:.1f}' for t in b['probe_seconds'])} s)")
    return 0


def _print_committee(committee: dict) -> None:
    """One line per member (its training, or kept from before a resume) and the spread's
    calibration factors."""
    for k, m in enumerate(committee["members"]):
        if m.get("resumed"):
            console().print(f"member {k} (seed {m['seed']}): kept from the interrupted run")
            continue
        tr = m["training"]
        console().print(f"member {k} (seed {m['seed']}): {tr['epochs']} epochs ({tr['steps']} "
                        f"steps, stopped by {tr['stop_reason'].replace('_', ' ')}) in "
                        f"{m['fit_seconds']:.0f} s -> {m['model']}")
    c = committee["calibration"]
    console().print(f"spread calibrated on valid: energy x {c['energy']:.2f}, forces x "
                    f"{c['forces']:.2f}")


def _print_regime(regime: dict) -> None:
    """One line: the regime of a network fit and the settings it chose
    (:mod:`ml4m.training.regime`)."""
    passes = regime.get("passes")
    why = f"~{passes:.0f} passes over the training data, " if passes is not None else ""
    chosen = [f"{section}.{k} = {v}" for section in ("params", "training")
              for k, v in regime[section].items()]
    console().print(f"regime: {why}{regime['regime'].replace('_', '-')}"
                    + (f"; chose {', '.join(chosen)}" if chosen else ""))


def _print_search(search: dict) -> None:
    """The basis search's table: one row per basis tried, the chosen one marked."""
    from rich.table import Table

    best = min(range(len(search["table"])), key=lambda k: search["table"][k]["score"])
    t = Table(title=f"basis search: {search['folds']}-fold CV inside train "
                    f"(pass {search['pass_seconds']:.0f} s; {search['stopped']})")
    for col in ("order", "degrees", "coefficients", "CV E RMSE (meV/atom)", "CV F RMSE (meV/A)",
                "seconds", ""):
        t.add_column(col)
    for k, row in enumerate(search["table"]):
        f = row["cv_forces_rmse_mev_per_a"]
        t.add_row(str(row["correlation_order"]), str(row["total_degree"]), f"{row['n_coefficients']:,}",
                  f"{row['cv_energy_rmse_mev_per_atom']:.2f}", "-" if f is None else f"{f:.1f}",
                  f"{row['seconds']:.1f}", "chosen" if k == best else "")
    console().print(t)
    console().print(f"chosen settings: {search['chosen_config']}; plot: {search['plot']}")

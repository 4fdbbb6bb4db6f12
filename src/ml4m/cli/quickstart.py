"""``ml4m quickstart``: the whole pipeline on the embedded Cu data set, offline."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ml4m.cli._common import add_output_arguments, console, print_json

HELP = "run the whole pipeline on the embedded Cu data set (offline, minutes)"
DESCRIPTION = """\
Run the ml4m pipeline on the embedded Cu data set (fcc Cu labelled by ASE's EMT, made by
`ml4m data generate`), offline: validate, summarise and split it by trajectory; describe
it with SOAP; fit a linear ACE potential with uncertainty and test it; run a short NVE
MD with it. Plots, the model and a summary go to the output folder.

example:
  ml4m quickstart -o quickstart_out
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_output_arguments(p, "DIR", "output folder for plots and summary (default quickstart_out)",
                         required=False, default="quickstart_out")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout")


def run(args: argparse.Namespace) -> int:
    """Claim the output folder (ml4m.outputs), then run the pipeline into it."""
    from ml4m.outputs import claim_output, mark_folder

    with claim_output(args.output, folder_kind="quickstart", overwrite=args.overwrite) as outdir:
        outdir.mkdir(parents=True, exist_ok=True)
        mark_folder(outdir, "quickstart")
        return _run(args, outdir)


def _run(args: argparse.Namespace, outdir: Path) -> int:
    from ml4m._fileio import atomic_path
    from ml4m.cli.data import _summary_table
    from ml4m.data import default_dataset, default_dataset_path, split_dataset, summarize
    from ml4m.data.plots import plot_label_histograms
    from ml4m.data.reference import fit_reference_energies
    from ml4m.data.write import write_extxyz

    out = console(stderr=args.json)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"output": str(outdir)}

    out.rule("[bold]1. data")
    dataset = default_dataset()
    summary = summarize(dataset)
    out.print(_summary_table(f"embedded data: {default_dataset_path().name}", summary))
    split, parts = split_dataset(dataset, valid=0.15, test=0.15, seed=args.seed, by="traj")
    for name, part in parts.items():
        write_extxyz(part, outdir / "data" / f"{name}.extxyz")
    e0 = fit_reference_energies(parts["train"])
    out.print(f"split by trajectory: train {len(parts['train'])}, valid {len(parts['valid'])}, "
              f"test {len(parts['test'])} frames -> {outdir / 'data'}/")
    out.print("fitted E0 (eV): " + ", ".join(f"Z={z}: {v:.4f}" for z, v in e0.items()))
    plots = plot_label_histograms(dataset, outdir)
    out.print("plots: " + ", ".join(str(p) for p in plots))
    report["data"] = {
        "n_frames": summary["n_frames"],
        "n_atoms": summary["n_atoms"],
        "split": {k: len(v) for k, v in parts.items()},
        "energy_per_atom_ev": summary["energy_per_atom_ev"],
        "force_rms_ev_per_a": summary["force_rms_ev_per_a"],
    }
    report["plots"] = [str(p) for p in plots]

    out.rule("[bold]2. descriptors")
    report["descriptors"] = _describe_step(parts["train"], outdir, out)

    out.rule("[bold]3. analysis of the SOAP manifold")
    report["analysis"] = _analysis_step(outdir, out)

    out.rule("[bold]4. fit: linear ACE")
    report["fit"] = _fit_step(outdir, out)
    report["plots"] += report["fit"].pop("plots")

    out.rule("[bold]5. molecular dynamics")
    report["md"] = _md_step(parts["test"], Path(report["fit"]["model"]), outdir, out)

    report["seconds"] = time.perf_counter() - t0
    with atomic_path(outdir / "summary.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    out.rule(f"[bold]done in {report['seconds']:.1f} s")
    if args.json:
        print_json(report)
    return 0


#: settings of the quickstart's potential (small, so that it fits in seconds)
ACE_SETTINGS = {"r_cut": 5.0, "n_max": 6, "l_max": 3, "correlation_order": 3, "total_degree": 12}


def _describe_step(train, outdir: Path, out) -> dict[str, Any]:
    import numpy as np

    from ml4m._fileio import atomic_path
    from ml4m.descriptors import SOAP

    t0 = time.perf_counter()
    soap = SOAP(train.species, r_cut=4.5, n_max=6, l_max=4)
    res = soap.compute(train)
    seconds = time.perf_counter() - t0
    with atomic_path(outdir / "soap.npz") as tmp:
        np.savez(tmp, features=res.features, frame=res.frame, numbers=res.numbers,
                 meta=json.dumps(soap.settings()))
    out.print(f"SOAP (r_cut 4.5 A, n_max 6, l_max 4) of {len(res.features)} atoms: "
              f"{res.features.shape[1]} features in {seconds:.1f} s -> {outdir / 'soap.npz'}")
    return {"n_rows": int(len(res.features)), "n_features": int(res.features.shape[1]),
            "seconds": seconds, "file": str(outdir / "soap.npz")}


def _analysis_step(outdir: Path, out) -> dict[str, Any]:
    import numpy as np

    from ml4m.analysis import Manifold, decision_graph, id_scaling
    from ml4m.cli.analyze import _write_outputs

    t0 = time.perf_counter()
    X = np.load(outdir / "soap.npz")["features"]
    m = Manifold(X, maxk=min(100, len(X) - 1))
    two, gride = m.intrinsic_dimension("twonn"), m.intrinsic_dimension("gride")
    den = m.density("pak", intrinsic_dim=two.estimate)
    cl = m.clusters("adp", Z=1.65, density=den)
    summary = {"n": int(len(X)), "dim": int(X.shape[1]),
               "id": {"method": "twonn", "estimate": two.estimate, "error": two.error},
               "id_gride": {"estimate": gride.estimate, "error": gride.error},
               "density": {"method": "pak", "log_density_mean": den.log_density_mean},
               "clusters": {"method": "adp", "n": cl.n_clusters, "sizes": cl.sizes.tolist(),
                            "centers": cl.centers.tolist()}}
    dg = cl.decision if cl.decision is not None else decision_graph(m.graph, den.log_density, X)
    files = _write_outputs(outdir / "analysis", X, id_scaling(m.graph), den, cl, dg, summary)
    summary["seconds"] = time.perf_counter() - t0
    out.print(f"{len(X)} SOAP vectors in {X.shape[1]}-D: intrinsic dimension {two.estimate:.1f} "
              f"+- {two.error:.1f} (TwoNN), {gride.estimate:.1f} +- {gride.error:.1f} (GRIDE); "
              f"{cl.n_clusters} density peaks at Z = 1.65 (sizes {cl.sizes.tolist()[:8]}"
              f"{' ...' if cl.n_clusters > 8 else ''}) in {summary['seconds']:.1f} s")
    out.print(f"plots and arrays: {', '.join(files)} in {outdir / 'analysis'}/")
    return summary


def _fit_step(outdir: Path, out) -> dict[str, Any]:
    from rich.table import Table

    from ml4m.training import FitConfig, fit_model, test_model

    cfg = FitConfig(model="ace", train=str(outdir / "data" / "train.extxyz"),
                    valid=str(outdir / "data" / "valid.extxyz"),
                    output=str(outdir / "model" / "cu_ace.ml4m"), descriptor=dict(ACE_SETTINGS))
    metrics = fit_model(cfg)
    test = test_model(metrics["model"], outdir / "data" / "test.extxyz")
    table = Table(title=f"linear ACE ({metrics['n_features']} coefficients) fitted in "
                        f"{metrics['fit_seconds']:.1f} s")
    for col in ("set", "E MAE (meV/atom)", "F MAE (meV/A)", "F RMSE (meV/A)", "S MAE (GPa)",
                "sigma-error rho (F)"):
        table.add_column(col)
    for name, m in (("train", metrics["train"]), ("valid", metrics["valid"]), ("test", test)):
        rho = m.get("uncertainty", {}).get("force_sigma_spearman")
        table.add_row(name, f"{m['energy']['mae_mev_per_atom']:.2f}", f"{m['forces']['mae_mev_per_a']:.1f}",
                      f"{m['forces']['rmse_mev_per_a']:.1f}",
                      f"{m['stress']['mae_gpa']:.3f}" if "stress" in m else "-",
                      f"{rho:.2f}" if rho is not None else "-")
    out.print(table)
    out.print(f"model: {metrics['model']}; metrics.json and parity plots beside it")
    return {"model": metrics["model"], "fit_seconds": metrics["fit_seconds"],
            "n_features": metrics["n_features"], "valid": metrics["valid"], "test": test,
            "plots": metrics["plots"]}


def _md_step(test, model_path: Path, outdir: Path, out) -> dict[str, Any]:
    from ml4m.md import run_md
    from ml4m.models import load

    start = max((f for f in test if f.pbc.all()), key=len)
    atoms = start.to_atoms(with_labels=False)
    atoms.calc = load(model_path).as_calculator(uncertainty=False)
    result = run_md(atoms, "nve", temperature_k=600.0, steps=200, dt_fs=2.0, interval=10,
                    trajectory=outdir / "md_nve.extxyz")
    out.print(f"NVE, {result.n_atoms} atoms, 200 steps of 2 fs from 600 K: "
              f"{result.atom_steps_per_s:,.0f} atom-steps/s, <T> = {result.temperature_k_mean:.0f} K, "
              f"energy drift {result.energy_drift_mev_per_atom_per_ps:.3f} meV/atom/ps "
              f"-> {outdir / 'md_nve.extxyz'}")
    return result.as_dict()

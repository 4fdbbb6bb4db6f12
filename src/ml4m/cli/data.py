"""``ml4m data info|split|pack|generate``: the data stage on the command line."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ml4m.cli._common import (
    add_label_key_arguments,
    add_output_arguments,
    console,
    emit,
    float_list,
    int_list,
    label_keys_from_args,
    print_json,
)

HELP = "read, check, split, pack and generate labelled structures"
DESCRIPTION = """\
Read, validate, split, pack and generate labelled atomic structures.

examples:
  ml4m data info train.extxyz --json
  ml4m data split all.extxyz --valid 0.1 --test 0.1 --seed 1 --by traj -o splits/
  ml4m data pack train.extxyz -o train.store
  ml4m.data.generation --calculator emt --system Cu --temperatures 300,900 -o cu.extxyz
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True,
                           parser_class=type(p))
    fmt = argparse.RawDescriptionHelpFormatter

    info = sub.add_parser(
        "info", help="frames, atoms, species, labels, statistics; validates",
        description="Validate files and print their statistics (a packed store's too, with "
        "the shortest distance of each element pair it recorded).\n\nexample:\n"
        "  ml4m data info ../shared/data/cu_emt/train.extxyz --json\n"
        "  ml4m data info train.store --json", formatter_class=fmt)
    info.add_argument("files", nargs="+", metavar="FILE",
                      help="ASE-readable files or stores (ml4m data pack)")
    info.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_label_key_arguments(info)
    info.set_defaults(func=run_info)

    split = sub.add_parser(
        "split", help="reproducible train/valid/test split",
        description="Split a file into train/valid/test extxyz files (random, or by an info "
        "key such as config_type or traj, keeping groups whole).\n\nexample:\n"
        "  ml4m data split all.extxyz --valid 0.1 --test 0.1 --seed 0 -o splits/", formatter_class=fmt)
    split.add_argument("file", metavar="FILE")
    split.add_argument("--valid", type=float, default=0.1, help="validation fraction (default 0.1)")
    split.add_argument("--test", type=float, default=0.1, help="test fraction (default 0.1)")
    split.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    split.add_argument("--by", metavar="KEY", help="info key to split by group (config_type, traj)")
    add_output_arguments(split, "DIR", "output folder (train/valid/test.extxyz, split.json)")
    split.add_argument("--json", action="store_true")
    add_label_key_arguments(split)
    split.set_defaults(func=run_split)

    pack = sub.add_parser(
        "pack", help="compact memory-mapped store for streaming training",
        description="Stream files into a memory-mapped store that training reads lazily.\n\n"
        "example:\n  ml4m data pack train.extxyz more.extxyz -o train.store", formatter_class=fmt)
    pack.add_argument("files", nargs="+", metavar="FILE")
    add_output_arguments(pack, "STORE", "store folder")
    pack.add_argument("--json", action="store_true")
    add_label_key_arguments(pack)
    pack.set_defaults(func=run_pack)

    gen = sub.add_parser(
        "generate", help="labelled reference data from any ASE calculator",
        description="Run MD, strain, vacancies and surfaces with an ASE calculator and write "
        "labelled extxyz. Resumable: rerun the same command after a kill.\n\nexample:\n"
        "  ml4m.data.generation --calculator emt --system Cu --supercells 2,3 "
        "--temperatures 300,600,1200 -o cu.extxyz", formatter_class=fmt)
    gen.add_argument("--calculator",
                     help="emt, lj, morse, or an import path package.module:Class (default emt)")
    gen.add_argument("--calculator-kwargs", type=json.loads, default=None, metavar="JSON",
                     help='constructor arguments as JSON, e.g. \'{"sigma": 2.3}\'')
    gen.add_argument("--system", help="element (Cu) or alloy Cu-Au (default Cu)")
    gen.add_argument("--config", metavar="YAML", help="settings file (command-line options win)")
    gen.add_argument("--supercells", type=int_list, help="cubic repetitions, e.g. 2,3")
    gen.add_argument("--temperatures", type=float_list, help="K, e.g. 300,600,1200")
    gen.add_argument("--trajectories", type=int, help="bulk trajectories per cell and T")
    gen.add_argument("--frames", type=int, dest="frames_per_trajectory",
                     help="frames per trajectory")
    gen.add_argument("--sample-every", type=int, help="MD steps between frames")
    gen.add_argument("--equilibration-steps", type=int)
    gen.add_argument("--timestep", type=float, dest="timestep_fs", help="fs")
    gen.add_argument("--strained", type=int, dest="n_strained", help="number of strained cells")
    gen.add_argument("--max-strain", type=float)
    gen.add_argument("--fractions", type=float_list, dest="alloy_fractions",
                     help="alloy fractions of the second element, e.g. 0.1,0.5")
    gen.add_argument("--no-vacancy", dest="vacancies", action="store_false", default=None)
    gen.add_argument("--no-surface", dest="surface", action="store_false", default=None)
    gen.add_argument("--seed", type=int)
    add_output_arguments(gen, "FILE", "labelled extxyz file")
    gen.add_argument("--json", action="store_true")
    gen.set_defaults(func=run_generate)


def _summary_table(title: str, s: dict[str, Any]):
    from rich.table import Table

    t = Table(title=title, show_header=False)
    t.add_row("frames", str(s["n_frames"]))
    t.add_row("atoms", f"{s['n_atoms']} ({s['atoms_per_frame']['min']}-{s['atoms_per_frame']['max']} per frame)")
    t.add_row("species", ", ".join(f"{k}: {v}" for k, v in s["species"].items()))
    t.add_row("labels (frames)", ", ".join(f"{k}: {v}" for k, v in s["labels"].items()))
    if s.get("energy_per_atom_ev"):
        e = s["energy_per_atom_ev"]
        t.add_row("energy per atom (eV)", f"{e['min']:.4f} to {e['max']:.4f} (mean {e['mean']:.4f})")
    if s.get("force_rms_ev_per_a") is not None:
        t.add_row("force RMS (eV/A)", f"{s['force_rms_ev_per_a']:.4f} (max |F| {s['force_max_ev_per_a']:.3f})")
    if s.get("pressure_gpa"):
        t.add_row("pressure (GPa)", f"{s['pressure_gpa']['min']:.2f} to {s['pressure_gpa']['max']:.2f}")
    if s.get("config_types"):
        t.add_row("config types", ", ".join(f"{k}: {v}" for k, v in s["config_types"].items()))
    return t


def run_info(args: argparse.Namespace) -> int:
    import itertools

    from ml4m.data import open_frames, summarize

    keys = label_keys_from_args(args)
    # files are read and checked first, stores opened (their frames stream)
    parts = [open_frames(f, keys=keys, format=args.format) for f in args.files]
    summary = summarize(itertools.chain.from_iterable(parts))
    summary["files"] = [dict(path=str(f), **summarize(part)) for f, part in zip(args.files, parts)]
    for record, part in zip(summary["files"], parts):
        if getattr(part, "pair_minima", None) is not None:  # a store's, Angstrom
            record["shortest_distances_a"] = part.pair_minima[1]
    if args.json:
        print_json(summary)
    else:
        out = console()
        for f in summary["files"]:
            out.print(_summary_table(f["path"], f))
        if len(parts) > 1:
            out.print(_summary_table("all files", summary))
    return 0


def run_split(args: argparse.Namespace) -> int:
    from ml4m._fileio import atomic_dir
    from ml4m.data import copy_frames, read_dataset, split_dataset
    from ml4m.outputs import claim_output

    with claim_output(args.output, inputs=[args.file], folder_kind="split",
                      overwrite=args.overwrite) as out:
        ds = read_dataset(args.file, keys=label_keys_from_args(args), format=args.format)
        split, parts = split_dataset(ds, valid=args.valid, test=args.test, seed=args.seed,
                                     by=args.by)
        record = {"source": str(args.file), "seed": args.seed, "by": args.by,
                  "valid": args.valid, "test": args.test, **split.as_dict()}
        with atomic_dir(out, kind="split") as tmp:
            # the frames as the file has them: every array and info key kept
            copy_frames(args.file, {tmp / f"{name}.extxyz": getattr(split, name)
                                    for name in parts}, format=args.format)
            (tmp / "split.json").write_text(json.dumps(record))
    result = {k: len(v) for k, v in parts.items()}
    result["output"] = str(out)
    emit(args.json, result, f"train {result['train']}, valid {result['valid']}, test "
         f"{result['test']} frames written to {out}/")
    return 0


def run_pack(args: argparse.Namespace) -> int:
    from ml4m.data import iter_frames, pack_frames
    from ml4m.outputs import claim_output

    keys = label_keys_from_args(args)
    t0 = time.perf_counter()

    def frames():
        for f in args.files:
            yield from iter_frames(f, keys=keys, format=args.format)

    with claim_output(args.output, inputs=args.files, folder_kind="store",
                      overwrite=args.overwrite) as out:
        store = pack_frames(frames(), out, overwrite=args.overwrite)
    size = sum(p.stat().st_size for p in Path(out).iterdir())
    result = {"output": str(out), "n_frames": store.n_frames, "n_atoms": store.n_atoms,
              "labels": list(store.labels), "bytes": size, "seconds": time.perf_counter() - t0}
    emit(args.json, result, f"packed {store.n_frames} frames ({store.n_atoms} atoms, "
         f"{size / 1e6:.1f} MB) into {out}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from ml4m.data.generation import GenerateConfig, config_from_mapping, generate
    from ml4m.outputs import check_output

    check_output(args.output, inputs=[args.config] if args.config else [])
    base = GenerateConfig()
    if args.config:
        from ml4m.config import load_yaml

        base = config_from_mapping(load_yaml(args.config), source=args.config)
    overrides = {k: getattr(args, k) for k in (
        "calculator", "system", "supercells", "temperatures", "trajectories",
        "frames_per_trajectory", "sample_every", "equilibration_steps", "timestep_fs",
        "n_strained", "max_strain", "alloy_fractions", "vacancies", "surface", "seed")
        if getattr(args, k, None) is not None}
    if args.calculator_kwargs is not None:
        overrides["calculator_kwargs"] = args.calculator_kwargs
    cfg = config_from_mapping(overrides, base, source="command line")
    t0 = time.perf_counter()
    result = generate(cfg, args.output, progress=not args.json, restart=args.overwrite)
    result["seconds"] = time.perf_counter() - t0
    emit(args.json, result, f"wrote {result['n_frames']} frames from {result['n_trajectories']} "
         f"trajectories to {args.output} ({result['seconds']:.0f} s)")
    return 0

"""NequIP (nequip 0.19) as a peer of ml4m's MPNN: inference throughput, energy + forces.

Run with the Python of a separate venv that has nequip (never an ml4m dependency; this
script does not import ml4m)::

    /work/peers/nequip/bin/python benchmarks/nequip_peer.py [--no-aoti]

The protocol is that of ``mpnn_speed.py``: fcc Cu cells of 108 and 864 atoms
(``bulk('Cu', cubic=True, a=3.61).repeat(3 | 6)``) and the 3BPA molecule (first frame of
``shared/data/bpa_xtb/valid.extxyz``, 27 atoms), one torch thread; each repeat evaluates
a freshly rattled copy (0.01 A, seed = repeat) through ``NequIPCalculator`` (one model
call gives energy, forces and, for cells, stress), the first call is a warm-up and the
figure is the median of 5 repeats, as wall and as process CPU seconds. On a machine
shared with other work only the CPU-time figures are comparable between runs.

The model is ``nequip.model.NequIPGNNModel`` with the hyperparameters of nequip's
tutorial config (``configs/tutorial.yaml``: 4 layers, l_max 1, 32 features with both
parities, radial MLP 2 x 64, 8 Bessel functions, p = 6, r_max 5.0 A, float32), without
its optional ZBL pair term, untrained (the cost does not depend on the weights) and
built in memory, one per element set (Cu; H, C, N, O); ``avg_num_neighbors`` is the
mean neighbour count of the first structure. Each model is timed twice: eager PyTorch
(as ml4m runs) and AOTInductor-compiled for CPU (NequIP's recommended inference path:
what ``nequip-compile --mode aotinductor --target ase --device cpu`` does, done here on
the in-memory model with dynamic atom and edge counts; about 2 CPU minutes per model;
``--no-aoti`` skips it). Writes ``benchmarks/results/nequip_speed.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # one process compiles

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("ML4M_SHARED_DATA", HERE.parents[1] / "shared" / "data"))

#: ``NequIPGNNModel`` arguments of nequip's tutorial config (without the ZBL pair term)
HYPERPARAMETERS = {
    "model_dtype": "float32", "r_max": 5.0, "num_layers": 4, "l_max": 1, "parity": True,
    "num_features": 32, "radial_mlp_depth": 2, "radial_mlp_width": 64, "num_bessels": 8,
    "bessel_trainable": False, "polynomial_cutoff_p": 6,
}


def structures() -> dict:
    """``{name: ase.Atoms}``: Cu 108, Cu 864 and (when the shared data exist) 3BPA."""
    import ase.io
    from ase.build import bulk

    out = {f"Cu {4 * n ** 3}": bulk("Cu", cubic=True, a=3.61).repeat(n) for n in (3, 6)}
    bpa = SHARED / "bpa_xtb" / "valid.extxyz"
    if bpa.exists():
        out["3BPA 27"] = ase.io.read(bpa, 0)
    return out


def mean_neighbours(atoms) -> float:
    """Mean number of neighbours of an atom of ``atoms`` within ``r_max``."""
    from ase.neighborlist import neighbor_list

    return len(neighbor_list("i", atoms, HYPERPARAMETERS["r_max"])) / len(atoms)


def eager_calculator(atoms, avg_num_neighbors: float, seed: int = 1):
    """A ``NequIPCalculator`` around a fresh eager NequIP model for the elements of ``atoms``."""
    from ase.data import atomic_numbers
    from nequip.integrations.ase import NequIPCalculator
    from nequip.integrations.utils import basic_transforms
    from nequip.model import NequIPGNNModel
    from nequip.utils.global_state import set_global_state

    set_global_state(allow_tf32=False)
    types = sorted(set(atoms.get_chemical_symbols()), key=atomic_numbers.get)
    model = NequIPGNNModel(seed=seed, type_names=types, avg_num_neighbors=avg_num_neighbors,
                           per_type_energy_scales=1.0, per_type_energy_shifts=0.0,
                           **HYPERPARAMETERS).eval()
    transforms = basic_transforms(model.metadata, HYPERPARAMETERS["r_max"], types,
                                  {t: t for t in types})
    return NequIPCalculator(model, "cpu", transforms=transforms)


def aoti_calculator(eager, atoms, path: Path):
    """``eager``'s model compiled by AOTInductor for CPU (as ``nequip-compile`` does,
    ASE target, 2 to any atoms and edges) on the data of ``atoms``, written to ``path``;
    returns a ``NequIPCalculator`` that runs the compiled package.

    A molecule is given a box (5 A of vacuum, not periodic) for the compilation only: with
    no cell its stress is NaN, which fails nequip's eager-against-compiled check.
    """
    import torch
    from nequip.integrations.ase import NequIPCalculator
    from nequip.scripts._compile_utils import COMPILE_TARGET_DICT, AOTI_ASE_TARGET
    from nequip.utils.aot import aot_export_model
    from nequip.utils.aoti_metadata import (
        NEQUIP_AOTI_INPUTS_KEY, NEQUIP_AOTI_OUTPUTS_KEY, serialize_aoti_keys)
    from nequip.utils.global_state import get_latest_global_state

    target = COMPILE_TARGET_DICT[AOTI_ASE_TARGET]
    if atoms.cell.volume == 0:
        atoms = atoms.copy()
        atoms.center(vacuum=5.0)
    model = eager.model
    metadata = {**model.metadata, **get_latest_global_state(only_metadata_related=True)}
    metadata = {k: str(int(v)) if isinstance(v, bool) else str(v) for k, v in metadata.items()}
    metadata[NEQUIP_AOTI_INPUTS_KEY] = serialize_aoti_keys(target["input"])
    metadata[NEQUIP_AOTI_OUTPUTS_KEY] = serialize_aoti_keys(target["output"])
    dims = {k: torch.export.Dim(f"num_{n}", min=2) for k, n in
            (("graph", "frames"), ("node", "nodes"), ("edge", "edges"))}
    aot_export_model(model=model, device="cpu", input_fields=target["input"],
                     output_fields=target["output"],
                     data=target["data_settings"](dict(eager.atoms_to_data(atoms))),
                     batch_map=target["batch_map_settings"](dims), output_path=str(path),
                     inductor_configs={"aot_inductor.metadata": metadata})
    return NequIPCalculator.from_compiled_model(str(path), device="cpu",
                                                chemical_species_to_atom_type_map=True)


def timed(calc, atoms, repeats: int = 5) -> tuple[float, float]:
    """Median wall and CPU seconds of one energy + forces evaluation."""
    wall, cpu = [], []
    for k in range(repeats + 1):
        a = atoms.copy()
        a.rattle(0.01, seed=k)
        a.calc = calc
        t, c = time.perf_counter(), time.process_time()
        a.get_forces()
        if k:
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    return float(np.median(wall)), float(np.median(cpu))


def cpu_name() -> str:
    """The processor's model name (Linux), else the machine type."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def versions() -> dict:
    """Versions of Python and of the packages that run the model."""
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    out.update({p: version(p) for p in ("nequip", "torch", "e3nn", "ase", "numpy", "matscipy")})
    return out


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-aoti", action="store_true", help="time the eager model only")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "nequip_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    calcs, models, rows = {}, {}, {}  # calculators and model facts per element set
    print("| structure | path | atom-steps/s (wall) | atom-steps/s (CPU time) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="nequip_peer_") as tmp:
        for name, atoms in structures().items():
            elements = " ".join(sorted(set(atoms.get_chemical_symbols())))
            if elements not in calcs:
                avg = mean_neighbours(atoms)
                eager = eager_calculator(atoms, avg)
                calcs[elements] = {"eager": eager}
                models[elements] = {
                    "type_names": eager.model.metadata["type_names"].split(),
                    "n_params": sum(p.numel() for p in eager.model.parameters()),
                    "avg_num_neighbors": avg}
                if not args.no_aoti:
                    t, c = time.perf_counter(), time.process_time()
                    path = Path(tmp) / f"{elements.replace(' ', '')}.nequip.pt2"
                    calcs[elements]["aoti"] = aoti_calculator(eager, atoms, path)
                    models[elements]["aoti_compile_wall_s"] = time.perf_counter() - t
                    models[elements]["aoti_compile_cpu_s"] = time.process_time() - c
            n = len(atoms)
            rows[name] = {"n_atoms": n, "elements": elements}
            for path, calc in calcs[elements].items():
                wall, cpu = timed(calc, atoms, args.repeats)
                rows[name][path] = {"wall_s": wall, "cpu_s": cpu,
                                    "atom_steps_per_s_wall": n / wall,
                                    "atom_steps_per_s_cpu": n / cpu}
                print(f"| {name} | {path} | {n / wall:.0f} | {n / cpu:.0f} |", flush=True)
    result = {"model": "nequip.model.NequIPGNNModel (untrained; eager and AOTInductor)",
              "hyperparameters": HYPERPARAMETERS, "models": models,
              "torch_threads": torch.get_num_threads(), "repeats": args.repeats, "date": date,
              "versions": versions(),
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                          "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
              "structures": rows}
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

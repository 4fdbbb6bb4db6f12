"""Generate the DScribe ACSF reference values used by tests/descriptors/test_acsf_dscribe.py.

Run ONCE in the peer environment (never an ml4m dependency)::

    python3 -m venv /work/peers/featomic
    /work/peers/featomic/bin/pip install featomic==0.6.7 dscribe==2.1.2 ase==3.29.0
    /work/peers/featomic/bin/python benchmarks/make_dscribe_acsf_reference.py

Writes ``tests/descriptors/data/dscribe_acsf.npz`` (structures and DScribe's output)
and ``tests/descriptors/data/dscribe_acsf.json`` (provenance and parameters).
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from pathlib import Path

import ase

import numpy as np
from ase import Atoms
from ase.build import bulk
from dscribe.descriptors import ACSF

OUT = Path(__file__).resolve().parents[1] / "tests" / "descriptors" / "data"

PARAMS = {
    "r_cut": 4.5,
    "g2_params": [[0.5, 2.0], [0.1, 0.0], [1.0, 3.0]],
    "g3_params": [1.0, 2.3],
    "g4_params": [[0.01, 1.0, -1.0], [0.02, 2.0, 1.0], [0.005, 4.0, -1.0]],
    "g5_params": [[0.01, 1.0, 1.0], [0.03, 3.0, -1.0]],
    "species": ["Cu", "Au"],
}


def structures() -> list[Atoms]:
    rng = np.random.default_rng(42)
    periodic = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 2, 2))
    periodic.positions += rng.normal(scale=0.1, size=periodic.positions.shape)
    periodic.numbers[rng.choice(len(periodic), 12, replace=False)] = 79
    small = bulk("Au", "fcc", a=4.0)  # one atom: sees only its own images
    small.positions += 0.0
    cluster = Atoms(
        numbers=[29, 29, 79, 29, 79, 79, 29],
        positions=rng.uniform(0.0, 4.0, size=(7, 3)),
        pbc=False,
    )
    return [periodic, small, cluster]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    frames = structures()
    arrays = {}
    for k, atoms in enumerate(frames):
        periodic = bool(atoms.pbc.any())
        desc = ACSF(
            r_cut=PARAMS["r_cut"], g2_params=PARAMS["g2_params"], g3_params=PARAMS["g3_params"],
            g4_params=PARAMS["g4_params"], g5_params=PARAMS["g5_params"],
            species=PARAMS["species"], periodic=periodic,
        )
        arrays[f"numbers_{k}"] = atoms.numbers
        arrays[f"positions_{k}"] = atoms.positions
        arrays[f"cell_{k}"] = np.asarray(atoms.cell[:])
        arrays[f"pbc_{k}"] = atoms.pbc
        arrays[f"acsf_{k}"] = desc.create(atoms)
    np.savez(OUT / "dscribe_acsf.npz", n_frames=len(frames), **arrays)
    provenance = {
        "generator": "benchmarks/make_dscribe_acsf_reference.py",
        "peer": "dscribe",
        "dscribe_version": importlib.metadata.version("dscribe"),
        "ase_version": ase.__version__,
        "numpy_version": np.__version__,
        "python": platform.python_version(),
        "parameters": PARAMS,
        "frames": ["fcc CuAu 2x2x2 cubic, rattled (periodic)", "fcc Au primitive (1 atom, periodic)",
                   "random 7-atom CuAu cluster (open)"],
    }
    (OUT / "dscribe_acsf.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print("wrote", OUT / "dscribe_acsf.npz")


if __name__ == "__main__":
    main()

"""Sparse GP fits with the default row prefetch threads, in a fresh interpreter each.

The prefetch threads compute design rows (numpy products) while the caller updates the
normal equations (BLAS syrk); with OpenBLAS's own thread pool in every call this killed
the 3BPA fit with SIGSEGV. A crash here fails the test instead of killing pytest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BPA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "bpa_xtb" / "train.extxyz"
if not BPA.exists():
    BPA = Path("/work/shared/data/bpa_xtb/train.extxyz")

SCRIPT = r"""
import json, sys
import numpy as np
from threadpoolctl import threadpool_info

def blas_threads():
    return sorted({lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"})

frames_from = sys.argv[1]
if frames_from == "synthetic":
    from ase import Atoms
    from ase.calculators.lj import LennardJones
    rng = np.random.default_rng(0)
    frames = []
    for k in range(16):  # four species, H C N O, as in 3BPA
        n = 10
        pos = rng.uniform(0, 5.0, size=(n, 3))
        while True:  # no two atoms closer than 1 A
            d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + 10 * np.eye(n)
            if d.min() > 1.0:
                break
            i = np.unravel_index(np.argmin(d), d.shape)[0]
            pos[i] = rng.uniform(0, 5.0, size=3)
        a = Atoms("H4C3N2O", positions=pos)
        a.calc = LennardJones(sigma=1.2, epsilon=0.05, rc=4.0)
        frames.append((a, a.get_potential_energy(), a.get_forces()))
    from ml4m.data.frames import Dataset, Frame
    data = Dataset([Frame.from_atoms(a, energy=e, forces=f) for a, e, f in frames])
else:
    from ml4m.data import read_dataset
    data = read_dataset(frames_from, index=":12")

from ml4m.descriptors import SOAP
from ml4m.models.kernel import SparseGPPotential

before = blas_threads()
model = SparseGPPotential(SOAP(data.species, r_cut=4.0, n_max=4, l_max=3), n_sparse=12,
                          zeta=2, sigma_stress=None, uncertainty="posterior",
                          linear_baseline=False)
model.fit(data)
pred = model.predict(data)
print(json.dumps({"before": before, "after": blas_threads(),
                  "finite": bool(np.all(np.isfinite(pred.forces))),
                  "species": sorted(data.species)}))
"""


def _fit_in_subprocess(source: str) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2")  # the crashing setup
    run = subprocess.run([sys.executable, "-c", SCRIPT, source], capture_output=True, text=True,
                         timeout=300, env=env)
    assert run.returncode == 0, f"exit {run.returncode} (negative: killed by signal): " \
                                f"{run.stderr[-800:]}"
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_gp_fit_with_prefetch_threads_on_four_species():
    out = _fit_in_subprocess("synthetic")
    assert out["species"] == ["C", "H", "N", "O"] and out["finite"]
    assert out["after"] == out["before"]  # the pool gave the BLAS threads back


@pytest.mark.shared_data
@pytest.mark.skipif(not BPA.exists(), reason="shared data set bpa_xtb not present")
def test_gp_fit_with_prefetch_threads_on_3bpa_frames():
    out = _fit_in_subprocess(str(BPA))
    assert out["species"] == ["C", "H", "N", "O"] and out["finite"]
    assert out["after"] == out["before"]

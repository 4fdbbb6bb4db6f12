"""Exported network potentials: plain PyTorch (without ml4m) reproduces the model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from ase.build import bulk, molecule

from ml4m.data import Frame
from ml4m.errors import ConfigError
from ml4m.models.export import export_potential
from ml4m.models.torch_potential import batch_graph

from .toy_potentials import emt_cu_frames

#: loads the program with ml4m made unimportable, evaluates energies and autograd forces
RUNNER = r"""
import json, sys
import importlib.abc
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "ml4m" or name.startswith("ml4m."):
            raise ImportError("ml4m is not available here")
sys.meta_path.insert(0, Refuse())
import numpy as np, torch
program = torch.export.load(sys.argv[1]).module()
inputs = np.load(sys.argv[2])
dtype = torch.float64 if inputs["positions"].dtype == np.float64 else torch.float32
pos = torch.as_tensor(inputs["positions"]).requires_grad_(True)
args = [pos] + [torch.as_tensor(inputs[k]) for k in ("numbers", "cell", "batch", "edge_index", "shifts")]
energy, energies = program(*args)
forces = -torch.autograd.grad(energy.sum(), pos)[0]
print(json.dumps({"energy": energy.tolist(), "forces": forces.tolist(),
                  "ml4m_loaded": any(m.startswith("ml4m") for m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def mpnn():
    from ml4m.models.mpnn import MPNN

    model = MPNN(r_max=4.0, n_radial=4, l_max=2, n_channels=4, correlation=2, radial_mlp=8,
                 seed=0, dtype="float64")
    model.prepare(emt_cu_frames(3))
    return model


def _molecules():
    """Ethanol (to trace with), then a batch of other sizes where each structure lacks
    an element: a rattled ethanol, water (no C), methane (no O)."""
    out = []
    for k, name in enumerate(("CH3CH2OH", "CH3CH2OH", "H2O", "CH4")):
        atoms = molecule(name)
        atoms.positions += 0.05 * np.random.default_rng(k).normal(size=atoms.positions.shape)
        out.append(Frame.from_atoms(atoms))
    return out[:1], out[1:]


def _cu():
    """One Cu cell to trace with; a bigger cell and a non-periodic cluster to run."""
    big = bulk("Cu", cubic=True, a=3.6).repeat((2, 2, 1))
    big.rattle(0.05, seed=1)
    cluster = bulk("Cu", cubic=True, a=3.6)
    cluster.pbc = False
    return emt_cu_frames(1), [Frame.from_atoms(big), Frame.from_atoms(cluster)]


def _squeezed_cu():
    """A compressed, rattled Cu cell: nearest neighbours inside the repulsive core."""
    atoms = bulk("Cu", cubic=True, a=3.0).repeat((2, 1, 1))
    atoms.rattle(0.1, seed=2)
    return Frame.from_atoms(atoms)


@pytest.fixture(scope="module", params=["mpnn", "bpnn", "mpnn+core", "mpnn_element_mix"])
def network(request, mpnn):
    """A small network of each exportable kind, with structures to trace and to run; the
    MPNN with its repulsive core (as ``ml4m fit`` saves it), run where the core acts; and
    an MPNN with per-element and per-path channel maps on molecules that lack an
    element."""
    if request.param == "mpnn":
        return mpnn, *_cu()
    if request.param == "mpnn_element_mix":
        from ml4m.models.mpnn import MPNN

        trace, run = _molecules()
        model = MPNN(r_max=4.0, n_radial=4, l_max=2, n_channels=4, correlation=2,
                     radial_mlp=8, element_mix=True, path_mix=True, seed=0,
                     dtype="float64")
        model.prepare(trace + run)
        return model, trace, run
    if request.param == "mpnn+core":
        from ml4m.models.baseline import Baselined, PairRepulsion

        core = PairRepulsion().fit(emt_cu_frames(3))
        trace, run = _cu()
        run = run + [_squeezed_cu()]
        assert np.abs(core.evaluate(run).forces).max() > 0.1  # the core acts, eV/A
        return Baselined.from_fitted(mpnn, core), trace, run
    from ml4m.models.bpnn import BPNN

    trace, run = _molecules()
    model = BPNN(r_cut=4.0, hidden=(8, 8), seed=0)
    model.prepare(trace + run)
    return model, trace, run


def test_plain_pytorch_reproduces_energies_and_forces(network, tmp_path):
    """Traced on one structure, the program runs other sizes (several structures in one
    batch, some without an element of the model) without ml4m and gives the model's
    energies and forces."""
    model, trace, frames = network
    path = tmp_path / "model.pt2"
    meta = export_potential(model, path, trace)
    net = getattr(model, "model_", model)
    assert meta["species"] == list(net.species_)
    assert meta["cutoff"] == pytest.approx(net.cutoff)
    data = batch_graph(frames, net.cutoff, net.species_)
    np.savez(tmp_path / "in.npz", positions=data["positions"].numpy(),
             numbers=np.concatenate([f.numbers for f in frames]).astype(np.int64),
             cell=data["cell"].numpy(), batch=data["batch"].numpy(),
             edge_index=data["edge_index"].numpy(), shifts=data["shifts"].numpy())
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(path), str(tmp_path / "in.npz")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not got["ml4m_loaded"]
    ref = model.predict(frames)
    assert np.abs(ref.forces).max() > 1e-3  # forces to compare, not zeros
    np.testing.assert_allclose(got["energy"], ref.energy, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got["forces"], ref.forces, rtol=1e-8, atol=1e-10)


def test_non_network_models_are_refused(tmp_path):
    from ml4m.descriptors import make_descriptor
    from ml4m.models.linear import LinearACE

    model = LinearACE(make_descriptor("ace", species=[1, 8], r_cut=3.0, n_max=2, l_max=1))
    with pytest.raises(ConfigError, match="only network potentials"):
        export_potential(model, tmp_path / "x.pt2", [molecule("H2O")])
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_baseline_without_a_torch_form_is_refused(mpnn, tmp_path):
    """A network learnt on an external calculator's residuals does not export (the
    program would miss the calculator); a core beyond the cutoff neither."""
    from ml4m.models.baseline import Baselined, CalculatorBaseline, PairRepulsion

    frames = emt_cu_frames(3)
    emt = CalculatorBaseline(calculator="emt").fit(frames)
    with pytest.raises(ConfigError, match="CalculatorBaseline baseline does not export"):
        export_potential(Baselined.from_fitted(mpnn, emt), tmp_path / "x.pt2")
    wide = PairRepulsion(r_in={"Cu-Cu": 4.5}).fit(frames)
    with pytest.raises(ConfigError, match="beyond the network's cutoff"):
        export_potential(Baselined.from_fitted(mpnn, wide), tmp_path / "x.pt2")
    assert not list(tmp_path.iterdir())


def test_cli_export_writes_a_program_and_refuses_a_linear_model(mpnn, tmp_path):
    """`ml4m export` on a saved network: the program and its JSON; a linear model: exit 2,
    nothing written."""
    from ml4m.cli.main import main
    from ml4m.descriptors import make_descriptor
    from ml4m.models.linear import LinearACE

    mpnn.save(tmp_path / "net.ml4m")
    assert main(["export", str(tmp_path / "net.ml4m"), "-o", str(tmp_path / "net.pt2")]) == 0
    meta = json.loads((tmp_path / "net.pt2.json").read_text())
    assert meta["inputs"][:2] == ["positions", "numbers"] and meta["species"] == [29]
    assert (tmp_path / "net.pt2").stat().st_size > 0
    linear = LinearACE(make_descriptor("ace", species=[29], r_cut=3.0, n_max=2, l_max=1))
    linear.fit(emt_cu_frames(12))
    linear.save(tmp_path / "lin.ml4m")
    assert main(["export", str(tmp_path / "lin.ml4m"), "-o", str(tmp_path / "lin.pt2")]) == 2
    assert not (tmp_path / "lin.pt2").exists() and not (tmp_path / "lin.pt2.json").exists()

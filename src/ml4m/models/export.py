"""Export a network potential to a file that plain PyTorch loads and runs (no ml4m).

:func:`export_potential` traces the module of a fitted
:class:`~ml4m.models.torch_potential.TorchPotential` with :func:`torch.export.export`
(dynamic numbers of atoms, edges and structures) and writes the program with
:func:`torch.export.save`. The file holds the graph of ATen operations and the weights,
no Python code of ml4m, and loads with ``torch.export.load`` anywhere the same PyTorch
release is installed:

.. code-block:: python

    import torch

    program = torch.export.load("model.pt2").module()
    positions.requires_grad_(True)
    energy, energies = program(positions, numbers, cell, batch, edge_index, shifts)
    forces = -torch.autograd.grad(energy.sum(), positions)[0]

Inputs (``dtype`` the model's float type, ``int64`` indices):

* ``positions`` (N, 3), Angstrom; ``numbers`` (N,) atomic numbers;
* ``cell`` (B, 3, 3), Angstrom (zeros for a structure without periodic directions);
* ``batch`` (N,) structure of each atom; ``edge_index`` (2, E) ``[i, j]`` for every
  ordered pair closer than the cutoff (both directions, as a full neighbour list of ASE
  or vesin gives), ``shifts`` (E, 3) integer image of ``j``: ``r_ij = r_j + shifts @
  cell - r_i``.

Outputs: ``energy`` (B,) and per-atom ``energies`` (N,), eV, of the network plus, for a
model inside its repulsive core (``ml4m fit``'s default), the core's ZBL pair energies.
Forces (eV/Angstrom) and the stress come by autograd, as in ml4m itself. The cutoff
(Angstrom), the species and the input order are stored in the program's metadata
(``program.module().meta`` is not kept by torch; use :func:`read_export_metadata` or the
JSON written beside the file).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ml4m._fileio import atomic_path
from ml4m.errors import ConfigError, NotFittedError

__all__ = ["export_potential", "read_export_metadata", "example_structure", "EXPORT_INPUTS"]

#: the exported program's positional inputs, in order
EXPORT_INPUTS = ("positions", "numbers", "cell", "batch", "edge_index", "shifts")


def _parts(model: Any):
    """The network of ``model`` and the repulsive core exported with it (or None).

    Raises
    ------
    ConfigError
        ``model`` is neither an exportable network nor one inside a
        :class:`~ml4m.models.baseline.Baselined` whose baseline is a
        :class:`~ml4m.models.baseline.PairRepulsion` (an external calculator or label
        baseline has no torch program), or the core reaches beyond the network's cutoff
        (its pairs would miss the edge list).
    NotFittedError
        The model has no network yet.
    """
    from ml4m.models.baseline import Baselined, PairRepulsion
    from ml4m.models.torch_potential import TorchPotential

    core = None
    if isinstance(model, Baselined):
        baseline = getattr(model, "baseline_", model.baseline)
        if not isinstance(baseline, PairRepulsion):
            raise ConfigError(f"a network with a {type(baseline).__name__} baseline does not "
                              "export: only the repulsive core (PairRepulsion) has a torch form")
        core, model = baseline, getattr(model, "model_", model.model)
    if not (isinstance(model, TorchPotential) and model.exportable):
        raise ConfigError("only network potentials (mpnn, bpnn) export to a PyTorch "
                          f"program; this model is {type(model).__name__}")
    if not hasattr(model, "module_"):
        raise NotFittedError("the model has no network yet: fit it first")
    if core is not None and core.range > model.cutoff:
        raise ConfigError(f"the repulsive core reaches {core.range:.3f} A, beyond the "
                          f"network's cutoff {model.cutoff:.3f} A: it cannot share its edges")
    return model, core


def _wrapper(model: Any, core: Any = None):
    """The model's module (plus ``core``'s pair energies, a fitted PairRepulsion, when
    given) behind the plain-tensor signature of :data:`EXPORT_INPUTS`."""
    import torch

    from ml4m.models.torch_potential import edge_vectors

    table = torch.full((119,), -1, dtype=torch.int64)
    table[torch.as_tensor(np.asarray(model.species_, dtype=np.int64))] = torch.arange(
        len(model.species_))

    class Exported(torch.nn.Module):
        def __init__(self, module: torch.nn.Module, core: torch.nn.Module | None) -> None:
            super().__init__()
            self.module = module
            self.core = core
            self.register_buffer("species_of_number", table)

        def forward(self, positions, numbers, cell, batch, edge_index, shifts):
            data = {"positions": positions, "cell": cell, "batch": batch,
                    "species": self.species_of_number[numbers], "edge_index": edge_index,
                    "shifts": shifts.to(positions.dtype),
                    "n_atoms": torch.bincount(batch, minlength=cell.shape[0])}
            out = self.module(data)
            energy, energies = out["energy"], out["energies"]
            if self.core is not None:
                pair = self.core(edge_vectors(data), data["species"], edge_index)
                energies = energies + pair
                energy = energy.index_add(0, batch, pair)
            return energy, energies

    module = copy.deepcopy(model.module_)
    with torch.no_grad():  # every tensor its own contiguous storage: views, expanded or
        for tensor in list(module.parameters()) + list(module.buffers()):  # shared ones
            tensor.data = tensor.data.clone().contiguous()  # do not serialise
    core_module = None if core is None else core.torch_module(model.species_)
    return Exported(module, core_module).eval()


def export_potential(model: Any, path: str | os.PathLike, example: Any = None) -> dict[str, Any]:
    """Write ``model``'s network as a ``torch.export`` program, plus its metadata as JSON.

    Parameters
    ----------
    model : TorchPotential or Baselined
        A fitted network potential whose kind is ``exportable`` (MPNN, BPNN), alone or
        with its repulsive core (a :class:`~ml4m.models.baseline.Baselined` network
        whose baseline is a :class:`~ml4m.models.baseline.PairRepulsion`, as ``ml4m
        fit`` makes by default): the program then adds the core's pair energies.
    path : str or path-like
        The program file (``.pt2``); ``{path}.json`` receives the metadata.
    example : sequence of Frame or ase.Atoms, optional
        Structures to trace with (any; the exported program accepts other sizes).
        Default: :func:`example_structure` of the model's elements.

    Returns
    -------
    dict
        The metadata: ``inputs``, ``outputs``, ``species`` (atomic numbers),
        ``cutoff`` (Angstrom), ``dtype``, ``torch`` (the version that wrote it).

    Raises
    ------
    ConfigError
        The model is not an exportable network potential (see :func:`_parts`).
    NotFittedError
        The model has no module yet.
    """
    import torch
    from torch.export import Dim

    from ml4m.models.base import as_frames
    from ml4m.models.torch_potential import batch_graph

    kind = type(model).__name__
    model, core = _parts(model)
    if example is None:
        example = [example_structure([int(z) for z in model.species_], model.cutoff)]
    frames = as_frames(example)
    frames = frames * 2 if len(frames) == 1 else frames  # sizes 0 and 1 trace as constants
    data = batch_graph(frames, model.cutoff, model.species_, "cpu", model.dtype)
    numbers = torch.as_tensor(np.concatenate([f.numbers for f in frames]).astype(np.int64))
    args = (data["positions"], numbers, data["cell"], data["batch"], data["edge_index"],
            data["shifts"])
    wrapper = _wrapper(model, core).to("cpu")
    atoms, edges, structures = Dim("atoms", min=1), Dim("edges", min=1), Dim("structures", min=1)
    dynamic = ({0: atoms}, {0: atoms}, {0: structures}, {0: atoms}, {1: edges}, {0: edges})
    program = torch.export.export(wrapper, args, dynamic_shapes=dynamic, strict=False)
    meta = {"format": "ml4m-torch-export", "inputs": list(EXPORT_INPUTS),
            "outputs": ["energy", "energies"], "species": [int(z) for z in model.species_],
            "cutoff": float(model.cutoff), "dtype": str(model.dtype),
            "torch": torch.__version__, "kind": kind, "network": type(model).__name__,
            "core": None if core is None else dict(core.r_in_)}
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.export.save(program, tmp)
    with atomic_path(Path(f"{path}.json")) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=1))
    return meta


def example_structure(species, cutoff: float):
    """A periodic structure holding every element of ``species`` (atomic numbers) with
    neighbours inside ``cutoff`` (Angstrom): something to trace with when the user gives
    none (the traced program accepts any other structure)."""
    from ase import Atoms

    n = max(4, len(species))
    spacing = min(2.0, 0.45 * cutoff)
    grid = np.array([(x, y, z) for x in range(2) for y in range(2) for z in range(-(-n // 4))])
    positions = spacing * grid[:n] + 0.05 * np.random.default_rng(0).normal(size=(n, 3))
    numbers = [species[k % len(species)] for k in range(n)]
    cell = spacing * np.diag([2, 2, -(-n // 4)])
    return Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)


def read_export_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata :func:`export_potential` wrote beside ``path`` (``{path}.json``)."""
    return json.loads(Path(f"{path}.json").read_text())

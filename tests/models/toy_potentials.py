"""A toy torch potential for the tests of the torch potential contract and of the trainer
(a Morse pair energy per species pair with per-species reference energies), and the
labelled Cu frames they train on."""

from __future__ import annotations

import numpy as np
import torch
from ase.build import bulk
from ase.calculators.emt import EMT

from ml4m.data import Frame
from ml4m.models.torch_potential import TorchPotential, edge_vectors
from ml4m.validation import float_from, one_of


class MorsePairModule(torch.nn.Module):
    """Per-atom energy ``e0[species] + 1/2 sum over neighbours of a Morse pair`` (eV),
    depth and equilibrium distance per species pair, a smooth cosine cutoff."""

    def __init__(self, n_species: int, cutoff: float, e0=None) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("e0", torch.as_tensor(np.zeros(n_species) if e0 is None else e0))
        self.depth = torch.nn.Parameter(0.3 + 0.1 * torch.rand(n_species, n_species))
        self.r0 = torch.nn.Parameter(2.4 + 0.1 * torch.rand(n_species, n_species))
        self.alpha = torch.nn.Parameter(torch.tensor(1.5))

    def forward(self, data):
        i, j = data["edge_index"]
        r = torch.linalg.vector_norm(edge_vectors(data), dim=1)
        si, sj = data["species"][i], data["species"][j]
        d = 0.5 * (self.depth[si, sj] + self.depth[sj, si])
        r0 = 0.5 * (self.r0[si, sj] + self.r0[sj, si])
        x = torch.exp(-self.alpha * (r - r0))
        fc = 0.5 * (torch.cos(torch.pi * r / self.cutoff) + 1)
        energies = self.e0[data["species"]].index_add(0, i, 0.5 * d * (x * x - 2 * x) * fc)
        energy = torch.zeros(len(data["n_atoms"]), dtype=r.dtype, device=r.device)
        return {"energy": energy.index_add(0, data["batch"], energies), "energies": energies}


class ToyPair(TorchPotential):
    """The :class:`MorsePairModule` as a potential (E0s from :meth:`prepare`'s statistics)."""

    kind = "test_toy_pair"
    param_checks = {"r_cut": float_from(1.0), "device": one_of("cpu", "cuda"),
                    "dtype": one_of("float64", "float32")}

    def __init__(self, r_cut: float = 4.0, device: str = "cpu", dtype: str = "float64") -> None:
        self.r_cut = r_cut
        self.device = device
        self.dtype = dtype

    @property
    def cutoff(self) -> float:
        return self.r_cut

    def build_module(self):
        stats = getattr(self, "stats_", None)
        e0 = None if stats is None else stats["e0"] + stats["shift"]
        return MorsePairModule(len(self.species_), self.r_cut, e0)


def emt_cu_frames(n: int, seed: int = 0, repeat=(2, 1, 1), source: str | None = None
                  ) -> list[Frame]:
    """``n`` cubic fcc Cu cells (a = 3.6 A, strained by 2% normal noise) repeated
    ``repeat`` times and rattled by 0.08 A, labelled by EMT (energy, forces, stress);
    frame ``k`` comes from ``(source, k)`` when ``source`` is given."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.6 * (1 + 0.02 * rng.normal()), cubic=True) * repeat
        atoms.rattle(0.08, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        frames.append(Frame.from_atoms(atoms, energy=atoms.get_potential_energy(),
                                       forces=atoms.get_forces(), stress=atoms.get_stress(),
                                       source=None if source is None else (source, k)))
    return frames


def write_emt_cu_split(directory, n_train: int, n_valid: int, repeat=(2, 1, 1),
                       valid_repeat=None):
    """``train.extxyz`` and ``valid.extxyz`` of :func:`emt_cu_frames` (seeds 0 and 1) in
    ``directory``, which is returned."""
    from ml4m.data import Dataset, write_extxyz

    write_extxyz(Dataset(emt_cu_frames(n_train, 0, repeat)), directory / "train.extxyz")
    write_extxyz(Dataset(emt_cu_frames(n_valid, 1, valid_repeat or repeat)),
                 directory / "valid.extxyz")
    return directory

"""SOAP in PyTorch: the same features on CPU or CUDA, differentiable by autograd.

:class:`TorchSOAP` evaluates exactly the power spectrum of :class:`~ml4m.descriptors.SOAP`
(same radial table, harmonics and feature order) from torch tensors, so that a model
built on it gets forces and stress by autograd, on any device torch supports. The
neighbour list is built on the CPU (vesin) from detached positions; the pair vectors
``r_j + shift @ cell - r_i`` are then formed in torch, so gradients flow to
``positions`` and ``cell``.

>>> import torch
>>> from ase.build import bulk
>>> from ml4m.descriptors import SOAP
>>> soap = SOAP(["Cu"], r_cut=4.0, n_max=3, l_max=2)
>>> X = TorchSOAP(soap).features(bulk("Cu", "fcc", a=3.6))
>>> tuple(X.shape)
(1, 18)
"""

from __future__ import annotations

import numpy as np
import torch

from ml4m.data.frames import Frame
from ml4m.data.neighbors import neighbor_list
from ml4m.descriptors.soap import SOAP
from ml4m.descriptors.spherical_harmonics import real_spherical_harmonics

__all__ = ["TorchSOAP"]


class TorchSOAP(torch.nn.Module):
    """Torch evaluation of a :class:`~ml4m.descriptors.SOAP` descriptor.

    Parameters
    ----------
    soap : SOAP
        The descriptor (hyperparameters, species, radial table).
    device : str or torch.device, default="cpu"
        Where to compute (``"cuda"`` for a GPU).
    dtype : torch.dtype, default=torch.float64
        Floating-point type.
    """

    def __init__(self, soap: SOAP, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.soap = soap
        table = soap.table
        self.step = table.step
        for q, arr in enumerate(table._a):
            self.register_buffer(f"a{q}", torch.as_tensor(arr, dtype=dtype, device=device))
        self.register_buffer("k1", torch.as_tensor(soap._k1, device=device))
        self.register_buffer("k2", torch.as_tensor(soap._k2, device=device))
        self.register_buffer("weight", torch.as_tensor(soap._weight[:, 0], dtype=dtype,
                                                       device=device))
        L = soap.l_max + 1
        self.register_buffer("lidx", torch.as_tensor(np.repeat(np.arange(L), 2 * np.arange(L)
                                                               + 1), device=device))

    def _radial(self, r: torch.Tensor) -> torch.Tensor:
        s = r / self.step
        k = torch.clamp(s.detach().floor().long(), max=self.a0.shape[0] - 1)
        t = (s - k)[:, None]
        return self.a0[k] + t * (self.a1[k] + t * (self.a2[k] + t * self.a3[k]))

    def forward(self, positions: torch.Tensor, cell: torch.Tensor, species_index: torch.Tensor,
                i: torch.Tensor, j: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
        """Features ``(n_atoms, n_features)`` from pair indices and periodic shifts.

        Parameters
        ----------
        positions : Tensor of shape (n_atoms, 3), Angstrom
        cell : Tensor of shape (3, 3), Angstrom (rows are cell vectors)
        species_index : Tensor of shape (n_atoms,), int64
            Species channel of each atom (position in ``soap.species``).
        i, j : Tensor of shape (n_pairs,), int64
            Full neighbour list (both directions).
        shifts : Tensor of shape (n_pairs, 3)
            Cell shifts of ``j``.
        """
        soap = self.soap
        n, L, S = soap.n_max, soap.l_max + 1, soap.n_species
        N = positions.shape[0]
        vec = positions[j] - positions[i] + shifts.to(positions.dtype) @ cell
        r = torch.linalg.vector_norm(vec, dim=1)
        R = self._radial(r).reshape(-1, n, L)[:, :, self.lidx]
        Y, _ = real_spherical_harmonics(vec, soap.l_max)
        A = (R * Y[:, None, :]).reshape(len(r), -1)
        c = torch.zeros(N * S, A.shape[1], dtype=A.dtype, device=A.device)
        c = c.index_add(0, i * S + species_index[j], A).reshape(N, S * n, L * L)
        blocks = []
        for l in range(L):
            blk = c[:, :, l * l:(l + 1) * (l + 1)]
            full = blk @ blk.transpose(1, 2)
            blocks.append(full[:, self.k1, self.k2])
        X = torch.stack(blocks, 1) * self.weight
        X = X.reshape(N, -1)
        if soap.normalize:
            X = X / torch.linalg.vector_norm(X, dim=1, keepdim=True).clamp_min(1e-300)
        if soap.average:
            X = X.mean(dim=0, keepdim=True)
        return X

    def features(self, frame, requires_grad: bool = False):
        """Features of one structure (Frame or ase.Atoms) as a tensor on the module's device.

        With ``requires_grad`` the returned tensor is differentiable with respect to the
        tensors ``positions`` and ``cell`` stored as attributes ``last_positions`` and
        ``last_cell``.
        """
        if not isinstance(frame, Frame):
            frame = Frame.from_atoms(frame)
        idx = self.soap._check_frame(frame, 0)
        nl = neighbor_list(frame, self.soap.r_cut, full_list=True)
        dev, dt = self.a0.device, self.a0.dtype
        pos = torch.tensor(frame.positions, dtype=dt, device=dev, requires_grad=requires_grad)
        cell = torch.tensor(frame.cell, dtype=dt, device=dev, requires_grad=requires_grad)
        self.last_positions, self.last_cell = pos, cell

        def t(a):
            return torch.as_tensor(a, device=dev)

        return self(pos, cell, t(idx), t(nl.i), t(nl.j), t(nl.shifts))

"""SOAP and ACE in PyTorch: the same features on CPU or CUDA, differentiable by autograd.

:class:`TorchSOAP` and :class:`TorchACE` evaluate exactly the features of
:class:`~ml4m.descriptors.SOAP` and :class:`~ml4m.descriptors.ACE` (same radial tables,
harmonics, couplings and feature order) from torch tensors, so that a model built on
them gets forces and stress by autograd, on any device torch supports. The neighbour
list is built on the CPU (vesin) from detached positions; the pair vectors
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
from ml4m.descriptors.ace import ACE
from ml4m.descriptors.base import Descriptor
from ml4m.descriptors.coupling import real_clebsch_gordan
from ml4m.descriptors.radial import HermiteTable
from ml4m.descriptors.soap import SOAP
from ml4m.descriptors.spherical_harmonics import real_spherical_harmonics

__all__ = ["TorchSOAP", "TorchACE"]


class _TorchDescriptor(torch.nn.Module):
    """Shared plumbing: the radial spline as buffers, the density ``A``, ``features()``."""

    def __init__(self, desc: Descriptor, table: HermiteTable, n_max: int, l_max: int,
                 device: str | torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.desc, self.n_max, self.l_max = desc, n_max, l_max
        self.step = table.step
        for q, arr in enumerate(table._a):
            self.register_buffer(f"a{q}", torch.as_tensor(arr, dtype=dtype, device=device))
        L = l_max + 1
        self.register_buffer("lidx", torch.as_tensor(np.repeat(np.arange(L), 2 * np.arange(L)
                                                               + 1), device=device))

    def _radial(self, r: torch.Tensor) -> torch.Tensor:
        s = r / self.step
        k = torch.clamp(s.detach().floor().long(), max=self.a0.shape[0] - 1)
        t = (s - k)[:, None]
        return self.a0[k] + t * (self.a1[k] + t * (self.a2[k] + t * self.a3[k]))

    def _table_coordinates(self, r, species_index, i, j) -> torch.Tensor:
        """Distances as the numpy descriptor reads its (possibly stacked) radial tables."""
        return r

    def density(self, positions, cell, species_index, i, j, shifts) -> torch.Tensor:
        """``A[i, a * n_max + n, lm] = sum_j R_nl(r_ij) Y_lm(r_ij)`` (the numpy layout)."""
        n, L, S = self.n_max, self.l_max + 1, self.desc.n_species
        N = positions.shape[0]
        vec = positions[j] - positions[i] + shifts.to(positions.dtype) @ cell
        r = torch.linalg.vector_norm(vec, dim=1)
        R = self._radial(self._table_coordinates(r, species_index, i, j)).reshape(-1, n, L)[:, :, self.lidx]
        Y, _ = real_spherical_harmonics(vec, self.l_max)
        A = (R * Y[:, None, :]).reshape(len(r), -1)
        c = torch.zeros(N * S, A.shape[1], dtype=A.dtype, device=A.device)
        return c.index_add(0, i * S + species_index[j], A).reshape(N, S * n, L * L)

    def features(self, frame, requires_grad: bool = False) -> torch.Tensor:
        """Features of one structure (Frame or ase.Atoms) on the module's device.

        With ``requires_grad`` use :meth:`features_and_inputs` to get the ``positions``
        and ``cell`` tensors the result is differentiable with respect to.
        """
        return self.features_and_inputs(frame, requires_grad)[0]

    def features_and_inputs(self, frame, requires_grad: bool = True
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features of one structure and the input tensors they were computed from.

        Returns
        -------
        features : Tensor of shape (n_atoms, n_features), or (1, n_features) if averaged
        positions : Tensor of shape (n_atoms, 3), Angstrom
        cell : Tensor of shape (3, 3), Angstrom
            Leaf tensors (``requires_grad`` as asked): autograd of anything computed
            from the features reaches them. Nothing is kept on the module between calls.
        """
        if not isinstance(frame, Frame):
            frame = Frame.from_atoms(frame)
        idx = self.desc._check_frame(frame, 0)
        nl = neighbor_list(frame, self.desc.r_cut, full_list=True)
        dev, dt = self.a0.device, self.a0.dtype
        pos = torch.tensor(frame.positions, dtype=dt, device=dev, requires_grad=requires_grad)
        cell = torch.tensor(frame.cell, dtype=dt, device=dev, requires_grad=requires_grad)

        def t(a):
            return torch.as_tensor(a, device=dev)

        X = self(pos, cell, t(idx), t(nl.i), t(nl.j), t(nl.shifts))
        return (X.mean(dim=0, keepdim=True) if self.desc.average else X), pos, cell


class TorchSOAP(_TorchDescriptor):
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
        super().__init__(soap, soap.table, soap.n_max, soap.l_max, device, dtype)
        self.register_buffer("k1", torch.as_tensor(soap._k1, device=device))
        self.register_buffer("k2", torch.as_tensor(soap._k2, device=device))
        self.register_buffer("weight", torch.as_tensor(soap._weight[:, 0], dtype=dtype,
                                                       device=device))

    def forward(self, positions: torch.Tensor, cell: torch.Tensor, species_index: torch.Tensor,
                i: torch.Tensor, j: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
        """Per-atom features ``(n_atoms, n_features)`` from a full neighbour list.

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
        c = self.density(positions, cell, species_index, i, j, shifts)
        blocks = []
        for l in range(self.l_max + 1):
            blk = c[:, :, l * l:(l + 1) * (l + 1)]
            full = blk @ blk.transpose(1, 2)
            blocks.append(full[:, self.k1, self.k2])
        X = (torch.stack(blocks, 1) * self.weight).reshape(c.shape[0], -1)
        if self.desc.normalize:
            X = X / torch.linalg.vector_norm(X, dim=1, keepdim=True).clamp_min(1e-300)
        return X


class TorchACE(_TorchDescriptor):
    """Torch evaluation of the :class:`~ml4m.descriptors.ACE` basis B.

    Parameters
    ----------
    ace : ACE
        The descriptor (basis, species, radial table).
    device : str or torch.device, default="cpu"
        Where to compute.
    dtype : torch.dtype, default=torch.float64
        Floating-point type.
    """

    def __init__(self, ace: ACE, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__(ace, ace.table, ace.n_max, ace.l_max, device, dtype)
        self.register_buffer("pair_type", torch.as_tensor(ace._pair_type, device=device))
        self.segment = ace._segment
        self.groups = []
        for nu, ls, L, cols, ks in ace._group_basis():
            cgs = []
            if nu >= 3:
                cgs.append(torch.tensor(real_clebsch_gordan(ls[0], ls[1], L), dtype=dtype,
                                           device=device))
            if nu == 4:
                cgs.append(torch.tensor(real_clebsch_gordan(ls[2], ls[3], L), dtype=dtype,
                                           device=device))
            self.groups.append((nu, ls, torch.as_tensor(cols, device=device),
                                torch.as_tensor(ks, device=device), cgs))

    def _table_coordinates(self, r, species_index, i, j) -> torch.Tensor:
        if not self.segment:
            return r
        return r + self.segment * self.pair_type[species_index[i], species_index[j]].to(r.dtype)

    def forward(self, positions: torch.Tensor, cell: torch.Tensor, species_index: torch.Tensor,
                i: torch.Tensor, j: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
        """Per-atom basis ``B (n_atoms, n_features)``; arguments as :meth:`TorchSOAP.forward`."""
        A = self.density(positions, cell, species_index, i, j, shifts)
        if self.desc.agnostic_from:  # the element-agnostic channels: the sum over species
            N, _, LM = A.shape
            A = torch.cat([A, A.reshape(N, self.desc.n_species, self.n_max, LM).sum(1)], dim=1)
        out = torch.zeros(A.shape[0], self.desc.n_features, dtype=A.dtype, device=A.device)

        def x(t, ks, l):
            return A[:, ks[:, t], l * l:(l + 1) * (l + 1)]

        for nu, ls, cols, ks, cgs in self.groups:
            xs = [x(t, ks, l) for t, l in enumerate(ls)]
            if nu == 1:
                out[:, cols] = xs[0][..., 0]
                continue
            if nu == 2:
                left, right = xs
            elif nu == 3:
                left, right = torch.einsum("rfa,rfb,abM->rfM", xs[0], xs[1], cgs[0]), xs[2]
            else:
                left = torch.einsum("rfa,rfb,abM->rfM", xs[0], xs[1], cgs[0])
                right = torch.einsum("rfa,rfb,abM->rfM", xs[2], xs[3], cgs[1])
            out[:, cols] = (left * right).sum(-1)
        return out

"""The torch module of :class:`~ml4m.models.mpnn.MPNN`: embedding, interactions, readouts.

One interaction ``t`` updates the scalar state ``h`` (N, K) of every atom:

1. atomic basis ``A[i, k, lm] = 1/avg_neighbors sum_j R_kl(r_ij) Y_lm(r_ij) (W h)[j, k]``,
   with ``R`` a bias-free radial MLP of the Bessel basis (zero at the cutoff) and ``Y``
   the edge harmonics; then channels are mixed within each degree ``l``;
2. product basis ``B = SymmetricProduct(A)`` (invariant output, body order up to
   ``correlation + 1``, per-element weights);
3. ``h <- W_out B + W_skip (h x onehot(z))`` (a per-element residual).

Each interaction's state is read out to a per-atom energy: linearly after the first
ones, by a small MLP after the last. The atomic energy is

    E_i = e0[z_i] + shift + scale * sum_t readout_t(h_t)

with ``e0``, ``shift``, ``scale`` and ``avg_neighbors`` kept as buffers (saved with the
weights). ``features`` are the inputs of the final linear maps (the first states and the
last MLP's hidden layer), so the energies are linear in the last-layer weights.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ml4m.models.mpnn.basis import RadialBasis, edge_harmonics
from ml4m.models.mpnn.product import SymmetricProduct
from ml4m.models.torch_potential import edge_vectors

__all__ = ["MPNNModule"]

#: width of the last readout's hidden layer
READOUT_HIDDEN = 16
#: gain that keeps the second moment of a unit normal through SiLU
SILU_GAIN = 1.679


def _linear(n_in: int, n_out: int, gain: float = 1.0) -> nn.Linear:
    """Bias-free linear map with N(0, gain^2 / n_in) weights."""
    layer = nn.Linear(n_in, n_out, bias=False)
    nn.init.normal_(layer.weight, std=gain / math.sqrt(n_in))
    return layer


def _radial_mlp(n_radial: int, width: int, n_out: int) -> nn.Sequential:
    """Bias-free MLP of the radial basis: zero input (beyond the cutoff) gives zero."""
    return nn.Sequential(_linear(n_radial, width), nn.SiLU(),
                         _linear(width, width, SILU_GAIN), nn.SiLU(),
                         _linear(width, n_out, SILU_GAIN))


def neighbour_slots(i: torch.Tensor, n_atoms: int) -> tuple[torch.Tensor, int]:
    """Slot of every edge in a padded (atom, neighbour) layout, and the padded width.

    Edge ``e`` of centre ``i[e]`` goes to row ``i[e] * width + rank`` of an
    ``(n_atoms * width, ...)`` table, ``rank`` counting the centre's edges in order;
    ``width`` is the largest number of neighbours. Sums over neighbours then become
    batched matrix products.
    """
    order = torch.argsort(i, stable=True)
    counts = torch.bincount(i, minlength=n_atoms)
    # a plain int in eager mode; a symbolic size under torch.export (no specialisation)
    width = counts.max().clamp(min=1).item()
    torch._check(width >= 1)
    starts = torch.cumsum(counts, 0) - counts
    i_sorted = i[order]
    slots = torch.empty_like(i)
    slots[order] = i_sorted * width + torch.arange(i.shape[0], device=i.device) - starts[i_sorted]
    return slots, width


def padded(values: torch.Tensor, slots: torch.Tensor, n_atoms: int, width: int) -> torch.Tensor:
    """Edge rows ``(E, C)`` placed at their slots of a zero ``(n_atoms, width, C)`` table."""
    table = values.new_zeros(n_atoms * width, values.shape[1])
    return table.index_copy(0, slots, values).view(n_atoms, width, -1)


class Interaction(nn.Module):
    """One message-passing step on scalar states (module docstring, steps 1-3)."""

    def __init__(self, n_channels: int, n_species: int, l_max: int, n_radial: int,
                 radial_width: int, correlation: int) -> None:
        super().__init__()
        K, L = n_channels, l_max + 1
        self.shape = (K, L)
        self.up = _linear(K, K)
        self.radial = _radial_mlp(n_radial, radial_width, K * L)
        self.mix = nn.Parameter(torch.randn(L, K, K) / math.sqrt(K))
        self.product = SymmetricProduct(l_max, (0,), correlation, K, n_species)
        self.down = _linear(K, K)
        self.skip = _linear(K * n_species, K, math.sqrt(n_species))
        lidx = np.repeat(np.arange(L), 2 * np.arange(L) + 1)
        self.register_buffer("lidx", torch.as_tensor(lidx), persistent=False)
        # row (lm, l(lm)) of the (lm, l) table of all degree pairs
        self.register_buffer("diag", torch.as_tensor(np.arange(L * L) * L + lidx),
                             persistent=False)

    def forward(self, h: torch.Tensor, onehot: torch.Tensor, species: torch.Tensor,
                basis: torch.Tensor, Y_padded: torch.Tensor, j: torch.Tensor,
                slots: torch.Tensor, inv_neighbors: torch.Tensor) -> torch.Tensor:
        """New states (N, K) from states ``h`` (N, K); ``Y_padded`` (N, width, D) holds
        the edge harmonics at their :func:`neighbour_slots`."""
        K, L = self.shape
        N, width, D = Y_padded.shape
        x = self.radial(basis).view(-1, L, K) * self.up(h)[j][:, None, :]
        X = padded(x.view(-1, L * K), slots, N, width)
        full = torch.bmm(Y_padded.transpose(1, 2), X).view(N, D * L, K)  # (lm, l) pairs
        A = full.index_select(1, self.diag).transpose(0, 1)  # (D, N, K)
        A = torch.bmm(A * inv_neighbors, self.mix[self.lidx])
        B = self.product(A, species)[0]
        return self.down(B) + self.skip((h[:, :, None] * onehot[:, None, :]).reshape(N, -1))


class MPNNModule(nn.Module):
    """Graph dict (:func:`~ml4m.models.torch_potential.batch_graph`) to energies.

    Parameters
    ----------
    n_species : int
        Number of elements.
    r_max : float
        Cutoff, Angstrom.
    n_radial, l_max, n_channels, correlation, n_interactions, radial_width : int
        See :class:`~ml4m.models.mpnn.MPNN`.
    stats : dict or None
        ``e0`` (n_species,) eV, ``shift`` eV, ``scale`` eV/Angstrom, ``avg_neighbors``;
        None leaves placeholders to be filled from a saved state dict.
    """

    def __init__(self, n_species: int, r_max: float, n_radial: int, l_max: int,
                 n_channels: int, correlation: int, n_interactions: int, radial_width: int,
                 stats: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.n_species, self.l_max = n_species, l_max
        stats = stats or {"e0": np.zeros(n_species), "shift": 0.0, "scale": 1.0,
                          "avg_neighbors": 1.0}
        for name in ("e0", "shift", "scale"):
            self.register_buffer(name, torch.as_tensor(np.asarray(stats[name], dtype=float)))
        self.register_buffer("inv_neighbors",
                             torch.as_tensor(1.0 / max(float(stats["avg_neighbors"]), 1.0)))
        self.radial_basis = RadialBasis(r_max, n_radial)
        self.embed = _linear(n_species, n_channels, math.sqrt(n_species))
        self.interactions = nn.ModuleList(
            Interaction(n_channels, n_species, l_max, n_radial, radial_width, correlation)
            for _ in range(n_interactions))
        self.readouts = nn.ModuleList(_linear(n_channels, 1) for _ in range(n_interactions - 1))
        self.hidden = _linear(n_channels, READOUT_HIDDEN)
        self.last = _linear(READOUT_HIDDEN, 1, SILU_GAIN)

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Energies (eV) and last-layer features of one batch."""
        i, j = data["edge_index"]
        species = data["species"]
        vec = edge_vectors(data)
        basis = self.radial_basis(torch.linalg.vector_norm(vec, dim=1))
        n_atoms = species.shape[0]  # a size, not len(): symbolic under torch.export
        slots, width = neighbour_slots(i, n_atoms)
        Y = padded(edge_harmonics(vec, self.l_max), slots, n_atoms, width)
        onehot = nn.functional.one_hot(species, self.n_species).to(vec.dtype)
        h = self.embed(onehot)
        features = []
        for t, layer in enumerate(self.interactions):
            h = layer(h, onehot, species, basis, Y, j, slots, self.inv_neighbors)
            features.append(h if t < len(self.readouts)
                            else nn.functional.silu(self.hidden(h)))
        weights = torch.cat([r.weight for r in self.readouts] + [self.last.weight], dim=1)
        feats = torch.cat(features, dim=1)
        energies = self.e0[species] + self.shift + self.scale * (feats @ weights[0])
        energy = torch.zeros(data["n_atoms"].shape[0], dtype=energies.dtype,
                             device=energies.device)
        return {"energy": energy.index_add(0, data["batch"], energies), "energies": energies,
                "features": feats}

"""The torch module of :class:`~ml4m.models.mpnn.MPNN`: embedding, interactions, readouts.

An atom's state ``h[i, lm, k]`` holds channels ``k`` of degrees ``l <= hidden_l``
(``hidden_l = 0``: scalars; ``1``: scalars and vectors, MACE's ``32x0e + 32x1o``).
One interaction ``t`` updates it:

1. atomic basis, an equivariant convolution over the natural-parity paths
   ``(l1, l2) -> l3`` (``l1 + l2 + l3`` even, ``l1, l3 <= l_max``, ``l2`` a degree of ``h``)::

       A[i, l3 m3, k] = 1/avg_neighbors sum_j sum_paths R_{path,k}(r_ij)
                        sum_{m1 m2} C[l1 m1, l2 m2, l3 m3] Y_{l1 m1}(r_ij) (W h)[j, l2 m2, k]

   with ``R`` a bias-free radial MLP of the Bessel basis (zero at the cutoff), ``Y`` the
   edge harmonics and ``C`` the real Clebsch-Gordan coefficients scaled to
   orthonormal rows (``l x 0 -> l`` is the identity); then channels are mixed within
   each degree ``l3`` (with ``element_mix``, by weights of the centre's element in the
   first interaction, as MACE's first interaction does; with ``path_mix``, the paths to
   ``l3`` are kept apart and mixed with the channels, ``n_paths(l3) * K -> K``, as
   MACE's linear map after its convolution does);
2. product basis ``B = SymmetricProduct(A)`` (body order up to ``correlation + 1``,
   per-element weights), coupled to the degrees the next state holds;
3. ``h <- W_out B + W_skip (h x onehot(z))`` per degree (a per-element residual).

Every interaction but the last passes on degrees up to ``hidden_l``; the last keeps
scalars only. Each interaction's scalars are read out to a per-atom energy: linearly
after the first ones, by a small MLP after the last. The atomic energy is

    E_i = e0[z_i] + shift + scale * sum_t readout_t(h_t)

with ``e0``, ``shift``, ``scale`` and ``avg_neighbors`` kept as buffers (saved with the
weights). ``features`` are the inputs of the final linear maps (the first states' scalars
and the last MLP's hidden layer), so the energies are linear in the last-layer weights.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ml4m.models.mpnn.basis import EdgeHarmonics, RadialBasis
from ml4m.models.mpnn.product import SymmetricProduct, _coupling
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


def _radial_mlp(n_radial: int, width: int, n_out: int, depth: int = 2) -> nn.Sequential:
    """Bias-free MLP of the radial basis with ``depth`` hidden layers of ``width``: zero
    input (beyond the cutoff) gives zero."""
    layers: list[nn.Module] = [_linear(n_radial, width), nn.SiLU()]
    for _ in range(depth - 1):
        layers += [_linear(width, width, SILU_GAIN), nn.SiLU()]
    return nn.Sequential(*layers, _linear(width, n_out, SILU_GAIN))


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


def _paths(l_max: int, l_in: int) -> list[tuple[int, int, int]]:
    """Natural-parity couplings ``(l1, l2, l3)`` of an edge harmonic ``l1 <= l_max`` and a
    state degree ``l2 <= l_in`` to a density degree ``l3 <= l_max``, ordered by ``l1``."""
    return [(l1, l2, l3) for l1 in range(l_max + 1) for l2 in range(l_in + 1)
            for l3 in range(abs(l1 - l2), min(l1 + l2, l_max) + 1) if (l1 + l2 + l3) % 2 == 0]


class _Convolution:
    """Index tables of the equivariant convolution (module docstring, step 1; numpy).

    Edge columns ``c`` enumerate ``(path, m2)`` in path order (paths sorted by ``l1``,
    then ``l2``, then ``l3``). Consecutive paths of equal ``(l1, l2)`` form a block,
    ``blocks[b] = (l1, l2, n_paths)``, whose columns are ``R[:, path] * h[j, l2 m2]``
    (path-major). For each ``l1`` the per-atom sums
    ``S_l1[i, m1, c, k] = sum_j Y_{l1 m1}(r_ij) X[j, c, k]`` run over that ``l1``'s
    blocks (``groups``: ``(l1, first block, end block)``); the flattened ``S_l1`` are
    concatenated and coupled to the density by ``A[l3 m3] += coef * S[src]`` at rows
    ``dst`` (paths of one ``l3`` summed), or at rows ``dst_path`` of a density that keeps
    each ``l3``'s paths apart (``paths_per_l3`` of them) for a channel map across paths.
    """

    def __init__(self, l_max: int, l_in: int) -> None:
        paths = _paths(l_max, l_in)
        self.n_paths = len(paths)
        self.blocks: list[tuple[int, int, int]] = []
        for l1, l2, _ in paths:
            if self.blocks and self.blocks[-1][:2] == (l1, l2):
                self.blocks[-1] = (l1, l2, self.blocks[-1][2] + 1)
            else:
                self.blocks.append((l1, l2, 1))
        # per l1: its blocks, the row of its S_l1 in S, its first column and column count
        self.groups, offset = [], {}
        row = col = 0
        for l1 in sorted({b[0] for b in self.blocks}):
            members = [k for k, b in enumerate(self.blocks) if b[0] == l1]
            self.groups.append((l1, members[0], members[-1] + 1))
            width = sum(n * (2 * self.blocks[k][1] + 1) for k in members
                        for n in [self.blocks[k][2]])
            offset[l1] = (row, col, width)
            row, col = row + (2 * l1 + 1) * width, col + width
        # paths per density degree l3, and each path's rank among those of its l3
        self.paths_per_l3 = [sum(p[2] == l3 for p in paths) for l3 in range(l_max + 1)]
        l3_start = np.cumsum([0] + [n * (2 * l3 + 1) for l3, n in enumerate(self.paths_per_l3)])
        src, dst, dst_path, coef = [], [], [], []
        first_col = np.cumsum([0] + [2 * l2 + 1 for _, l2, _ in paths])
        for p, (l1, l2, l3) in enumerate(paths):
            start, first, width = offset[l1]
            rank = sum(q[2] == l3 for q in paths[:p])
            for a, b, m, c in _coupling(l1, l2, l3):
                src.append(start + a * width + first_col[p] - first + b)
                dst.append(l3 * l3 + m)
                dst_path.append(l3_start[l3] + rank * (2 * l3 + 1) + m)
                coef.append(c * math.sqrt(2 * l3 + 1))
        self.src, self.dst, self.coef = np.array(src), np.array(dst), np.array(coef)
        #: rows of a density that keeps the paths apart: per l3, (path, m3) path-major
        self.dst_path, self.n_path_rows = np.array(dst_path), int(l3_start[-1])


class Interaction(nn.Module):
    """One message-passing step (module docstring, steps 1-3).

    ``l_in`` and ``l_out`` are the largest degrees of the incoming and outgoing states.
    """

    def __init__(self, n_channels: int, n_species: int, l_max: int, n_radial: int,
                 radial_width: int, correlation: int, l_in: int = 0, l_out: int = 0,
                 element_mix: bool = False, path_mix: bool = False,
                 radial_depth: int = 2) -> None:
        super().__init__()
        K, L = n_channels, l_max + 1
        conv = _Convolution(l_max, l_in)
        self.shape = (K, L, conv.n_paths)
        self.groups = conv.groups
        self.up = _linear(K, K)
        self.radial = _radial_mlp(n_radial, radial_width, K * conv.n_paths, radial_depth)
        # (L, K, K), or (n_species, L, K, K) with one map per element of the centre;
        # with path_mix and several paths to a degree, one (paths * K, K) map per degree
        self.paths_per_l3, self.n_path_rows = conv.paths_per_l3, conv.n_path_rows
        self.path_mix = path_mix and max(conv.paths_per_l3) > 1
        if self.path_mix:
            if element_mix:  # MPNNModule mixes by element only where states are scalars
                raise ValueError("element_mix and path_mix act on different interactions")
            self.mix = nn.ParameterList(
                nn.Parameter(torch.randn(n * K, K) / math.sqrt(n * K))
                for n in conv.paths_per_l3)
        else:
            mix_shape = (n_species, L, K, K) if element_mix else (L, K, K)
            self.mix = nn.Parameter(torch.randn(mix_shape) / math.sqrt(K))
        self.product = SymmetricProduct(l_max, tuple(range(l_out + 1)), correlation, K,
                                        n_species)
        self.down = _linear(K, K)
        self.skip = _linear(K * n_species, K, math.sqrt(n_species))
        # degrees l >= 1 of the states: channel maps per degree (empty for scalar states)
        self.up_l = nn.ParameterList(
            nn.Parameter(torch.randn(K, K) / math.sqrt(K)) for _ in range(l_in))
        self.down_l = nn.ParameterList(
            nn.Parameter(torch.randn(K, K) / math.sqrt(K)) for _ in range(l_out))
        self.skip_l = nn.ParameterList(
            nn.Parameter(torch.randn(K * n_species, K) / math.sqrt(K))
            for _ in range(min(l_in, l_out)))
        self.blocks = conv.blocks
        lidx = np.repeat(np.arange(L), 2 * np.arange(L) + 1)
        self.register_buffer("lidx", torch.as_tensor(lidx), persistent=False)
        for name in ("src", "dst", "coef") + (("dst_path",) if self.path_mix else ()):
            self.register_buffer(name, torch.as_tensor(getattr(conv, name)), persistent=False)

    @staticmethod
    def _per_degree(h: torch.Tensor, first: torch.Tensor, rest: nn.ParameterList,
                    n_l: int) -> torch.Tensor:
        """Channel maps of the degree blocks ``l = 0..n_l-1`` of ``h`` (N, D, C): ``first``
        (out, C) (a Linear's weight) for ``l = 0``, ``rest[l-1]`` (C, out) above."""
        blocks = [h[:, :1] @ first.T]
        blocks += [h[:, l * l:(l + 1) ** 2] @ rest[l - 1] for l in range(1, n_l)]
        return torch.cat(blocks, dim=1)

    def _mix_paths(self, A: torch.Tensor) -> torch.Tensor:
        """Density (D, N, K) from a path-resolved one (N, rows, K) (rows ``dst_path``):
        per degree ``l3`` one map from its paths' channels to ``K`` channels."""
        N, K = A.shape[0], A.shape[2]
        out, row = [], 0
        for l3, n in enumerate(self.paths_per_l3):
            size = n * (2 * l3 + 1)
            block = A[:, row:row + size].reshape(N, n, 2 * l3 + 1, K).permute(2, 0, 1, 3)
            out.append(block.reshape(2 * l3 + 1, N, n * K) @ self.mix[l3])
            row += size
        return torch.cat(out, dim=0)

    def forward(self, h: torch.Tensor, onehot: torch.Tensor, species: torch.Tensor,
                basis: torch.Tensor, Y_padded: torch.Tensor, j_padded: torch.Tensor,
                slots: torch.Tensor, inv_neighbors: torch.Tensor) -> torch.Tensor:
        """New states (N, (l_out+1)**2, K) from states ``h`` (N, (l_in+1)**2, K);
        ``Y_padded`` (N, width, D) holds the edge harmonics at their
        :func:`neighbour_slots` ``slots``, ``j_padded`` (N * width,) the neighbour of each
        slot (any atom at an empty slot: its radial weights are zero there)."""
        K, L, n_paths = self.shape
        N, width, D = Y_padded.shape
        n_in, n_out = len(self.up_l) + 1, len(self.down_l) + 1
        hs = self._per_degree(h, self.up.weight, self.up_l, n_in)
        # the small per-edge factors go to the padded layout, the large products are built
        # there block by block (no gather or scatter of the (E, n_cols, K) products)
        R = padded(self.radial(basis), slots, N, width).view(N, width, n_paths, K)
        hj = hs.index_select(0, j_padded).view(N, width, -1, K)
        # split (not sliced) so that the backward pass concatenates instead of zero-filling
        Ys = Y_padded.transpose(1, 2).split([2 * l + 1 for l in range(L)], dim=1)
        Rs = R.split([n_p for _, _, n_p in self.blocks], dim=2)
        hjs = hj.split([2 * l + 1 for l in range(n_in)], dim=2)
        S = []
        for l1, b0, b1 in self.groups:
            sums = []
            for b in range(b0, b1):
                X = Rs[b][:, :, :, None] * hjs[self.blocks[b][1]][:, :, None]
                sums.append(torch.bmm(Ys[l1], X.view(N, width, -1)))
            S.append(torch.cat(sums, dim=2).view(N, -1, K))
        S = torch.cat(S, dim=1)
        terms = S.index_select(1, self.src) * self.coef.to(S.dtype)[:, None]
        if self.path_mix:
            A = S.new_zeros(N, self.n_path_rows, K).index_add_(1, self.dst_path, terms)
            A = self._mix_paths(A * inv_neighbors)
        else:
            A = S.new_zeros(N, D, K).index_add_(1, self.dst, terms).transpose(0, 1)  # (D, N, K)
            A = A * inv_neighbors
            if self.mix.dim() == 4:  # per element of the centre: one map each, masked
                A = sum(onehot[:, z][None, :, None] * torch.bmm(A, self.mix[z][self.lidx])
                        for z in range(self.mix.shape[0]))
            else:
                A = torch.bmm(A, self.mix[self.lidx])
        B = self.product(A, species).transpose(0, 1)  # (N, (l_out+1)**2, K)
        S_ = onehot.shape[1]
        n_skip = len(self.skip_l) + 1
        hz = (h[:, :n_skip * n_skip, :, None] * onehot[:, None, None, :]).reshape(N, -1, K * S_)
        out = self._per_degree(B, self.down.weight, self.down_l, n_out)
        skip = self._per_degree(hz, self.skip.weight, self.skip_l, n_skip)
        if n_skip == n_out:
            return out + skip
        return torch.cat([out[:, :n_skip * n_skip] + skip, out[:, n_skip * n_skip:]], dim=1)


class MPNNModule(nn.Module):
    """Graph dict (:func:`~ml4m.models.torch_potential.batch_graph`) to energies.

    Parameters
    ----------
    n_species : int
        Number of elements.
    r_max : float
        Cutoff, Angstrom.
    n_radial, l_max, n_channels, correlation, n_interactions, radial_width, hidden_l : int
        See :class:`~ml4m.models.mpnn.MPNN`.
    element_mix, path_mix : bool
        See :class:`~ml4m.models.mpnn.MPNN`.
    radial_depth : int
        Hidden layers of the radial MLPs.
    stats : dict or None
        ``e0`` (n_species,) eV, ``shift`` eV, ``scale`` eV/Angstrom, ``avg_neighbors``;
        None leaves placeholders to be filled from a saved state dict.
    """

    def __init__(self, n_species: int, r_max: float, n_radial: int, l_max: int,
                 n_channels: int, correlation: int, n_interactions: int, radial_width: int,
                 stats: dict[str, Any] | None = None, hidden_l: int = 0,
                 element_mix: bool = False, path_mix: bool = False,
                 radial_depth: int = 2) -> None:
        super().__init__()
        self.n_species, self.l_max = n_species, l_max
        stats = stats or {"e0": np.zeros(n_species), "shift": 0.0, "scale": 1.0,
                          "avg_neighbors": 1.0}
        for name in ("e0", "shift", "scale"):
            self.register_buffer(name, torch.as_tensor(np.asarray(stats[name], dtype=float)))
        self.register_buffer("inv_neighbors",
                             torch.as_tensor(1.0 / max(float(stats["avg_neighbors"]), 1.0)))
        self.radial_basis = RadialBasis(r_max, n_radial)
        self.harmonics = EdgeHarmonics(l_max)
        self.embed = _linear(n_species, n_channels, math.sqrt(n_species))
        self.interactions = nn.ModuleList(
            Interaction(n_channels, n_species, l_max, n_radial, radial_width, correlation,
                        l_in=hidden_l if t > 0 else 0,
                        l_out=hidden_l if t < n_interactions - 1 else 0,
                        element_mix=element_mix and t == 0, path_mix=path_mix,
                        radial_depth=radial_depth)
            for t in range(n_interactions))
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
        Y = padded(self.harmonics(vec), slots, n_atoms, width)
        j_padded = torch.zeros(n_atoms * width, dtype=j.dtype, device=j.device).index_copy(
            0, slots, j)
        onehot = nn.functional.one_hot(species, self.n_species).to(vec.dtype)
        h = self.embed(onehot)[:, None, :]
        features = []
        for t, layer in enumerate(self.interactions):
            h = layer(h, onehot, species, basis, Y, j_padded, slots, self.inv_neighbors)
            features.append(h[:, 0] if t < len(self.readouts)
                            else nn.functional.silu(self.hidden(h[:, 0])))
        weights = torch.cat([r.weight for r in self.readouts] + [self.last.weight], dim=1)
        feats = torch.cat(features, dim=1)
        energies = self.e0[species] + self.shift + self.scale * (feats @ weights[0])
        energy = torch.zeros(data["n_atoms"].shape[0], dtype=energies.dtype,
                             device=energies.device)
        return {"energy": energy.index_add(0, data["batch"], energies), "energies": energies,
                "features": feats}

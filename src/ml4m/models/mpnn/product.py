"""The higher-body-order product basis of an atom (MACE's symmetric contraction).

From an atom's equivariant density ``A[k, lm]`` (channel ``k``, harmonic ``lm``) it forms,
channel by channel, the products of up to ``correlation`` copies of ``A`` coupled back to
each output degree ``L`` by Clebsch-Gordan coefficients, and sums them with learnable
weights per element, channel and coupling path::

    B[k, LM] = sum_paths w[z, k, path] [A_k (x) ... (x) A_k]_{path, LM}

Paths couple ``(l1, l2) -> lam`` (``l1 <= l2``) and then ``(lam, l3) -> L``
(``l3 >= l2``, so each multiset of degrees is met once); every coupling keeps
``l1 + l2 + lam`` even, so ``B[L]`` has the parity ``(-1)**L`` of ``Y_L`` and the
energy is invariant under reflections too. The couplings are stored as sparse
gather-multiply-sum tables built once from
:func:`ml4m.descriptors.coupling.real_clebsch_gordan`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ml4m.descriptors.coupling import real_clebsch_gordan

__all__ = ["SymmetricProduct"]


def _coupling(l1: int, l2: int, L: int) -> list[tuple[int, int, int, float]]:
    """Non-zero ``(m1, m2, M, C)`` of the real coupling ``l1 x l2 -> L`` (m from 0)."""
    c = real_clebsch_gordan(l1, l2, L)
    return [(a, b, m, float(c[a, b, m])) for a, b, m in zip(*np.nonzero(c))]


class _Tables:
    """Index tables of the products (numpy; turned into buffers by the module)."""

    def __init__(self, l_max: int, out_ls: Sequence[int], correlation: int) -> None:
        start = [l * l for l in range(l_max + 1)]
        out_off = np.concatenate([[0], np.cumsum([2 * L + 1 for L in out_ls])])
        lam_cap = l_max + max(out_ls) if correlation >= 3 else max(out_ls)
        # order-2 intermediates T[c] = sum C A[a] A[b]
        self.pairs: list[tuple[int, int, int, int]] = []  # (l1, l2, lam, offset)
        ia, ib, ic, coef = [], [], [], []
        size = 0
        if correlation >= 2:
            for l1 in range(l_max + 1):
                for l2 in range(l1, l_max + 1):
                    for lam in range(l2 - l1, min(l1 + l2, lam_cap) + 1, 2):
                        for a, b, m, c in _coupling(l1, l2, lam):
                            ia.append(start[l1] + a)
                            ib.append(start[l2] + b)
                            ic.append(size + m)
                            coef.append(c)
                        self.pairs.append((l1, l2, lam, size))
                        size += 2 * lam + 1
        # distinct factor pairs a <= b (products commute) and the coupling matrix T = t_mat @ (A[a] * A[b])
        pairs, which = np.unique(np.sort(np.stack([ia, ib], axis=1).reshape(-1, 2), axis=1),
                                 axis=0, return_inverse=True)
        self.t_a, self.t_b = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
        self.t_mat = np.zeros((size, len(pairs)))
        np.add.at(self.t_mat, (np.array(ic, dtype=np.int64), which.ravel()), coef)
        # final components, in the order forward() concatenates them: order 1 (A), order 2 (T)
        one, two = ([], [], []), ([], [], [])  # (index, path, output)
        path = 0
        for io, L in enumerate(out_ls):
            comps = [(one, start[L])] if L <= l_max else []
            comps += [(two, off) for l1, l2, lam, off in self.pairs if lam == L]
            for dest, first in comps:
                dest[0].extend(range(first, first + 2 * L + 1))
                dest[1].extend([path] * (2 * L + 1))
                dest[2].extend(out_off[io] + np.arange(2 * L + 1))
                path += 1
        self.from_a = np.array(one[0], dtype=np.int64)
        self.from_t = np.array(two[0], dtype=np.int64)
        z_path, z_out = one[1] + two[1], one[2] + two[2]
        # order 3: Z3[q] = sum C T[p] A[a]
        p3, a3, q3, c3, z3_path, z3_out = [], [], [], [], [], []
        n3 = 0
        if correlation >= 3:
            for io, L in enumerate(out_ls):
                for l1, l2, lam, off in self.pairs:
                    for l3 in range(l2, l_max + 1):
                        if not abs(lam - l3) <= L <= lam + l3 or (lam + l3 + L) % 2:
                            continue
                        for a, b, m, c in _coupling(lam, l3, L):
                            p3.append(off + a), a3.append(start[l3] + b)
                            q3.append(n3 + m), c3.append(c)
                        z3_path += [path] * (2 * L + 1)
                        z3_out += list(out_off[io] + np.arange(2 * L + 1))
                        n3 += 2 * L + 1
                        path += 1
        self.o3_t, self.o3_a = np.array(p3, dtype=np.int64), np.array(a3, dtype=np.int64)
        self.o3_to, self.o3_coef, self.o3_size = np.array(q3, dtype=np.int64), np.array(c3), n3
        self.n_paths = path
        self.z_path = np.array(z_path + z3_path, dtype=np.int64)
        self.z_out = np.array(z_out + z3_out, dtype=np.int64)
        self.n_out = int(out_off[-1])


class SymmetricProduct(torch.nn.Module):
    """Products of an atom's density up to ``correlation`` copies, coupled to ``out_ls``.

    Parameters
    ----------
    l_max : int
        Largest degree in the input ``A``.
    out_ls : sequence of int
        Output degrees ``L`` (``(0,)`` for invariants).
    correlation : {1, 2, 3}
        Largest number of ``A`` factors in a product.
    n_channels : int
        Channels ``k`` (products never mix channels).
    n_species : int
        Elements; each has its own path weights.
    """

    def __init__(self, l_max: int, out_ls: Sequence[int], correlation: int, n_channels: int,
                 n_species: int) -> None:
        super().__init__()
        tables = _Tables(l_max, list(out_ls), correlation)
        self.correlation = correlation
        self.sizes = (tables.o3_size, tables.n_out)

        def buf(name, arr):
            self.register_buffer(name, torch.as_tensor(arr), persistent=False)

        buf("t_a", tables.t_a)
        buf("t_b", tables.t_b)
        buf("t_mat", tables.t_mat)
        buf("from_a", tables.from_a)
        buf("from_t", tables.from_t)
        buf("o3_t", tables.o3_t)
        buf("o3_a", tables.o3_a)
        buf("o3_to", tables.o3_to)
        buf("o3_coef", tables.o3_coef[:, None])
        buf("z_path", tables.z_path)
        buf("z_out", tables.z_out)
        self.weights = torch.nn.Parameter(
            torch.randn(n_species, n_channels, tables.n_paths) / tables.n_paths ** 0.5)

    def forward(self, A: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """Density ``A`` (D, N, K), ``D = (l_max+1)**2``, and element index (N,) to ``B``
        (sum of 2L+1 over out_ls, N, K)."""
        D, N, K = A.shape
        A = A.reshape(D, N * K)
        o3_size, n_out = self.sizes

        def coupled(size, to, coef, a, b):  # rows sum_c coef[c] a[c] b[c] into their targets
            return a.new_zeros(size, a.shape[1]).index_add_(0, to, a * b * coef.to(a.dtype))

        parts = [A.index_select(0, self.from_a)]
        if self.correlation >= 2:
            T = self.t_mat @ (A.index_select(0, self.t_a) * A.index_select(0, self.t_b))
            parts.append(T.index_select(0, self.from_t))
            if self.correlation >= 3:
                parts.append(coupled(o3_size, self.o3_to, self.o3_coef,
                                     T.index_select(0, self.o3_t), A.index_select(0, self.o3_a)))
        Z = torch.cat(parts, dim=0)
        w = self.weights[species].permute(2, 0, 1).reshape(-1, N * K).index_select(0, self.z_path)
        return Z.new_zeros(n_out, N * K).index_add_(0, self.z_out, Z * w).view(-1, N, K)

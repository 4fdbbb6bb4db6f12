"""Contraction of the ACE one-particle basis A into the invariant products B, vectorised.

The products of :mod:`ml4m.descriptors.ace` share their pieces: every three- and
four-body function is built on a coupled pair ``T^L(alpha1, alpha2)`` and many
functions use the same pair. :class:`ProductBasis` therefore evaluates

1. every distinct coupled pair once, all pairs with the same ``(l1, l2, L)`` in one
   array operation (``T_{r p M} = sum_ab C_{abM} A_{r k1_p a} A_{r k2_p b}``);
2. the functions of one kind (same ``nu`` and angular momenta) in one gather-and-sum
   over those pairs and the remaining factor.

:meth:`ProductBasis.adjoint` is the reverse-mode derivative ``d (sum_f W_f B_f) / dA``
through the same pieces (accumulated cotangents of the pairs, then one adjoint
coupling per pair group), which is what the forces of a linear model need. Scatters
over channel and pair indices are one-hot matrix products (no ``np.add.at``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ml4m.descriptors.coupling import real_clebsch_gordan

__all__ = ["ProductBasis"]

Alpha = tuple[int, int]  # (l, k): angular momentum and channel k = species * n_max + n


def _lm(l: int) -> slice:
    return slice(l * l, (l + 1) * (l + 1))


def _onehot(index: np.ndarray, size: int) -> np.ndarray:
    """(size, len(index)) matrix with a one in row ``index[g]`` of column ``g``."""
    out = np.zeros((size, len(index)))
    out[index, np.arange(len(index))] = 1.0
    return out


def _through_coupling(x: np.ndarray, outer: np.ndarray, C: np.ndarray) -> np.ndarray:
    """``einsum("rgb,rgM,abM->rga", x, outer, C)`` as one matrix product: ``x (x) outer``
    (rows * g, b * M) against ``C`` (a, b * M). numpy's three-operand einsum runs a
    nested loop outside BLAS: 2-5x slower on ACE's pair groups."""
    r, g = x.shape[:2]
    Y = (x[..., :, None] * outer[..., None, :]).reshape(r * g, -1)
    return (Y @ C.reshape(len(C), -1).T).reshape(r, g, len(C))


def _scatter(H: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``out[r, k, m] = sum_g H[k, g] values[r, g, m]``."""
    return H @ values


class ProductBasis:
    """Evaluate (and differentiate) a list of ACE product functions on A.

    Parameters
    ----------
    basis : sequence of (alphas, L)
        The functions, as enumerated by :class:`~ml4m.descriptors.ACE`: ``alphas`` a
        sorted tuple of ``(l, k)`` of length ``nu = 1..4``; ``L`` the coupling of the
        first two factors (and of the last two for ``nu = 4``), ``-1`` when unused.
    n_channels : int
        Number of channels ``K`` (species times radial functions).
    """

    def __init__(self, basis: Sequence[tuple[tuple[Alpha, ...], int]], n_channels: int) -> None:
        self.n_features = len(basis)
        self.n_channels = n_channels
        self._entries: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._forms_cache: dict[bytes, tuple[list, list, list]] = {}
        self._lm_size = (max((a[0] for alphas, _ in basis for a in alphas), default=0) + 1) ** 2
        pair_index: dict[tuple[Alpha, Alpha, int], tuple[int, int]] = {}
        pair_keys: list[tuple[int, int, int]] = []
        pair_members: list[list[tuple[int, int]]] = []

        def pair(a1: Alpha, a2: Alpha, L: int) -> tuple[int, int]:
            if (a1, a2, L) not in pair_index:
                key = (a1[0], a2[0], L)
                if key not in pair_keys:
                    pair_keys.append(key)
                    pair_members.append([])
                g = pair_keys.index(key)
                pair_index[(a1, a2, L)] = (g, len(pair_members[g]))
                pair_members[g].append((a1[1], a2[1]))
            return pair_index[(a1, a2, L)]

        simple: dict[tuple, list] = {}
        triple: dict[tuple, list] = {}
        quad: dict[tuple, list] = {}
        for f, (alphas, L) in enumerate(basis):
            nu = len(alphas)
            if nu <= 2:
                simple.setdefault((nu, alphas[0][0]), []).append((f, [a[1] for a in alphas]))
            elif nu == 3:
                g, p = pair(alphas[0], alphas[1], L)
                triple.setdefault((g, alphas[2][0]), []).append((f, p, alphas[2][1]))
            else:
                g1, p1 = pair(alphas[0], alphas[1], L)
                g2, p2 = pair(alphas[2], alphas[3], L)
                quad.setdefault((g1, g2), []).append((f, p1, p2))
        self.pairs = []  # (l1, l2, L, k1 (P,), k2 (P,), C, H1 (K, P), H2 (K, P))
        for (l1, l2, L), members in zip(pair_keys, pair_members):
            k1, k2 = (np.array(m) for m in zip(*members))
            self.pairs.append((l1, l2, L, k1, k2, real_clebsch_gordan(l1, l2, L),
                               _onehot(k1, n_channels), _onehot(k2, n_channels)))
        n_pairs = [len(p[3]) for p in self.pairs]
        self.simple = []  # (nu, l, cols, ks (g, nu), [H_t (K, g)])
        for (nu, l), items in simple.items():
            cols = np.array([f for f, _ in items])
            ks = np.array([k for _, k in items])
            self.simple.append((nu, l, cols, ks, [_onehot(ks[:, t], n_channels) for t in range(nu)]))
        self.triple = []  # (pair group, l3, cols, p (g,), k3 (g,), Hp (P, g), Hk (K, g))
        for (g, l3), items in triple.items():
            cols, p, k3 = (np.array(x) for x in zip(*items))
            self.triple.append((g, l3, cols, p, k3, _onehot(p, n_pairs[g]), _onehot(k3, n_channels)))
        self.quad = []  # (group 1, group 2, cols, p1, p2, Hp1, Hp2)
        for (g1, g2), items in quad.items():
            cols, p1, p2 = (np.array(x) for x in zip(*items))
            self.quad.append((g1, g2, cols, p1, p2, _onehot(p1, n_pairs[g1]),
                              _onehot(p2, n_pairs[g2])))

    def _pair_values(self, A: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per pair group: the factors x1, x2 and the coupled pairs T (rows, P, 2L+1)."""
        out = []
        for l1, l2, L, k1, k2, C, _, _ in self.pairs:
            x1, x2 = A[:, k1, _lm(l1)], A[:, k2, _lm(l2)]
            r, P = x1.shape[:2]
            outer = (x1[..., :, None] * x2[..., None, :]).reshape(r, P, -1)
            out.append((x1, x2, outer @ C.reshape(-1, 2 * L + 1)))
        return out

    def products(self, A: np.ndarray, return_pairs: bool = False):
        """B of shape (rows, n_features) from A of shape (rows, K, LM).

        With ``return_pairs`` also the coupled pairs, to hand to :meth:`adjoint`.
        """
        B = np.empty((len(A), self.n_features))
        for nu, l, cols, ks, _ in self.simple:
            x = A[:, ks[:, 0], _lm(l)]
            B[:, cols] = x[..., 0] if nu == 1 else np.einsum("rgm,rgm->rg", x, A[:, ks[:, 1], _lm(l)])
        values = self._pair_values(A)
        T = [t for _, _, t in values]
        for g, l3, cols, p, k3, _, _ in self.triple:
            B[:, cols] = np.einsum("rgm,rgm->rg", T[g][:, p], A[:, k3, _lm(l3)])
        for g1, g2, cols, p1, p2, _, _ in self.quad:
            B[:, cols] = np.einsum("rgm,rgm->rg", T[g1][:, p1], T[g2][:, p2])
        return (B, values) if return_pairs else B

    def _jacobian_blocks(self, A: np.ndarray, pairs=None):
        """Blocks ``(k (g,), l, cols (g,), values (rows, g, 2l+1))`` whose sum is dB/dA:
        ``d B_{cols[j]} / d A[:, k[j], lm(l)]`` gets ``values[:, j]`` (product rule, one
        block per factor of every kind of function)."""
        R = len(A)
        for nu, l, cols, ks, _ in self.simple:
            if nu == 1:
                yield ks[:, 0], 0, cols, np.ones((R, len(cols), 1))
                continue
            yield ks[:, 0], l, cols, A[:, ks[:, 1], _lm(l)]
            yield ks[:, 1], l, cols, A[:, ks[:, 0], _lm(l)]
        values = self._pair_values(A) if pairs is None else pairs

        def through_pair(g, p, cols, outer):  # d/dA of sum_M T_M(pair p) outer_M
            l1, l2, L, k1, k2, C, _, _ = self.pairs[g]
            x1, x2, _ = values[g]
            yield k1[p], l1, cols, _through_coupling(x2[:, p], outer, C)
            yield k2[p], l2, cols, _through_coupling(x1[:, p], outer, C.transpose(1, 0, 2))

        for g, l3, cols, p, k3, _, _ in self.triple:
            yield k3, l3, cols, values[g][2][:, p]
            yield from through_pair(g, p, cols, A[:, k3, _lm(l3)])
        for g1, g2, cols, p1, p2, _, _ in self.quad:
            yield from through_pair(g1, p1, cols, values[g2][2][:, p2])
            yield from through_pair(g2, p2, cols, values[g1][2][:, p1])

    def jacobian_entries(self, A: np.ndarray, pairs=None) -> np.ndarray:
        """The structurally nonzero entries of ``d B / d A`` per row, shape (rows, E).

        Entry ``e`` is ``d B_{f_e} / d A[:, k_e, lm_e]`` with ``(f_e, k_e, lm_e)`` from
        :attr:`entries` (fixed by the basis; an ``(f, k, lm)`` may appear more than once,
        the entries then add). A function of order ``nu`` has ``sum_t (2 l_t + 1)``
        entries: far fewer than the ``K * LM`` of a dense Jacobian row.
        """
        blocks = list(self._jacobian_blocks(A, pairs))
        if self._entries is None:
            f, k, lm = [], [], []
            for kb, l, cols, _ in blocks:
                w = 2 * l + 1
                f.append(np.repeat(cols, w))
                k.append(np.repeat(kb, w))
                lm.append(np.tile(np.arange(l * l, (l + 1) * (l + 1)), len(cols)))
            self._entries = tuple(np.concatenate(x) for x in (f, k, lm))
        return np.concatenate([v.reshape(len(A), -1) for *_, v in blocks], axis=1)

    @property
    def entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(f_e, k_e, lm_e)``: feature, channel and ``lm`` of each Jacobian entry."""
        if self._entries is None:
            self.jacobian_entries(np.zeros((1, self.n_channels, self._lm_size)))
        return self._entries

    def energy_and_adjoint(self, A: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``e_r = sum_f c_f B_f(A_r)`` and ``d e_r / d A_r`` for weights ``c`` shared by
        every row, without forming B.

        With fixed weights each kind of function is a bilinear form: the two-body
        functions ``A_l^T Q A_l`` (Q over channels), the three-body ones
        ``T_g^T Q A_l`` (Q from coupled pairs to channels), the four-body ones
        ``T_g1^T Q T_g2`` (Q between pair groups), with ``Q`` the weights scattered
        into a small matrix. Each becomes one matrix product over all rows instead of
        a gather, a product and a scatter per function (a linear potential's MD).

        Parameters
        ----------
        A : ndarray of shape (rows, K, LM)
        c : ndarray of shape (n_features,)

        Returns
        -------
        e : ndarray of shape (rows,)
        G : ndarray of shape (rows, K, LM)
            Like :meth:`adjoint` with ``W = c`` on every row.
        """
        def through(Q, X):  # sum_q Q[p, q] X[r, q, m] -> (r, p, m), one GEMM
            return np.tensordot(X, Q, axes=([1], [1])).transpose(0, 2, 1)

        e = np.zeros(len(A))
        G = np.zeros_like(A)
        simple_q, triple_q, quad_q = self._forms(c)
        for (nu, l, *_), Q in zip(self.simple, simple_q):
            if nu == 1:
                e += A[:, :, 0] @ Q
                G[:, :, 0] += Q
                continue
            x = A[:, :, _lm(l)]
            Z = through(Q, x)
            e += np.einsum("rkm,rkm->r", x, Z)
            G[:, :, _lm(l)] += Z + through(Q.T, x)
        values = self._pair_values(A)
        T_bar = [np.zeros_like(t) for _, _, t in values]
        for (g, l3, *_), Q in zip(self.triple, triple_q):
            x, t = A[:, :, _lm(l3)], values[g][2]
            Z = through(Q, x)
            e += np.einsum("rpm,rpm->r", t, Z)
            T_bar[g] += Z
            G[:, :, _lm(l3)] += through(Q.T, t)
        for (g1, g2, *_), Q in zip(self.quad, quad_q):
            t1, t2 = values[g1][2], values[g2][2]
            Z = through(Q, t2)
            e += np.einsum("rpm,rpm->r", t1, Z)
            T_bar[g1] += Z
            T_bar[g2] += through(Q.T, t1)
        self._pairs_adjoint(G, values, T_bar)
        return e, G

    #: weight vectors whose bilinear forms are kept (a potential's centre species)
    FORMS_CACHED = 8

    def _forms(self, c: np.ndarray) -> tuple[list, list, list]:
        """The weights ``c`` scattered into each kind's small matrix ``Q`` (two-body
        ``v`` (K,) or ``Q`` (K, K), three-body (P, K), four-body (P1, P2)), kept for the
        last ``FORMS_CACHED`` weight vectors: MD calls this with the same weights (one
        vector per centre species) at every step."""
        key = np.ascontiguousarray(c, dtype=float).tobytes()
        forms = self._forms_cache.get(key)
        if forms is not None:
            return forms
        simple = [H[0] @ c[cols] if nu == 1 else (H[0] * c[cols]) @ H[1].T
                  for nu, l, cols, ks, H in self.simple]
        triple = [(Hp * c[cols]) @ Hk.T for _, _, cols, _, _, Hp, Hk in self.triple]
        quad = [(Hp1 * c[cols]) @ Hp2.T for _, _, cols, _, _, Hp1, Hp2 in self.quad]
        if len(self._forms_cache) >= self.FORMS_CACHED:
            self._forms_cache.pop(next(iter(self._forms_cache)))
        self._forms_cache[key] = forms = (simple, triple, quad)
        return forms

    def _pairs_adjoint(self, G: np.ndarray, values, T_bar) -> None:
        """Add to ``G`` the cotangents ``T_bar`` of the coupled pairs, taken back through
        each pair's coupling to its two factors."""
        for (l1, l2, _, _, _, C, H1, H2), (x1, x2, _), tb in zip(self.pairs, values, T_bar):
            G[:, :, _lm(l1)] += _scatter(H1, _through_coupling(x2, tb, C))
            G[:, :, _lm(l2)] += _scatter(H2, _through_coupling(x1, tb, C.transpose(1, 0, 2)))

    def adjoint(self, A: np.ndarray, W: np.ndarray, pairs=None) -> np.ndarray:
        """``d (sum_f W[:, f] B_f) / d A``, shape (rows, K, LM) like A.

        ``pairs`` are the coupled pairs of the same A from ``products(A, True)``
        (recomputed when omitted).
        """
        G = np.zeros_like(A)
        for nu, l, cols, ks, H in self.simple:
            w = W[:, cols]
            if nu == 1:
                G[:, :, 0] += w @ H[0].T
                continue
            x1, x2 = A[:, ks[:, 0], _lm(l)], A[:, ks[:, 1], _lm(l)]
            G[:, :, _lm(l)] += _scatter(H[0], w[..., None] * x2) + _scatter(H[1], w[..., None] * x1)
        values = self._pair_values(A) if pairs is None else pairs
        T_bar = [np.zeros_like(t) for _, _, t in values]
        for g, l3, cols, p, k3, Hp, Hk in self.triple:
            w = W[:, cols, None]
            G[:, :, _lm(l3)] += _scatter(Hk, w * values[g][2][:, p])
            T_bar[g] += _scatter(Hp, w * A[:, k3, _lm(l3)])
        for g1, g2, cols, p1, p2, Hp1, Hp2 in self.quad:
            w = W[:, cols, None]
            T_bar[g1] += _scatter(Hp1, w * values[g2][2][:, p2])
            T_bar[g2] += _scatter(Hp2, w * values[g1][2][:, p1])
        self._pairs_adjoint(G, values, T_bar)
        return G

"""Bayesian linear regression on accumulated normal equations.

The model is ``y = A c + noise`` with a Gaussian prior ``c ~ N(0, (alpha P)^-1)`` and
Gaussian noise of precision ``beta * w_r`` per row (``w_r`` are fixed relative weights,
e.g. ``1/sigma_E^2`` for energy rows and ``1/sigma_F^2`` for force rows). The data enter
only through ``A^T W A``, ``A^T W y`` and ``y^T W y`` (:class:`NormalEquations`), so a
data set of any size is fitted block by block without holding the design matrix.

``alpha`` and ``beta`` are either fixed (ridge regression with ``lambda = alpha/beta``)
or chosen by maximising the Bayesian evidence (MacKay's fixed-point updates, as in
scikit-learn's ``BayesianRidge`` and the linear ACE fits of ACEpotentials, on one
eigendecomposition; large fits instead search ``alpha / beta`` by Cholesky
factorisations, with ``beta`` in closed form). The
posterior covariance gives the predictive standard deviation of any linear function of
the coefficients: energies, force components, stresses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import scipy.linalg
import scipy.optimize

from ml4m.errors import ConfigError, NotFittedError
from ml4m.parallel import guard_blas_races
from ml4m.validation import check_array

guard_blas_races()  # scipy's OpenBLAS 0.3.30 races in threaded level 3 (see ml4m.parallel)

__all__ = ["NormalEquations", "BayesianLinearRegression", "quadratic_form_rows"]


def quadratic_form_rows(A: np.ndarray, C: np.ndarray) -> np.ndarray:
    """``a_r^T C a_r`` for every row ``a_r`` of ``A`` (n, p), through one matrix product.

    (``np.einsum("ij,jk,ik->i", ...)`` would run a p^2 loop per row outside BLAS.)
    """
    A = np.asarray(A, dtype=float)
    return np.einsum("ij,ij->i", A @ C, A)


class NormalEquations:
    """Running sums of a weighted least-squares problem.

    Parameters
    ----------
    n_features : int
        Number of columns ``p``.

    Attributes
    ----------
    AtA : ndarray of shape (p, p)
        ``sum_r w_r a_r a_r^T`` (symmetric).
    Aty : ndarray of shape (p,)
        ``sum_r w_r y_r a_r``.
    yty : float
        ``sum_r w_r y_r^2``.
    n : int
        Number of rows added.

    Notes
    -----
    Rows are accumulated in blocks by a symmetric rank-k update (``B^T B``, which numpy
    computes with BLAS ``syrk``: half the flops of a general product) added to the Gram
    matrix; the block's product is one temporary ``p x p`` array.
    """

    def __init__(self, n_features: int, block_rows: int = 1024) -> None:
        self.n_features = int(n_features)
        self.block_rows = int(block_rows)
        self._gram = np.zeros((self.n_features, self.n_features), order="F")
        self._pending: list[np.ndarray] = []  # weighted rows not yet in the Gram matrix
        self._pending_rows = 0
        self.Aty = np.zeros(self.n_features)
        self.yty = 0.0
        self.n = 0

    @property
    def AtA(self) -> np.ndarray:
        self._flush()
        return self._gram

    @AtA.setter
    def AtA(self, value: np.ndarray) -> None:
        self._flush()
        self._gram = np.asfortranarray(value, dtype=float)

    def add(self, A: np.ndarray, y: np.ndarray, weights: np.ndarray | float = 1.0) -> None:
        """Add rows ``A`` (n, p) with targets ``y`` (n,) and weights (n,) or scalar (>= 0).

        The rows' products join the Gram matrix in blocks of at least ``block_rows``
        rows: every ``syrk`` reads and writes the whole (p, p) triangle, so a few rows at
        a time (a batch's energies) would cost a full pass over it each (3BPA, p = 9,728:
        two passes per batch of four frames took the normal-equation update from 87 to
        160 ms per frame).
        """
        A = np.asarray(A, dtype=float)
        y = np.asarray(y, dtype=float).ravel()
        if A.ndim != 2 or A.shape[1] != self.n_features or len(A) != len(y):
            raise ValueError(f"A must be (n, {self.n_features}) with n = len(y); got {A.shape} "
                             f"and {y.shape}")
        w = np.broadcast_to(np.asarray(weights, dtype=float), y.shape)
        if np.any(w < 0):
            raise ValueError("row weights must be non-negative")
        sw = np.sqrt(w)
        B = A * sw[:, None]
        self._pending.append(B)
        self._pending_rows += len(B)
        if self._pending_rows >= self.block_rows:
            self._flush()
        self.Aty += B.T @ (sw * y)
        self.yty += float(np.dot(w * y, y))
        self.n += len(y)

    def _flush(self) -> None:
        """The pending rows into the Gram matrix, in one ``syrk``."""
        if not self._pending:
            return
        B = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        self._pending, self._pending_rows = [], 0
        # gram += B^T B through numpy's BLAS (a syrk for a transposed self-product, both
        # triangles filled), not scipy's: see ml4m.parallel.guard_blas_races. Not in float32:
        # evidence fits of large bases pick alpha / beta near 1e-9 of the Gram scale, where
        # float32 rounding of the rows (1e-7) ruins the solution (3BPA: F MAE 47 against 25)
        self._gram += B.T @ B

    def __iadd__(self, other: NormalEquations) -> NormalEquations:
        self.AtA += other.AtA
        self.Aty += other.Aty
        self.yty += other.yty
        self.n += other.n
        return self


def _upper_inverse(U: np.ndarray) -> np.ndarray:
    """Inverse of an upper-triangular Cholesky factor (LAPACK dtrtri, in place), with
    the strict lower triangle zeroed: ``dpotrf(clean=0)`` leaves the input there."""
    Ui, info = scipy.linalg.lapack.dtrtri(U, lower=0, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"dtrtri failed ({info})")
    k, by_columns = Ui.shape[0], Ui.flags.f_contiguous
    for j in range(k - 1):  # along the contiguous axis
        if by_columns:
            Ui[j + 1:, j] = 0.0
        else:
            Ui[k - 1 - j, :k - 1 - j] = 0.0
    return Ui


def _factor_row_norms(A: np.ndarray, F11: np.ndarray, F2: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """``|a F|^2`` for every row ``a`` of ``A``, with ``F = [[F11, F2[:t]], [0, F2[t:]]]``
    and ``F11`` (t, t) upper triangular: its part by BLAS ``trmm`` (half the flops of a
    general product), in chunks of rows."""
    from scipy.linalg import blas

    t = F11.shape[0]
    out = np.empty(len(A))
    trmm = blas.strmm if F11.dtype == np.float32 else blas.dtrmm
    for r0 in range(0, len(A), chunk):
        a = A[r0:r0 + chunk]
        v = np.zeros(len(a))
        if t:
            b = np.array(a[:, :t].T, dtype=F11.dtype, order="F")  # (t, n): trmm writes F11^T b into it
            b = trmm(1.0, F11, b, side=0, lower=0, trans_a=1, overwrite_b=1)
            v += np.einsum("ij,ij->j", b, b, dtype=np.float64)
        if F2.shape[1]:
            Z = a.astype(F2.dtype, copy=False) @ F2
            v += np.einsum("ij,ij->i", Z, Z, dtype=np.float64)
        out[r0:r0 + len(a)] = v
    return out


class _Whitening:
    """``c = T u`` with ``T = blockdiag(diag(d), T2)``: a diagonal part (p1,), stored as its
    diagonal, then a dense part (p - p1, k2) (``None`` when the prior is all diagonal).

    A sparse GP's prior ``blockdiag(diag(P_linear), K_mm)`` keeps its large linear block
    diagonal: the products then cost O(p^2) plus those of the small kernel block, where
    a dense ``T`` would cost two p^3 products and a p^3 eigendecomposition.
    """

    def __init__(self, d: np.ndarray, T2: np.ndarray | None = None) -> None:
        self.d, self.T2 = d, T2
        self.p1 = len(d)
        self.k = self.p1 + (0 if T2 is None else T2.shape[1])

    def sandwich(self, M: np.ndarray, block: int = 1024) -> np.ndarray:
        """``T^T M T`` of a symmetric ``M``, exactly symmetric.

        The diagonal part as ``M_ij (d_i d_j)`` in blocks of columns: the product
        ``d_i d_j`` is the same in both triangles, so no symmetrising pass (two (p, p)
        temporaries) is needed, and no temporary larger than ``p x block``.
        """
        d, p1 = self.d, self.p1
        G = np.empty((self.k, self.k), order="F")  # as M (NormalEquations): blocks of columns are contiguous
        for j0 in range(0, p1, block):
            j1 = min(p1, j0 + block)
            np.multiply(M[:p1, j0:j1], d[:, None] * d[None, j0:j1], out=G[:p1, j0:j1])
        if self.T2 is None:
            return G
        T2 = self.T2
        G[:p1, p1:] = (d[:, None] * M[:p1, p1:]) @ T2
        G[p1:, :p1] = G[:p1, p1:].T  # M is symmetric: the other off-diagonal block is this one's transpose
        K = T2.T @ M[p1:, p1:] @ T2
        G[p1:, p1:] = 0.5 * (K + K.T)
        return G

    def left(self, v: np.ndarray) -> np.ndarray:
        """``T^T v``."""
        head = self.d * v[:self.p1]
        return head if self.T2 is None else np.concatenate([head, self.T2.T @ v[self.p1:]])

    def apply(self, X: np.ndarray) -> np.ndarray:
        """``T X`` for a vector (k,) or a matrix (k, m); a matrix keeps its memory order
        (one (p, m) result, no concatenation)."""
        d = self.d if X.ndim == 1 else self.d[:, None]
        if self.T2 is None:
            return np.multiply(X, d, order="K")
        out = np.empty((self.p1 + self.T2.shape[0],) + X.shape[1:], order="F" if X.flags.f_contiguous else "C")
        np.multiply(X[:self.p1], d, out=out[:self.p1])
        out[self.p1:] = self.T2 @ X[self.p1:]
        return out


class BayesianLinearRegression:
    """Linear regression with a Gaussian prior and evidence-optimised hyperparameters.

    Parameters
    ----------
    alpha : float, optional
        Prior precision of the coefficients. ``None``: maximise the evidence.
    beta : float, optional
        Noise precision scale (multiplies the row weights). ``None``: maximise the
        evidence.
    prior : ndarray of shape (p,) or (p, p), or a pair (ndarray (p1,), ndarray (p2, p2)), optional
        Prior precision shape ``P`` (default identity): diagonal smoothness weights for
        a basis, a kernel matrix ``K_mm`` for a sparse GP, or the pair ``(d, K)`` for
        ``blockdiag(diag(d), K)`` (a sparse GP over a linear baseline) without forming
        the (p, p) matrix.
    max_iter : int, default=300
        Evidence iterations.
    rcond : float, default=1e-8
        Eigenvalues of a matrix prior below ``rcond`` times the largest are dropped (of
        its dense part: a leading diagonal block is kept whole).
    tol : float, default=1e-8
        Relative change of ``alpha`` and ``beta`` at convergence.

    Attributes
    ----------
    coef_ : ndarray of shape (p,)
        Posterior mean.
    covariance_ : ndarray of shape (p, p)
        Posterior covariance (in the units of ``y`` squared over ``A`` squared).
    alpha_, beta_ : float
        Hyperparameters used.
    log_evidence_ : float
        Log marginal likelihood at the solution (up to a constant of the weights).
    n_iter_ : int
        Evidence iterations run.
    """

    #: with this many (whitened) coefficients or more, and both hyperparameters free, the
    #: evidence is searched by Cholesky factorisations instead of one eigendecomposition
    cholesky_search_from: ClassVar[int] = 3000
    #: tolerance of that search, in log(alpha / beta)
    search_xatol: ClassVar[float] = 0.3

    def __init__(self, alpha: float | None = None, beta: float | None = None,
                 prior: np.ndarray | None = None, max_iter: int = 300, tol: float = 1e-8,
                 rcond: float = 1e-8) -> None:
        self.alpha = alpha
        self.beta = beta
        self.prior = prior
        self.max_iter = max_iter
        self.tol = tol
        self.rcond = rcond

    def _whitening(self, p: int) -> _Whitening:
        """``T`` (p, k) with ``T^T P T = I_k``: the prior is isotropic in ``u``, ``c = T u``.

        A matrix prior (a kernel matrix ``K_mm``) is often nearly singular; directions
        with eigenvalues below ``rcond * max`` are dropped (a low-rank Nystrom subspace),
        which keeps the coefficients, and so the predictions, numerically stable. A
        diagonal prior gives a diagonal ``T``, applied elementwise (no p^3 products); so
        does the leading diagonal block of a matrix prior (a sparse GP's linear baseline),
        leaving only its dense part (the kernel block) to an eigendecomposition.
        """
        if self.prior is None:
            return _Whitening(np.ones(p))
        if isinstance(self.prior, tuple):
            head, K = (np.asarray(a, dtype=float) for a in self.prior)
            if head.ndim != 1 or K.ndim != 2 or K.shape[0] != K.shape[1] or len(head) + len(K) != p:
                raise ConfigError(f"prior (d, K) must be (p1,) and (p2, p2) with p1 + p2 = {p}, got "
                                  f"{head.shape} and {K.shape}")
            return self._block_whitening(head, 0.5 * (K + K.T))
        P = np.asarray(self.prior, dtype=float)
        if P.ndim == 1:
            if P.shape != (p,) or np.any(P <= 0):
                raise ConfigError(f"prior must be {p} positive precisions, got shape {P.shape}")
            return _Whitening(1.0 / np.sqrt(P))
        if P.shape != (p, p):
            raise ConfigError(f"prior must be ({p}, {p}), got {P.shape}")
        P = 0.5 * (P + P.T)
        # the leading rows without off-diagonal entries are a diagonal block of their own
        off = P != 0
        np.fill_diagonal(off, False)
        rows = np.flatnonzero(off.any(axis=1))
        p1 = int(rows[0]) if len(rows) else p
        return self._block_whitening(np.diag(P)[:p1].copy(), P[p1:, p1:])

    def _block_whitening(self, head: np.ndarray, K: np.ndarray) -> _Whitening:
        """Whitening of ``blockdiag(diag(head), K)`` (``K`` symmetric, possibly empty)."""
        if len(head) and np.any(head <= 0):
            raise ConfigError("prior: the diagonal block must be positive precisions")
        if len(K) == 0:
            return _Whitening(1.0 / np.sqrt(head))
        lam, V = np.linalg.eigh(K)
        keep = lam > self.rcond * max(float(head.max(initial=0.0)), float(lam.max()))
        return _Whitening(1.0 / np.sqrt(head), V[:, keep] / np.sqrt(lam[keep]))

    def fit(self, A: np.ndarray, y: np.ndarray, weights: np.ndarray | float = 1.0) -> BayesianLinearRegression:
        """Fit on rows ``A`` (n, p), targets ``y`` (n,), relative weights (n,)."""
        neq = NormalEquations(np.asarray(A).shape[1])
        neq.add(A, y, weights)
        return self.fit_normal_equations(neq)

    def fit_normal_equations(self, neq: NormalEquations) -> BayesianLinearRegression:
        """Fit on accumulated :class:`NormalEquations`; returns ``self``.

        With ``alpha`` and ``beta`` both fixed there is nothing to search: one Cholesky
        factorisation (:meth:`fit_groups` with one group); else the evidence iterations
        on one eigendecomposition, or, with both free and at least
        ``cholesky_search_from`` coefficients, a search by Cholesky factorisations.
        """
        p = neq.n_features
        if neq.n == 0:
            raise ConfigError("no data rows to fit")
        self._check_hyper()
        if self.alpha is not None and self.beta is not None:
            return self.fit_groups([neq])
        T = self._whitening(p)  # c = T u, prior on u is alpha * I (k <= p directions)
        k = T.k
        G = T.sandwich(neq.AtA)
        b = T.left(neq.Aty)
        if self.alpha is None and self.beta is None and k >= self.cholesky_search_from:
            return self._fit_by_cholesky_search(G, b, neq, T)
        lam, V = np.linalg.eigh(G)
        Vb = V.T @ b
        # directions the data do not see (eigenvalues at the rounding level of eigh, or
        # below zero) carry no information: their projections of b are rounding residue
        # too, and kept they feed a runaway (tiny alpha -> huge coefficients there ->
        # tinier alpha) on rank-deficient noise-free data. The bound is one rounding unit
        # of the largest eigenvalue, not p of them: a steep prior grades the whitened
        # Gram matrix, and its small eigenvalues are then resolved below that level
        unseen = lam <= max(float(lam[-1]), 0.0) * np.finfo(float).eps
        lam = np.where(unseen, 0.0, lam)
        Vb = np.where(unseen, 0.0, Vb)
        alpha = 1.0 if self.alpha is None else float(self.alpha)
        beta = 1.0 if self.beta is None else float(self.beta)
        if self.beta is None:
            # a sensible start: noise of the order of the data scale
            beta = max(neq.n / max(neq.yty, 1e-300), 1e-12)
        if self.alpha is None:
            alpha = max(1e-12, float(np.mean(lam)) * beta * 1e-6)
        # evidence updates stay in a wide window around the data-scaled start: noise-free
        # data would otherwise send beta to infinity (the interpolation limit) and overflow
        a_lo, a_hi = alpha * 1e-12, alpha * 1e12
        b_lo, b_hi = beta * 1e-12, beta * 1e14
        n_iter = 0
        for n_iter in range(1, self.max_iter + 1):
            m_v = beta * Vb / (alpha + beta * lam)  # posterior mean in eigenbasis
            gamma = float(np.sum(beta * lam / (alpha + beta * lam)))
            rss = neq.yty - 2 * float(m_v @ Vb) + float(np.sum(lam * m_v**2))
            rss = max(rss, 1e-300)
            new_alpha = alpha if self.alpha is not None else float(np.clip(
                max(gamma, 1e-12) / max(float(m_v @ m_v), 1e-300), a_lo, a_hi))
            new_beta = beta if self.beta is not None else float(np.clip(
                max(neq.n - gamma, 1e-12) / rss, b_lo, b_hi))
            done = abs(new_alpha - alpha) <= self.tol * alpha and abs(new_beta - beta) <= self.tol * beta
            alpha, beta = new_alpha, new_beta
            if done or (self.alpha is not None and self.beta is not None):
                break
        d = alpha + beta * lam
        m_v = beta * Vb / d
        rss = max(neq.yty - 2 * float(m_v @ Vb) + float(np.sum(lam * m_v**2)), 0.0)
        self.coef_ = T.apply(V @ m_v)
        TV = T.apply(V)
        self.posterior_factor_ = TV / np.sqrt(d)  # covariance on first use
        self.alpha_, self.beta_, self.n_iter_ = alpha, beta, n_iter
        self.betas_ = np.array([beta])
        self.log_evidence_ = 0.5 * (
            k * np.log(alpha) + neq.n * np.log(beta) - beta * rss - alpha * float(m_v @ m_v)
            - float(np.sum(np.log(d))) - neq.n * np.log(2 * np.pi)
        )
        self.n_features_in_ = p
        return self

    def _fit_by_cholesky_search(self, G: np.ndarray, b: np.ndarray, neq: NormalEquations,
                                T: _Whitening) -> BayesianLinearRegression:
        """Both hyperparameters by maximum evidence, one Cholesky factorisation per trial.

        With ``lambda = alpha / beta`` the noise precision has a closed-form optimum,
        ``beta = n / E(lambda)`` with ``E = y^T y - b^T m`` and ``m = (lambda I + G)^-1 b``,
        so the log evidence is a function of ``lambda`` alone,
        ``(k log lambda + n log(n / E) - n - log det(lambda I + G) - n log 2 pi) / 2``,
        maximised by a bounded Brent search over ``log lambda``. A Cholesky factorisation
        costs a twelfth of the eigendecomposition of the eigen path (3BPA, k = 9,728:
        about 8 s against 100 s), and a search takes about ten of them. The posterior
        factor is the inverse Cholesky factor (``Sigma = F F^T`` with ``F = T U^-1 /
        sqrt(beta)``), which :meth:`variance_rows` reads as it reads the eigen path's.
        """
        k, n = len(b), float(neq.n)
        work = np.empty_like(G, order="F")
        diag = np.diag_indices(k)
        scale = max(float(np.trace(G)) / k, 1e-300)

        def factor(log_lam: float):
            np.copyto(work, G if G.flags.f_contiguous else G.T)  # G is symmetric: either is the F-ordered copy
            work[diag] += np.exp(log_lam)
            U, info = scipy.linalg.lapack.dpotrf(work, lower=0, overwrite_a=1, clean=0)
            return (U if info == 0 else None)

        def evidence(log_lam: float):
            U = factor(log_lam)
            if U is None:
                return None
            m, _ = scipy.linalg.lapack.dpotrs(U, b, lower=0)
            E = max(neq.yty - float(b @ m), 1e-300 * max(neq.yty, 1.0))
            logdet = 2.0 * float(np.sum(np.log(np.diag(U))))
            value = 0.5 * (k * log_lam + n * np.log(n / E) - n - logdet - n * np.log(2 * np.pi))
            return value, U, m, E

        # the window: from the rounding level of the factorisation (noise-free data drive
        # lambda down to it; a trial that fails counts as a very poor one) to where the
        # prior swamps every direction
        lo, hi = np.log(scale * 1e-12), np.log(scale * 1e4)
        best: dict = {}
        trials = []

        def objective(t: float) -> float:
            out = evidence(t)
            trials.append(t)
            if out is None:
                return 1e30
            if not best or out[0] > best["value"]:
                best.update(t=t, value=out[0], m=out[2], E=out[3], U=out[1].copy(order="F"))
            return -out[0]

        scipy.optimize.minimize_scalar(objective, bounds=(lo, hi), method="bounded",
                                       options={"xatol": self.search_xatol})
        if not best:
            raise np.linalg.LinAlgError("the Gram matrix is not positive semi-definite")
        t, value, U, m, E = best["t"], best["value"], best["U"], best["m"], best["E"]
        best.clear()
        lam, beta = float(np.exp(t)), n / E
        alpha = lam * beta
        self.coef_ = T.apply(m)
        F = T.apply(_upper_inverse(U))
        F /= np.sqrt(beta)
        self.posterior_factor_ = F
        self.alpha_, self.beta_, self.n_iter_ = alpha, beta, len(trials)
        self.betas_ = np.array([beta])
        self.log_evidence_ = value
        self.n_features_in_ = len(self.coef_)
        return self

    def fit_groups(self, groups: Sequence[NormalEquations]) -> BayesianLinearRegression:
        """Fit with one noise precision per group of rows, all by maximum evidence.

        Parameters
        ----------
        groups : sequence of NormalEquations
            One per quantity (e.g. energies, forces, stresses), each with its own fixed
            relative row weights; empty groups are ignored.

        Returns
        -------
        self
            With ``betas_`` (one per non-empty group, in order) besides ``alpha_``;
            ``beta_`` is the first group's. A fixed ``beta`` is used for every group
            (then the fit equals :meth:`fit_normal_equations` on the summed groups), or
            a sequence of fixed ``beta`` gives one per group; with ``alpha`` fixed too the
            fit is one Cholesky factorisation (no evidence search).

        Notes
        -----
        Starts from the shared-noise optimum (:meth:`fit_normal_equations`), then
        maximises the log evidence over ``log alpha`` and every ``log beta_g`` with
        L-BFGS and the analytic gradient: with ``S = (alpha I + sum_g beta_g G_g)^-1``
        (prior-whitened) and ``m`` the posterior mean,
        ``d/d log beta_g = (n_g - beta_g rss_g - beta_g tr(S G_g)) / 2`` and
        ``d/d log alpha = (k - alpha |m|^2 - alpha tr S) / 2``. Each step costs one
        Cholesky factorisation of a (p, p) matrix.
        """
        groups = [g for g in groups if g.n > 0]
        if not groups:
            raise ConfigError("no data rows to fit")
        self._check_hyper()
        p = groups[0].n_features
        T = self._whitening(p)
        k = T.k
        Gs = [T.sandwich(g.AtA) for g in groups]
        bs = [T.left(g.Aty) for g in groups]
        yty = np.array([g.yty for g in groups])
        ns = np.array([g.n for g in groups], dtype=float)
        # fixed values (one for all groups, or one per group), or placeholders that the
        # shared-noise start below replaces
        betas = np.array(np.broadcast_to(np.asarray(self.beta if self.beta is not None else 1.0, dtype=float),
                                          (len(groups),)))
        alpha = float(self.alpha) if self.alpha is not None else 1.0

        def precision(alpha, betas):  # alpha I + sum_g beta_g G_g, built in place
            H = betas[0] * Gs[0]
            for b, G in zip(betas[1:], Gs[1:]):
                H += b * G
            H[np.diag_indices(k)] += alpha
            return H, sum(b * v for b, v in zip(betas, bs))

        def posterior(alpha, betas):
            H, rhs = precision(alpha, betas)
            try:
                U = scipy.linalg.cholesky(H, lower=False)
                logdet = 2 * float(np.sum(np.log(np.diag(U))))
                inv, info = scipy.linalg.lapack.dpotri(U, lower=0)  # H^-1 from U: a third of a solve
                if info != 0:
                    raise np.linalg.LinAlgError(f"dpotri failed ({info})")
                S = inv + np.triu(inv, 1).T  # the strict lower triangle of U (and of inv) is zero
                # the mean by triangular solves, not S @ rhs: the explicit inverse loses
                # digits on ill-conditioned (near noise-free) problems
                m = scipy.linalg.cho_solve((U, False), rhs)
            except np.linalg.LinAlgError:  # round-off when alpha << beta * |G|: eigenvalues >= alpha
                d, U = np.linalg.eigh(H)
                d = np.maximum(d, alpha)
                S = (U / d) @ U.T
                logdet = float(np.sum(np.log(d)))
                m = U @ ((U.T @ rhs) / d)
            rss = np.array([max(y - 2 * m @ v + m @ G @ m, 1e-300) for y, v, G in zip(yty, bs, Gs)])
            return S, m, rss, logdet

        free_a, free_b = self.alpha is None, self.beta is None

        def unpack(theta):
            i = 0
            alpha_t = alpha
            if free_a:
                alpha_t, i = float(np.exp(theta[0])), 1
            return alpha_t, (np.exp(theta[i:]) if free_b else betas)

        def neg_log_evidence(theta):
            a, bt = unpack(theta)
            S, m, rss, logdet = posterior(a, bt)
            val = 0.5 * (k * np.log(a) + ns @ np.log(bt) - bt @ rss - a * (m @ m) - logdet)
            grad = []
            if free_a:  # d/d log(alpha), envelope theorem at the posterior mean
                grad.append(0.5 * (k - a * (m @ m) - a * np.trace(S)))
            if free_b:
                grad += [0.5 * (n - b * r - b * float(np.sum(S * G))) for n, b, r, G in zip(ns, bt, rss, Gs)]
            return -float(val), -np.array(grad)

        n_iter = 0
        if free_a or free_b:
            # start from the shared-noise optimum (the cheap eigen path), then all levels at once
            shared = BayesianLinearRegression(alpha=self.alpha, beta=self.beta, max_iter=self.max_iter,
                                              tol=self.tol)
            total = NormalEquations(k)
            total.AtA, total.Aty = sum(Gs), sum(bs)
            total.yty, total.n = float(yty.sum()), int(ns.sum())
            shared.fit_normal_equations(total)
            alpha = shared.alpha_ if free_a else alpha
            betas = np.full(len(groups), shared.beta_) if free_b else betas
            theta0 = np.concatenate([[np.log(alpha)] if free_a else [], np.log(betas) if free_b else []])
            bounds = [(t - 30.0, t + 30.0) for t in theta0]
            res = scipy.optimize.minimize(neg_log_evidence, theta0, jac=True, method="L-BFGS-B",
                                          bounds=bounds, options={"maxiter": self.max_iter, "gtol": 1e-6})
            alpha, betas = unpack(res.x)
            n_iter = int(res.nit)
        m, F, logdet = self._factored_posterior(*precision(alpha, betas), alpha)
        rss = np.array([max(y - 2 * m @ v + m @ G @ m, 1e-300) for y, v, G in zip(yty, bs, Gs)])
        self.coef_ = T.apply(m)
        self.posterior_factor_ = T.apply(F)
        self.alpha_, self.betas_, self.beta_, self.n_iter_ = alpha, betas, float(betas[0]), n_iter
        self.log_evidence_ = 0.5 * (
            k * np.log(alpha) + float(np.sum(ns * np.log(betas))) - float(betas @ rss)
            - alpha * float(m @ m) - logdet - ns.sum() * np.log(2 * np.pi))
        self.n_features_in_ = p
        return self

    @staticmethod
    def _factored_posterior(H: np.ndarray, rhs: np.ndarray, alpha: float
                            ) -> tuple[np.ndarray, np.ndarray, float]:
        """Mean ``H^-1 rhs``, a factor ``F`` with ``H^-1 = F F^T`` and ``log det H``.

        One Cholesky factorisation and one triangular inverse (``F = U^-1``): no explicit
        inverse, whose symmetric product would cost as much again; the covariance is formed
        from ``F`` only when asked for. Falls back on the eigendecomposition (eigenvalues
        floored at ``alpha``) when round-off makes ``H`` indefinite.
        """
        try:
            U = scipy.linalg.cholesky(H, lower=False, overwrite_a=True)
            m = scipy.linalg.cho_solve((U, False), rhs)
            logdet = 2 * float(np.sum(np.log(np.diag(U))))
            return m, _upper_inverse(U), logdet
        except np.linalg.LinAlgError:
            d, V = np.linalg.eigh(H)
            d = np.maximum(d, alpha)
            return V @ ((V.T @ rhs) / d), V / np.sqrt(d), float(np.sum(np.log(d)))

    @property
    def posterior_factor_(self) -> np.ndarray | None:
        """``F`` with posterior covariance ``F F^T`` (``None`` when only the covariance
        is held, e.g. set directly)."""
        return self._factor

    @posterior_factor_.setter
    def posterior_factor_(self, value: np.ndarray) -> None:
        self._factor, self._covariance, self._factor_parts = value, None, {}

    _factor: np.ndarray | None = None  # F with covariance = F F^T
    _covariance: np.ndarray | None = None

    @property
    def covariance_(self) -> np.ndarray:
        """Posterior covariance of the coefficients, (p, p); formed on first use after an
        evidence fit (a p^3 product that :meth:`variance_rows` does not need)."""
        if self._covariance is None and self._factor is not None:
            self._covariance = self._factor @ self._factor.T
        return self._covariance

    @covariance_.setter
    def covariance_(self, value: np.ndarray) -> None:
        self._covariance, self._factor = value, None

    def variance_rows(self, A: np.ndarray, single: bool = False) -> np.ndarray:
        """``a^T Sigma a`` for every row of ``A`` (n, p): the posterior variance of ``a . c``.

        After an evidence fit through the factor ``F`` (``Sigma = F F^T``) as ``|F^T a|^2``,
        a sum of squares; else with the covariance. ``single``: the product in float32
        (half the time; relative error about 1e-5, ample for a variance that only feeds
        an error model).
        """
        A = np.asarray(A) if single else np.asarray(A, dtype=float)  # float32 rows stay so
        if self._factor is not None:
            return _factor_row_norms(A, *self._parts(np.float32 if single else np.float64))
        return quadratic_form_rows(np.asarray(A, dtype=float), self.covariance_)

    def _parts(self, dtype) -> tuple[np.ndarray, np.ndarray]:
        """The factor as ``(F[:t, :t], F[:, t:])`` in ``dtype``, ``t`` its leading upper-
        triangular columns (zero below the diagonal in every row): a Cholesky path's
        ``T U^-1`` has ``t`` = the diagonal part of ``T``; an eigen path's, ``t = 0``."""
        parts = self._factor_parts  # reset whenever the factor is set
        if dtype not in parts:
            F = self._factor
            t = 0
            while t < F.shape[1] and not F[t + 1:, t].any():
                t += 1
            parts[dtype] = (np.asfortranarray(F[:t, :t], dtype=dtype),
                            F[:, t:].astype(dtype, copy=False))  # no copy of a whole float64 F
        return parts[dtype]

    def _check_hyper(self) -> None:
        """``alpha`` and ``beta``: None (evidence) or finite numbers > 0 (beta: one per group)."""
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            if v is None:
                continue
            values = check_array(name, v, kinds="fiu", error=ConfigError)
            if values.ndim > 1 or not np.all(values > 0):
                raise ConfigError(f"{name} must be positive or None (evidence), got {v}")

    def _check(self, A: np.ndarray) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise NotFittedError("This BayesianLinearRegression instance is not fitted yet. "
                                 "Call 'fit' with appropriate arguments before using it.")
        A = np.asarray(A, dtype=float)
        if A.shape[-1] != self.n_features_in_:
            raise ConfigError(f"A has {A.shape[-1]} features, but the model expects {self.n_features_in_}")
        return A

    def predict(self, A: np.ndarray, return_std: bool = False):
        """Posterior mean ``A c`` and, optionally, its standard deviation.

        Parameters
        ----------
        A : ndarray of shape (n, p)
            Rows.
        return_std : bool, default=False
            Also return ``sqrt(a^T Sigma a)`` per row (the model's, epistemic, part; add
            ``1 / (beta_ * w)`` for the noise of a new observation of weight ``w``).
        """
        A = self._check(A)
        mean = A @ self.coef_
        if not return_std:
            return mean
        var = self.variance_rows(A)
        return mean, np.sqrt(np.clip(var, 0.0, None))

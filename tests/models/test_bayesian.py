"""Bayesian linear regression: recovers known coefficients with a calibrated posterior."""

from __future__ import annotations

import numpy as np
import pytest

from ml4m.errors import ConfigError, NotFittedError
from ml4m.models.linear.bayesian import BayesianLinearRegression, NormalEquations


def _problem(rng, n=400, p=12, sigma=0.1):
    A = rng.normal(size=(n, p))
    c = rng.normal(size=p)
    return A, c, A @ c + rng.normal(scale=sigma, size=n)


def test_recovers_coefficients_and_noise(rng):
    A, c, y = _problem(rng)
    model = BayesianLinearRegression().fit(A, y)
    std = np.sqrt(np.diag(model.covariance_))
    assert np.all(np.abs(model.coef_ - c) < 4 * std)
    assert model.beta_ == pytest.approx(1 / 0.1**2, rel=0.2)  # noise precision
    assert model.n_iter_ < 300


def test_posterior_is_calibrated():
    """Over many data sets, (c_hat - c) / std is standard normal; 68% within 1 std."""
    z, inside = [], []
    for seed in range(60):
        rng = np.random.default_rng(seed)
        A, c, y = _problem(rng, n=60, p=8, sigma=0.3)
        model = BayesianLinearRegression().fit(A, y)
        z.append((model.coef_ - c) / np.sqrt(np.diag(model.covariance_)))
        At = rng.normal(size=(50, 8))
        yt = At @ c + rng.normal(scale=0.3, size=50)
        mean, std = model.predict(At, return_std=True)
        total = np.sqrt(std**2 + 1 / model.beta_)
        inside.append(np.mean(np.abs(yt - mean) < total))
    z = np.concatenate(z)
    assert np.std(z) == pytest.approx(1.0, abs=0.12)
    assert np.mean(inside) == pytest.approx(0.683, abs=0.04)


def test_blocked_normal_equations_equal_one_shot(rng):
    A, c, y = _problem(rng)
    w = rng.uniform(0.5, 2.0, size=len(y))
    one = BayesianLinearRegression(alpha=0.3, beta=50.0).fit(A, y, w)
    neq = NormalEquations(A.shape[1])
    for block in np.array_split(np.arange(len(y)), 7):
        part = NormalEquations(A.shape[1])
        part.add(A[block], y[block], w[block])
        neq += part
    blocked = BayesianLinearRegression(alpha=0.3, beta=50.0).fit_normal_equations(neq)
    np.testing.assert_allclose(blocked.coef_, one.coef_, rtol=1e-10)


def test_normal_equations_sums(rng):
    """Rank-k updates in place (one triangle), mixed with += and reads in between."""
    A = rng.normal(size=(700, 530))  # > one 512-column block of the symmetrisation
    y = rng.normal(size=700)
    w = rng.uniform(0.0, 3.0, size=700)
    neq = NormalEquations(530)
    neq.add(A[:100], y[:100], w[:100])
    _ = neq.AtA  # read (symmetrise), then keep adding
    neq.add(A[100:400], y[100:400], w[100:400])
    other = NormalEquations(530)
    other.add(A[400:], y[400:], w[400:])
    neq += other
    np.testing.assert_allclose(neq.AtA, (A * w[:, None]).T @ A, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(neq.Aty, (A * w[:, None]).T @ y, rtol=1e-12, atol=1e-10)
    assert neq.yty == pytest.approx(float(np.sum(w * y * y)), rel=1e-12) and neq.n == 700
    assert np.array_equal(neq.AtA, neq.AtA.T)
    with pytest.raises(ValueError, match="non-negative"):
        neq.add(A[:2], y[:2], -1.0)


def test_fixed_hyperparameters_match_closed_form(rng):
    A, c, y = _problem(rng, p=6)
    P = np.diag(rng.uniform(0.5, 3.0, size=6))
    P[0, 1] = P[1, 0] = 0.2
    alpha, beta = 0.7, 20.0
    model = BayesianLinearRegression(alpha=alpha, beta=beta, prior=P).fit(A, y)
    S = np.linalg.inv(beta * A.T @ A + alpha * P)
    np.testing.assert_allclose(model.coef_, beta * S @ A.T @ y, rtol=1e-8)
    np.testing.assert_allclose(model.covariance_, S, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("p1", [0, 5, 9])
def test_matrix_prior_with_a_diagonal_block_matches_the_closed_form(rng, p1):
    """A prior ``blockdiag(diag, K)`` (a sparse GP's linear baseline and kernel block) is
    whitened block by block; the fit equals the closed form of the full matrix, at fixed
    hyperparameters and at the evidence optimum (checked against a dense whitening of
    the same prior with its blocks swapped, which has no leading diagonal block)."""
    A, _, y = _problem(rng, p=9)
    m = 9 - p1
    L = rng.normal(size=(m, m))
    P = np.zeros((9, 9))
    P[:p1, :p1] = np.diag(rng.uniform(0.5, 3.0, size=p1))
    P[p1:, p1:] = L @ L.T + 0.1 * np.eye(m)
    alpha, beta = 0.7, 20.0
    model = BayesianLinearRegression(alpha=alpha, beta=beta, prior=P).fit(A, y)
    S = np.linalg.inv(beta * A.T @ A + alpha * P)
    np.testing.assert_allclose(model.coef_, beta * S @ A.T @ y, rtol=1e-8)
    np.testing.assert_allclose(model.covariance_, S, rtol=1e-6, atol=1e-12)
    evid = BayesianLinearRegression(prior=P).fit(A, y)
    perm = np.r_[p1:9, 0:p1]  # kernel block first: one dense whitening of everything
    swapped = BayesianLinearRegression(prior=P[np.ix_(perm, perm)]).fit(A[:, perm], y)
    assert evid.alpha_ == pytest.approx(swapped.alpha_, rel=1e-8)
    assert evid.beta_ == pytest.approx(swapped.beta_, rel=1e-8)
    assert evid.log_evidence_ == pytest.approx(swapped.log_evidence_, rel=1e-10)
    np.testing.assert_allclose(evid.coef_[perm], swapped.coef_, rtol=1e-7, atol=1e-10)
    rows = rng.normal(size=(4, 9))
    np.testing.assert_allclose(evid.variance_rows(rows), swapped.variance_rows(rows[:, perm]), rtol=1e-7)


def test_errors(rng):
    with pytest.raises(NotFittedError, match="not fitted"):
        BayesianLinearRegression().predict(np.ones((1, 3)))
    with pytest.raises(ConfigError, match="alpha must be positive"):
        BayesianLinearRegression(alpha=-1.0).fit(np.ones((3, 2)), np.ones(3))
    model = BayesianLinearRegression().fit(*_problem(rng)[::2])
    with pytest.raises(ConfigError, match="A has 3 features, but the model expects 12"):
        model.predict(np.ones((2, 3)))


def _neq(A, y, w=1.0):
    neq = NormalEquations(A.shape[1])
    neq.add(A, y, w)
    return neq


def test_groups_recover_one_noise_per_quantity(rng):
    """Two kinds of rows with noise 0.05 and 0.5: each beta_g finds its own level."""
    p = 10
    c = rng.normal(size=p)
    A1, A2 = rng.normal(size=(600, p)), rng.normal(size=(900, p))
    y1 = A1 @ c + rng.normal(scale=0.05, size=600)
    y2 = A2 @ c + rng.normal(scale=0.5, size=900)
    model = BayesianLinearRegression().fit_groups([_neq(A1, y1), _neq(A2, y2)])
    assert model.betas_[0] == pytest.approx(1 / 0.05**2, rel=0.2)
    assert model.betas_[1] == pytest.approx(1 / 0.5**2, rel=0.2)
    std = np.sqrt(np.diag(model.covariance_))
    assert np.all(np.abs(model.coef_ - c) < 4 * std)
    # one shared noise would be dominated by the noisy rows and give worse coefficients
    shared = BayesianLinearRegression().fit_normal_equations(_neq(np.vstack([A1, A2]), np.concatenate([y1, y2])))
    assert np.linalg.norm(model.coef_ - c) < np.linalg.norm(shared.coef_ - c)
    assert model.log_evidence_ > shared.log_evidence_


def test_one_group_equals_the_shared_fit(rng):
    A, c, y = _problem(rng)
    prior = np.linspace(0.5, 2.0, A.shape[1])
    one = BayesianLinearRegression(prior=prior).fit_groups([_neq(A, y, 3.0), NormalEquations(A.shape[1])])
    ref = BayesianLinearRegression(prior=prior).fit_normal_equations(_neq(A, y, 3.0))
    np.testing.assert_allclose(one.coef_, ref.coef_, rtol=1e-6)
    np.testing.assert_allclose(one.covariance_, ref.covariance_, rtol=1e-5)
    assert one.alpha_ == pytest.approx(ref.alpha_, rel=1e-5)
    assert one.beta_ == pytest.approx(ref.beta_, rel=1e-5)
    assert one.log_evidence_ == pytest.approx(ref.log_evidence_, rel=1e-6)


def test_quadratic_form_rows(rng):
    from ml4m.models.linear.bayesian import quadratic_form_rows

    A = rng.normal(size=(7, 5))
    L = rng.normal(size=(5, 5))
    C = L @ L.T
    np.testing.assert_allclose(quadratic_form_rows(A, C), [a @ C @ a for a in A], rtol=1e-12)


def test_fixed_hyperparameter_solve_is_accurate_when_ill_conditioned():
    """At fixed alpha, beta (one Cholesky) the fit predicts what an eigendecomposition of the
    normal equations does, on nearly collinear, noise-free data (an explicit inverse times
    the data loses digits)."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=(400, 6))
    A = np.hstack([base, base @ rng.normal(size=(6, 30)) + 1e-6 * rng.normal(size=(400, 30))])
    y = A @ rng.normal(size=36)
    neq = NormalEquations(36)
    neq.add(A, y)
    lam, V = np.linalg.eigh(A.T @ A)  # posterior mean (alpha I + A^T A)^-1 A^T y, eigenbasis
    ref = V @ ((V.T @ (A.T @ y)) / (1e-10 + lam))
    scale = np.abs(y).mean()
    for fit in (BayesianLinearRegression(alpha=1e-10, beta=1.0).fit_normal_equations(neq),
                BayesianLinearRegression(alpha=1e-10, beta=[1.0]).fit_groups([neq])):
        assert np.abs(A @ fit.coef_ - A @ ref).max() < 1e-7 * scale
        assert np.abs(A @ fit.coef_ - y).max() < 1e-6 * scale


def test_rank_deficient_noise_free_fit_interpolates(rng):
    """More rows than features but dependent columns (as in a small data set on a large
    basis), exact labels: the evidence fit interpolates the rows with bounded
    coefficients (directions no row sees stay at the prior mean, zero) instead of
    amplifying rounding residue in them."""
    A = rng.normal(size=(300, 60)) @ rng.normal(size=(60, 200)) * np.logspace(0, -2, 200)
    y = A @ rng.normal(size=200)
    model = BayesianLinearRegression().fit(A, y)
    np.testing.assert_allclose(A @ model.coef_, y, rtol=0, atol=1e-6 * np.abs(y).max())
    # the minimum-norm interpolant bounds what the posterior mean may be
    assert np.linalg.norm(model.coef_) <= 1.01 * np.linalg.norm(np.linalg.pinv(A) @ y)


def test_row_variances_from_the_factor_equal_the_covariance_form(rng):
    """After an evidence fit the row variances come from the covariance factor (the
    covariance itself formed only when read); both give a^T Sigma a."""
    from ml4m.models.linear.bayesian import quadratic_form_rows

    A, _, y = _problem(rng, n=200, p=15)
    model = BayesianLinearRegression().fit(A, y)
    rows = rng.normal(size=(7, 15))
    from_factor = model.variance_rows(rows)
    direct = np.array([r @ model.covariance_ @ r for r in rows])
    np.testing.assert_allclose(from_factor, direct, rtol=1e-10)
    np.testing.assert_allclose(model.variance_rows(rows), quadratic_form_rows(rows, model.covariance_), rtol=1e-12)
    # the float32 product (for error models) agrees to single precision
    np.testing.assert_allclose(model.variance_rows(rows, single=True), direct, rtol=1e-5)
    # the covariance is the inverse posterior precision
    P = model.alpha_ * np.eye(15) + model.beta_ * A.T @ A
    np.testing.assert_allclose(model.covariance_ @ P, np.eye(15), atol=1e-8)


@pytest.mark.parametrize("prior", ["none", "kernel"])
def test_cholesky_evidence_search_matches_the_eigen_path(rng, monkeypatch, prior):
    """Large fits search the evidence by Cholesky factorisations (beta profiled out, a
    Brent search over log(alpha / beta)); forced onto a small problem, the search finds
    the eigen path's optimum, the same posterior mean and the same row variances (its
    factor is the inverse Cholesky factor), also under a sparse GP's matrix prior."""
    n, p = 600, 40
    A = rng.normal(size=(n, p)) * np.exp(-np.arange(p) / 10)
    y = A @ rng.normal(size=p) + rng.normal(scale=0.05, size=n)
    P = None
    if prior == "kernel":  # a diagonal block, then a dense (kernel-like) block
        X = rng.normal(size=(10, 5))
        P = np.zeros((p, p))
        P[:30, :30] = np.diag(rng.uniform(0.5, 2.0, 30))
        P[30:, 30:] = (X @ X.T) ** 2 + 1e-3 * np.eye(10)
    monkeypatch.setattr(BayesianLinearRegression, "cholesky_search_from", 10**9)
    eig = BayesianLinearRegression(prior=P).fit(A, y)
    monkeypatch.setattr(BayesianLinearRegression, "cholesky_search_from", 1)
    monkeypatch.setattr(BayesianLinearRegression, "search_xatol", 1e-4)
    chol = BayesianLinearRegression(prior=P).fit(A, y)
    assert chol.n_iter_ > 3  # the search ran
    assert chol.log_evidence_ == pytest.approx(eig.log_evidence_, abs=1e-6 * abs(eig.log_evidence_))
    assert chol.alpha_ == pytest.approx(eig.alpha_, rel=1e-3)
    assert chol.beta_ == pytest.approx(eig.beta_, rel=1e-3)
    np.testing.assert_allclose(chol.coef_, eig.coef_, rtol=0, atol=1e-4 * np.abs(eig.coef_).max())
    rows = rng.normal(size=(9, p))
    np.testing.assert_allclose(chol.variance_rows(rows), eig.variance_rows(rows), rtol=2e-3)
    # its covariance is the inverse posterior precision (whitened prior: P's kept directions)
    prec = chol.alpha_ * (np.eye(p) if P is None else P) + chol.beta_ * A.T @ A
    np.testing.assert_allclose(chol.covariance_ @ prec @ chol.covariance_, chol.covariance_,
                               rtol=0, atol=1e-6 * np.abs(chol.covariance_).max())


def test_block_prior_pair_equals_the_dense_matrix_and_factor_variances(rng):
    """A prior given as its blocks ``(d, K)`` fits as ``blockdiag(diag(d), K)`` does; with
    the hyperparameters fixed the posterior is one Cholesky factorisation whose factor
    ``T U^-1`` is upper triangular over the diagonal block: the row variances through it
    (BLAS trmm on that part) equal ``a^T Sigma a`` with Sigma the inverse precision."""
    from ml4m.models.linear.bayesian import quadratic_form_rows

    n, p = 500, 40
    A = rng.normal(size=(n, p)) * np.exp(-np.arange(p) / 15)
    y = A @ rng.normal(size=p) + rng.normal(scale=0.05, size=n)
    d = rng.uniform(0.5, 2.0, 30)
    X = rng.normal(size=(10, 5))
    K = (X @ X.T) ** 2 + 1e-3 * np.eye(10)
    P = np.zeros((p, p))
    P[:30, :30], P[30:, 30:] = np.diag(d), K
    dense, pair = BayesianLinearRegression(prior=P).fit(A, y), BayesianLinearRegression(prior=(d, K)).fit(A, y)
    assert pair.alpha_ == pytest.approx(dense.alpha_, rel=1e-10)
    np.testing.assert_allclose(pair.coef_, dense.coef_, rtol=1e-9, atol=1e-12)
    fixed = BayesianLinearRegression(alpha=dense.alpha_, beta=dense.beta_, prior=(d, K)).fit(A, y)
    np.testing.assert_allclose(fixed.coef_, dense.coef_, rtol=1e-6, atol=1e-9 * np.abs(dense.coef_).max())
    assert fixed._parts(np.float64)[0].shape == (30, 30)  # the triangular part is used
    rows = rng.normal(size=(2 * 2048 + 5, p))  # three chunks
    S = np.linalg.inv(fixed.alpha_ * P + fixed.beta_ * A.T @ A)
    ref = quadratic_form_rows(rows, S)
    np.testing.assert_allclose(fixed.variance_rows(rows), ref, rtol=1e-8)
    np.testing.assert_allclose(fixed.variance_rows(rows.astype(np.float32), single=True), ref, rtol=1e-4)
    np.testing.assert_allclose(fixed.covariance_, S, rtol=1e-7, atol=1e-10 * np.abs(S).max())
    with pytest.raises(ConfigError, match="p1 \\+ p2"):
        BayesianLinearRegression(prior=(d, K[:5, :5])).fit(A, y)



def test_normal_equations_buffer_rows_into_blocks(rng):
    """Rows added a few at a time join the Gram matrix in blocks of ``block_rows`` (one
    syrk per block, the rest on reading): the sums equal the direct products, whether a
    read falls between blocks or not, and adding after a read continues the sums."""
    A, y, w = rng.normal(size=(230, 17)), rng.normal(size=230), rng.uniform(0.5, 2.0, 230)
    neq = NormalEquations(17, block_rows=50)
    for r0 in range(0, 150, 7):  # pieces straddle the block boundaries
        neq.add(A[r0:min(r0 + 7, 150)], y[r0:min(r0 + 7, 150)], w[r0:min(r0 + 7, 150)])
    np.testing.assert_allclose(neq.AtA, (A[:150] * w[:150, None]).T @ A[:150], rtol=1e-12)
    neq.add(A[150:], y[150:], w[150:])
    np.testing.assert_allclose(neq.AtA, (A * w[:, None]).T @ A, rtol=1e-12)
    np.testing.assert_allclose(neq.Aty, A.T @ (w * y), rtol=1e-12)
    assert neq.n == 230 and neq.yty == pytest.approx(float(np.sum(w * y * y)))

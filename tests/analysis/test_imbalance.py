"""Information imbalance: limits, asymmetry, tie handling, greedy selection."""

from __future__ import annotations

import numpy as np
import pytest

from ml4m.analysis import greedy_feature_selection, information_imbalance
from ml4m.errors import DataError


@pytest.fixture(scope="module")
def X():
    return np.random.default_rng(0).normal(size=(1200, 5))


def test_identical_spaces_have_minimal_imbalance(X):
    r = information_imbalance(X, 3.0 * X)
    assert r.a_to_b == pytest.approx(2.0 / 1200) and r.b_to_a == pytest.approx(2.0 / 1200)


def test_independent_spaces_have_imbalance_one(X):
    r = information_imbalance(X[:, :2], X[:, 2:4])
    assert abs(r.a_to_b - 1) < 0.08 and abs(r.b_to_a - 1) < 0.08


def test_subspace_is_asymmetric(X):
    # the full space predicts its subspace's neighbours, not the other way round
    r = information_imbalance(X, X[:, :2])
    assert r.a_to_b < 0.5 * r.b_to_a


def test_rank_definition_against_brute_force():
    rng = np.random.default_rng(5)
    A, B = rng.normal(size=(60, 2)), rng.normal(size=(60, 3))
    DA = np.linalg.norm(A[:, None] - A[None], axis=-1)
    DB = np.linalg.norm(B[:, None] - B[None], axis=-1)
    np.fill_diagonal(DA, np.inf)
    np.fill_diagonal(DB, np.inf)
    nn = DA.argmin(1)
    ranks = [1 + np.sum(DB[i] < DB[i, nn[i]]) for i in range(60)]
    assert information_imbalance(A, B).a_to_b == pytest.approx(2 / 60 * np.mean(ranks))


def test_subset_of_points(X):
    r = information_imbalance(X, X[:, :1], max_points=300)
    assert r.n == 300


def test_greedy_selection_prefers_informative_features():
    rng = np.random.default_rng(2)
    n = 800
    signal = rng.normal(size=(n, 2))
    X = np.hstack([0.01 * rng.normal(size=(n, 1)), signal, 0.02 * rng.normal(size=(n, 1))])
    subsets, values = greedy_feature_selection(X, target=signal, n_select=3)
    assert set(subsets[1]) == {1, 2}
    assert values[1] < values[0] and values[1] < 0.05


def test_bad_input(X):
    with pytest.raises(DataError, match="same points"):
        information_imbalance(X, X[:10])
    with pytest.raises(DataError, match="same points"):
        greedy_feature_selection(X, target=X[:5])

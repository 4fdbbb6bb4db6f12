"""The Manifold facade: delegation, no order dependence, explicit prerequisites."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import gaussian_mixture

from ml4m.analysis import Manifold, NeighborGraph, pak_density, twonn
from ml4m.errors import ConfigError, DataError


def test_results_do_not_depend_on_call_order():
    X, _ = gaussian_mixture(300, 2, 2, 7.0, 0)
    a, b = Manifold(X, maxk=40), Manifold(X, maxk=40)
    ca = a.clusters("adp")
    da = a.density("kstar")
    a.intrinsic_dimension("gride")
    db = b.density("kstar")
    cb = b.clusters("adp")
    np.testing.assert_array_equal(da.log_density, db.log_density)
    np.testing.assert_array_equal(ca.labels, cb.labels)
    assert ca.n_clusters == 2


def test_facade_delegates_to_the_functions():
    X = np.random.default_rng(0).normal(size=(800, 4))
    m = Manifold(X, maxk=30)
    g = NeighborGraph.build(X, 30)
    assert m.intrinsic_dimension().estimate == twonn(g).estimate
    np.testing.assert_allclose(m.density("pak", intrinsic_dim=3.5).log_density,
                               pak_density(g, 3.5).log_density)
    assert m.id_scaling().n1.tolist() == [1, 2, 4, 8]
    given = m.density("pak", intrinsic_dim=2.0)
    assert m.clusters("dpc", density=given).method == "dpc"
    assert "Manifold(n=800" in repr(m)


def test_facade_errors():
    X = np.random.default_rng(0).normal(size=(50, 4))
    with pytest.raises(DataError, match="at least 101 points"):
        Manifold(X)  # default maxk=100
    m = Manifold(X, maxk=10)
    with pytest.raises(ConfigError, match="method"):
        m.intrinsic_dimension("mle")
    with pytest.raises(ConfigError, match="method"):
        m.density("gauss")
    with pytest.raises(ConfigError, match="method"):
        m.clusters("kmeans")
    with pytest.raises(ConfigError, match="metric"):
        Manifold(X, maxk=10, metric="cosine")

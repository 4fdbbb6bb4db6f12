"""The projection figure: principal-axis coordinates, highlighted rows, degenerate tables."""

from __future__ import annotations

import numpy as np
import pytest

from ml4m.analysis.plots import projection_figure


def _offsets(fig):
    return [c.get_offsets() for c in fig.axes[0].collections]


def test_projection_is_the_first_two_principal_components():
    """Data spread along two known orthogonal directions in 5-D: the drawn coordinates
    are the coordinates along them (up to sign), highlighted rows drawn on top."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    a = rng.normal(size=(300, 2))
    u = np.linalg.svd(a - a.mean(0), full_matrices=False)[0]
    coords = u * [50.0, 20.0]  # centred, uncorrelated, distinct variances
    X = 7.0 + coords @ q[:2]
    fig = projection_figure(X, highlight=np.array([3, 10]), title="t")
    grey, red = _offsets(fig)
    np.testing.assert_allclose(np.abs(grey), np.abs(coords), atol=1e-9)
    np.testing.assert_allclose(red, grey[[3, 10]])
    assert fig.axes[0].get_title() == "t"


@pytest.mark.parametrize("n_features", [0, 1])
def test_projection_of_degenerate_tables(n_features):
    X = np.arange(12.0).reshape(12, 1)[:, :n_features]
    grey, red = _offsets(projection_figure(X, highlight=np.array([0, 11])))
    assert grey.shape == (12, 2) and np.all(grey[:, 1] == 0)
    assert np.ptp(grey[:, 0]) == pytest.approx(11.0 if n_features else 0.0)


def test_projection_sample_keeps_highlighted_rows_and_colours_labels():
    X = np.random.default_rng(1).normal(size=(500, 3))
    fig = projection_figure(X, labels=np.arange(500) % 3, max_points=100, highlight=[7])
    points, red = _offsets(fig)
    assert len(points) == 100 and len(red) == 1
    colours = fig.axes[0].collections[0].get_array()  # the sampled rows' labels
    assert len(colours) == 100 and set(np.unique(colours)) == {0, 1, 2}
    assert fig.axes[1].get_ylabel() == "cluster"  # the colour bar

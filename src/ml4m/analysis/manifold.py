"""A thin facade over the analysis functions, for notebooks and the command line.

:class:`Manifold` builds the :class:`NeighborGraph` once and delegates; every
prerequisite of a method is an argument with a documented default, never state
left behind by an earlier call: ``density()`` uses ``intrinsic_dim`` if given,
else the TwoNN estimate of the graph; ``clusters()`` uses ``density`` if given, else
the PAk density at that ID. The same calls give the same results in any order.
"""

from __future__ import annotations

from ml4m.analysis import clustering, density as _density, intrinsic_dim as _id
from ml4m.analysis._validation import check_choice, check_features
from ml4m.analysis.graph import NeighborGraph
from ml4m.analysis.results import ClusterResult, DensityResult, IDResult, IDScaling

__all__ = ["Manifold"]

ID_METHODS = ("twonn", "gride")
DENSITY_METHODS = ("knn", "kstar", "pak")
CLUSTER_METHODS = ("adp", "dpc")


class Manifold:
    """Intrinsic dimension, density and density peaks of one data set.

    Parameters
    ----------
    X : array-like of shape (n_points, n_features)
        Data (validated: finite, 2-D, more than ``maxk`` rows, not constant).
    maxk : int, default=100
        Neighbours per point; ``X`` needs at least ``maxk + 1`` rows (DataError otherwise).
    metric : {"euclidean"}, default="euclidean"
    period : float or array-like, optional
        Periodic box lengths.
    backend : {"auto", "brute", "kdtree", "ivf"}, default="auto"
        Neighbour search (see :mod:`ml4m.analysis.graph`).
    graph : NeighborGraph, optional
        A precomputed graph of ``X`` (then no search is done).
    max_memory : int or str, optional
        Memory limit of the graph (bytes or e.g. ``"4GB"``; default half the available
        memory), see :meth:`NeighborGraph.build`.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(2000, 3))
    >>> m = Manifold(X, maxk=50)
    >>> round(m.intrinsic_dimension().estimate)
    3
    >>> m.clusters(Z=1.65).n_clusters
    1
    """

    def __init__(self, X, maxk: int = 100, *, metric: str = "euclidean", period=None,
                 backend: str = "auto", graph: NeighborGraph | None = None, progress=None,
                 max_memory: int | str | None = None):
        check_choice("metric", metric, ("euclidean",))
        self.X = check_features(X, min_rows=3)
        self.graph = graph if graph is not None else NeighborGraph.build(
            self.X, maxk, backend=backend, period=period, progress=progress,
            max_memory=max_memory)

    def intrinsic_dimension(self, method: str = "twonn", **kwargs) -> IDResult:
        """ID by ``"twonn"`` (:func:`~ml4m.analysis.twonn`) or ``"gride"``
        (:func:`~ml4m.analysis.gride`); ``kwargs`` go to the estimator."""
        check_choice("method", method, ID_METHODS)
        fn = _id.twonn if method == "twonn" else _id.gride
        return fn(self.graph, **kwargs)

    def id_scaling(self, **kwargs) -> IDScaling:
        """ID versus scale by GRIDE (:func:`~ml4m.analysis.id_scaling`)."""
        return _id.id_scaling(self.graph, **kwargs)

    def density(self, method: str = "pak", intrinsic_dim: float | None = None,
                **kwargs) -> DensityResult:
        """Log-density by ``"knn"``, ``"kstar"`` or ``"pak"``.

        ``intrinsic_dim`` defaults to the TwoNN estimate of the graph.
        """
        check_choice("method", method, DENSITY_METHODS)
        d = self.intrinsic_dimension().estimate if intrinsic_dim is None else intrinsic_dim
        fn = {"knn": _density.knn_density, "kstar": _density.kstar_density,
              "pak": _density.pak_density}[method]
        return fn(self.graph, d, **kwargs)

    def clusters(self, method: str = "adp", Z: float = 1.65,
                 density: DensityResult | None = None, **kwargs) -> ClusterResult:
        """Density-peak clustering, ``"adp"`` (at significance ``Z``) or ``"dpc"``.

        ``density`` defaults to :meth:`density` with ``"pak"``.
        """
        check_choice("method", method, CLUSTER_METHODS)
        den = self.density("pak") if density is None else density
        if method == "adp":
            return clustering.adp(self.graph, den.log_density, den.error, den.k, Z=Z, **kwargs)
        return clustering.dpc(self.graph, den.log_density, X=self.X,
                              log_density_error=den.error, **kwargs)

    def __repr__(self) -> str:
        return f"Manifold(n={self.graph.n}, dim={self.X.shape[1]}, maxk={self.graph.maxk})"



"""ml4m.analysis: intrinsic dimension, density, density peaks and information imbalance.

Composable functions on an immutable :class:`NeighborGraph` (built once), plus the
:class:`Manifold` facade::

    from ml4m.analysis import NeighborGraph, twonn, pak_density, adp
    g = NeighborGraph.build(X, maxk=100)
    d = twonn(g)
    rho = pak_density(g, d.estimate)
    cl = adp(g, rho.log_density, rho.error, rho.k, Z=1.65)

Works on any feature table (descriptors, collective variables, embeddings).
"""

from ml4m.analysis.clustering import adp, decision_graph, dpc, topography_linkage
from ml4m.analysis.density import (
    kstar,
    kstar_density,
    knn_density,
    log_ball_volume,
    pak_density,
)
from ml4m.analysis.graph import NeighborGraph, knn
from ml4m.analysis.imbalance import greedy_feature_selection, information_imbalance
from ml4m.analysis.intrinsic_dim import gride, gride_loglik, id_scaling, twonn, twonn_decimation
from ml4m.analysis.manifold import Manifold
from ml4m.analysis.results import (
    ClusterResult,
    DecisionGraph,
    DensityResult,
    IDResult,
    IDScaling,
    ImbalanceResult,
)

__all__ = [
    "ClusterResult",
    "DecisionGraph",
    "DensityResult",
    "IDResult",
    "IDScaling",
    "ImbalanceResult",
    "Manifold",
    "NeighborGraph",
    "adp",
    "decision_graph",
    "dpc",
    "greedy_feature_selection",
    "gride",
    "gride_loglik",
    "id_scaling",
    "information_imbalance",
    "knn",
    "knn_density",
    "kstar",
    "kstar_density",
    "log_ball_volume",
    "pak_density",
    "topography_linkage",
    "twonn",
    "twonn_decimation",
]

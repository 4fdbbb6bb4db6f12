"""Result records of :mod:`ml4m.analysis` (frozen dataclasses of arrays and errors)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "IDResult", "IDScaling", "DensityResult", "DecisionGraph", "ClusterResult",
    "ImbalanceResult",
]


@dataclass(frozen=True)
class IDResult:
    """An intrinsic-dimension estimate.

    Attributes
    ----------
    method : str
        ``"twonn"`` or ``"gride"``.
    estimate : float
        Intrinsic dimension.
    error : float
        Its statistical error (one standard deviation).
    scale : float
        Mean neighbour distance the estimate refers to.
    n_used : int
        Points (ratios) that entered the likelihood.
    """

    method: str
    estimate: float
    error: float
    scale: float
    n_used: int


@dataclass(frozen=True)
class IDScaling:
    """Intrinsic dimension versus scale.

    Attributes
    ----------
    method : str
        ``"gride"`` (``n1`` = neighbour rank) or ``"twonn"`` (``n1`` = decimation factor).
    n1, estimate, error, scale : ndarray of shape (n_scales,)
        Rank (or factor), ID, its error, and mean neighbour distance at each scale.
    """

    method: str
    n1: np.ndarray
    estimate: np.ndarray
    error: np.ndarray
    scale: np.ndarray


@dataclass(frozen=True)
class DensityResult:
    """Log-density of every point.

    Attributes
    ----------
    method : str
        ``"knn"``, ``"kstar"`` or ``"pak"``.
    log_density : ndarray of shape (n_points,)
        Natural log of the normalised density (probability per unit volume of the
        ``intrinsic_dim``-dimensional manifold).
    error : ndarray of shape (n_points,)
        Statistical error of ``log_density``.
    k : ndarray of shape (n_points,), int
        Neighbours used per point (``k`` for kNN, ``k*`` otherwise).
    intrinsic_dim : float
        The dimension the volumes were computed in.
    """

    method: str
    log_density: np.ndarray
    error: np.ndarray
    k: np.ndarray
    intrinsic_dim: float

    @property
    def log_density_mean(self) -> float:
        """Mean log-density."""
        return float(np.mean(self.log_density))


@dataclass(frozen=True)
class DecisionGraph:
    """Rodriguez-Laio decision graph.

    Attributes
    ----------
    log_density : ndarray of shape (n_points,)
    delta : ndarray of shape (n_points,)
        Distance to the nearest point of higher density (for the densest point,
        the largest ``delta`` of the others).
    nearest_higher : ndarray of shape (n_points,), int
        That point (-1 for the densest one).
    """

    log_density: np.ndarray
    delta: np.ndarray
    nearest_higher: np.ndarray


@dataclass(frozen=True)
class ClusterResult:
    """A density-peak clustering.

    Attributes
    ----------
    method : str
        ``"dpc"`` or ``"adp"``.
    labels : ndarray of shape (n_points,), int
        Cluster of each point, 0..n_clusters-1 (clusters ordered by decreasing peak
        density).
    centers : ndarray of shape (n_clusters,), int
        Row index of the peak of each cluster.
    saddle_log_density : ndarray of shape (n_clusters, n_clusters)
        Log-density of the saddle point between two clusters (NaN where they do not
        touch, and on the diagonal).
    saddle_error : ndarray of shape (n_clusters, n_clusters)
        Its error (NaN likewise).
    saddle_points : ndarray of shape (n_clusters, n_clusters), int
        Row index of the saddle point (-1 where none).
    halo : ndarray of shape (n_points,), bool
        Points less dense than the densest saddle of their cluster.
    linkage : ndarray of shape (n_clusters - 1, 4)
        Hierarchy of the peaks (topography) in :func:`scipy.cluster.hierarchy.linkage`
        format; the height of a merge is ``top - saddle log-density``, ``top`` being
        the highest peak log-density.
    border_points : ndarray of shape (n_border,), int
        Rows of the border points between the final clusters (d'Errico et al.).
    Z : float
        Significance used for merging (NaN for ``dpc``).
    decision : DecisionGraph or None
        The decision graph (``dpc`` only).
    """

    method: str
    labels: np.ndarray
    centers: np.ndarray
    saddle_log_density: np.ndarray
    saddle_error: np.ndarray
    saddle_points: np.ndarray
    halo: np.ndarray
    linkage: np.ndarray
    border_points: np.ndarray
    Z: float = float("nan")
    decision: DecisionGraph | None = field(default=None, repr=False)

    @property
    def n_clusters(self) -> int:
        """Number of clusters."""
        return int(self.centers.size)

    @property
    def sizes(self) -> np.ndarray:
        """Points per cluster."""
        return np.bincount(self.labels, minlength=self.n_clusters)


@dataclass(frozen=True)
class ImbalanceResult:
    """Information imbalance between spaces A and B.

    Attributes
    ----------
    a_to_b : float
        Delta(A -> B): how well A's nearest neighbours predict B's (0 = fully, ~1 = not at all).
    b_to_a : float
        Delta(B -> A).
    n : int
        Points used.
    """

    a_to_b: float
    b_to_a: float
    n: int

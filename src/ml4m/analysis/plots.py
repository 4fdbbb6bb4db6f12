"""Figures of the analysis results (``matplotlib.figure.Figure``; no pyplot, no backend change)."""

from __future__ import annotations

import numpy as np

from ml4m.analysis.results import ClusterResult, DecisionGraph, IDScaling

__all__ = ["id_scaling_figure", "decision_graph_figure", "dendrogram_figure",
           "projection_figure"]


def _figure(size=(5.0, 4.0)):
    from matplotlib.figure import Figure

    return Figure(figsize=size, layout="constrained")


def id_scaling_figure(*curves: IDScaling):
    """ID versus scale (mean neighbour distance, log axis) with error bars."""
    fig = _figure()
    ax = fig.add_subplot()
    for c in curves:
        ax.errorbar(c.scale, c.estimate, yerr=c.error, marker="o", capsize=3, label=c.method)
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("scale (mean neighbour distance, log axis)")
    ax.set_ylabel("intrinsic dimension")
    ax.legend()
    return fig


def decision_graph_figure(decision: DecisionGraph, centers: np.ndarray | None = None):
    """Decision graph: log-density against ``delta``, centres highlighted."""
    fig = _figure()
    ax = fig.add_subplot()
    ax.scatter(decision.log_density, decision.delta, s=3, c="0.5", rasterized=True)
    if centers is not None and len(centers):
        ax.scatter(decision.log_density[centers], decision.delta[centers], s=30, c="C3",
                   label="centres")
        ax.legend()
    ax.set_xlabel("log density")
    ax.set_ylabel("delta (distance to nearest denser point)")
    return fig


def dendrogram_figure(result: ClusterResult):
    """Hierarchy of the density peaks (topography): leaves at their peak log-density."""
    from scipy.cluster.hierarchy import dendrogram

    fig = _figure()
    ax = fig.add_subplot()
    nc = result.n_clusters
    if nc < 2:
        ax.text(0.5, 0.5, f"{nc} cluster: no hierarchy", ha="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    tree = dendrogram(result.linkage, no_plot=True, labels=list(range(nc)))
    for xs, ys in zip(tree["icoord"], tree["dcoord"]):
        ax.plot(xs, ys, c="C0")
    ax.set_xticks(5 + 10 * np.arange(nc))
    ax.set_xticklabels([str(x) for x in tree["ivl"]])
    ax.set_xlabel("cluster")
    ax.set_ylabel("top peak - saddle log density")
    ax.invert_yaxis()
    return fig


def projection_figure(X: np.ndarray, labels: np.ndarray | None = None, max_points: int = 20000,
                      seed: int = 0, *, highlight: np.ndarray | None = None, title: str = ""):
    """First two principal components of ``X``: points coloured by cluster ``labels``, or
    grey with the rows ``highlight`` drawn on top (e.g. a selected subset).

    Parameters
    ----------
    X : ndarray of shape (n_points, n_features)
        Data (any units; centred here). No features: every point at the origin.
    labels : ndarray of shape (n_points,), optional
        Cluster label per point (colour scale); grey points when omitted.
    max_points : int, default=20000
        Points drawn at most (a seeded random sample; ``highlight`` rows always drawn).
    seed : int, default=0
        Seed of that sample.
    highlight : ndarray of int, optional
        Row indices drawn on top in red.
    title : str, optional
    """
    X = np.asarray(X)
    sel = np.arange(len(X))
    if len(X) > max_points:
        sel = np.sort(np.random.default_rng(seed).choice(len(X), max_points, replace=False))
    mean = X[sel].mean(0, dtype=np.float64)
    vt = (np.linalg.svd(X[sel] - mean, full_matrices=False)[2] if X.shape[1]
          else np.zeros((0, 0)))

    def project(rows: np.ndarray) -> np.ndarray:  # only the rows drawn: X may be large
        P = np.zeros((len(rows), 2))
        P[:, : min(2, len(vt))] = (X[rows] - mean) @ vt[:2].T
        return P

    P = project(sel)
    fig = _figure()
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(P[:, 0], P[:, 1], s=3, c="0.7", rasterized=True, label=f"all ({len(X)})")
    else:
        sc = ax.scatter(P[:, 0], P[:, 1], c=np.asarray(labels)[sel], s=3, cmap="tab20",
                        rasterized=True)
        fig.colorbar(sc, ax=ax, label="cluster")
    if highlight is not None:
        H = project(np.asarray(highlight, dtype=np.intp))
        ax.scatter(H[:, 0], H[:, 1], s=8, c="C3", label=f"selected ({len(highlight)})")
        ax.legend(loc="best", fontsize="small")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    if title:
        ax.set_title(title)
    return fig

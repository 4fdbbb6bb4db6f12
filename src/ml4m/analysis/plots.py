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


def projection_figure(X: np.ndarray, labels: np.ndarray, max_points: int = 20000, seed: int = 0):
    """First two principal components of ``X``, coloured by cluster."""
    X = np.asarray(X, dtype=np.float64)
    sel = np.arange(len(X))
    if len(X) > max_points:
        sel = np.sort(np.random.default_rng(seed).choice(len(X), max_points, replace=False))
    Y = X[sel] - X[sel].mean(0)
    _, _, vt = np.linalg.svd(Y, full_matrices=False)
    P = Y @ vt[:2].T if vt.shape[0] >= 2 else np.c_[Y @ vt[:1].T, np.zeros(len(Y))]
    fig = _figure()
    ax = fig.add_subplot()
    sc = ax.scatter(P[:, 0], P[:, 1], c=labels[sel], s=3, cmap="tab20", rasterized=True)
    fig.colorbar(sc, ax=ax, label="cluster")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    return fig

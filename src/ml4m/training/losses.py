"""The weighted energy/forces/stress loss and the error sums behind per-epoch metrics.

Every term is a sum of squared errors divided by a count that is given, not taken
from the batch: with several data-parallel processes the count is the global batch's
(summed over processes), so averaging the processes' gradients gives exactly the
gradient of the loss over the global batch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["error_sums", "weighted_loss", "TERMS"]

#: loss terms, the label mask each uses, and the number of components per labelled item
TERMS = {"energy": ("energy_mask", 1), "forces": ("forces_mask", 3), "stress": ("stress_mask", 9)}


def error_sums(pred: dict[str, Any], labels: dict[str, Any], data: dict[str, Any],
               terms: tuple[str, ...]) -> dict[str, Any]:
    """Sums of squared and absolute errors of ``terms`` over one batch.

    Parameters
    ----------
    pred : dict
        :meth:`TorchPotential.energy_and_derivatives` output (``energy`` (B,) eV,
        ``forces`` (N, 3) eV/Angstrom, ``stress`` (B, 3, 3) eV/Angstrom^3).
    labels : dict
        :func:`ml4m.training.batches.collate`'s labels.
    data : dict
        The batch (``n_atoms`` is read).
    terms : tuple of str
        Which of ``energy``, ``forces``, ``stress`` to compare.

    Returns
    -------
    dict
        For each term: ``{term}_sse`` (tensor, keeps the graph), ``{term}_sae``
        (float) and ``{term}_n`` (labelled items: frames, atoms, frames). The energy
        error is per atom (eV/atom).
    """
    out: dict[str, Any] = {}
    for term in terms:
        mask = labels[TERMS[term][0]]
        if term == "energy":
            diff = (pred["energy"] - labels["energy_ref"]) / data["n_atoms"].to(
                pred["energy"].dtype)
        else:
            diff = pred[term] - labels[f"{term}_ref"]
        diff = diff[mask]
        out[f"{term}_sse"] = (diff * diff).sum()
        out[f"{term}_sae"] = float(diff.detach().abs().sum())
        out[f"{term}_n"] = int(mask.sum())
    return out


def weighted_loss(sums: dict[str, Any], weights: dict[str, float], counts: dict[str, int],
                  scale: float = 1.0):
    """``scale * sum_t w_t * SSE_t / (components_t * counts_t)`` over terms with a count.

    Parameters
    ----------
    sums : dict
        :func:`error_sums` of the batch (this process's part of it).
    weights : dict
        Loss weight per term.
    counts : dict
        Labelled items per term in the whole (global) batch.
    scale : float
        The number of data-parallel processes (their gradients are averaged).
    """
    loss = 0.0
    for term, (_, width) in TERMS.items():
        n = counts.get(term, 0)
        if weights.get(term, 0.0) > 0 and n > 0 and f"{term}_sse" in sums:
            loss = loss + weights[term] * sums[f"{term}_sse"] / (width * n)
    return loss * scale

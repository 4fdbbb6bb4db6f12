"""What evaluating a torch potential costs, measured, so that a time budget can hold.

:func:`evaluation_costs` times, on a few frames, the three evaluations that follow
training: energies and forces (validation, metrics), last-layer features (the
posterior's design matrix) and predictions with sigmas (calibration, metrics).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ml4m.data.frames import Frame

__all__ = ["evaluation_costs", "probe_frames"]


def probe_frames(frames: Sequence[Frame], n: int = 1) -> list[Frame]:
    """The ``n`` smallest of (up to) 16 evenly spaced ``frames``: a cheap probe (a
    prediction with sigmas can cost 100 force evaluations)."""
    frames = list(frames)
    step = max(1, len(frames) // 16)
    return sorted(frames[::step], key=len)[:n]


def evaluation_costs(model: Any, frames: Sequence[Frame]) -> dict[str, Any]:
    """Seconds per atom of each evaluation of a prepared model on ``frames``.

    Returns
    -------
    dict
        ``forces`` (energies and forces), ``features`` (a forward pass without
        gradients) and ``sigma`` (a prediction with sigmas: last-layer posterior fitted
        on ``frames`` for the probe; 0 without one), seconds per atom; ``last_layer``
        (bool): whether the module returns ``features`` and ``frames`` have energies (the
        model then gets a posterior).
    """
    import torch

    from ml4m.models.torch_potential import batch_graph

    frames = list(frames)
    atoms = max(1, sum(len(f) for f in frames))
    t0 = time.perf_counter()
    model.predict(frames)
    forces = (time.perf_counter() - t0) / atoms
    t0 = time.perf_counter()
    data = batch_graph(frames, model.cutoff, model.species_, model.device, model.dtype)
    with torch.no_grad():
        out = model.module_(data)
    features = (time.perf_counter() - t0) / atoms
    labelled = [f for f in frames if f.energy is not None]
    last_layer = "features" in out and hasattr(model, "fit_last_layer") and bool(labelled)
    sigma = 0.0
    if last_layer:
        t0 = time.perf_counter()
        model.fit_last_layer(frames, frames)  # replaced by the fit after training
        sigma = max((time.perf_counter() - t0) / atoms - features, forces)
    return {"forces": forces, "features": features, "sigma": sigma, "last_layer": last_layer}

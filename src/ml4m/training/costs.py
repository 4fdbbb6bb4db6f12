"""What evaluating a torch potential costs, measured, so that a time budget can hold.

:func:`evaluation_costs` times, on a few frames and after one untimed warm-up call (the
first call pays torch's one-time costs), the evaluations that follow training: energies
and forces (validation, metrics), last-layer features and the features' Jacobian (the
posterior, :meth:`~ml4m.models.torch_potential.TorchPotential.fit_last_layer`) and
predictions with sigmas (its calibration, metrics). :func:`last_layer_seconds` and
:func:`largest_share` turn those costs into the time of a posterior fit and the share of
the frames a budget allows. :func:`step_seconds` times a training step (the regime of a
fit, :mod:`ml4m.training.regime`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from ml4m.data.frames import Frame
from ml4m.data.split import evenly_spaced

__all__ = ["evaluation_costs", "probe_frames", "step_seconds", "last_layer_seconds",
           "largest_share"]


def probe_frames(frames: Sequence[Frame], n: int = 1) -> list[Frame]:
    """The ``n`` smallest of (up to) 16 evenly spaced ``frames``: a cheap probe (a
    prediction with sigmas can cost 100 force evaluations)."""
    frames = list(frames)
    return sorted((frames[k] for k in evenly_spaced(len(frames), 16)), key=len)[:n]


def _seconds(call: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def evaluation_costs(model: Any, frames: Sequence[Frame]) -> dict[str, Any]:
    """Seconds per atom of each evaluation of a prepared model on ``frames``.

    Every evaluation is called once untimed first. The model is left as it was (a
    posterior fitted for the probe is removed again).

    Returns
    -------
    dict
        Seconds per atom: ``forces`` (energies and forces), ``features`` (a forward
        pass without gradients), ``sigma`` (``predict(uncertainty=True)``) and
        ``jacobian`` (the rest of a posterior fit: the features' Jacobian, one backward
        pass per feature, on at most ``model.jacobian_atoms`` atoms); ``sigma`` and
        ``jacobian`` are 0 without a posterior. ``last_layer`` (bool): whether the
        module returns ``features`` and ``frames`` have energies (the model then gets a
        posterior).
    """
    import torch

    from ml4m.models.torch_potential import batch_graph

    frames = list(frames)
    atoms = max(1, sum(len(f) for f in frames))
    data = batch_graph(frames, model.cutoff, model.species_, model.device, model.dtype)

    def forward():
        with torch.no_grad():
            return model.module_(data)

    out = forward()
    model.predict(frames)
    cost = {"forces": _seconds(lambda: model.predict(frames)) / atoms,
            "features": _seconds(forward) / atoms, "sigma": 0.0, "jacobian": 0.0}
    labelled = any(f.energy is not None for f in frames)
    cost["last_layer"] = "features" in out and hasattr(model, "fit_last_layer") and labelled
    if cost["last_layer"]:
        kept = model.__dict__.pop("last_layer_", None)
        try:
            fit = _seconds(lambda: model.fit_last_layer(frames, frames))
            cost["sigma"] = _seconds(lambda: model.predict(frames, uncertainty=True)) / atoms
        finally:
            model.__dict__.pop("last_layer_", None)
            if kept is not None:
                model.last_layer_ = kept
        cost["jacobian"] = max(fit / atoms - cost["features"] - cost["sigma"], 0.0)
    return cost


def step_seconds(model: Any, train_set: Any, batch_size: int, repeats: int = 3) -> float:
    """Median seconds of one training step of a prepared ``model`` on ``batch_size``
    evenly spaced frames of ``train_set`` (a :class:`~ml4m.training.batches.GraphSet`):
    energies, forces (and stress where frames carry it) with their graph kept, and the
    backward pass of a loss on them; ``repeats`` timed steps after one untimed. The
    parameters are not changed (their gradients are cleared)."""
    from ml4m.training.batches import collate

    idx = [int(k) for k in evenly_spaced(len(train_set), min(batch_size, len(train_set)))]
    data, labels = collate(train_set.graphs(idx, model.cutoff, model.species_, model.dtype),
                           model.device)
    stress = bool(labels["stress_mask"].any())

    def step() -> None:
        pred = model.energy_and_derivatives(data, forces=True, stress=stress,
                                            create_graph=True)
        loss = pred["energy"].square().sum() + pred["forces"].square().sum()
        if stress:
            loss = loss + pred["stress"][labels["stress_mask"]].square().sum()
        loss.backward()
        model.module_.zero_grad(set_to_none=True)

    step()
    times = sorted(_seconds(step) for _ in range(max(1, repeats)))
    return times[len(times) // 2]


def last_layer_seconds(cost: dict[str, Any], train_atoms: float, held_atoms: float,
                       jacobian_atoms: float) -> float:
    """Seconds of ``fit_last_layer`` on ``train_atoms`` atoms calibrated on
    ``held_atoms``: features of the former, the Jacobian on at most ``jacobian_atoms``
    of them, predictions with sigmas of the latter (0 when ``cost`` has no posterior)."""
    if not cost.get("last_layer"):
        return 0.0
    return (cost["features"] * train_atoms + cost["jacobian"] * min(train_atoms, jacobian_atoms)
            + cost["sigma"] * held_atoms)


def largest_share(seconds_of: Callable[[float], float], seconds: float) -> float:
    """The largest share in (0, 1] of the frames whose evaluations, ``seconds_of(share)``
    (non-decreasing in the share), take at most ``seconds``; 1 if all do, and the
    smallest share tried (2^-30) if none does."""
    if seconds_of(1.0) <= seconds:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(30):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if seconds_of(mid) <= seconds else (low, mid)
    return max(low, 2.0 ** -30)

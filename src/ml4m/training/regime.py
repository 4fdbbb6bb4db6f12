"""The regime of a network fit, and the settings each regime takes.

A fit either passes over its training data many times and ends far below its validation
error (limited by the data: a small molecular set), or ends its budget after a few passes
with training and validation errors close (limited by its optimizer steps: a large set,
a slow machine, a short budget). What helps one costs in the other: on ethanol (~1,000
passes in 30 minutes) AMSGrad's damped late steps lower the MPNN's valid force MAE and
MACE's path-resolved channel maps raise it; on 3BPA (~40 passes) the maps lower it and on
Cu (~7 passes) AMSGrad's slow start raises it (benchmarks/results/fit_defaults.md).

:func:`expected_passes` estimates the passes a run will make before it starts: from the
epochs it is given, or from its budget and the measured time of one training step
(:func:`ml4m.training.costs.step_seconds`). :func:`choose_regime` names the regime and
returns the model kind's settings for it (:attr:`~ml4m.models.torch_potential.TorchPotential.regime_defaults`),
leaving out every setting the config gives.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["MANY_PASSES", "REGIMES", "expected_passes", "choose_regime",
           "regime_of_checkpoint"]

#: a fit that passes over its training data at least this many times is limited by the
#: data; with fewer, by its steps (measured: ethanol ~1,000 passes, 3BPA ~40, Cu-Au ~20,
#: Cu ~7 in 30 minutes on one CPU thread)
MANY_PASSES = 200
#: the regimes, named as in ``regime_defaults``
REGIMES = ("data_limited", "step_limited")


def expected_passes(max_epochs: int | None, train_seconds: float | None,
                    seconds_per_pass: float | None) -> float:
    """Passes over the training data a run will make: ``max_epochs``, or, with a budget
    of ``train_seconds`` for training, the passes of ``seconds_per_pass`` (the step
    time times the steps of a pass, plus a validation) that fit in it, whichever is
    fewer."""
    passes = math.inf if max_epochs is None else float(max_epochs)
    if train_seconds is not None:
        passes = min(passes, max(train_seconds, 0.0) / max(seconds_per_pass or 0.0, 1e-9))
    return passes


def choose_regime(passes: float, defaults: Mapping[str, Mapping[str, Mapping[str, Any]]],
                  params: Mapping[str, Any], training: Mapping[str, Any]
                  ) -> dict[str, Any]:
    """The regime of a run of ``passes`` and the settings it takes.

    Parameters
    ----------
    passes : float
        :func:`expected_passes`.
    defaults : dict
        The model kind's ``regime_defaults``: regime -> ``{"params": {...},
        "training": {...}}``.
    params, training : dict
        What the config gives (``params:`` and ``training:``): those settings are kept.

    Returns
    -------
    dict
        ``passes``, ``regime`` (one of :data:`REGIMES`), ``params`` and ``training``:
        the settings to apply (only those the config left unset).
    """
    regime = REGIMES[0] if passes >= MANY_PASSES else REGIMES[1]
    chosen = defaults.get(regime, {})
    return {"passes": passes if math.isfinite(passes) else None, "regime": regime,
            "params": {k: v for k, v in chosen.get("params", {}).items() if k not in params},
            "training": {k: v for k, v in chosen.get("training", {}).items()
                         if k not in training}}


def regime_of_checkpoint(payload: Mapping[str, Any],
                         defaults: Mapping[str, Mapping[str, Mapping[str, Any]]],
                         params: Mapping[str, Any], training: Mapping[str, Any]
                         ) -> dict[str, Any]:
    """The settings a resumed run takes: those of the run it resumes (its checkpoint's
    ``identity``), for every setting some regime sets and the config leaves unset, so
    that a resumed run continues under the settings it started with."""
    hyper = json.loads(payload["identity"]["model"])["hyper"]
    saved = json.loads(payload["identity"]["settings"])
    keys = {section: {k for regime in defaults.values() for k in regime.get(section, {})}
            for section in ("params", "training")}
    return {"passes": None, "regime": "resumed",
            "params": {k: hyper[k] for k in sorted(keys["params"])
                       if k in hyper and k not in params},
            "training": {k: saved[k] for k in sorted(keys["training"])
                         if k in saved and k not in training}}

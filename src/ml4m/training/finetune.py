"""Training a network potential on frames in one call: from scratch, or on from its
current weights (fine-tuning, the update of on-the-fly learning).

A network is trained by :class:`~ml4m.training.trainer.Trainer`, not by ``fit``; this
module gives the learning loop the one call it needs for any network kind, and for a
:class:`~ml4m.models.baseline.Baselined` network (a repulsive core or delta-learning
baseline around it: the network learns the residuals).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from ml4m.training.settings import TrainSettings

__all__ = ["FINE_TUNE", "fine_tune_settings", "is_network", "network_of", "train_network"]

#: settings of a fine-tuning run that the ``fine_tune`` mapping of a learning loop does not
#: set: rate 1e-3 (a tenth of the MPNN's default, a third of the BPNN's), cosine to
#: ``min_lr`` over 10 passes, no progress bar
FINE_TUNE: dict[str, Any] = {"lr": 1e-3, "min_lr": 1e-5, "max_epochs": 10, "progress": False}


def fine_tune_settings(mapping: dict[str, Any] | None = None,
                       source: str = "fine_tune") -> TrainSettings:
    """:data:`FINE_TUNE` updated with ``mapping`` (keys of :class:`TrainSettings`).

    Raises
    ------
    ConfigError
        An unknown key or a value of the wrong type or range, naming ``source``.
    """
    return TrainSettings.from_mapping({**FINE_TUNE, **(mapping or {})}, source=source)


def network_of(model: Any) -> Any:
    """The network inside ``model`` (itself, a Baselined's inner model, a committee's
    first member or template)."""
    from ml4m.models.baseline import Baselined
    from ml4m.models.committee import Committee

    if isinstance(model, Baselined):
        return network_of(getattr(model, "model_", model.model))
    if isinstance(model, Committee):
        return network_of(getattr(model, "members_", [model.model])[0])
    return model


def is_network(model: Any) -> bool:
    """Whether ``model`` is a network potential (or one inside a baseline, or a committee
    of them), trained by :class:`~ml4m.training.trainer.Trainer`."""
    from ml4m.models.torch_potential import TorchPotential

    return isinstance(network_of(model), TorchPotential)


def train_network(model: Any, frames: list, settings: TrainSettings) -> Any:
    """A copy of network ``model`` trained on labelled ``frames``; ``model`` is unchanged.

    A fitted network goes on from its weights and data statistics (E0s, scale), so
    ``settings`` are those of a fine-tuning run (:func:`fine_tune_settings`); an unfitted
    one is prepared on ``frames`` first. Its last-layer posterior is refitted on (and
    calibrated against) ``frames``. Inside a fitted :class:`~ml4m.models.baseline.Baselined`
    the baseline is kept (after its ``update``: the repulsive core's radii shrink to
    the new frames' closest pairs, its values on earlier frames unchanged) and the
    network learns the residuals of ``frames``; an unfitted
    one fits its baseline on ``frames`` first. A :class:`~ml4m.models.Committee` trains
    each member ``k`` with ``settings.seed + k``: a fitted one on all of ``frames``, an
    unfitted one from :meth:`Committee.member_starts` (members seeded ``seed + k``, each on
    its sample of ``frames``).

    Parameters
    ----------
    model : TorchPotential, Baselined or Committee
    frames : list of Frame
        Every training frame (the earlier ones too: a network trained on new frames
        alone forgets the others).
    settings : TrainSettings

    Returns
    -------
    TorchPotential, Baselined or Committee
    """
    from ml4m.models.baseline import Baselined, residual_frames
    from ml4m.models.committee import Committee
    from ml4m.training.trainer import Trainer

    if isinstance(model, Committee):
        starts = ([(m, frames) for m in model.members_] if hasattr(model, "members_")
                  else model.member_starts(list(frames)))
        members = [train_network(m, sample, dataclasses.replace(settings, seed=settings.seed + k))
                   for k, (m, sample) in enumerate(starts)]
        joined = Committee.from_members(members, model.resample, model.seed)
        # the spread keeps its scale: fine-tuning on new frames leaves no held-out ones
        joined.calibration_ = dict(getattr(model, "calibration_", joined.calibration_))
        return joined
    if isinstance(model, Baselined):
        if hasattr(model, "baseline_"):  # a core's radii widen to new close pairs only
            baseline = model.baseline_.update(frames)
            learnt = residual_frames(frames, baseline)
        else:
            baseline, learnt, _ = model.residuals(frames)
        net = train_network(getattr(model, "model_", model.model), learnt, settings)
        return Baselined.from_fitted(net, baseline)
    net = copy.deepcopy(model) if hasattr(model, "module_") else model.clone()
    return Trainer(settings).fit(net, frames)

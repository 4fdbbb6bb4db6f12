"""``ml4m fit`` for networks: build the torch potential a config names, train it with
:class:`~ml4m.training.Trainer`, save it, and remove its checkpoint."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ml4m.data import LabelKeys, read_dataset
from ml4m.data.frames import Dataset
from ml4m.training.config import FitConfig

__all__ = ["fit_network", "POST_FRACTION"]

#: share of a ``max_minutes`` budget kept for what follows training (last-layer posterior,
#: predictions for the metrics, plots, saving)
POST_FRACTION = 0.2


def _read(path: str, keys: LabelKeys, require: tuple[str, ...]):
    """Frames of a structure file, or a packed store (a folder written by ``ml4m data pack``)."""
    if Path(path).is_dir():
        from ml4m.data.store import open_store

        return open_store(path)
    return read_dataset(path, keys=keys, require=require)


def _frames_for_metrics(data) -> Dataset:
    """A data set itself, or evenly spaced frames of a store (at most 2000)."""
    from ml4m.training.batches import as_graph_set

    return data if isinstance(data, Dataset) else Dataset(as_graph_set(data, "train").sample())


def fit_network(cfg: FitConfig, path: Path, started: float, progress: bool, resume: bool
                ) -> tuple[Any, Dataset, Dataset | None, dict[str, Any]]:
    """Train the network ``cfg`` describes and save it to ``path``.

    The checkpoint and the per-epoch CSV go beside the model
    (:func:`ml4m.training.fit.network_files`); the checkpoint is removed only after the
    model file is written, so a run killed at any point can be resumed (``resume``).
    With ``cfg.max_minutes``, training gets what is left of the budget but
    :data:`POST_FRACTION` of it.

    Returns
    -------
    model : TorchPotential
        Trained (and saved).
    train, valid : Dataset
        Frames for the error metrics (evenly spaced frames of a store).
    metrics : dict
        ``model``, ``kind``, ``fit_seconds``, ``n_features`` (parameters), ``config``,
        ``training`` (epochs, steps, stop reason, settings, log file) and ``plots``
        (the learning curve).
    """
    from ml4m.models.registry import model_kind
    from ml4m.training.curves import plot_training_curve
    from ml4m.training.fit import network_files
    from ml4m.training.settings import TrainSettings
    from ml4m.training.trainer import Trainer

    files = network_files(path)
    base = {**cfg.training, "seed": cfg.seed, "checkpoint": str(files["checkpoint"]),
            "log_csv": str(files["log"]), "progress": progress}
    weights = TrainSettings.from_mapping(base, source="config").weights
    require = tuple(t for t in ("energy", "forces") if weights.get(t, 0.0) > 0)
    keys = LabelKeys(**cfg.keys)
    train = _read(cfg.train, keys, require)
    valid = _read(cfg.valid, keys, require) if cfg.valid else None
    kind = model_kind(cfg.model)
    given = {"device": cfg.device, "seed": cfg.seed}
    names = kind.cls.param_names()
    model = kind.cls(**{k: v for k, v in given.items() if k in names}, **cfg.params)
    if cfg.max_minutes is not None:
        left = 60.0 * cfg.max_minutes * (1.0 - POST_FRACTION) - (time.perf_counter() - started)
        base["max_minutes"] = max(left, 1.0) / 60.0
    trainer = Trainer(TrainSettings.from_mapping(base, source="config"))
    t0 = time.perf_counter()
    model = trainer.fit(model, train, valid, resume=resume)
    fit_seconds = time.perf_counter() - t0
    path = model.save(path)
    files["checkpoint"].unlink(missing_ok=True)
    curve = plot_training_curve(trainer.history, files["curve"])
    last = trainer.history[-1]
    metrics: dict[str, Any] = {
        "model": str(path), "kind": model.kind, "fit_seconds": fit_seconds,
        "n_features": model.n_parameters, "config": dict(vars(cfg)),
        "training": {"epochs": len(trainer.history), "steps": last["step"],
                     "stop_reason": trainer.stop_reason, "log": str(files["log"]),
                     "settings": trainer.settings.as_dict(), "last_epoch": last},
        "plots": [str(curve)]}
    valid_frames = None if valid is None else _frames_for_metrics(valid)
    return model, _frames_for_metrics(train), valid_frames, metrics

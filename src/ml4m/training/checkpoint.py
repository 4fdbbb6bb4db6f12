"""Training checkpoints: tensors plus plain Python values, written atomically, read
without executing code (``torch.load(weights_only=True)``).

A checkpoint holds the module's and the weight average's state, the optimiser's and the
scheduler's, the random states (torch, numpy), the position in the run (epoch, batch,
step), the history so far, the best state, and what it belongs to: the model's kind and
hyperparameters and the training settings. A run is resumed only from a checkpoint of
the same model and settings (:func:`check_compatible`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ml4m._fileio import atomic_path
from ml4m.errors import ConfigError, DataError

__all__ = ["save_checkpoint", "load_checkpoint", "check_compatible", "rng_state",
           "set_rng_state", "identity"]

#: format tag of a checkpoint file
FORMAT = "ml4m-checkpoint"
VERSION = 1


def identity(model: Any, settings: Any) -> dict[str, str]:
    """What a checkpoint belongs to, as JSON text: the model and the settings that shape
    the run (not those a resumed run may change, :attr:`TrainSettings.RUN_CONTROL`)."""
    hyper = {k: v for k, v in model.get_params().items() if k != "device"}
    fixed = {k: v for k, v in settings.as_dict().items() if k not in settings.RUN_CONTROL}
    return {"model": json.dumps({"kind": model.kind, "hyper": hyper,
                                 "species": [int(z) for z in model.species_]},
                                sort_keys=True, default=str),
            "settings": json.dumps(fixed, sort_keys=True, default=str)}


def rng_state() -> dict[str, Any]:
    """torch's and numpy's global random states as tensors and ints."""
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy_keys": torch.as_tensor(keys.astype(np.int64)),
             "numpy_pos": int(pos), "numpy_gauss": [int(has_gauss), float(cached)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    import torch

    torch.set_rng_state(state["torch"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], state["numpy_gauss"][0],
                         state["numpy_gauss"][1]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (tensors, numbers, strings, lists, dicts) atomically to ``path``."""
    import torch

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint (no code runs: ``weights_only=True``).

    Raises
    ------
    ConfigError
        The file does not exist.
    DataError
        It is not an ml4m checkpoint, or of a newer version.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no checkpoint to resume from (train without resume to "
                          "start a new run)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"not a readable training checkpoint ({exc})", str(path)) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataError("not an ml4m training checkpoint", str(path))
    if payload.get("version", 0) > VERSION:
        raise DataError(f"checkpoint version {payload['version']} is newer than this ml4m "
                        f"reads ({VERSION})", str(path))
    return payload


def check_compatible(payload: dict[str, Any], expected: dict[str, str], path: Any) -> None:
    """Refuse to resume from a checkpoint of another model or other settings.

    Raises
    ------
    ConfigError
        Naming the checkpoint and what differs.
    """
    for what in ("model", "settings"):
        saved, now = json.loads(payload["identity"][what]), json.loads(expected[what])
        if saved != now:
            keys = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            diff = ", ".join(f"{k}: {saved.get(k)!r} there, {now.get(k)!r} now" for k in keys)
            raise ConfigError(f"{path}: the checkpoint is of another {what} ({diff}); resume "
                              "with the same one or start a new run")

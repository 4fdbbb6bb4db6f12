"""The saved state of an active-learning loop: one folder, replaced whole after each update.

``DIR/state/`` holds everything a resumed loop needs to continue exactly where the saved
one was (no pickle; arrays in ``.npz`` read with ``allow_pickle=False``):

* ``state.json``: settings record, counters, per-walker step, thermostat target and
  random-generator state (numpy's ``bit_generator.state``, plain JSON), the model's
  update-state parameters;
* ``model.ml4m``: the model file;
* ``update.npz``: the accumulated normal equations of an exactly updatable model;
* ``train.npz``: the training frames at full precision (``DIR/train.extxyz`` is the
  same set for people and ``ml4m fit``; ``state.json`` records how many frames and
  bytes of it belong to this state);
* ``walkers.npz``: positions, momenta and cells of every walker;
* ``history.npz``: per round, MD time, each walker's largest force sigma, the threshold
  and the cumulative reference calls.

The folder is written by :func:`ml4m._fileio.atomic_dir`: a kill leaves the previous
state or the new one, never a mixture. ``DIR/train.extxyz`` grows by appending each
update's new frames (flushed to disk) before the state that counts them is written; a
kill between the two leaves frames past the recorded size, which the next save or a
resume cuts off (a file shorter than recorded is written again from ``train.npz``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from ml4m._fileio import atomic_dir, read_json_record
from ml4m.data.frames import Frame
from ml4m.errors import DataError
from ml4m.outputs import mark_folder

__all__ = ["LoopState", "WalkerState", "save_state", "load_state", "has_state", "STATE_DIR",
           "frames_to_arrays", "frames_from_arrays", "updatable", "FOLDER_KIND", "TRAIN_FILE"]

#: sub-folder of the output folder holding the state
STATE_DIR = "state"
#: the kind of output folder a learning run writes (:func:`ml4m.outputs.claim_output`)
FOLDER_KIND = "learn"
_FORMAT = "ml4m-learn-state"


@dataclass
class WalkerState:
    """What continues a walker: its atoms (positions, momenta, cell), step, RNG state,
    and the step of its latest reference call (None before the first)."""

    atoms: Atoms
    step: int
    rng_state: dict[str, Any]
    last_call: int | None = None


@dataclass
class LoopState:
    """The loop between rounds.

    Attributes
    ----------
    settings : dict
        :meth:`LearnSettings.record` of the run.
    model : Potential
    train : list of Frame
        Training frames (initial and labelled on the fly), in the order they joined.
    walkers : list of WalkerState
    calls, skipped, rounds : int
        Reference calls made (failed ones skipped included), frames skipped, rounds run.
    train_file : tuple of int
        Frames and bytes of ``DIR/train.extxyz`` that hold ``train[:frames]``.
    history : dict of str to list
        ``time_fs`` (rounds,), ``sigma`` (rounds, walkers) eV/A, ``threshold`` (rounds,)
        eV/A, ``calls`` (rounds,).
    fitted_on : int
        Training frames of the model's last whole fit (the initial one or a refit); the
        updates since kept its basis.
    """

    settings: dict[str, Any]
    model: Any
    train: list[Frame]
    walkers: list[WalkerState]
    calls: int = 0
    skipped: int = 0
    rounds: int = 0
    history: dict[str, list] = field(default_factory=lambda: {
        "time_fs": [], "sigma": [], "threshold": [], "calls": []})
    train_file: tuple[int, int] = (0, 0)
    fitted_on: int = 0


def frames_to_arrays(frames: list[Frame]) -> dict[str, np.ndarray]:
    """Frames (with energy and forces; stress optional) as flat arrays at full precision."""
    n = np.array([len(f) for f in frames], dtype=np.int64)
    has_stress = np.array([f.stress is not None for f in frames], dtype=bool)
    return {
        "n_atoms": n,
        "numbers": np.concatenate([f.numbers for f in frames]) if frames else np.zeros(0, np.int64),
        "positions": np.concatenate([f.positions for f in frames]) if frames else np.zeros((0, 3)),
        "cells": np.array([f.cell for f in frames]).reshape(-1, 3, 3),
        "pbc": np.array([f.pbc for f in frames], dtype=bool).reshape(-1, 3),
        "energy": np.array([f.energy for f in frames], dtype=float),
        "forces": np.concatenate([f.forces for f in frames]) if frames else np.zeros((0, 3)),
        "has_stress": has_stress,
        "stress": np.array([f.stress if f.stress is not None else np.zeros(6) for f in frames]
                           ).reshape(-1, 6),
        "info": np.array(json.dumps([f.info for f in frames], default=float)),
    }


def frames_from_arrays(a: dict[str, np.ndarray], name: str) -> list[Frame]:
    """The frames :func:`frames_to_arrays` wrote (DataError naming ``name`` if damaged)."""
    try:
        n = a["n_atoms"]
        off = np.concatenate([[0], np.cumsum(n)])
        infos = json.loads(str(a["info"]))
        return [Frame(numbers=a["numbers"][i:j].astype(np.int64), positions=a["positions"][i:j],
                      cell=a["cells"][k], pbc=a["pbc"][k], energy=float(a["energy"][k]),
                      forces=a["forces"][i:j],
                      stress=a["stress"][k] if a["has_stress"][k] else None, info=infos[k])
                for k, (i, j) in enumerate(zip(off[:-1], off[1:]))]
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise DataError(f"damaged training set: {type(exc).__name__}: {exc}", name) from None


def has_state(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a saved loop state."""
    return (Path(folder) / STATE_DIR / "state.json").is_file()


#: the training frames people read, beside the state folder
TRAIN_FILE = "train.extxyz"


def _holds_frames(path: Path, size: int, frames: list[Frame]) -> bool:
    """Whether the first ``size`` bytes of the extxyz file ``path`` have the lines of
    ``frames`` (atoms + 2 each) and end with one."""
    lines, left, last = 0, size, b"\n"
    with open(path, "rb") as fh:
        while left > 0:
            chunk = fh.read(min(left, 1 << 24))
            if not chunk:
                return False
            lines += chunk.count(b"\n")
            left -= len(chunk)
            last = chunk[-1:]
    return last == b"\n" and lines == sum(len(f) + 2 for f in frames)


def _append_train(folder: Path, state: LoopState, verify: bool = False) -> None:
    """Bring ``folder/train.extxyz`` to ``state.train``: cut it to the recorded size
    (frames a killed save appended), append the frames it lacks, flush them to disk;
    ``state.train_file`` then counts them. Written afresh (whole or not at all: the file
    it replaces stays until then) when nothing is recorded, or the file is missing,
    shorter than recorded or (``verify``) its recorded part does not have the recorded
    frames' lines."""
    import io

    import ase.io

    from ml4m.data import Dataset, write_extxyz

    path = folder / TRAIN_FILE
    frames, size = state.train_file
    if frames == 0 or not path.is_file() or path.stat().st_size < size or \
            (verify and not _holds_frames(path, size, state.train[:frames])):
        write_extxyz(Dataset(state.train), path)
        state.train_file = (len(state.train), path.stat().st_size)
        return
    text = io.StringIO()
    if len(state.train) > frames:
        ase.io.write(text, Dataset(state.train[frames:]).to_atoms(with_labels=True),
                     format="extxyz")
    with open(path, "r+b") as fh:
        fh.truncate(size)
        fh.seek(size)
        fh.write(text.getvalue().encode())
        fh.flush()
        os.fsync(fh.fileno())
        state.train_file = (len(state.train), fh.tell())


def save_state(folder: str | os.PathLike, state: LoopState) -> Path:
    """Write ``state`` to ``folder/state`` (replacing the previous one whole), after
    appending its new training frames to ``folder/train.extxyz``."""
    folder = Path(folder)
    model = state.model
    update_params, update_arrays = (model.update_state() if updatable(model) else (None, {}))
    record = {
        "format": _FORMAT, "settings": state.settings, "calls": state.calls,
        "skipped": state.skipped, "rounds": state.rounds, "update_state": update_params,
        "fitted_on": state.fitted_on,
        "walkers": [{"step": w.step, "rng": w.rng_state, "last_call": w.last_call}
                    for w in state.walkers],
    }
    walkers: dict[str, np.ndarray] = {}
    for k, w in enumerate(state.walkers):
        walkers[f"positions_{k}"] = w.atoms.positions
        walkers[f"momenta_{k}"] = w.atoms.get_momenta()
        walkers[f"cell_{k}"] = w.atoms.cell[:]
    mark_folder(folder, FOLDER_KIND)  # the folder is a 'learn' output (ml4m.outputs)
    _append_train(folder, state)
    record["train_extxyz"] = {"frames": state.train_file[0], "bytes": state.train_file[1]}
    with atomic_dir(folder / STATE_DIR) as tmp:
        model.save(tmp / "model.ml4m")
        if update_params is not None:
            np.savez(tmp / "update.npz", **update_arrays)
        np.savez(tmp / "train.npz", **frames_to_arrays(state.train))
        np.savez(tmp / "walkers.npz", **walkers)
        np.savez(tmp / "history.npz", **{k: np.asarray(v, dtype=float)
                                         for k, v in state.history.items()})
        (tmp / "state.json").write_text(json.dumps(record, indent=1))
    return folder / STATE_DIR


def updatable(model: Any) -> bool:
    """Whether ``model`` holds what an exact update needs (normal equations)."""
    return callable(getattr(model, "update_state", None)) and \
        getattr(model, "normal_equations_", None) is not None


def _npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError("missing from the saved state", path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return dict(z)
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable: {exc}", path) from None


def load_state(folder: str | os.PathLike, walker_atoms: list[Atoms]) -> LoopState:
    """The state :func:`save_state` wrote to ``folder``.

    ``walker_atoms`` are the walkers' starting structures (numbers, pbc and masses come
    from them; positions, momenta and cells from the state). ``folder/train.extxyz`` is
    brought to the state's training set (frames past it cut off; written again from the
    state when its recorded part does not hold the state's frames).
    """
    from ml4m.models.serialization import load

    root = Path(folder) / STATE_DIR
    path = root / "state.json"
    record = read_json_record(path, _FORMAT, "learning state")
    model = load(root / "model.ml4m")
    if record.get("update_state") is not None:
        model.restore_update_state(record["update_state"], _npz(root / "update.npz"))
    train = frames_from_arrays(_npz(root / "train.npz"), str(root / "train.npz"))
    arrays = _npz(root / "walkers.npz")
    saved = record.get("walkers", [])
    if len(saved) != len(walker_atoms):
        raise DataError(f"the state has {len(saved)} walkers, the settings {len(walker_atoms)}",
                        path)
    walkers = []
    for k, (w, atoms) in enumerate(zip(saved, walker_atoms)):
        atoms = atoms.copy()
        try:
            atoms.set_cell(arrays[f"cell_{k}"])
            atoms.set_positions(arrays[f"positions_{k}"])
            atoms.set_momenta(arrays[f"momenta_{k}"])
        except (KeyError, ValueError) as exc:
            raise DataError(f"walker {k}: {exc}", root / "walkers.npz") from None
        walkers.append(WalkerState(atoms, int(w["step"]), w["rng"], w.get("last_call")))
    hist = _npz(root / "history.npz")
    history = {k: hist[k].tolist() for k in ("time_fs", "sigma", "threshold", "calls")}
    state = LoopState(record["settings"], model, train, walkers, int(record["calls"]),
                      int(record["skipped"]), int(record["rounds"]), history,
                      _train_file(record, len(train), path),
                      int(record.get("fitted_on", len(train))))  # older states: fitted now
    _append_train(Path(folder), state, verify=True)  # cut what a killed save appended
    return state


def _train_file(record: dict[str, Any], n_train: int, path: Path) -> tuple[int, int]:
    """The frames and bytes of train.extxyz a saved state counts ((0, 0) for states
    written before they were recorded: the file is then written afresh)."""
    entry = record.get("train_extxyz", {"frames": 0, "bytes": 0})
    try:
        frames, size = int(entry["frames"]), int(entry["bytes"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"train_extxyz must be {{frames, bytes}}, got {entry!r}", path) from None
    if not 0 <= frames <= n_train or size < 0:
        raise DataError(f"train_extxyz counts {frames} frames ({size} bytes) of a training set "
                        f"of {n_train}", path)
    return frames, size

"""Training data as graphs: one graph per frame, built once, joined into batches.

A neighbour list is the expensive part of a batch, so :class:`GraphSet` builds each
frame's graph (:func:`ml4m.models.torch_potential.batch_graph` of that frame) once and
keeps it; a batch is then a concatenation (:func:`collate`). Frames from a packed store
(``ml4m data pack``) are read and turned into graphs batch by batch and not kept, so a
store larger than memory trains in constant memory.

The order of the frames in epoch ``e`` depends only on the seed and ``e``
(:func:`epoch_batches`), which makes a resumed run see the batches an uninterrupted run
would, and lets data-parallel processes agree on the global batch without talking.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ml4m.data.frames import Frame
from ml4m.data.split import evenly_spaced
from ml4m.data.store import PackedStore
from ml4m.errors import DataError
from ml4m.models.linear.design import VOIGT
from ml4m.models.torch_potential import batch_graph

__all__ = ["GraphSet", "collate", "epoch_batches", "check_labels", "as_graph_set"]


def _frame_graph(frame: Frame, cutoff: float, species: Sequence[int], dtype: str
                 ) -> dict[str, Any]:
    """One frame's graph tensors (:func:`batch_graph`, on the CPU) and its labels, with
    masks saying which labels it has."""
    import torch

    g = batch_graph([frame], cutoff, species, "cpu", dtype)
    ft = g["positions"].dtype
    n = len(frame)
    g["energy_ref"] = torch.tensor([frame.energy if frame.energy is not None else 0.0],
                                   dtype=ft)
    g["energy_mask"] = torch.tensor([frame.energy is not None])
    forces = frame.forces if frame.forces is not None else np.zeros((n, 3))
    g["forces_ref"] = torch.as_tensor(np.asarray(forces), dtype=ft)
    g["forces_mask"] = torch.full((n,), frame.forces is not None)
    stress = np.zeros((3, 3))
    if frame.stress is not None:
        for k, (a, b) in enumerate(VOIGT):
            stress[a, b] = stress[b, a] = frame.stress[k]
    g["stress_ref"] = torch.as_tensor(stress, dtype=ft)[None]
    g["stress_mask"] = torch.tensor([frame.stress is not None])
    return g


#: keys of a collated batch that hold labels (the rest is the module's input)
LABEL_KEYS = ("energy_ref", "energy_mask", "forces_ref", "forces_mask", "stress_ref",
              "stress_mask")


def collate(graphs: Sequence[dict[str, Any]], device: str = "cpu"
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Join single-frame graphs into one batch.

    Returns
    -------
    data : dict
        :func:`batch_graph`'s tensors for the whole batch, on ``device``.
    labels : dict
        ``energy_ref`` (B,) eV, ``forces_ref`` (N, 3) eV/Angstrom, ``stress_ref``
        (B, 3, 3) eV/Angstrom^3 and boolean ``*_mask`` saying which are labelled.
    """
    import torch

    counts = [int(g["n_atoms"][0]) for g in graphs]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    data = {
        "positions": torch.cat([g["positions"] for g in graphs]),
        "cell": torch.cat([g["cell"] for g in graphs]),
        "species": torch.cat([g["species"] for g in graphs]),
        "batch": torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)),
        "edge_index": torch.cat([g["edge_index"] + int(o) for g, o in zip(graphs, offsets)],
                                dim=1),
        "shifts": torch.cat([g["shifts"] for g in graphs]),
        "n_atoms": torch.tensor(counts),
    }
    labels = {k: torch.cat([g[k] for g in graphs]) for k in LABEL_KEYS}
    move = {k: v.to(device) for k, v in data.items()}
    return move, {k: v.to(device) for k, v in labels.items()}


class GraphSet:
    """Frames (a list, or a packed store read lazily) and their graphs.

    Parameters
    ----------
    frames : sequence of Frame or PackedStore
        The structures and labels.
    name : str
        What the set is called in messages (``train``, ``valid``).
    """

    def __init__(self, frames: Sequence[Frame] | PackedStore, name: str = "train") -> None:
        self.frames = frames
        self.name = name
        self.streaming = isinstance(frames, PackedStore)
        self._cache: dict[int, dict[str, Any]] = {}
        self._key: tuple | None = None

    def __len__(self) -> int:
        return len(self.frames)

    def graphs(self, indices: Sequence[int], cutoff: float, species: Sequence[int],
               dtype: str) -> list[dict[str, Any]]:
        """The graphs of frames ``indices``: built once and kept, except from a store."""
        key = (float(cutoff), tuple(int(z) for z in species), dtype)
        if key != self._key:
            self._cache.clear()
            self._key = key
        out = []
        for k in indices:
            g = self._cache.get(int(k))
            if g is None:
                g = _frame_graph(self.frames[int(k)], cutoff, species, dtype)
                if not self.streaming:
                    self._cache[int(k)] = g
            out.append(g)
        return out

    def sample(self, n_max: int = 2000) -> list[Frame]:
        """Up to ``n_max`` evenly spaced frames, plus one frame of each species they miss
        (for a model's :meth:`prepare` on a store too large to load)."""
        if not self.streaming:
            return list(self.frames)
        store = self.frames
        n = len(store)
        picks = [int(k) for k in evenly_spaced(n, n_max)]
        numbers = store.array("numbers")
        seen = {int(z) for k in picks
                for z in numbers[store.offsets[k]:store.offsets[k + 1]]}
        for z in np.unique(numbers):
            if int(z) not in seen:
                atom = int(np.argmax(numbers == z))
                frame = int(np.searchsorted(store.offsets, atom, side="right") - 1)
                picks.append(frame)
                seen |= {int(x) for x in numbers[store.offsets[frame]:store.offsets[frame + 1]]}
        return [store[int(k)] for k in sorted(set(picks))]

    def spaced(self, n_max: int) -> list[Frame]:
        """At most ``n_max`` evenly spaced frames (all of a short list; of a store, see
        :meth:`sample`)."""
        if self.streaming:
            return self.sample(n_max)
        if len(self.frames) <= n_max:
            return list(self.frames)
        return [self.frames[int(k)] for k in evenly_spaced(len(self), n_max)]

    def mean_atoms(self) -> float:
        """Mean number of atoms per frame."""
        if self.streaming:
            return float(self.frames.offsets[-1]) / max(1, len(self))
        return sum(len(f) for f in self.frames) / max(1, len(self))

    def any_label(self, label: str) -> bool:
        """Whether some frame carries ``label``."""
        if self.streaming:
            return label in self.frames.labels
        return any(f.has(label) for f in self.frames)

    def has_label(self, label: str) -> tuple[bool, Frame | None]:
        """Whether every frame carries ``label``; if not, the first frame that lacks it
        (None for a store, whose labels are all-or-nothing)."""
        if self.streaming:
            return label in self.frames.labels, None
        for f in self.frames:
            if not f.has(label):
                return False, f
        return True, None

    def where(self, frame: Frame | None) -> tuple[str | None, int | None]:
        """File and frame index of ``frame`` (or of the store) for a DataError."""
        if self.streaming:
            return str(self.frames.path), None
        if frame is not None and frame.source is not None:
            return frame.source
        return f"the {self.name} frames", None


def as_graph_set(frames: Any, name: str) -> GraphSet:
    """A :class:`GraphSet` from a list/Dataset of frames or a :class:`PackedStore`."""
    if isinstance(frames, GraphSet):
        return frames
    if isinstance(frames, PackedStore):
        return GraphSet(frames, name)
    from ml4m.models.base import as_frames

    return GraphSet(as_frames(frames), name)


def check_labels(data: GraphSet, weights: dict[str, float]) -> None:
    """Refuse a set that lacks energies or forces the loss weighs.

    Raises
    ------
    DataError
        Naming the file, the frame and the label.
    """
    for label in ("energy", "forces"):
        if weights.get(label, 0.0) > 0:
            ok, frame = data.has_label(label)
            if not ok:
                path, index = data.where(frame)
                raise DataError(f"the loss weighs {label} (weight {weights[label]:g}) but "
                                f"this {data.name} frame has no {label} label; label it or "
                                f"set training.weights.{label}: 0", path, index)


def epoch_batches(n_frames: int, batch_size: int, seed: int, epoch: int, world: int = 1
                  ) -> list[np.ndarray]:
    """The global batches of epoch ``epoch``: a permutation seeded by (seed, epoch) cut into
    pieces of ``batch_size * world`` frames (with several processes, a last piece too small
    to give each process a frame is dropped)."""
    order = np.random.default_rng([seed, epoch]).permutation(n_frames)
    size = batch_size * world
    batches = [order[k:k + size] for k in range(0, n_frames, size)]
    return [b for b in batches if len(b) >= world]


def shard(batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This process's part of a global batch (contiguous, sizes differing by at most 1)."""
    return np.array_split(batch, world)[rank]

"""Reproducible train/valid/test splits, random or by group (config_type, trajectory)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ml4m.data.frames import Dataset
from ml4m.errors import ConfigError
from ml4m.validation import check_float, check_int, check_str

__all__ = ["Split", "split_indices", "split_dataset", "evenly_spaced", "frame_groups"]


@dataclass(frozen=True)
class Split:
    """Frame indices of each part of a split (sorted, disjoint, covering all frames)."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray

    def as_dict(self) -> dict[str, list[int]]:
        """Indices as plain lists, for JSON."""
        return {k: getattr(self, k).tolist() for k in ("train", "valid", "test")}


def _check_fractions(valid: float, test: float) -> tuple[float, float]:
    """Both fractions finite in [0, 1), leaving frames to train on."""
    valid, test = (check_float(f"--{name} (a fraction)", v, low=0.0, high=1.0, high_open=True)
                   for name, v in (("valid", valid), ("test", test)))
    if valid + test >= 1.0:
        raise ConfigError(f"valid + test fractions must leave frames to train on, got {valid + test}")
    return valid, test


def split_indices(
    n_frames: int,
    valid: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    groups: list | None = None,
) -> Split:
    """Split ``n_frames`` indices into train/valid/test.

    Parameters
    ----------
    n_frames : int
        Number of frames.
    valid, test : float
        Fractions of frames for validation and test.
    seed : int, default=0
        Seed of the permutation; the same seed gives the same split.
    groups : list, optional
        A group label per frame (e.g. ``config_type`` or trajectory id). Whole groups
        go to one part, so no group is shared between train and valid/test; the parts
        are filled in a seeded random order of groups until each reaches its fraction.

    Returns
    -------
    Split
    """
    n_frames = check_int("n_frames", n_frames, low=0)
    valid, test = _check_fractions(valid, test)
    rng = np.random.default_rng(check_int("--seed", seed, low=0))
    if groups is None:
        order = rng.permutation(n_frames)
        n_valid = int(round(valid * n_frames))
        n_test = int(round(test * n_frames))
        parts = (order[n_valid + n_test:], order[:n_valid], order[n_valid:n_valid + n_test])
    else:
        if len(groups) != n_frames:
            raise ConfigError(f"{len(groups)} group labels for {n_frames} frames")
        keys = sorted({str(g) for g in groups})
        members = {g: [] for g in keys}
        for idx, g in enumerate(groups):
            members[str(g)].append(idx)
        order = [keys[i] for i in rng.permutation(len(keys))]
        targets = {"valid": valid * n_frames, "test": test * n_frames}
        filled = {"train": [], "valid": [], "test": []}
        for g in order:
            for part in ("valid", "test"):
                if len(filled[part]) < targets[part] and (
                    len(filled[part]) + len(members[g]) / 2 <= targets[part] or not filled[part]
                ):
                    filled[part].extend(members[g])
                    break
            else:
                filled["train"].extend(members[g])
        parts = tuple(np.array(filled[p], dtype=np.int64) for p in ("train", "valid", "test"))
    return Split(*(np.sort(np.asarray(p, dtype=np.int64)) for p in parts))


def split_dataset(
    dataset: Dataset,
    valid: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    by: str | None = None,
) -> tuple[Split, dict[str, Dataset]]:
    """Split a dataset; see :func:`split_indices`.

    Parameters
    ----------
    dataset : Dataset
        Frames to split.
    valid, test : float
        Fractions.
    seed : int, default=0
        Seed.
    by : str, optional
        An ``info`` key (``config_type``, ``traj``) to split by group; frames without
        it form one group each.

    Returns
    -------
    split : Split
        The indices.
    parts : dict of str to Dataset
        ``train``, ``valid``, ``test`` datasets.
    """
    groups = None
    if by is not None:
        check_str("--by", by)
        values = dataset.info_values(by)
        if all(v is None for v in values):
            raise ConfigError(f"no frame has info key '{by}' to split by")
        groups = [f"__frame{k}" if v is None else v for k, v in enumerate(values)]
    split = split_indices(len(dataset), valid, test, seed, groups)
    return split, {k: dataset[getattr(split, k)] for k in ("train", "valid", "test")}


def evenly_spaced(n_total: int, n: int) -> np.ndarray:
    """``n`` distinct indices spread evenly over ``range(n_total)`` (first and last kept):
    a subset of MD frames that still spans every trajectory stored in order."""
    n = max(1, min(int(n), n_total))
    return np.unique(np.linspace(0, n_total - 1, n).round().astype(int))


def frame_groups(frames, n_groups: int) -> np.ndarray:
    """Group index (0 .. ``n_groups`` - 1) of every frame, for cross-validation and
    held-out calibration: whole trajectories, dealt round-robin in order of first
    appearance, when every frame has an ``info['traj']`` (else ``config_type``) and
    there are at least ``n_groups`` distinct values; else contiguous chunks of frames
    (MD frames are stored in trajectory order).

    Raises
    ------
    ConfigError
        Fewer frames than groups.
    """
    frames = list(frames)
    if len(frames) < n_groups:
        raise ConfigError(f"{n_groups} groups of frames need at least {n_groups} frames, "
                          f"got {len(frames)}")
    for key in ("traj", "config_type"):
        values = [f.info.get(key) for f in frames]
        if all(v is not None for v in values) and len(set(map(str, values))) >= n_groups:
            order = {v: k for k, v in enumerate(dict.fromkeys(map(str, values)))}
            return np.array([order[str(v)] % n_groups for v in values])
    return np.arange(len(frames)) * n_groups // len(frames)

"""Descriptors: atomic environments to rotation-, translation- and permutation-invariant vectors.

Every descriptor is an object holding its hyperparameters, with ``n_features``,
``feature_names()`` (stable column order, documented per module) and
``compute(frames, gradients=False, n_jobs=1, progress=False) -> DescriptorResult``
(rows = atoms of all frames in order, or frames when averaging; position and strain
derivatives in a sparse per-(centre, atom) layout, see :mod:`ml4m.descriptors.base`).
:class:`TorchSOAP` and :class:`TorchACE` evaluate SOAP and the ACE basis in PyTorch
(CPU or CUDA) for autograd models.

>>> from ase.build import bulk
>>> from ml4m.descriptors import SOAP
>>> res = SOAP(["Cu"], r_cut=4.0, n_max=4, l_max=3).compute(bulk("Cu", "fcc", a=3.6))
>>> res.features.shape
(1, 40)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ml4m.descriptors.ace import ACE
from ml4m.descriptors.acsf import ACSF
from ml4m.descriptors.base import Descriptor, DescriptorResult, as_frames, parse_species
from ml4m.descriptors.mbtr import MBTR
from ml4m.descriptors.soap import SOAP
from ml4m.errors import ConfigError

__all__ = [
    "ACE", "ACSF", "MBTR", "SOAP", "Descriptor", "DescriptorResult", "DESCRIPTORS",
    "make_descriptor", "from_settings", "describe_frames", "species_of", "TorchSOAP", "TorchACE",
]


def __getattr__(name: str) -> Any:
    # the torch back end imports torch: load it only when asked for
    if name in ("TorchSOAP", "TorchACE"):
        from ml4m.descriptors import torch_backend

        return getattr(torch_backend, name)
    raise AttributeError(f"module 'ml4m.descriptors' has no attribute {name!r}")

#: descriptor name -> class (names used by the CLI and :func:`describe_frames`)
DESCRIPTORS: dict[str, type[Descriptor]] = {"acsf": ACSF, "soap": SOAP, "ace": ACE, "mbtr": MBTR}


def species_of(frames: Any) -> tuple[int, ...]:
    """Sorted atomic numbers present in ``frames`` (Frame, Atoms, Dataset or a sequence)."""
    zs = {int(z) for f in as_frames(frames) for z in np.unique(f.numbers)}
    return tuple(sorted(zs))


def from_settings(record: dict[str, Any]) -> Descriptor:
    """Rebuild a descriptor from its ``settings()`` record (which names its family).

    Raises
    ------
    ConfigError
        The record names no family, or a setting the family does not have.
    """
    record = dict(record)
    if "descriptor" not in record:
        raise ConfigError("descriptor record has no 'descriptor' family name")
    return make_descriptor(record.pop("descriptor"), **record)


def make_descriptor(
    name: str, species: Iterable[str | int], r_cut: float | None = None,
    n_max: int | None = None, l_max: int | None = None, average: bool = False, **kw: Any,
) -> Descriptor:
    """Build a descriptor by name; ``None`` keeps the class default.

    Parameters
    ----------
    name : {"acsf", "soap", "ace", "mbtr"}
        Descriptor family.
    species : iterable of str or int
        Elements.
    r_cut : float, optional
        Cutoff radius, Angstrom.
    n_max, l_max : int, optional
        Radial and angular sizes (SOAP and ACE only).
    average : bool, default=False
        One row per frame (MBTR always is).
    **kw
        Further keyword arguments of the class (e.g. ``sigma``, ``g2_params``).

    Raises
    ------
    ConfigError
        Unknown name, or a parameter the family does not have.
    """
    key = str(name).lower()
    if key not in DESCRIPTORS:
        raise ConfigError(f"descriptor must be one of {sorted(DESCRIPTORS)}, got {name!r}")
    cls = DESCRIPTORS[key]
    args: dict[str, Any] = dict(kw)
    if r_cut is not None:
        args["r_cut"] = r_cut
    for pname, value in (("n_max", n_max), ("l_max", l_max)):
        if value is None:
            continue
        if key not in ("soap", "ace"):
            raise ConfigError(f"{pname} does not apply to the {key} descriptor (got {value!r})")
        args[pname] = value
    if average and key != "mbtr":
        args["average"] = True
    try:
        return cls(species, **args)
    except TypeError as exc:
        raise ConfigError(f"{key} descriptor: {exc}") from None


def describe_frames(
    frames: Any, name: str, species: Iterable[str | int] | None = None,
    r_cut: float | None = None, n_max: int | None = None, l_max: int | None = None,
    average: bool = False, n_jobs: int | None = 1, progress: bool = False,
    max_memory: int | str | None = None, **kw: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature table of structures, for analysis and curation.

    Parameters
    ----------
    frames : Frame, ase.Atoms, Dataset or sequence of them
        Structures (Angstrom).
    name : {"acsf", "soap", "ace", "mbtr"}
        Descriptor family.
    species : iterable of str or int, optional
        Elements; default: those present in ``frames``.
    r_cut : float, optional
        Cutoff radius, Angstrom (family default when None).
    n_max, l_max : int, optional
        Radial / angular sizes (SOAP, ACE).
    average : bool, default=False
        One row per frame (mean over its atoms).
    n_jobs : int, default=1
        Worker threads over frames.
    progress : bool, default=False
        Progress bar on stderr.
    max_memory : int or str, optional
        Memory limit (bytes or e.g. ``"4GB"``; default half the available memory); see
        :meth:`Descriptor.compute`.
    **kw
        Other hyperparameters of the family.

    Returns
    -------
    features : ndarray of shape (n_rows, n_features)
    frame_index : ndarray of shape (n_rows,), int64
    numbers : ndarray of shape (n_rows,), int64
        Atomic number per row; ``-1`` for per-frame (averaged) rows.
    """
    frames = as_frames(frames)
    zs = species_of(frames) if species is None else parse_species(species)
    desc = make_descriptor(name, zs, r_cut, n_max, l_max, average, **kw)
    res = desc.compute(frames, n_jobs=n_jobs, progress=progress, max_memory=max_memory)
    return res.features, res.frame, res.numbers

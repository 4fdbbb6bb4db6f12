"""What every interatomic potential in ml4m provides: fit, predict, save, as_calculator."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from ase import Atoms

from ml4m.data.frames import Dataset, Frame

__all__ = ["Prediction", "Potential", "as_frames", "descriptor_to_dict", "descriptor_from_dict"]


def descriptor_to_dict(descriptor) -> dict[str, Any]:
    """The JSON record of a descriptor (its ``settings()``, which names its family)."""
    return dict(descriptor.settings())


def descriptor_from_dict(record: dict[str, Any]):
    """Rebuild a descriptor from :func:`descriptor_to_dict`'s record."""
    from ml4m.descriptors import make_descriptor
    from ml4m.errors import ConfigError

    record = dict(record)
    try:
        name = record.pop("descriptor")
    except KeyError:
        raise ConfigError("descriptor record has no 'descriptor' family name") from None
    return make_descriptor(name, **record)


def as_frames(frames: Sequence[Frame | Atoms] | Dataset | Frame | Atoms) -> list[Frame]:
    """A list of :class:`Frame` from frames, ASE atoms, a dataset or a single structure."""
    if isinstance(frames, (Frame, Atoms)):
        frames = [frames]
    return [f if isinstance(f, Frame) else Frame.from_atoms(f) for f in frames]


@dataclass
class Prediction:
    """Predicted labels of a batch of frames, in ASE units.

    Attributes
    ----------
    energy : ndarray of shape (n_frames,), eV
    forces : ndarray of shape (n_atoms_total, 3), eV/Angstrom
    stress : ndarray of shape (n_frames, 6), eV/Angstrom^3 (Voigt, ASE sign); NaN rows
        for frames that are not fully periodic.
    offsets : ndarray of shape (n_frames + 1,)
        Atom ``offsets[k]:offsets[k+1]`` belong to frame ``k``.
    energy_sigma : ndarray of shape (n_frames,), eV, optional
        Predictive standard deviation of the energy.
    forces_sigma : ndarray of shape (n_atoms_total, 3), eV/Angstrom, optional
        Predictive standard deviation of each force component.
    """

    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray
    offsets: np.ndarray
    energy_sigma: np.ndarray | None = None
    forces_sigma: np.ndarray | None = None

    def frame(self, k: int) -> dict[str, Any]:
        """Results of frame ``k`` as an ASE-style dict."""
        a, b = self.offsets[k], self.offsets[k + 1]
        out: dict[str, Any] = {"energy": float(self.energy[k]), "forces": self.forces[a:b]}
        if np.isfinite(self.stress[k]).all():
            out["stress"] = self.stress[k]
        if self.energy_sigma is not None:
            out["energy_sigma"] = float(self.energy_sigma[k])
        if self.forces_sigma is not None:
            out["forces_sigma"] = self.forces_sigma[a:b]
        return out


class Potential(ABC):
    """Base class of interatomic potentials (energy, forces, stress, uncertainty).

    Subclasses implement :meth:`fit`, :meth:`predict`, :meth:`get_state` and
    :meth:`from_state`; saving, loading and the ASE calculator come from here.
    """

    kind: ClassVar[str] = "potential"
    #: whether :meth:`predict` can return ``energy_sigma``/``forces_sigma``
    has_uncertainty: ClassVar[bool] = False

    @abstractmethod
    def fit(self, train: Dataset, valid: Dataset | None = None) -> Potential:
        """Fit to labelled frames; returns ``self``."""

    @abstractmethod
    def predict(self, frames, uncertainty: bool = False) -> Prediction:
        """Energies, forces and stresses (and their sigma if ``uncertainty``)."""

    @abstractmethod
    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-serialisable parameters and numeric arrays that define the fitted model."""

    @classmethod
    @abstractmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Potential:
        """Rebuild a fitted model from :meth:`get_state`'s output."""

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model to one ``.ml4m`` file (arrays + JSON; see ml4m.models.serialization)."""
        from ml4m.models.serialization import save_model_file

        params, arrays = self.get_state()
        return save_model_file(path, self.kind, params, arrays)

    def as_calculator(self, uncertainty: bool = False):
        """An ASE calculator backed by this model (:class:`ml4m.models.ML4MCalculator`).

        Parameters
        ----------
        uncertainty : bool, default=False
            Compute ``energy_sigma`` and ``forces_sigma`` on every evaluation (off by
            default: several times the cost of energy and forces; a sigma asked for by
            name, ``calc.get_property("forces_sigma", atoms)``, is computed either way).
        """
        from ml4m.models.calculator import ML4MCalculator

        return ML4MCalculator(self, uncertainty=uncertainty)

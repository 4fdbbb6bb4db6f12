"""The model contract: hyperparameters (scikit-learn's way) and what every potential provides.

:class:`Estimator`: the constructor's arguments are the hyperparameters, stored verbatim;
``get_params``/``set_params``/``clone`` derive from the signature, and each class
declares how its hyperparameters are checked (``param_checks``), used alike for a
config file, a model file and a direct call. :class:`Potential`: fit, predict (energy,
forces, stress, sigmas), save, and the ASE calculator.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ml4m.data.frames import Dataset
from ml4m.descriptors.base import as_frames  # one conversion for every stage

__all__ = ["Estimator", "Prediction", "Potential", "as_frames"]


class Estimator:
    """Hyperparameters as constructor arguments, stored verbatim under their own names.

    ``param_checks`` maps a hyperparameter to ``check(name, value, **where)`` (the
    :mod:`ml4m.validation` signature); subclasses extend their parent's table.
    """

    #: hyperparameter -> check of its type and range (see :mod:`ml4m.validation`)
    param_checks: ClassVar[dict[str, Callable[..., Any]]] = {}

    @classmethod
    def param_names(cls) -> list[str]:
        """The constructor's named arguments, in order; a constructor that passes
        ``**kwargs`` on adds its parent's."""
        names: list[str] = []
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            params = inspect.signature(init).parameters.values()
            names += [p.name for p in params if p.name != "self" and p.name not in names
                      and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                break
        return names

    def get_params(self) -> dict[str, Any]:
        """The hyperparameters, ``{name: value}`` (what the constructor was given)."""
        return {name: getattr(self, name) for name in self.param_names()}

    def set_params(self, **params: Any) -> Estimator:
        """Set hyperparameters by name (checked); returns ``self``."""
        for name, value in self.check_params(params).items():
            setattr(self, name, value)
        return self

    def clone(self) -> Estimator:
        """A new, unfitted model with the same hyperparameters."""
        return type(self)(**self.get_params())

    @classmethod
    def check_params(cls, params: dict[str, Any], prefix: str = "", **where: Any
                     ) -> dict[str, Any]:
        """Check hyperparameters by name: known names, each through ``param_checks``.

        Parameters
        ----------
        params : dict
            Some or all hyperparameters.
        prefix : str
            Prepended to names in messages (``"params."`` for a config's section).
        **where
            ``error``, ``source``, ``path`` (see :func:`ml4m.validation.fail`).

        Returns
        -------
        dict
            ``params`` (a shallow copy).
        """
        from ml4m.validation import check_mapping

        params = check_mapping(prefix.rstrip(".") or "parameters", params,
                               keys=cls.param_names(), **where)
        for name, value in params.items():
            check = cls.param_checks.get(name)
            if check is not None:
                check(f"{prefix}{name}", value, **where)
        return params


@dataclass(frozen=True)
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
    stress_sigma : ndarray of shape (n_frames, 6), eV/Angstrom^3, optional
        Predictive standard deviation of each stress component.
    energies : ndarray of shape (n_atoms_total,), eV, optional
        Per-atom energies (their sum per frame is ``energy``), for models that have them.
    """

    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray
    offsets: np.ndarray
    energy_sigma: np.ndarray | None = None
    forces_sigma: np.ndarray | None = None
    stress_sigma: np.ndarray | None = None
    energies: np.ndarray | None = None

    @classmethod
    def concatenate(cls, parts: Sequence[Prediction]) -> Prediction:
        """The predictions of consecutive blocks of frames as one; an optional quantity
        (a sigma, per-atom energies) only where every block has it."""
        if len(parts) == 1:
            return parts[0]
        sizes = np.concatenate([np.diff(p.offsets) for p in parts])
        joined = {}
        for field in dataclasses.fields(cls):
            if field.name == "offsets":
                continue
            values = [getattr(p, field.name) for p in parts]
            joined[field.name] = (None if any(v is None for v in values)
                                  else np.concatenate(values))
        return cls(offsets=np.concatenate([[0], np.cumsum(sizes)]), **joined)

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
        if self.stress_sigma is not None and np.isfinite(self.stress_sigma[k]).all():
            out["stress_sigma"] = self.stress_sigma[k]
        if self.energies is not None:
            out["energies"] = self.energies[a:b]
        return out

    @property
    def properties(self) -> list[str]:
        """ASE names of the results this prediction holds."""
        names = ["energy", "free_energy", "forces", "stress"]
        return names + [n for n in ("energy_sigma", "forces_sigma", "stress_sigma", "energies")
                        if getattr(self, n) is not None]


class Potential(Estimator, ABC):
    """Base class of interatomic potentials (energy, forces, stress, uncertainty).

    Subclasses implement :meth:`fit`, :meth:`predict`, :meth:`get_state` and
    :meth:`from_state`, and the properties :attr:`species` and :attr:`cutoff`;
    hyperparameters, saving, loading and the ASE calculator come from here.
    """

    kind: ClassVar[str] = "potential"
    state_version: ClassVar[int] = 1

    @property
    def has_uncertainty(self) -> bool:
        """Whether :meth:`predict` can return ``energy_sigma``/``forces_sigma``."""
        return False

    @property
    def implemented_properties(self) -> list[str]:
        """ASE names of what :meth:`predict` gives (a new list each time)."""
        names = ["energy", "free_energy", "forces", "stress"]
        return names + (["energy_sigma", "forces_sigma"] if self.has_uncertainty else [])

    @property
    @abstractmethod
    def species(self) -> np.ndarray:
        """Atomic numbers the model knows."""

    @property
    @abstractmethod
    def cutoff(self) -> float:
        """Interaction range, Angstrom: atoms farther apart do not interact."""

    @property
    def n_parameters(self) -> int:
        """Number of fitted parameters (0 before :meth:`fit`)."""
        return 0

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
        return save_model_file(path, self.kind, params, arrays, self.state_version)

    def as_calculator(self, uncertainty: bool = False):
        """An ASE calculator backed by this model (:class:`ml4m.models.ML4MCalculator`).

        Parameters
        ----------
        uncertainty : bool, default=False
            Compute ``energy_sigma`` and ``forces_sigma`` on every evaluation (off by
            default: several times the cost of energy and forces; a sigma asked for by
            name, ``calc.get_property("forces_sigma", atoms)``, is computed either way).

        Also tunes the process's allocator (:func:`ml4m.resources.tune_allocator`), as
        the command line does.
        """
        from ml4m.models.calculator import ML4MCalculator
        from ml4m.resources import tune_allocator

        tune_allocator()  # MD allocates and frees the same temporaries at every step
        return ML4MCalculator(self, uncertainty=uncertainty)

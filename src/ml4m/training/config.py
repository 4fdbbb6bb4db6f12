"""The ``ml4m fit`` configuration: one YAML file, command-line overrides, strict checks."""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any

from ml4m.errors import ConfigError

__all__ = ["FitConfig", "MODEL_CHOICES"]

#: models ``ml4m fit`` can train
MODEL_CHOICES = ("ace", "gp", "krr")


@dataclass
class FitConfig:
    """Settings of a fit (every key of the YAML file; see ``ml4m fit --help``).

    Parameters
    ----------
    model : {'ace', 'gp', 'krr'}
        Linear ACE, sparse GP potential, or kernel ridge structure-property model.
    train, valid : str
        Labelled structure files (``valid`` optional).
    output : str
        Model file to write (``.ml4m``); metrics and plots go beside it.
    keys : dict
        Label keys: ``energy``, ``forces``, ``stress`` (default: auto).
    descriptor : dict
        Descriptor settings (``r_cut``, ``n_max``, ``l_max``, ``max_order``, ...); the
        descriptor is ACE for ``ace``, SOAP for ``gp`` and MBTR for ``krr`` unless
        ``descriptor_type`` says otherwise. ACE's ``pair_r_in: auto`` starts each element
        pair's radial basis 0.25 A below its shortest distance in ``train``.
    descriptor_type : str, optional
        ``ace``, ``soap``, ``acsf`` or ``mbtr``.
    e0 : 'fit', mapping or None
        Isolated-atom energies (eV).
    sigmas : dict
        Expected errors per quantity: ``energy`` (eV/atom), ``forces`` (eV/A),
        ``stress`` (eV/A^3); 0 drops that quantity.
    params : dict
        Model-specific settings (``n_sparse``, ``zeta`` for gp; ``kernel`` for krr).
    target : str
        For ``krr``: ``energy_per_atom`` or an ``info`` key of the frames.
    seed : int
    max_minutes : float, optional
        Wall-time budget (neural models; linear fits are one-shot).
    device : {'cpu', 'cuda'}
    """

    model: str = "ace"
    train: str | None = None
    valid: str | None = None
    output: str = "model.ml4m"
    keys: dict[str, str] = field(default_factory=dict)
    descriptor: dict[str, Any] = field(default_factory=dict)
    descriptor_type: str | None = None
    e0: Any = "fit"
    sigmas: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    target: str = "energy_per_atom"
    seed: int = 0
    max_minutes: float | None = None
    device: str = "cpu"

    @classmethod
    def from_mapping(cls, mapping: dict[str, Any], source: str | os.PathLike = "config") -> FitConfig:
        """Build and check a config; unknown keys and wrong types are named."""
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; known keys: {sorted(names)}")
        for key, value in mapping.items():
            _check_type(source, key, value, hints[key])
        cfg = cls(**mapping)
        cfg.validate(source)
        return cfg

    def validate(self, source: str | os.PathLike = "config") -> None:
        """Raise :class:`ConfigError` naming the first invalid value."""
        if self.model not in MODEL_CHOICES:
            raise ConfigError(f"{source}: model must be one of {list(MODEL_CHOICES)}, got {self.model!r}")
        if self.train is None:
            raise ConfigError(f"{source}: 'train' (a labelled structure file) is required")
        bad = sorted(set(self.keys) - {"energy", "forces", "stress"})
        if bad:
            raise ConfigError(f"{source}: keys may name energy, forces, stress; got {bad}")
        bad = sorted(set(self.sigmas) - {"energy", "forces", "stress"})
        if bad:
            raise ConfigError(f"{source}: sigmas may name energy, forces, stress; got {bad}")
        for k, v in self.sigmas.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"{source}: sigmas.{k} must be a number >= 0, got {v!r}")
        if self.sigmas.get("energy", 1.0) == 0:
            raise ConfigError(f"{source}: sigmas.energy must be > 0 (energies are always fitted)")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"{source}: device must be 'cpu' or 'cuda', got {self.device!r}")


def _check_type(source, key: str, value: Any, hint: Any) -> None:
    origin = typing.get_origin(hint)
    allowed = typing.get_args(hint) if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) else (hint,)
    if Any in allowed:
        return
    for t in allowed:
        t0 = typing.get_origin(t) or t
        if t0 is type(None) and value is None:
            return
        if t0 is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if t0 is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if t0 in (str, dict, list) and isinstance(value, t0):
            return
    names = " or ".join(getattr(typing.get_origin(t) or t, "__name__", str(t)) for t in allowed)
    raise ConfigError(f"{source}: '{key}' must be {names}, got {type(value).__name__} {value!r}")

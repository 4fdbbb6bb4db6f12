"""The one registry of model kinds: file format, ``ml4m fit``, ``ml4m test`` and MD read it.

A model class registers itself with :func:`register_model`; everything that lists
model kinds (the ``kind`` of a ``.ml4m`` file, the choices of ``ml4m fit --model``, the
default descriptor of a fit, whether a model can drive MD) derives from here.

>>> from ml4m.models.registry import fit_choices
>>> fit_choices()  # doctest: +SKIP
('ace', 'gp', 'krr')
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from ml4m.errors import ConfigError

__all__ = ["ModelKind", "register_model", "model_kind", "model_kinds", "fit_choices",
           "MODEL_MODULES"]

#: modules whose import registers every model kind (imported on first look-up)
MODEL_MODULES = ("ml4m.models.linear", "ml4m.models.kernel", "ml4m.models.committee",
                 "ml4m.models.bpnn", "ml4m.models.mpnn", "ml4m.models.baseline")


@dataclass(frozen=True)
class ModelKind:
    """One registered kind of model.

    Attributes
    ----------
    name : str
        The ``kind`` written in model files (``linear_ace``).
    cls : type
        The class; ``cls.from_state`` rebuilds a saved model.
    fit_name : str or None
        The name ``ml4m fit --model`` knows it by (``ace``), None if it is not fitted
        from the command line on its own.
    descriptor : str or None
        The descriptor family ``ml4m fit`` builds for it unless told otherwise.
    state_version : int
        Version of the kind's saved state; a file of a newer version is refused.
    """

    name: str
    cls: type
    fit_name: str | None
    descriptor: str | None
    state_version: int

    @property
    def potential(self) -> bool:
        """Whether the model predicts energies and forces (can drive MD)."""
        from ml4m.models.base import Potential

        return issubclass(self.cls, Potential)


_KINDS: dict[str, ModelKind] = {}


def register_model(kind: str, *, fit_name: str | None = None, descriptor: str | None = None,
                   state_version: int = 1) -> Callable[[type], type]:
    """Class decorator registering a model kind (see :class:`ModelKind`).

    Sets ``cls.kind`` and ``cls.state_version``.
    """

    def wrap(cls: type) -> type:
        _KINDS[kind] = ModelKind(kind, cls, fit_name, descriptor, state_version)
        cls.kind = kind
        cls.state_version = state_version
        return cls

    return wrap


def _import_all() -> None:
    for module in MODEL_MODULES:
        importlib.import_module(module)


def model_kinds() -> list[ModelKind]:
    """Every registered kind, in registration order."""
    _import_all()
    return list(_KINDS.values())


def model_kind(name: str) -> ModelKind:
    """The kind registered as ``name`` (file kind) or fitted as ``name`` (``ml4m fit``).

    Raises
    ------
    ConfigError
        No such kind; the message lists the known ones.
    """
    for kind in model_kinds():
        if name in (kind.name, kind.fit_name):
            return kind
    raise ConfigError(f"unknown model kind {name!r}; known: {sorted(_KINDS)}, fitted by "
                      f"ml4m fit as {list(fit_choices())}")


def fit_choices() -> tuple[str, ...]:
    """The values of ``ml4m fit --model``."""
    return tuple(k.fit_name for k in model_kinds() if k.fit_name)

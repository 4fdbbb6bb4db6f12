"""ml4m: machine learning for materials.

From labelled atomic structures to descriptors, data-manifold analysis, fitted
interatomic potentials and molecular dynamics, in one pipeline::

    frames -> neighbour lists -> descriptors -> models -> ASE calculator

Each stage is a subpackage (``ml4m.data``, ``ml4m.descriptors``, ``ml4m.analysis``,
``ml4m.models``, ``ml4m.training``, ``ml4m.md``) and the command line is ``ml4m``.
Importing this package has no side effects.
"""

from importlib.metadata import PackageNotFoundError, version

from ml4m.errors import ConfigError, DataError, ML4MError, NotFittedError

try:
    __version__ = version("ml4m")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "ML4MError", "DataError", "ConfigError", "NotFittedError", "load"]


def load(path):
    """Load a model saved by ``model.save(path)`` (a ``.ml4m`` file; no code is executed).

    Parameters
    ----------
    path : str or PathLike
        The model file.

    Returns
    -------
    model
        The fitted model; ``model.as_calculator()`` gives an ASE calculator.
    """
    from ml4m.models.serialization import load as _load

    return _load(path)

"""Input checks shared by the analysis estimators (errors name parameter and value)."""

from __future__ import annotations

import numbers
from os import PathLike

import numpy as np

from ml4m.errors import ConfigError, DataError

__all__ = ["check_features", "check_int", "check_float", "check_choice", "check_vector",
           "check_kstar"]


def check_features(
    X, *, min_rows: int = 2, path: str | PathLike | None = None, row_offset: int = 0
) -> np.ndarray:
    """Validate a feature table; return it as a C-contiguous float64 array.

    Raises :class:`DataError` (naming ``path`` and the first bad row) for a non-2-D
    array, non-numeric or non-finite values, too few rows, and constant data.
    """
    try:
        A = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"features are not numeric ({exc})", path) from None
    if A.ndim != 2:
        raise DataError(
            f"features must be a 2-D table (points x features), got an array of shape {A.shape}",
            path,
        )
    if A.shape[0] == 0 or A.shape[1] == 0:
        raise DataError(f"features are empty (shape {A.shape})", path)
    finite = np.isfinite(A)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(1))[0])
        col = int(np.flatnonzero(~finite[row])[0])
        raise DataError(
            f"non-finite value {A[row, col]} in column {col}", path, row + row_offset
        )
    if A.shape[0] < min_rows:
        raise DataError(
            f"need at least {min_rows} points (maxk + 1), got {A.shape[0]}", path
        )
    if np.all(A == A[0]):
        raise DataError("all points are identical (constant data): nothing to analyse", path)
    return np.ascontiguousarray(A)


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """An integer parameter within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def check_float(
    name: str, value, low: float | None = None, high: float | None = None,
    low_open: bool = False,
) -> float:
    """A finite real parameter within [low, high] (``(low, high]`` with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if low is not None and (value < low or (low_open and value == low)):
        raise ConfigError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(f"{name} must be <= {high}, got {value}")
    return value


def check_choice(name: str, value, choices) -> str:
    """One of a fixed set of strings."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_vector(name: str, value, n: int, *, finite: bool = True) -> np.ndarray:
    """A float64 vector of length ``n`` (e.g. a log-density per point)."""
    v = np.asarray(value, dtype=np.float64)
    if v.shape != (n,):
        raise DataError(f"{name} must have shape ({n},), got {v.shape}")
    if finite and not np.all(np.isfinite(v)):
        raise DataError(f"{name} contains non-finite values")
    return v


def check_kstar(k_star, n: int, maxk: int) -> np.ndarray:
    """Neighbourhood sizes: ``n`` integers in ``[1, maxk]``, as int64."""
    k = np.asarray(k_star)
    if k.shape != (n,) or not np.issubdtype(k.dtype, np.integer):
        raise DataError(f"k_star must be an integer array of shape ({n},), got {k.shape} {k.dtype}")
    if k.min() < 1 or k.max() > maxk:
        raise DataError(f"k_star values must lie in [1, {maxk}], got [{k.min()}, {k.max()}]")
    return k.astype(np.int64)

"""Input checks shared by the analysis estimators (errors name parameter and value).

The scalar checks are those of :mod:`ml4m.validation` (re-exported here); the feature
table, vector and neighbourhood-size checks are built on its :func:`check_array`.
"""

from __future__ import annotations

from os import PathLike

import numpy as np

from ml4m.errors import DataError
from ml4m.validation import check_array, check_choice, check_float, check_int

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


def check_vector(name: str, value, n: int, *, finite: bool = True) -> np.ndarray:
    """A float64 vector of length ``n`` (e.g. a log-density per point)."""
    return check_array(name, value, shape=(n,), finite=finite, dtype=np.float64)


def check_kstar(k_star, n: int, maxk: int) -> np.ndarray:
    """Neighbourhood sizes: ``n`` integers in ``[1, maxk]``, as int64."""
    k = check_array("k_star", k_star, shape=(n,), kinds="iu")
    if k.min() < 1 or k.max() > maxk:
        raise DataError(f"k_star values must lie in [1, {maxk}], got [{k.min()}, {k.max()}]")
    return k.astype(np.int64)

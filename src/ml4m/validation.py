"""The one validation layer: checks at the boundary of every public function.

Each check returns the value in its canonical type or raises an ml4m error whose
message names the parameter (or data key) in the user's terms, what was expected and
what was received:

* parameters and settings (function arguments, YAML keys, command-line options) raise
  :class:`~ml4m.errors.ConfigError`;
* data read from a file (structure files, model files, stores) raise
  :class:`~ml4m.errors.DataError` naming the file, and the frame or key.

The checks take ``error=DataError`` with ``path``/``frame`` to report data problems;
the default is a :class:`ConfigError` about a parameter. ``source`` (a config file
name) prefixes parameter messages.

Examples
--------
>>> check_float("r_cut", 5, low=0, low_open=True)
5.0
>>> check_int("n_max", 8, low=1, high=24)
8
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ml4m.errors import ConfigError, DataError, ML4MError

__all__ = [
    "optional",
    "int_from",
    "float_from",
    "one_of",
    "each",
    "check_int",
    "check_float",
    "check_choice",
    "check_bool",
    "check_str",
    "check_mapping",
    "check_array",
    "check_size_against_file",
    "fail",
    "describe",
]

_KINDS = {"f": "float", "i": "integer", "u": "unsigned integer", "b": "bool", "c": "complex"}


def describe(value: Any, limit: int = 60) -> str:
    """A short description of ``value`` for messages: its repr (cut) and its type."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if isinstance(value, (bool, int, float, str)) or value is None:
        return text
    return f"{text} ({type(value).__name__})"


def fail(
    message: str,
    *,
    error: type[ML4MError] = ConfigError,
    source: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
    frame: int | None = None,
) -> ML4MError:
    """Build (not raise) the error for ``message``.

    Parameters
    ----------
    message : str
        What is wrong, naming the parameter or key.
    error : type, default=ConfigError
        :class:`ConfigError` (a parameter) or :class:`DataError` (data from a file).
    source : str or PathLike, optional
        A config file name prefixed to a :class:`ConfigError` message.
    path, frame : optional
        File and frame of a :class:`DataError`.
    """
    if issubclass(error, DataError):
        return error(message, path if path is not None else source, frame)
    prefix = f"{source}: " if source is not None else ""
    return error(prefix + message)


def check_int(
    name: str,
    value: Any,
    low: int | None = None,
    high: int | None = None,
    **where: Any,
) -> int:
    """An integer within ``[low, high]`` (bools and floats are refused).

    Parameters
    ----------
    name : str
        The parameter as the user knows it (``"n_max"``, ``"sigmas.energy"``).
    value : Any
        What was received.
    low, high : int, optional
        Inclusive bounds.
    **where
        ``error``, ``source``, ``path``, ``frame`` (see :func:`fail`).

    Returns
    -------
    int
    """
    span = ""
    if low is not None or high is not None:
        span = f" in [{'-inf' if low is None else low}, {'inf' if high is None else high}]"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise fail(f"{name} must be an integer{span}, got {describe(value)}", **where)
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise fail(f"{name} must be an integer{span}, got {value}", **where)
    return value


def check_float(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    **where: Any,
) -> float:
    """A finite real number within ``[low, high]`` (open ends with ``low_open``/``high_open``).

    Integers are accepted; NaN, infinities, bools and strings are refused. A string that
    spells a number gets a hint: YAML 1.1 reads ``1e-3`` (no dot) as text.

    Parameters
    ----------
    name : str
        The parameter as the user knows it.
    value : Any
        What was received.
    low, high : float, optional
        Bounds.
    low_open, high_open : bool, default=False
        Exclude the bound itself (``> low`` instead of ``>= low``).
    **where
        ``error``, ``source``, ``path``, ``frame`` (see :func:`fail`).

    Returns
    -------
    float
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        hint = ""
        if isinstance(value, str):
            try:
                float(value)
                hint = " (a string: YAML reads 1e-3 without a dot as text; write 1.0e-3)"
            except ValueError:
                pass
        raise fail(f"{name} must be a finite number, got {describe(value)}{hint}", **where)
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        number = float("inf")
    if not np.isfinite(number):
        raise fail(f"{name} must be a finite number, got {describe(value)}", **where)
    if low is not None and (number < low or (low_open and number == low)):
        raise fail(f"{name} must be {'>' if low_open else '>='} {low}, got {number}", **where)
    if high is not None and (number > high or (high_open and number == high)):
        raise fail(f"{name} must be {'<' if high_open else '<='} {high}, got {number}", **where)
    return number


def check_choice(name: str, value: Any, choices: Iterable[Any], **where: Any) -> Any:
    """One of a fixed set of values (compared with ``==``, hashing not required)."""
    choices = tuple(choices)
    try:
        ok = any(
            c is value
            or (type(value) is type(c) or isinstance(value, str) and isinstance(c, str))
            and bool(value == c)
            for c in choices
        )
    except (TypeError, ValueError):  # e.g. an array compared with a string
        ok = False
    if not ok:
        raise fail(f"{name} must be one of {choices}, got {describe(value)}", **where)
    return value


def check_bool(name: str, value: Any, **where: Any) -> bool:
    """A boolean (``True``/``False``; numbers and strings are refused)."""
    if not isinstance(value, (bool, np.bool_)):
        raise fail(f"{name} must be true or false, got {describe(value)}", **where)
    return bool(value)


def check_str(name: str, value: Any, *, empty: bool = False, **where: Any) -> str:
    """A string (non-empty unless ``empty``)."""
    if not isinstance(value, str) or (not empty and not value):
        raise fail(f"{name} must be a non-empty string, got {describe(value)}", **where)
    return value


def check_mapping(
    name: str,
    value: Any,
    keys: Iterable[str] | None = None,
    required: Iterable[str] = (),
    **where: Any,
) -> dict[str, Any]:
    """A mapping with string keys, only ``keys`` (if given), and every ``required`` key.

    Parameters
    ----------
    name : str
        The mapping as the user knows it (``"sigmas"``, ``"meta.json"``).
    value : Any
        What was received.
    keys : iterable of str, optional
        The allowed keys; others are named in the error.
    required : iterable of str, default=()
        Keys that must be present.
    **where
        ``error``, ``source``, ``path``, ``frame`` (see :func:`fail`).

    Returns
    -------
    dict
        A shallow copy.
    """
    if not isinstance(value, Mapping):
        raise fail(f"{name} must be a mapping (key: value), got {describe(value)}", **where)
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise fail(f"{name} keys must be strings, got {describe(bad[0])}", **where)
    if keys is not None:
        allowed = list(keys)
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise fail(f"{name} has unknown key(s) {unknown}; known: {sorted(allowed)}", **where)
    missing = [k for k in required if k not in value]
    if missing:
        raise fail(f"{name} lacks required key(s) {missing}", **where)
    return dict(value)


def check_array(
    name: str,
    value: Any,
    *,
    shape: Sequence[int | None] | None = None,
    ndim: int | None = None,
    kinds: str = "fiub",
    finite: bool = True,
    dtype: Any = None,
    error: type[ML4MError] = DataError,
    **where: Any,
) -> np.ndarray:
    """A numeric array of the expected shape and dtype kind, finite by default.

    Parameters
    ----------
    name : str
        The array as the user knows it (``"forces"``, ``"coef"``).
    value : array_like
        What was received (lists are converted; text raises).
    shape : sequence of int or None, optional
        Expected shape; ``None`` entries match any length.
    ndim : int, optional
        Expected number of dimensions (when ``shape`` is not given).
    kinds : str, default='fiub'
        Allowed numpy dtype kinds (``f`` float, ``i``/``u`` integer, ``b`` bool).
    finite : bool, default=True
        Refuse NaN and infinities (the first offending index is named).
    dtype : numpy dtype, optional
        Convert to this dtype after the checks.
    error : type, default=DataError
        The error raised; :class:`ConfigError` for array parameters.
    **where
        ``source``, ``path``, ``frame`` (see :func:`fail`).

    Returns
    -------
    ndarray
    """
    try:
        a = np.asarray(value)
        if a.dtype.kind in "OSU":  # ragged, objects or text: try numbers
            a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise fail(f"{name} must be numeric, got {describe(value)} ({exc})",
                   error=error, **where) from None
    if a.dtype.kind not in kinds:
        wanted = " or ".join(dict.fromkeys(_KINDS.get(k, k) for k in kinds))
        raise fail(f"{name} must hold {wanted} values, got dtype {a.dtype}", error=error, **where)
    if shape is not None:
        ok = a.ndim == len(shape) and all(s is None or s == n for s, n in zip(shape, a.shape))
        if not ok:
            want = "(" + ", ".join("any" if s is None else str(s) for s in shape)
            want += ",)" if len(shape) == 1 else ")"
            raise fail(f"{name} must have shape {want}, got {a.shape}", error=error, **where)
    elif ndim is not None and a.ndim != ndim:
        raise fail(f"{name} must be {ndim}-dimensional, got shape {a.shape}", error=error, **where)
    if finite and a.dtype.kind in "fc" and not np.isfinite(a).all():
        bad = np.unravel_index(int(np.argmax(~np.isfinite(a))), a.shape) if a.ndim else ()
        at = f" at index {tuple(int(i) for i in bad)}" if a.ndim else ""
        raise fail(f"{name} contains a non-finite value ({a[bad]}){at}", error=error, **where)
    return a.astype(dtype, copy=False) if dtype is not None else a


def check_size_against_file(
    name: str,
    n_items: int,
    item_bytes: int,
    available: int,
    *,
    error: type[ML4MError] = DataError,
    **where: Any,
) -> int:
    """Refuse a declared size that the bytes on disk cannot hold, before allocating it.

    Parameters
    ----------
    name : str
        What is declared (``"atom count"``, ``"array 'coef'"``).
    n_items : int
        Declared number of items.
    item_bytes : int
        Smallest number of bytes one item takes in the file.
    available : int
        Bytes left in the file (or the bound allowed).
    error : type, default=DataError
        The error raised.
    **where
        ``source``, ``path``, ``frame`` (see :func:`fail`).

    Returns
    -------
    int
        ``n_items``.
    """
    n_items = check_int(name, n_items, low=0, error=error, **where)
    if n_items * item_bytes > available:
        raise fail(
            f"{name} {n_items} needs at least {n_items * item_bytes} bytes, but only "
            f"{available} remain (corrupted or truncated file?)",
            error=error,
            **where,
        )
    return n_items


# ---- checks as values: tables of ``name -> check`` (e.g. a model's ``param_checks``) -----
Check = Callable[..., Any]


def optional(check: Check) -> Check:
    """``check`` that also accepts None (the default of an optional setting)."""
    return lambda name, value, **where: None if value is None else check(name, value, **where)


def int_from(low: int, high: int | None = None) -> Check:
    """A check of an integer in ``[low, high]``."""
    return lambda name, value, **where: check_int(name, value, low=low, high=high, **where)


def float_from(low: float, low_open: bool = False) -> Check:
    """A check of a finite number ``>= low`` (``> low`` with ``low_open``)."""
    return lambda name, value, **where: check_float(name, value, low=low, low_open=low_open,
                                                    **where)


def one_of(*choices: Any) -> Check:
    """A check of one of ``choices``."""
    return lambda name, value, **where: check_choice(name, value, choices, **where)


def each(check: Check, allow_scalar: bool = False) -> Check:
    """A check of a non-empty list (or tuple) whose items pass ``check``; with
    ``allow_scalar`` a single item is accepted too."""

    def run(name: str, value: Any, **where: Any) -> Any:
        if allow_scalar and not isinstance(value, (list, tuple)):
            return check(name, value, **where)
        if not isinstance(value, (list, tuple)) or not value:
            raise fail(f"{name} must be a non-empty list, got {describe(value)}", **where)
        return [check(f"{name}[{k}]", v, **where) for k, v in enumerate(value)]

    return run

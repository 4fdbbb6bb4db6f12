"""Reading YAML configuration files with clear errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ml4m.errors import ConfigError

__all__ = ["load_yaml"]


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Load a YAML mapping (safe loader: no code runs).

    Parameters
    ----------
    path : str or PathLike
        The file.

    Returns
    -------
    dict
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}: invalid YAML{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of settings, got {type(data).__name__}")
    return data

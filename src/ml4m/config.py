"""Reading YAML configuration files with clear errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ml4m.errors import ConfigError

__all__ = ["load_yaml", "MAX_CONFIG_BYTES"]

#: largest config file read, bytes (settings are a few kB; anything near this is not one)
MAX_CONFIG_BYTES = 1 << 20


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Load a YAML mapping of settings (safe loader: no code runs).

    Parameters
    ----------
    path : str or PathLike
        The file.

    Returns
    -------
    dict
        The settings; an empty file gives ``{}``.

    Raises
    ------
    ConfigError
        Naming the file: missing, larger than :data:`MAX_CONFIG_BYTES`, not UTF-8,
        invalid YAML (with its line and column), nested too deeply, not a mapping, or a
        mapping (at any depth) with a key that is not a string (the key is named).
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: {p.stat().st_size} bytes is too large for a config file "
                          f"(at most {MAX_CONFIG_BYTES})")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from exc
    except RecursionError as exc:
        raise ConfigError(f"{p}: invalid YAML: nested too deeply") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}: invalid YAML{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of settings, got {type(data).__name__}")
    _check_keys(data, "", p, set())
    return data


def _check_keys(value: Any, where: str, path: Path, seen: set[int]) -> None:
    """Every mapping key at any depth is a string (aliases are visited once)."""
    if id(value) in seen or not isinstance(value, (dict, list)):
        return
    seen.add(id(value))
    if isinstance(value, list):
        for k, item in enumerate(value):
            _check_keys(item, f"{where}[{k}]", path, seen)
        return
    for key, item in value.items():
        if not isinstance(key, str):
            at = f" in '{where}'" if where else ""
            raise ConfigError(f"{path}: key {key!r}{at} must be a string (a setting name), "
                              f"got {type(key).__name__}")
        _check_keys(item, f"{where}.{key}" if where else key, path, seen)

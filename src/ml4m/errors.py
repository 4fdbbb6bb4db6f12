"""The ml4m exception hierarchy.

Every error a user can cause derives from :class:`ML4MError`; the command line turns
it into one message on stderr and exit code 2.
"""

from __future__ import annotations

from os import PathLike

__all__ = ["ML4MError", "DataError", "ConfigError", "NotFittedError", "SimulationError",
           "TrainingError"]


class ML4MError(Exception):
    """Base class of every error ml4m raises on purpose."""


class DataError(ML4MError, ValueError):
    """Raised when input data is unreadable or invalid.

    The message names the file, the frame (or row) and the problem.

    Parameters
    ----------
    problem : str
        What is wrong, e.g. ``"forces contain NaN"``.
    path : str or PathLike, optional
        The file the data came from.
    frame : int, optional
        0-based index of the offending frame (or row) in that file.
    """

    def __init__(
        self,
        problem: str,
        path: str | PathLike | None = None,
        frame: int | None = None,
    ) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        self.frame = frame
        where = []
        if self.path is not None:
            where.append(self.path)
        if frame is not None:
            where.append(f"frame {frame}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {problem}" if prefix else problem)


class ConfigError(ML4MError, ValueError):
    """Raised for an invalid parameter or configuration value (names the key)."""


class NotFittedError(ML4MError, ValueError, AttributeError):
    """Raised when a model is used before ``fit`` was called."""


class SimulationError(ML4MError, RuntimeError):
    """Raised when a simulation leaves its valid range (non-finite energy or forces, atoms
    closer than allowed, runaway temperature); the message names the step and the value."""


class TrainingError(ML4MError, RuntimeError):
    """Raised when training cannot go on (a non-finite loss or gradient); the message names
    the epoch and step, the value, and the checkpoint that keeps the last good state."""

"""Trajectories written frame by frame: a killed run leaves every frame written so far.

Frames are appended to an extxyz file and flushed as they are produced. A new file is
written in place; an existing file is never touched until the new run is complete: the
frames go to a visible sibling (``md.extxyz`` -> ``md.partial.extxyz``) that replaces it
at the end.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from ase import Atoms

from ml4m.errors import ConfigError

__all__ = ["TrajectoryStream", "partial_path", "snapshot"]


def partial_path(path: str | os.PathLike) -> Path:
    """The sibling a run streams into while ``path`` holds an earlier file.

    ``md.extxyz`` -> ``md.partial.extxyz``: visible, and readable by ASE by its extension.
    """
    path = Path(path)
    return path.with_name(f"{path.stem}.partial{path.suffix or '.extxyz'}")


def snapshot(atoms: Atoms, info: dict | None = None, arrays: dict[str, np.ndarray] | None = None,
             with_results: bool = True) -> Atoms:
    """A copy of ``atoms`` holding its calculator's energy (eV) and forces (eV/Angstrom).

    Parameters
    ----------
    atoms : ase.Atoms
        Structure whose calculator has results for its current positions.
    info, arrays : dict, optional
        Extra per-frame values and per-atom arrays stored with the frame.
    with_results : bool, default=True
        Store the energy and forces (off for a frame whose results are not finite).
    """
    from ase.calculators.singlepoint import SinglePointCalculator

    snap = atoms.copy()
    snap.info.update(info or {})
    for key, value in (arrays or {}).items():
        snap.arrays[key] = np.asarray(value)
    if with_results:
        snap.calc = SinglePointCalculator(snap, energy=atoms.get_potential_energy(),
                                          forces=atoms.get_forces())
    return snap


class TrajectoryStream:
    """Append extxyz frames to ``path`` as they are produced.

    Each frame reaches the operating system whole as soon as it is written, so killing
    the process (even with SIGKILL) leaves every frame written so far, readable by ASE. If ``path``
    exists, frames go to :func:`partial_path` instead, and :meth:`close` with
    ``complete=True`` moves that file onto ``path``; otherwise the earlier file is left
    as it was and the partial file stays beside it.

    Parameters
    ----------
    path : str or PathLike
        The trajectory file (extxyz). Its folder is created if missing.
    overwrite : bool, default=False
        Allow writing over an existing partial file; without it one is refused
        (:class:`~ml4m.errors.ConfigError`): it holds an interrupted run's frames.
    """

    def __init__(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.stream_path = partial_path(self.path) if self.path.exists() else self.path
        if self.stream_path != self.path and self.stream_path.exists() and not overwrite:
            # a killed run's frames, or a file of the user's: written over only when asked
            raise ConfigError(f"{self.stream_path} exists (frames of an interrupted run?); move "
                              f"it, or pass --overwrite to write {self.path} again")
        self.n_frames = 0
        self._fh: io.FileIO | None = None

    def write(self, frame: Atoms) -> None:
        """Append one frame: formatted whole first, then handed to the operating system in
        one unbuffered write, so a kill never leaves half a frame."""
        import ase.io

        text = io.StringIO()
        ase.io.write(text, frame, format="extxyz")
        data = memoryview(text.getvalue().encode())
        if self._fh is None:
            self.stream_path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.stream_path, "wb", buffering=0)  # noqa: SIM115 (closed by close())
        while data:
            data = data[self._fh.write(data):]
        self.n_frames += 1

    def close(self, complete: bool) -> Path:
        """Close the file; where the frames are (``path`` unless kept aside).

        Parameters
        ----------
        complete : bool
            Whether the frames written are the run's result (finished, or stopped on
            purpose): then they replace an earlier ``path``.
        """
        if self._fh is not None:
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
        if complete and self.stream_path != self.path and self.stream_path.exists():
            os.replace(self.stream_path, self.path)
            self.stream_path = self.path
        return self.stream_path

"""The embedded default data set: small fcc Cu labelled by ASE's EMT (offline)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["default_dataset_path", "default_dataset", "DEFAULT_GENERATE_SETTINGS"]

#: settings of ``ml4m data generate`` that made the embedded file (see README.md here)
DEFAULT_GENERATE_SETTINGS: dict = {
    "system": "Cu",
    "calculator": "emt",
    "supercells": [2, 3],
    "temperatures": [300.0, 600.0, 1200.0],
    "trajectories": 2,
    "frames_per_trajectory": 8,
    "sample_every": 40,
    "equilibration_steps": 200,
    "timestep_fs": 2.0,
    "n_strained": 6,
    "max_strain": 0.03,
    "vacancies": True,
    "surface": True,
    "seed": 2022,
}


def default_dataset_path() -> Path:
    """Path of the embedded Cu/EMT extxyz file shipped inside the package."""
    return Path(str(files("ml4m.data.default").joinpath("cu_emt_small.extxyz")))


def default_dataset():
    """The embedded Cu/EMT data set, read and validated (a :class:`~ml4m.data.Dataset`)."""
    from ml4m.data.read import read_dataset

    return read_dataset(default_dataset_path())

"""Unit conversions used across ml4m (ASE units: eV, Angstrom, fs)."""

from ase import units as _ase_units

__all__ = ["EV_PER_A3_TO_GPA", "GPA_TO_EV_PER_A3"]

#: multiply a stress in eV/Angstrom^3 by this to get GPa
EV_PER_A3_TO_GPA: float = 1.0 / _ase_units.GPa
#: multiply a stress in GPa by this to get eV/Angstrom^3
GPA_TO_EV_PER_A3: float = _ase_units.GPa

"""Finding reference labels on ASE atoms under configurable keys.

ASE's extxyz reader moves keys named like calculator outputs (``energy``, ``forces``,
``stress``) into a SinglePointCalculator, while prefixed keys (``REF_energy``,
``DFT_forces``) stay in ``atoms.info`` / ``atoms.arrays``. :class:`LabelKeys` looks in
both places, in a fixed order, so either convention reads the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms

__all__ = ["LabelKeys", "DEFAULT_PREFIXES"]

#: prefixes tried, in order, when a label key is not given explicitly
DEFAULT_PREFIXES: tuple[str, ...] = ("", "REF_", "DFT_", "ref_", "dft_")


@dataclass(frozen=True)
class LabelKeys:
    """Where to find energy, forces and stress (or virial) on ASE atoms.

    Parameters
    ----------
    energy, forces, stress, virial : str, optional
        Explicit key names. ``None`` tries ``energy``, ``REF_energy``, ``DFT_energy``,
        ... (see :data:`DEFAULT_PREFIXES`) in the calculator results, then in
        ``atoms.info`` / ``atoms.arrays``.
        A virial (eV) is converted to stress as ``-virial / volume``.
    """

    energy: str | None = None
    forces: str | None = None
    stress: str | None = None
    virial: str | None = None

    def _candidates(self, label: str) -> list[str]:
        explicit = getattr(self, label)
        if explicit is not None:
            return [explicit]
        return [p + label for p in DEFAULT_PREFIXES]

    def looked_for(self, label: str) -> str:
        """Where ``label`` is looked for, in words: ``"key 'gfn2_forces'"`` or
        ``"keys forces, REF_forces, ..."``."""
        names = self._candidates(label)
        return f"key '{names[0]}'" if len(names) == 1 else "keys " + ", ".join(names)

    @staticmethod
    def _lookup(atoms: Atoms, key: str, per_atom: bool) -> Any:
        calc = atoms.calc
        results = getattr(calc, "results", None) or {}
        if key in results:
            return results[key]
        if per_atom:
            return atoms.arrays.get(key)
        return atoms.info.get(key)

    def find(self, atoms: Atoms, label: str) -> tuple[str | None, Any]:
        """Return ``(key, value)`` of ``label`` on ``atoms``, or ``(None, None)``.

        Parameters
        ----------
        atoms : ase.Atoms
            Structure as read by ASE.
        label : {'energy', 'forces', 'stress', 'virial'}
            Which label to look for.
        """
        per_atom = label == "forces"
        for key in self._candidates(label):
            value = self._lookup(atoms, key, per_atom)
            if value is not None:
                return key, value
        return None, None

    def found(self, atoms: Atoms) -> dict[str, str]:
        """The key each label was found under on ``atoms`` (for error messages).

        Returns
        -------
        dict
            ``label -> key`` for ``energy``, ``forces``, ``stress`` and ``virial``.
        """
        out = {}
        for label in ("energy", "forces", "stress", "virial"):
            key, _ = self.find(atoms, label)
            if key is not None:
                out[label] = key
        return out

    def extract(self, atoms: Atoms) -> dict[str, Any]:
        """All labels found on ``atoms`` as raw arrays (not yet validated).

        Returns
        -------
        dict
            Keys among ``energy``, ``forces``, ``stress`` (a virial is converted);
            values as found (shapes are checked by the validator).
        """
        out: dict[str, Any] = {}
        for label in ("energy", "forces", "stress"):
            key, value = self.find(atoms, label)
            if key is not None:
                out[label] = value
        if "stress" not in out:
            key, virial = self.find(atoms, "virial")
            if key is not None:
                try:
                    virial = np.asarray(virial, dtype=float)
                except (TypeError, ValueError):
                    out["stress"] = virial  # left for the validator to reject, naming the key
                    return out
                volume = abs(atoms.get_volume()) if atoms.cell.rank == 3 else 0.0
                if volume > 0 and virial.size in (6, 9) and np.isfinite(virial).all():
                    out["stress"] = -_as_voigt(virial) / volume
                else:
                    out["stress"] = virial  # left for the validator to reject
        return out


def _as_voigt(tensor: np.ndarray) -> np.ndarray:
    """A 3x3 (or 9) tensor as Voigt (xx, yy, zz, yz, xz, xy); a 6-vector unchanged."""
    t = np.asarray(tensor, dtype=float)
    if t.size == 6:
        return t.reshape(6)
    m = t.reshape(3, 3)
    return np.array([m[0, 0], m[1, 1], m[2, 2], m[1, 2], m[0, 2], m[0, 1]])

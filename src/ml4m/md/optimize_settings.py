"""Settings of a structure optimisation (``ml4m optimize CONFIG.yaml``), strictly checked.

Example::

    structure: start.extxyz              # any ASE-readable file
    frame: 0                             # its frame (default: the last)
    reference: emt                       # or xtb, or {calculator: pkg.mod:Class, kwargs: {...}}
    dofs:
      - {type: torsion, atoms: [1, 6, 7, 8]}              # range default [-180, 180] deg
      - {type: distance, atoms: [0, 5], range: [1.0, 3.0]} # Angstrom
      - {type: site, atoms: [12, 13]}    # fractions of cell vectors a, b: [[0, 1], [0, 1]]
    fix: [0, 1, 2, 3]                    # atoms held in every relaxation
    method: bo                           # bo, random, grid
    budget: 50                           # reference calls (constrained relaxations)
    n_initial: 8                         # Latin-hypercube points before the surrogate
    acquisition: ei                      # ei (expected improvement) or lcb
    xi: 0.01                             # EI: least improvement, in std of the energies
    kappa: 2.0                           # LCB: mu - kappa sigma
    seed: 0
    relax: {fmax: 0.05, steps: 200}      # eV/A; steps 0: energy of the set geometry

Every key is checked through :mod:`ml4m.validation`; an unknown key, a value out of
range or an atom index beyond the structure raises :class:`~ml4m.errors.ConfigError`
naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ml4m.errors import ConfigError
from ml4m.md.optimize_search import ACQUISITIONS, METHODS, SearchSpace
from ml4m.md.optimize_structure import DOF_KINDS, Dof
from ml4m.validation import (
    check_choice,
    check_float,
    check_int,
    check_mapping,
    check_str,
    describe,
    fail,
)

__all__ = ["OptimizeSettings", "parse_dof"]

_DEFAULT_RANGE = {"torsion": [-180.0, 180.0], "site": [[0.0, 1.0], [0.0, 1.0]]}


def _pair(name: str, value: Any, positive: bool, **where: Any) -> tuple[float, float]:
    """``[low, high]`` with low < high (both > 0 when ``positive``)."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise fail(f"{name} must be [low, high], got {describe(value)}", **where)
    low = check_float(f"{name}[0]", value[0], low=0.0 if positive else None,
                      low_open=positive, **where)
    high = check_float(f"{name}[1]", value[1], **where)
    if high <= low:
        raise fail(f"{name} must have low < high, got {list(value)}", **where)
    return low, high


def parse_dof(k: int, entry: Any, **where: Any) -> Dof:
    """The ``k``-th entry of ``dofs``: ``{type, atoms, range}``."""
    name = f"dofs[{k}]"
    m = check_mapping(name, entry, keys=("type", "atoms", "range"), required=("type", "atoms"),
                      **where)
    kind = check_choice(f"{name}.type", m["type"], tuple(DOF_KINDS), **where)
    atoms = m["atoms"]
    n = DOF_KINDS[kind]
    if not isinstance(atoms, list) or not atoms or (n is not None and len(atoms) != n):
        count = f"{n}" if n is not None else "one or more"
        raise fail(f"{name}.atoms must be a list of {count} atom indices, got "
                   f"{describe(atoms)}", **where)
    atoms = tuple(check_int(f"{name}.atoms[{i}]", a, low=0, **where) for i, a in enumerate(atoms))
    if len(set(atoms)) != len(atoms):
        raise fail(f"{name}.atoms must be distinct, got {list(atoms)}", **where)
    if "range" not in m and kind not in _DEFAULT_RANGE:
        raise fail(f"{name}.range is required for a {kind}: [low, high] in Angstrom", **where)
    rng = m.get("range", _DEFAULT_RANGE.get(kind))
    if kind == "site":
        if not isinstance(rng, list) or len(rng) != 2:
            raise fail(f"{name}.range must be [[low, high], [low, high]] (fractions of cell "
                       f"vectors a and b), got {describe(rng)}", **where)
        pairs = [_pair(f"{name}.range[{i}]", r, False, **where) for i, r in enumerate(rng)]
    else:
        pairs = [_pair(f"{name}.range", rng, kind == "distance", **where)]
        if kind == "torsion" and pairs[0][1] - pairs[0][0] > 360.0:
            raise fail(f"{name}.range spans more than 360 deg: {list(rng)}", **where)
    return Dof(kind, atoms, tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))


@dataclass(frozen=True)
class OptimizeSettings:
    """Everything that decides the result of a search (see the module example).

    Attributes
    ----------
    structure : str
    frame : int
        Index of the frame read (negative from the end).
    dofs : tuple of Dof
    fix : tuple of int
        Atoms held in every relaxation.
    reference : str
        Calculator name or import path (:func:`ml4m.data.make_calculator`; ``xtb`` and
        ``gfn2`` name tblite's GFN2-xTB).
    reference_kwargs : dict
    method : {'bo', 'random', 'grid'}
    budget : int
        Reference calls (each a constrained relaxation).
    n_initial : int
        Calls of the initial Latin-hypercube design (``bo``).
    acquisition : {'ei', 'lcb'}
    xi, kappa : float
        See :func:`~ml4m.md.optimize_search.propose`.
    seed : int
    fmax : float
        Force threshold of the relaxations, eV/Angstrom.
    relax_steps : int
        Optimiser steps at most per relaxation (0: the energy of the set geometry).
    """

    structure: str
    dofs: tuple[Dof, ...]
    frame: int = -1
    fix: tuple[int, ...] = ()
    reference: str = "emt"
    reference_kwargs: dict[str, Any] = field(default_factory=dict)
    method: str = "bo"
    budget: int = 50
    n_initial: int = 8
    acquisition: str = "ei"
    xi: float = 0.01
    kappa: float = 2.0
    seed: int = 0
    fmax: float = 0.05
    relax_steps: int = 200

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, **where: Any) -> None:
        """Raise :class:`ConfigError` naming the first invalid value."""
        check_str("structure", self.structure, **where)
        check_int("frame", self.frame, **where)
        if not self.dofs or not all(isinstance(d, Dof) for d in self.dofs):
            raise fail("dofs must be a non-empty list of {type, atoms, range}", **where)
        for i, a in enumerate(self.fix):
            check_int(f"fix[{i}]", a, low=0, **where)
        check_str("reference", self.reference, **where)
        check_mapping("reference kwargs", self.reference_kwargs, **where)
        check_choice("method", self.method, METHODS, **where)
        check_int("budget", self.budget, low=1, **where)
        check_int("n_initial", self.n_initial, low=1, **where)
        check_choice("acquisition", self.acquisition, ACQUISITIONS, **where)
        check_float("xi", self.xi, low=0.0, **where)
        check_float("kappa", self.kappa, low=0.0, **where)
        check_int("seed", self.seed, low=0, **where)
        check_float("relax.fmax", self.fmax, low=0.0, low_open=True, **where)
        check_int("relax.steps", self.relax_steps, low=0, **where)

    def check_atoms(self, n_atoms: int, **where: Any) -> None:
        """Refuse an atom index beyond a structure of ``n_atoms`` atoms (key named)."""
        named = [(f"dofs[{k}].atoms[{i}]", a) for k, d in enumerate(self.dofs)
                 for i, a in enumerate(d.atoms)]
        named += [(f"fix[{i}]", a) for i, a in enumerate(self.fix)]
        for key, a in named:
            if a >= n_atoms:
                raise fail(f"{key} = {a} is not an atom of {self.structure} ({n_atoms} atoms, "
                           f"indices 0-{n_atoms - 1})", **where)

    @property
    def space(self) -> SearchSpace:
        """The box of every dimension of every degree of freedom, in order."""
        return SearchSpace(tuple(v for d in self.dofs for v in d.low),
                           tuple(v for d in self.dofs for v in d.high),
                           tuple(p for d in self.dofs for p in d.periodic))

    @property
    def labels(self) -> list[str]:
        return [name for d in self.dofs for name in d.labels]

    @classmethod
    def from_mapping(cls, mapping: dict[str, Any], source: str | os.PathLike = "config",
                     **overrides: Any) -> OptimizeSettings:
        """Settings from a config mapping (see the module example); ``overrides``
        (``method``, ``seed``, ``budget``: command-line flags) replace keys that are not
        None.

        Raises
        ------
        ConfigError
            Naming ``source`` and the key.
        """
        where = {"source": source}
        keys = ("structure", "frame", "dofs", "fix", "reference", "method", "budget",
                "n_initial", "acquisition", "xi", "kappa", "seed", "relax")
        m = check_mapping("the config", mapping, keys=keys, required=("structure", "dofs"),
                          **where)
        m.update({k: v for k, v in overrides.items() if v is not None})
        dofs = m.pop("dofs")
        if not isinstance(dofs, list) or not dofs:
            raise fail(f"dofs must be a non-empty list of {{type, atoms, range}}, got "
                       f"{describe(dofs)}", **where)
        fields: dict[str, Any] = {"dofs": tuple(parse_dof(k, d, **where)
                                                for k, d in enumerate(dofs))}
        reference = m.pop("reference", "emt")
        if isinstance(reference, dict):
            ref = check_mapping("reference", reference, keys=("calculator", "kwargs"),
                                required=("calculator",), **where)
            reference = ref["calculator"]
            fields["reference_kwargs"] = ref.get("kwargs") or {}
        fields["reference"] = reference
        relax = check_mapping("relax", m.pop("relax", None) or {}, keys=("fmax", "steps"),
                              **where)
        fields.update({k: v for k, v in (("fmax", relax.get("fmax")),
                                         ("relax_steps", relax.get("steps"))) if v is not None})
        fix = m.pop("fix", None) or []
        if not isinstance(fix, list):
            raise fail(f"fix must be a list of atom indices, got {describe(fix)}", **where)
        fields["fix"] = tuple(fix)
        try:
            return cls(**fields, **m)
        except ConfigError as exc:
            if str(exc).startswith(f"{source}:"):
                raise
            raise ConfigError(f"{source}: {exc}") from None

    def record(self) -> dict[str, Any]:
        """The settings as JSON-able data (what a resumed search must match)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def differences(self, record: dict[str, Any]) -> list[str]:
        """Keys whose value differs from a saved :meth:`record`."""
        mine = self.record()
        return [k for k in sorted(set(mine) | set(record)) if mine.get(k) != record.get(k)]

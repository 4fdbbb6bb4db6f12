"""A repulsive core below the sampled distances: ZBL screened Coulomb, switched off smoothly.

Fitted potentials are unconstrained where the training data has no pairs (short
distances); nothing there holds atoms apart. :class:`PairRepulsion` adds, for each
element pair, the universal ZBL screened nuclear repulsion (Ziegler, Biersack and
Littmark, 1985)

    V(r) = k_e Z_a Z_b / r * phi(r / a),   a = 0.8854 a_0 / (Z_a^0.23 + Z_b^0.23),
    phi(x) = 0.18175 e^(-3.19980 x) + 0.50986 e^(-0.94229 x)
             + 0.28022 e^(-0.40290 x) + 0.02817 e^(-0.20162 x),

times a switch S(r) that is 1 below ``r_in - width``, 0 above ``r_in`` and C2-smooth in
between (a quintic smoothstep; value, slope and curvature continuous at both ends).
``r_in`` of a pair is its shortest distance in the training frames less ``margin``
(``MARGIN``, 0.1 Angstrom, by default), so the core is exactly zero wherever the data
lives and acts only below it, as the inner-cutoff core repulsion of ACE fitting codes
does. The margin keeps it off structures just outside the sampled range, which the
fitted model still describes: a stiff bond of a held-out frame at the same temperature
reaches a few hundredths of an Angstrom below the training minimum, where the ramp of a
switch starting right at it would add forces of up to 1 eV/A.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from ase.data import atomic_numbers, chemical_symbols, covalent_radii

from ml4m.data.frames import Frame
from ml4m.data.neighbors import batched_neighbor_list, shortest_distances
from ml4m.data.store import PAIR_MINIMA_CUTOFF
from ml4m.errors import DataError, NotFittedError
from ml4m.models.baseline.core import (
    Baseline,
    BaselineValues,
    nan_stress,
    register_baseline,
)
from ml4m.validation import check_float, check_mapping, describe, fail, float_from, optional

__all__ = ["PairRepulsion", "zbl", "switch", "COULOMB_EV_A", "ZBL_COEFFICIENTS",
           "ZBL_EXPONENTS", "MARGIN"]

#: e^2 / (4 pi eps_0), eV Angstrom
COULOMB_EV_A = 14.399645
#: 0.8854 times the Bohr radius, Angstrom (the ZBL screening length's prefactor)
ZBL_LENGTH_A = 0.8854 * 0.529177210903
#: the universal screening function's amplitudes and exponents
ZBL_COEFFICIENTS = np.array([0.18175, 0.50986, 0.28022, 0.02817])
ZBL_EXPONENTS = np.array([3.19980, 0.94229, 0.40290, 0.20162])
#: how far the training frames are searched for each pair's shortest distance, Angstrom:
#: as far as a packed store records them (its record then answers without a scan)
SEARCH_CUTOFF = PAIR_MINIMA_CUTOFF
#: pairs absent from the training frames start at this fraction of their covalent-radii sum
UNSEEN_FRACTION = 0.75
#: default distance below each pair's shortest training distance where the core starts,
#: Angstrom (ethanol_pbe: an O-H bond of a valid frame is 0.014 A shorter than any in
#: train; with no margin the core's ramp put a 1.1 eV/A force on it and raised the
#: default model's valid force MAE from 15.6 to 22.0 meV/A)
MARGIN = 0.1


def zbl(r: np.ndarray, z_a: np.ndarray, z_b: np.ndarray, xp: Any = np
        ) -> tuple[np.ndarray, np.ndarray]:
    """The ZBL universal screened Coulomb repulsion and its derivative.

    Parameters
    ----------
    r : ndarray, Angstrom (> 0)
    z_a, z_b : ndarray of int (broadcast with ``r``)
        Atomic numbers.
    xp : module, default=numpy
        ``numpy``, or ``torch`` for tensors of one float type (differentiable).

    Returns
    -------
    energy : ndarray, eV
    d_energy_dr : ndarray, eV/Angstrom
    """
    if xp is np:
        r, z_a, z_b = (np.asarray(v, dtype=float) for v in (r, z_a, z_b))
    a = ZBL_LENGTH_A / (z_a**0.23 + z_b**0.23)
    terms = [(e, c * xp.exp(-e * r / a)) for c, e in zip(ZBL_COEFFICIENTS.tolist(),
                                                          ZBL_EXPONENTS.tolist())]
    phi, dphi = sum(t for _, t in terms), -sum(e * t for e, t in terms)
    k = COULOMB_EV_A * z_a * z_b
    energy = k * phi / r
    return energy, k * (dphi / (a * r) - phi / r**2)


def switch(r: np.ndarray, r_in: np.ndarray, width: float, xp: Any = np
           ) -> tuple[np.ndarray, np.ndarray]:
    """1 below ``r_in - width``, 0 above ``r_in``, a quintic smoothstep between.

    ``S = 1 - t^3 (10 - 15 t + 6 t^2)`` with ``t = (r - r_in + width) / width``: value,
    first and second derivative are continuous at both ends. ``xp`` as for :func:`zbl`.

    Returns
    -------
    value : ndarray
    d_value_dr : ndarray, 1/Angstrom
    """
    r = np.asarray(r, dtype=float) if xp is np else r
    t = xp.clip((r - r_in + width) / width, 0.0, 1.0)
    value = 1.0 - t**3 * (10.0 - 15.0 * t + 6.0 * t**2)
    return value, -30.0 * t**2 * (1.0 - t) ** 2 / width


def _pair_key(name: str, pair: str, **where: Any) -> tuple[int, int]:
    parts = pair.split("-") if isinstance(pair, str) else []
    if len(parts) != 2 or not all(p in atomic_numbers for p in parts):
        raise fail(f"{name} keys must be element pairs like 'C-H', got {describe(pair)}",
                   **where)
    a, b = sorted(atomic_numbers[p] for p in parts)
    return a, b


def _check_r_in(name: str, value: Any, **where: Any) -> dict[str, float]:
    """A mapping ``{"C-H": 0.9, ...}`` of inner radii, Angstrom (> 0)."""
    value = check_mapping(name, value, **where)
    for pair, r in value.items():
        _pair_key(name, pair, **where)
        check_float(f"{name}[{pair!r}]", r, low=0.0, low_open=True, **where)
    return value


@register_baseline("pair_repulsion")
class PairRepulsion(Baseline):
    """ZBL repulsion of every element pair below its shortest training distance.

    Parameters
    ----------
    width : float, default=0.3
        Width of the switch, Angstrom: full ZBL below ``r_in - width``, none above ``r_in``.
    margin : float, default=MARGIN (0.1)
        ``r_in`` of a pair is its shortest training distance less ``margin``, Angstrom.
    r_in : dict, optional
        Inner radii given explicitly, ``{"C-H": 0.85}`` (Angstrom); these pairs ignore
        the data. Pairs neither given nor seen within 3 Angstrom in the training frames
        start at 0.75 of their covalent-radii sum (at most 3 Angstrom).

    Attributes
    ----------
    r_in_ : dict
        ``{"C-H": ...}``: each pair's inner radius after :meth:`fit`, Angstrom.
    """

    param_checks = {"width": float_from(0.0, low_open=True), "margin": float_from(0.0),
                    "r_in": optional(_check_r_in)}

    def __init__(self, width: float = 0.3, margin: float = MARGIN,
                 r_in: dict[str, float] | None = None) -> None:
        self.width = width
        self.margin = margin
        self.r_in = r_in

    # ---- fit: the inner radii ------------------------------------------------------------
    def fit(self, frames: Iterable[Frame]) -> PairRepulsion:
        """Each pair's ``r_in`` from its shortest distance in ``frames`` (any iterable, a
        packed store too: read one frame at a time); returns ``self``."""
        self.check_params(self.get_params())
        found = shortest_distances(frames, cutoff=SEARCH_CUTOFF)  # one frame at a time
        table = {_pair_key("r_in", p): max(d - self.margin, 1e-3) for p, d in found.items()}
        table.update({_pair_key("r_in", p): float(d) for p, d in (self.r_in or {}).items()})
        self._set_table(table)
        return self

    def update(self, frames: Sequence[Frame]) -> PairRepulsion:
        """Lower each pair's ``r_in`` to the shortest distance in ``frames`` (less
        ``margin``) where that is shorter; pairs given in ``r_in`` keep their value.

        The core stays zero on every frame seen before (their distances are at least
        the old radii) and becomes zero on the new ones: a model fitted on residuals of
        the core needs no refit of what it learnt (an on-the-fly learning loop).
        """
        if not self.fitted:
            raise NotFittedError("This PairRepulsion is not fitted yet. Call 'fit' first.")
        fixed = {_pair_key("r_in", p) for p in (self.r_in or {})}
        table = {_pair_key("r_in", p): d for p, d in self.r_in_.items()}
        for pair, d in shortest_distances(list(frames), cutoff=SEARCH_CUTOFF).items():
            key = _pair_key("r_in", pair)
            if key not in fixed:
                table[key] = min(float(self._grid[key]), max(d - self.margin, 1e-3))
        self._set_table(table)
        return self

    def _set_table(self, table: dict[tuple[int, int], float]) -> None:
        # never beyond the search: a pair not seen within it is at least that far apart
        # in the training frames, so the core stays zero on all of them
        grid = np.minimum(np.add.outer(covalent_radii, covalent_radii) * UNSEEN_FRACTION,
                          SEARCH_CUTOFF)
        for (a, b), d in table.items():
            grid[a, b] = grid[b, a] = d
        self._grid = grid
        self.r_in_ = {f"{chemical_symbols[a]}-{chemical_symbols[b]}": d
                      for (a, b), d in sorted(table.items())}

    @property
    def fitted(self) -> bool:
        return hasattr(self, "r_in_")

    @property
    def range(self) -> float:
        return max(self.r_in_.values(), default=0.0) if self.fitted else 0.0

    # ---- evaluation -----------------------------------------------------------------------
    def pair_energy(self, r: np.ndarray, z_a: np.ndarray, z_b: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Switched ZBL energy of pairs at distance ``r`` and its derivative.

        Returns
        -------
        energy : ndarray, eV
        d_energy_dr : ndarray, eV/Angstrom
        """
        if not self.fitted:
            raise NotFittedError("This PairRepulsion is not fitted yet. Call 'fit' first.")
        v, dv = zbl(r, z_a, z_b)
        s, ds = switch(r, self._grid[z_a, z_b], self.width)
        return v * s, dv * s + v * ds

    def evaluate(self, frames: Sequence[Frame]) -> BaselineValues:
        """Energy, forces and virial stress of the repulsion, summed over pairs.

        Only pairs closer than their ``r_in`` contribute; each pair's energy is shared
        equally by its two atoms (``energies``).
        """
        frames = list(frames)
        if not self.fitted:
            raise NotFittedError("This PairRepulsion is not fitted yet. Call 'fit' first.")
        numbers = np.concatenate([f.numbers for f in frames]).astype(np.int64)
        if numbers.size and (numbers.min() < 1 or numbers.max() >= len(self._grid)):
            raise DataError(f"atomic numbers must be 1-{len(self._grid) - 1}")
        energy, energies = np.zeros(len(frames)), np.zeros(len(numbers))
        forces = np.zeros((len(numbers), 3))
        stress = nan_stress(frames)
        periodic = np.isfinite(stress[:, 0])
        present = np.unique(numbers)
        reach = float(self._grid[np.ix_(present, present)].max()) if present.size else 0.0
        if reach <= 0:
            return BaselineValues(energy, forces, stress, energies)
        nl, pair_frame = batched_neighbor_list(frames, reach, full_list=False)
        za, zb = numbers[nl.i], numbers[nl.j]
        near = nl.distances < self._grid[za, zb]
        i, j, frame, vec, r = (nl.i[near], nl.j[near], pair_frame[near], nl.vectors[near],
                               nl.distances[near])
        e, de = self.pair_energy(r, za[near], zb[near])
        np.add.at(energy, frame, e)
        np.add.at(energies, i, 0.5 * e)
        np.add.at(energies, j, 0.5 * e)
        f_j = -(de / r)[:, None] * vec  # vec = r_j - r_i: force on j, minus it on i
        np.add.at(forces, j, f_j)
        np.add.at(forces, i, -f_j)
        virial = (de / r)[:, None, None] * vec[:, :, None] * vec[:, None, :]
        voigt = virial[:, [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        total = np.zeros((len(frames), 6))
        np.add.at(total, frame, voigt)
        volume = np.array([f.volume for f in frames])
        stress[periodic] = total[periodic] / volume[periodic, None]
        return BaselineValues(energy, forces, stress, energies)

    # ---- persistence ----------------------------------------------------------------------
    def torch_module(self, species: Sequence[int]):
        """This core as a ``torch.nn.Module`` over a network's edge list (for export).

        ``module(vectors, species_index, edge_index)`` returns the per-atom energies (N,),
        eV, of the switched ZBL pairs: ``vectors`` (E, 3) ``r_j - r_i`` in Angstrom for
        every ordered pair (both directions, each giving half the pair's energy to its
        ``i``), ``species_index`` (N,) the position of each atom's element in
        ``species`` (atomic numbers). It evaluates :func:`zbl` and :func:`switch` in
        torch, so its values and autograd derivatives are those of :meth:`evaluate`
        wherever the edges hold every pair closer than the core's :attr:`range`.
        """
        import torch

        if not self.fitted:
            raise NotFittedError("This PairRepulsion is not fitted yet. Call 'fit' first.")
        z = np.asarray(species, dtype=np.int64)
        table = self._grid[np.ix_(z, z)]
        width = float(self.width)

        class Core(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.register_buffer("z", torch.as_tensor(z.astype(float)))
                self.register_buffer("r_in", torch.as_tensor(table))

            def forward(self, vectors, species_index, edge_index):
                i, j = edge_index
                si, sj = species_index[i], species_index[j]
                r = torch.linalg.vector_norm(vectors, dim=1)
                v, _ = zbl(r, self.z[si].to(r.dtype), self.z[sj].to(r.dtype), xp=torch)
                s, _ = switch(r, self.r_in[si, sj].to(r.dtype), width, xp=torch)
                out = torch.zeros(species_index.shape[0], dtype=r.dtype, device=r.device)
                return out.index_add(0, i, 0.5 * v * s)

        return Core()

    def fitted_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        if not self.fitted:
            raise NotFittedError("This PairRepulsion is not fitted yet. Call 'fit' first.")
        return {"r_in": dict(self.r_in_)}, {}

    def restore(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        where = {"error": DataError}
        table = _check_r_in("baseline.state.r_in", state.get("r_in"), **where)
        self._set_table({_pair_key("r_in", p): float(d) for p, d in table.items()})

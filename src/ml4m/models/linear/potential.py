"""Potentials linear in a feature map of per-atom descriptors, with Bayesian uncertainty.

``E = sum_species E0 + sum_i phi(X_i) . c``. The coefficients are the posterior mean of
a Bayesian linear regression on energies (per atom), forces and stresses, each with its
own noise level; the posterior covariance gives the predictive standard deviation of
every energy and force component. :class:`LinearPotential` with the ACE basis is linear
ACE; :mod:`ml4m.models.kernel.sparse_gp` reuses everything here with a kernel map.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ml4m.data.frames import Dataset, Frame
from ml4m.data.split import frame_groups
from ml4m.data.reference import resolve_reference_energies
from ml4m.errors import ConfigError, DataError, NotFittedError
from ml4m.descriptors import from_settings
from ml4m.models.base import Potential, Prediction, as_frames
from ml4m.models.error_model import MIN_ATOMS, EnergyErrorModel, ForceErrorModel
from ml4m.models.linear.bayesian import BayesianLinearRegression, NormalEquations
from ml4m.models.linear.design import VOIGT, DesignRows, FeatureMap, SpeciesBlocks, SumMap, design_rows
from ml4m.models.registry import register_model
from ml4m.validation import (
    check_array,
    check_bool,
    check_float,
    check_int,
    check_mapping,
    each,
    float_from,
    int_from,
    one_of,
    optional,
)

__all__ = ["LinearPotential"]

QUANTITIES = ("energy", "forces", "stress")
_PREFETCH = 2  # blocks of design rows computed ahead, one thread each


def _rigid_complement(frame: Frame, n_features: int) -> np.ndarray | None:
    """Orthonormal basis (3n, 3n - r) of the force components a rigid motion leaves out.

    An energy invariant under translations and rotations has force rows ``R`` (3n, p)
    with ``v^T R = 0`` for the r rigid motions ``v`` of a free molecule (three
    translations, three rotations about the centroid; r = 5 for a linear molecule, 3 for
    one atom): those combinations of rows carry no information, and ``Q^T R`` with ``Q``
    this basis gives the same ``R^T R`` and ``R^T F`` in 3n - r rows (3BPA: 75 instead of
    81, 7% of the normal-equation products; ethanol: 21 instead of 27). The reference
    forces lose only their net force and torque, which no such model can fit, and the
    evidence counts the informative rows. ``None`` for periodic frames (no rotations;
    three translations of 3n rows are not worth a product) and where the product
    ``Q^T R`` (2 (3n)^2 p flops) would cost more than the six rows' share of the normal
    equations (6 p^2): from ``3 n^2 >= p`` on.
    """
    n = len(frame)
    if frame.pbc.any() or 3 * n * n >= n_features:
        return None
    r = frame.positions - frame.positions.mean(axis=0)
    V = np.zeros((n, 3, 6))
    for c in range(3):
        V[:, c, c] = 1.0  # translation along c
        V[:, :, 3 + c] = np.cross(np.eye(3)[c], r)  # rotation about c
    U, sv, _ = np.linalg.svd(V.reshape(3 * n, 6), full_matrices=True)
    rank = int(np.sum(sv > 1e-8 * sv[0]))
    return U[:, rank:]


class _Accumulator:
    """Normal equations of energies (per atom), forces and stresses, and feature scales.

    With one shared noise level the three quantities go into one set of sums (their
    relative weights are the row weights); per-quantity noise keeps one set each.
    """

    def __init__(self, n_features: int, per_quantity: bool, sigmas: dict[str, float | None]) -> None:
        self.per_quantity = per_quantity
        self.sigmas = sigmas  # expected error per quantity; None: that quantity is not fitted
        shared = None if per_quantity else NormalEquations(n_features)
        self.neq = {q: NormalEquations(n_features) if per_quantity else shared for q in QUANTITIES}
        self.rows = dict.fromkeys(QUANTITIES, 0)
        self.phi_sq = np.zeros(n_features)
        self.n_atoms = 0

    def _add(self, q: str, A: np.ndarray, y: np.ndarray) -> None:
        self.neq[q].add(A, y, 1.0 / self.sigmas[q] ** 2)
        self.rows[q] += len(y)

    def add(self, rows: DesignRows, block: list[Frame], e0: np.ndarray) -> None:
        p = rows.energy.shape[1]
        n_at = np.array([len(f) for f in block], dtype=float)
        y_e = (np.array([f.energy for f in block]) - e0) / n_at
        self._add("energy", rows.energy / n_at[:, None], y_e)
        self.phi_sq += np.sum(rows.energy**2 / n_at[:, None], axis=0)
        self.n_atoms += int(n_at.sum())
        if self.sigmas["forces"]:
            A, y = [], []
            starts = np.concatenate([[0], np.cumsum([len(f) for f in block])])
            for f, a0, a1 in zip(block, starts[:-1], starts[1:]):
                R, F = rows.forces[a0:a1].reshape(-1, p), f.forces.ravel()
                Q = _rigid_complement(f, p)
                A.append(R if Q is None else Q.T @ R)
                y.append(F if Q is None else Q.T @ F)
            self._add("forces", np.concatenate(A), np.concatenate(y))
        if self.sigmas["stress"]:
            has = np.array([f.stress is not None for f in block])
            if has.any():
                y_s = np.concatenate([f.stress for f, h in zip(block, has) if h])
                self._add("stress", rows.stress[has].reshape(-1, p), y_s)

    def groups(self) -> dict[str, NormalEquations]:
        """The distinct sets of sums: ``{"shared": ...}``, or one per quantity."""
        if not self.per_quantity:
            return {"shared": self.neq["energy"]}
        return {q: self.neq[q] for q in QUANTITIES}

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON params and arrays that rebuild these sums exactly (:meth:`from_state`)."""
        params: dict[str, Any] = {"per_quantity": self.per_quantity, "sigmas": self.sigmas,
                                  "rows": self.rows, "n_atoms": self.n_atoms, "groups": {}}
        arrays = {"phi_sq": self.phi_sq}
        for name, neq in self.groups().items():
            params["groups"][name] = {"yty": neq.yty, "n": neq.n}
            arrays[f"gram_{name}"], arrays[f"aty_{name}"] = neq.AtA, neq.Aty
        return params, arrays

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray],
                   n_features: int) -> _Accumulator:
        """The sums :meth:`state` wrote, each entry checked (DataError naming it)."""
        where = {"error": DataError}
        params = check_mapping("update state", params,
                               required=("per_quantity", "sigmas", "rows", "n_atoms", "groups"),
                               **where)
        per_quantity = check_bool("update state per_quantity", params["per_quantity"], **where)
        sigmas = check_mapping("update state sigmas", params["sigmas"], keys=QUANTITIES,
                               required=QUANTITIES, **where)
        for q, v in sigmas.items():
            if v is not None:
                sigmas[q] = check_float(f"update state sigmas.{q}", v, low=0.0, low_open=True,
                                        **where)
        acc = cls(n_features, per_quantity, sigmas)
        rows = check_mapping("update state rows", params["rows"], keys=QUANTITIES,
                             required=QUANTITIES, **where)
        acc.rows = {q: check_int(f"update state rows.{q}", v, low=0, **where) for q, v in rows.items()}
        acc.n_atoms = check_int("update state n_atoms", params["n_atoms"], low=0, **where)
        acc.phi_sq = _state_array(arrays, "phi_sq", (n_features,), kinds="f")
        groups = check_mapping("update state groups", params["groups"],
                               required=list(acc.groups()), **where)
        for name, neq in acc.groups().items():
            g = check_mapping(f"update state groups.{name}", groups[name], required=("yty", "n"),
                              **where)
            neq.AtA = _state_array(arrays, f"gram_{name}", (n_features, n_features), kinds="f")
            neq.Aty = np.array(_state_array(arrays, f"aty_{name}", (n_features,), kinds="f"))
            neq.yty = check_float(f"update state groups.{name}.yty", g["yty"], low=0.0, **where)
            neq.n = check_int(f"update state groups.{name}.n", g["n"], low=0, **where)
        return acc


class _HeldOut:
    """Residuals and posterior sigmas of held-out frames; per atom (a sample) with descriptors.

    Rows are kept (force rows in float32) and their variances formed in one product by
    :meth:`finish`: block by block, each product would read the whole (p, p) posterior
    factor for a few rows (on 3BPA, p = 9,328: 44 s against 10 s at once).
    """

    def __init__(self, n_atoms: int, max_atoms: int = 20_000, seed: int = 0) -> None:
        self.keep = min(1.0, max_atoms / max(n_atoms, 1))
        self.rng = np.random.default_rng(seed)
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.frames: list[tuple[np.ndarray, ...]] = []
        self._rows: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, rows: DesignRows, X: np.ndarray, block: list[Frame], e0: np.ndarray,
            regression: BayesianLinearRegression, species: np.ndarray) -> None:
        coef = regression.coef_
        e_res = rows.energy @ coef + e0 - np.array([f.energy for f in block])
        self.frames.append((e_res, np.array([len(f) for f in block], dtype=float)))
        pick = np.flatnonzero(self.rng.random(len(X)) < self.keep)
        R = rows.forces[pick]
        F = R @ coef
        ref = np.concatenate([f.forces for f in block])[pick]
        self._rows.append((rows.energy, R.reshape(-1, R.shape[-1]).astype(np.float32)))
        self.parts.append((np.sum((F - ref) ** 2, axis=1), np.linalg.norm(F, axis=1), species[pick], X[pick]))

    def finish(self, regression: BayesianLinearRegression) -> None:
        """Posterior sigmas of the kept rows under ``regression`` (the held-out fit)."""
        E = np.concatenate([e for e, _ in self._rows])
        R = np.concatenate([r for _, r in self._rows])
        self._rows = []
        self.e_sigma = np.sqrt(np.clip(regression.variance_rows(E), 0, None))
        var = np.clip(regression.variance_rows(R, single=True), 0, None).reshape(-1, 3)
        self.f_sigma = np.sqrt(var.sum(axis=1))

    def atom_arrays(self) -> tuple[np.ndarray, ...]:
        """``residual_sq, sigma, force_norm, species, X`` as :meth:`ForceErrorModel.fit` takes them."""
        residual_sq, force_norm, species, X = (np.concatenate(c) for c in zip(*self.parts))
        return residual_sq, self.f_sigma, force_norm, species, X

    def frame_arrays(self) -> tuple[np.ndarray, ...]:
        """``residual, sigma, n_atoms`` as :meth:`EnergyErrorModel.fit` takes them."""
        residual, n_atoms = (np.concatenate(c) for c in zip(*self.frames))
        return residual, self.e_sigma, n_atoms


class _Prequential:
    """Residuals and posterior sigmas of frames as the model predicted them before
    :meth:`LinearPotential.update` learnt them (held out at that moment: what the error
    models are refitted on); the latest ``max_atoms`` atoms and every frame."""

    ATOM_KEYS = ("residual_sq", "sigma", "force_norm", "species", "X")
    FRAME_KEYS = ("residual", "sigma", "n_atoms")

    def __init__(self, max_atoms: int = 20_000) -> None:
        self.max_atoms = int(max_atoms)
        self.atoms: tuple[np.ndarray, ...] | None = None
        self.frames: tuple[np.ndarray, ...] | None = None

    def add(self, stats: _HeldOut) -> _Prequential:
        """Append ``stats`` (finished under the model before the update); returns ``self``."""
        new_atoms, new_frames = stats.atom_arrays(), stats.frame_arrays()
        if self.atoms is None:
            self.atoms, self.frames = new_atoms, new_frames
        else:
            self.atoms = tuple(np.concatenate([a, b]) for a, b in zip(self.atoms, new_atoms))
            self.frames = tuple(np.concatenate([a, b]) for a, b in zip(self.frames, new_frames))
        self.atoms = tuple(a[-self.max_atoms:] for a in self.atoms)
        return self

    @property
    def n_atoms(self) -> int:
        return 0 if self.atoms is None else len(self.atoms[0])

    @property
    def n_frames(self) -> int:
        return 0 if self.frames is None else len(self.frames[0])

    def state(self) -> dict[str, np.ndarray]:
        """Arrays named ``prequential_atom_KEY`` and ``prequential_frame_KEY``."""
        if self.atoms is None:
            return {}
        return {**{f"prequential_atom_{k}": v for k, v in zip(self.ATOM_KEYS, self.atoms)},
                **{f"prequential_frame_{k}": v for k, v in zip(self.FRAME_KEYS, self.frames)}}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], n_features: int) -> _Prequential | None:
        """The store :meth:`state` wrote (None when it wrote none), shapes checked."""
        if "prequential_atom_residual_sq" not in arrays:
            return None
        store = cls()
        n = len(_state_array(arrays, "prequential_atom_residual_sq", (None,), kinds="f"))
        shapes = {"X": (n, n_features)}
        kinds = {"species": "iu"}
        store.atoms = tuple(_state_array(arrays, f"prequential_atom_{k}", shapes.get(k, (n,)),
                                         kinds=kinds.get(k, "f")) for k in cls.ATOM_KEYS)
        m = len(_state_array(arrays, "prequential_frame_residual", (None,), kinds="f"))
        store.frames = tuple(_state_array(arrays, f"prequential_frame_{k}", (m,), kinds="f")
                             for k in cls.FRAME_KEYS)
        return store


@register_model("linear")
class LinearPotential(Potential):
    """A potential linear in per-species blocks of a descriptor (e.g. linear ACE).

    Parameters
    ----------
    descriptor : Descriptor
        An ml4m descriptor with position and strain gradients (e.g. ``ACE``); its
        ``species`` fix the elements the model knows.
    e0 : 'fit', dict or None, default='fit'
        Isolated-atom energies (eV): fitted by least squares on the training energies,
        given as ``{"Cu": -0.01}``, or zero.
    sigma_energy : float, default=0.001
        Expected energy error, eV/atom (energy rows are per atom).
    sigma_forces : float, default=0.03
        Expected force error, eV/Angstrom. ``0`` or ``None`` drops force rows.
    sigma_stress : float, default=0.003
        Expected stress error, eV/Angstrom^3 (0.003 eV/A^3 = 0.48 GPa). ``0`` or ``None``
        drops stress rows.
    alpha, beta : float, optional
        Prior precision and noise scale; ``None`` maximises the Bayesian evidence.
    noise : {'shared', 'per_quantity'}, default='shared'
        ``'shared'``: the ``sigma_*`` fix the relative weights of energies, forces and
        stresses and one noise scale is fitted (ridge-like, as linear ACE fits usually
        are). ``'per_quantity'``: each quantity gets its own noise level by maximum
        evidence, the ``sigma_*`` being only its units and starting point (as GAP and
        FLARE optimise their noise hyperparameters). The fitted levels are in
        ``noise_`` (eV/atom, eV/Angstrom, eV/Angstrom^3).
    uncertainty : {'calibrated', 'posterior'}, default='calibrated'
        What ``energy_sigma`` and ``forces_sigma`` mean. ``'posterior'``: posterior
        standard deviations (how well the data fix the coefficients; blind to the
        error of the basis itself). ``'calibrated'``: the expected size of the actual
        error, from a :class:`~ml4m.models.error_model.ForceErrorModel` and an
        :class:`~ml4m.models.error_model.EnergyErrorModel` fitted on the residuals of
        the held-out group of :meth:`holdout_split` (the last of ``HOLDOUT_GROUPS``
        groups of whole trajectories, else of contiguous chunks of frames) predicted by
        the model fitted without them; the returned model is
        then fitted on all frames at the hyperparameters found without them (one
        extra Cholesky solve; coefficients as ``'posterior'`` up to that difference in
        hyperparameters). Falls back to ``'posterior'`` with a warning
        below 10 training frames or without forces.
    prior : {'auto', 'smoothness', 'scale'}, default='auto'
        Shape of the Gaussian prior on the coefficients (its scale is fitted by
        evidence). ``'smoothness'``: precision ``(1 + degree)**smoothness`` per basis
        function (the descriptor's ``feature_degrees()``, e.g. ACE's ``sum (n + l)``),
        so rough high-degree functions need strong evidence, as the smoothness priors of
        ACE fits do. ``'scale'``: precision proportional to the mean square of each
        feature (a ridge on standardised features). ``'auto'``: smoothness when the
        descriptor gives degrees, else scale.
    smoothness : float, default=0.0
        Exponent of the smoothness prior. ``0`` is a flat prior on the coefficients of
        the basis (its radial functions are orthonormal); larger values damp rough
        high-degree terms. ``ml4m fit``'s basis search chooses it by evidence
        (:mod:`ml4m.training.search`).
    species_degree : dict, optional
        A smaller truncation for some centre species, e.g. ``{"N": [12, 8, 7], "O": [12,
        8, 7]}``: their coefficient blocks keep only the basis functions inside that
        bound (the descriptor's ``degree_subset``, ACE). Species with few environments
        (a molecule's one O atom) cannot fix a large block; on the 3BPA molecule (fit on
        four conformers, force MAE on a fifth) the N and O blocks cut from ``[12, 8, 8]``
        to ``[12, 8, 7]`` left the error unchanged at 19% fewer coefficients, and C at
        ``[12, 10, 9]`` with H at ``[12, 10, 7]`` and N, O at ``[12, 8, 7]`` gave 44.8
        meV/A against 51.0 for ``[12, 10, 8]`` on every species (8,280 against 10,000
        coefficients). Other species keep the full basis.
    batch_frames : int, default=4
        Frames per block when accumulating the normal equations.
    """

    kind = "linear"

    def __init__(self, descriptor, e0: Any = "fit", sigma_energy: float = 0.001,
                 sigma_forces: float | None = 0.03, sigma_stress: float | None = 0.003,
                 alpha: float | None = None, beta: float | None = None,
                 noise: str = "shared", uncertainty: str = "calibrated", prior: str = "auto",
                 smoothness: float = 0.0, species_degree: dict[str, Any] | None = None,
                 batch_frames: int = 4) -> None:
        self.descriptor = descriptor
        self.e0 = e0
        self.sigma_energy = sigma_energy
        self.sigma_forces = sigma_forces
        self.sigma_stress = sigma_stress
        self.alpha = alpha
        self.beta = beta
        self.noise = noise
        self.uncertainty = uncertainty
        self.prior = prior
        self.smoothness = smoothness
        self.species_degree = species_degree
        self.batch_frames = batch_frames

    param_checks = {
        "sigma_energy": optional(float_from(0.0)), "sigma_forces": optional(float_from(0.0)),
        "sigma_stress": optional(float_from(0.0)),
        "alpha": optional(each(float_from(0.0, low_open=True), allow_scalar=True)),
        "beta": optional(each(float_from(0.0, low_open=True), allow_scalar=True)),
        "noise": one_of("shared", "per_quantity"), "uncertainty": one_of("calibrated", "posterior"),
        "prior": one_of("auto", "smoothness", "scale"), "smoothness": check_float,
        "species_degree": optional(check_mapping), "batch_frames": int_from(1),
    }

    # ---- the potential contract ------------------------------------------------------------
    @property
    def species(self) -> np.ndarray:
        """Atomic numbers the model knows (from the descriptor)."""
        return np.asarray(self.descriptor.species, dtype=np.int64)

    @property
    def cutoff(self) -> float:
        """The descriptor's cutoff radius, Angstrom."""
        return float(self.descriptor.r_cut)

    @property
    def has_uncertainty(self) -> bool:
        """Always: the Bayesian posterior (and the calibrated error models once fitted)."""
        return True

    @property
    def n_parameters(self) -> int:
        """Fitted coefficients (0 before :meth:`fit`)."""
        return int(len(self.coef_)) if hasattr(self, "coef_") else 0

    # ---- pieces a subclass may change ---------------------------------------------------

    def _make_feature_map(self, train: Sequence[Frame]) -> FeatureMap:
        return self._species_blocks()

    def _species_blocks(self) -> SpeciesBlocks:
        """One block of the descriptor per centre species (``species_degree`` applied)."""
        cols: list[np.ndarray | None] = [None] * len(self.species)
        if self.species_degree:
            if not isinstance(self.species_degree, dict):
                raise ConfigError(f"species_degree must map element symbols to degree bounds, "
                                  f"got {self.species_degree!r}")
            if not hasattr(self.descriptor, "degree_subset"):
                raise ConfigError(f"species_degree needs a descriptor with a degree truncation (ACE); "
                                  f"{type(self.descriptor).__name__} has none")
            from ase.data import atomic_numbers, chemical_symbols

            known = [int(z) for z in self.species]
            for sym, bound in self.species_degree.items():
                z = atomic_numbers.get(sym) if isinstance(sym, str) else None
                if z not in known:
                    raise ConfigError(f"species_degree: {sym!r} is not one of the model's species "
                                      f"{[chemical_symbols[k] for k in known]}")
                cols[known.index(z)] = self.descriptor.degree_subset(bound)
        return SpeciesBlocks(len(self.species), self.descriptor.n_features, tuple(cols))

    def _prior_kind(self) -> str:
        has_degrees = hasattr(self.descriptor, "feature_degrees")
        if self.prior == "smoothness" and not has_degrees:
            raise ConfigError(f"prior='smoothness' needs a descriptor with feature degrees (ACE); "
                              f"{type(self.descriptor).__name__} has none: use prior='scale'")
        return "smoothness" if self.prior == "auto" and has_degrees else self.prior

    def _prior(self, phi_sq_mean: np.ndarray, smoothness: float | None = None) -> np.ndarray:
        """Prior precision shape, per coefficient (see ``prior``), mean 1; ``smoothness``:
        the smoothness prior's exponent instead of the model's own (the basis search
        compares several)."""
        if self._prior_kind() == "smoothness":
            s = self.smoothness if smoothness is None else smoothness
            g = (1.0 + self.descriptor.feature_degrees()) ** float(s)
            blocks = self.fmap_.parts[0] if isinstance(self.fmap_, SumMap) else self.fmap_
            P = g[blocks.descriptor_columns]
        else:  # coefficients of large features are small
            P = np.where(phi_sq_mean > 0, phi_sq_mean, np.max(phi_sq_mean, initial=1.0))
        return P / P.mean()

    # ---- helpers -------------------------------------------------------------------------
    def _species_index(self, frames: Sequence[Frame]) -> np.ndarray:
        lookup = {int(z): k for k, z in enumerate(self.species)}
        out = []
        for n, f in enumerate(frames):
            unknown = sorted({int(z) for z in f.numbers} - set(lookup))
            if unknown:
                from ase.data import chemical_symbols

                src = f.source or (None, n)
                raise DataError(f"species {[chemical_symbols[z] for z in unknown]} are not known "
                                f"to this model (trained on {[chemical_symbols[z] for z in self.species]})",
                                *src)
            out.append(np.array([lookup[int(z)] for z in f.numbers], dtype=np.int64))
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def _blocks(self, frames: Sequence[Frame]) -> Iterator[list[Frame]]:
        for start in range(0, len(frames), self.batch_frames):
            yield list(frames[start:start + self.batch_frames])

    def descriptor_key(self) -> str:
        """What decides the descriptor values :meth:`describe` gives: models with equal
        keys (the members of a committee) can share one computation."""
        cols = getattr(self.fmap_, "columns", None)
        cols = None if cols is None else [None if c is None else np.asarray(c).tolist()
                                          for c in cols]
        return json_dumps([self.descriptor.settings(), cols])

    def feature_map_key(self) -> str:
        """:meth:`descriptor_key` and the feature map's state: models with equal keys are
        linear in their coefficients and E0s over the same features (their mean is
        :meth:`averaged`)."""
        import hashlib

        cached = getattr(self, "_fmap_key", None)
        if cached is not None and cached[0] is self.fmap_:  # a fit makes a new feature map
            return cached[1]
        params, arrays = self._feature_map_state()
        digest = hashlib.sha256()
        for name in sorted(arrays):
            digest.update(name.encode() + np.ascontiguousarray(arrays[name]).tobytes())
        key = self.descriptor_key() + json_dumps(params) + digest.hexdigest()
        self._fmap_key = (self.fmap_, key)
        return key

    @staticmethod
    def averaged(models: Sequence[LinearPotential]) -> LinearPotential:
        """A model whose energies, forces and stresses are the mean of ``models``' (equal
        :meth:`feature_map_key`): their mean coefficients and E0s on the first's feature
        map, predicted in one descriptor pass. Without uncertainty (not a posterior)."""
        import copy

        first = models[0]
        mean = copy.copy(first)
        mean.coef_ = np.mean([m.coef_ for m in models], axis=0)
        mean.e0_ = {z: float(np.mean([m.e0_[z] for m in models])) for z in first.e0_}
        mean.regression_ = None
        return mean

    def describe(self, block: Sequence[Frame]) -> list[Any]:
        """The descriptor of each frame of ``block`` with position and strain gradients
        (:class:`~ml4m.descriptors.DescriptorResult`), as :meth:`predict_described` reads it."""
        # a species block reads only its own columns' gradients (see species_degree)
        cols = getattr(self.fmap_, "columns", None)
        return [self.descriptor.compute_frame(f, True, k, cols, strain=True)  # k: named in errors
                for k, f in enumerate(block)]

    def _rows(self, block: list[Frame], forces: bool, stress: bool, described: list | None = None
              ) -> tuple[DesignRows, np.ndarray, np.ndarray]:
        """Design rows, per-atom descriptors and species indices of a block of frames
        (from ``described``, :meth:`describe`'s output, when given).

        Frame by frame: the descriptor's pair gradients (pairs x 3 x features, the
        largest arrays of a fit) are reduced to rows before the next frame's exist, and
        only the rows are stacked.
        """
        sidx = self._species_index(block)
        off = np.cumsum([0] + [len(f) for f in block])
        cols = getattr(self.fmap_, "columns", None)
        parts, X = [], []
        for k, f in enumerate(block):
            res = (described[k] if described is not None else
                   self.descriptor.compute_frame(f, forces or stress, k, cols, strain=stress))
            res.frame = np.zeros_like(res.frame)
            vol = np.array([f.volume if f.pbc.all() else 0.0])
            parts.append(design_rows(res, self.fmap_, sidx[off[k]:off[k + 1]], 1, vol, forces, stress))
            X.append(res.features)
        rows = DesignRows(*(np.concatenate([getattr(r, q) for r in parts]) for q in QUANTITIES))
        return rows, np.concatenate(X), sidx

    def _block_rows(self, frames: Sequence[Frame], forces: bool, stress: bool
                    ) -> Iterator[tuple[list[Frame], DesignRows, np.ndarray, np.ndarray]]:
        """``(block, rows, X, species)`` per block; the next ``_PREFETCH`` blocks' rows are
        computed on as many threads while the caller works on the current one.

        The descriptor's per-feature gradients are mostly single-threaded numpy;
        overlapping them with the caller's normal-equation updates keeps the cores busy.
        While the blocks are prefetched every thread calls BLAS single-threaded
        (:mod:`ml4m.parallel`: concurrent multi-threaded OpenBLAS calls crash).
        """
        from ml4m.parallel import prefetch

        blocks = list(self._blocks(frames))
        rows = prefetch(lambda b: self._rows(b, forces, stress), blocks, ahead=_PREFETCH)
        for block, (r, X, sidx) in zip(blocks, rows):
            yield block, r, X, sidx

    def _e0_of(self, frames: Sequence[Frame]) -> np.ndarray:
        return np.array([sum(self.e0_[int(z)] for z in f.numbers) for f in frames])

    # ---- public API ----------------------------------------------------------------------
    def fit(self, train: Dataset | Sequence[Frame], valid: Dataset | None = None) -> LinearPotential:
        """Fit to labelled frames (energies required; forces/stresses used when present).

        Parameters
        ----------
        train : Dataset or sequence of Frame
            Training frames.
        valid : Dataset, optional
            Not used by the evidence fit (kept for a common interface).

        Returns
        -------
        self
        """
        frames = self._start_fit(train)
        acc = self._accumulator(frames)
        use_f, use_s = bool(acc.sigmas["forces"]), bool(acc.sigmas["stress"])
        fit_frames, held = frames, []
        if self.uncertainty == "calibrated":
            fit_frames, held = self.holdout_split(frames)
        for block, rows, _, _ in self._block_rows(fit_frames, use_f, use_s):
            acc.add(rows, block, self._e0_of(block))
        return self._fit_accumulated(acc, held)

    def fit_from_sums(self, frames: Dataset | Sequence[Frame], without_held: _Accumulator,
                      total: _Accumulator) -> LinearPotential:
        """:meth:`fit` from normal equations already accumulated on this model's features.

        For a caller that has the sums anyway (the basis search keeps them per fold):
        ``total`` holds the design rows of every frame of ``frames``, ``without_held``
        those of every frame but :meth:`holdout_split`'s held-out ones (all of them when
        ``uncertainty='posterior'``), both as :meth:`fit` accumulates them (with its E0s
        and feature map). Only the held-out frames are described again (their residuals
        teach the error models); the result equals :meth:`fit` on ``frames`` up to
        rounding. A feature map already set (``fmap_``, e.g. a sparse GP's sparse
        environments shared with the model the sums were made with) is kept.
        """
        frames = self._start_fit(frames, getattr(self, "fmap_", None))
        p = self.fmap_.n_features
        for name, acc in (("without_held", without_held), ("total", total)):
            if any(neq.AtA.shape != (p, p) for neq in acc.groups().values()):
                raise ConfigError(f"{name}: the sums are not over this model's {p} features")
        held = self.holdout_split(frames)[1] if self.uncertainty == "calibrated" else []
        if not held:
            return self._fit_accumulated(total, [])
        return self._fit_accumulated(without_held, held, total)

    def _start_fit(self, train: Dataset | Sequence[Frame], fmap: FeatureMap | None = None
                   ) -> list[Frame]:
        """The checks and fitted state every fit starts from: labels, hyperparameters,
        species (unknown ones fail before any work), E0s, the feature map (``fmap``, or
        made from ``train``), the memory of the solve. Returns the frames as a list."""
        frames = as_frames(train)
        if not frames:
            raise DataError("no training frames")
        self._check_labels(frames)
        self.check_params(self._hyper())  # every hyperparameter, as a config or file is checked
        self._prior_kind()
        self._species_index(frames)
        self.e0_ = resolve_reference_energies(Dataset(frames), self.e0)
        self.fmap_ = fmap if fmap is not None else self._make_feature_map(frames)
        self._check_fit_memory(frames)
        return frames

    def _fit_accumulated(self, acc: _Accumulator, held: list[Frame],
                         total: _Accumulator | None = None) -> LinearPotential:
        """Solve ``acc``; with ``held`` frames, first the model without them predicts them
        (their residuals fit the error models), then the posterior of every frame (``acc``
        plus the held frames' rows, or ``total`` when given) is solved at the
        hyperparameters found without them."""
        self.error_model_ = self.energy_error_model_ = None
        self.prequential_ = None
        if not held:
            self._solve(acc)
            self.normal_equations_ = acc
            return self
        use_f, use_s = bool(acc.sigmas["forces"]), bool(acc.sigmas["stress"])
        # the model without the held-out trajectories predicts them; their residuals
        # teach the error model, then their rows join the fit
        self._solve(acc, warn=False)
        stats = _HeldOut(sum(len(f) for f in held))
        for block, rows, X, sidx in self._block_rows(held, use_f, use_s):
            e0 = self._e0_of(block)
            stats.add(rows, X, block, e0, self.regression_, sidx)
            if total is None:
                acc.add(rows, block, e0)
        stats.finish(self.regression_)
        atoms = stats.atom_arrays()
        if len(atoms[0]) >= MIN_ATOMS:
            self.error_model_ = ForceErrorModel(len(self.species)).fit(*atoms)
            self.energy_error_model_ = EnergyErrorModel().fit(*stats.frame_arrays())
        else:
            warnings.warn(f"only {len(atoms[0])} held-out atoms for the error model; using the "
                          "posterior sigma", stacklevel=3)
        acc = acc if total is None else total
        self._solve(acc, reuse=self.regression_)
        self.normal_equations_ = acc
        return self

    def _accumulator(self, frames: list[Frame]) -> _Accumulator:
        """Empty normal equations for a fit on ``frames`` (forces when ``sigma_forces``,
        stresses when ``sigma_stress`` and some frame has one)."""
        use_f = bool(self.sigma_forces)
        use_s = bool(self.sigma_stress) and any(f.stress is not None for f in frames)
        return _Accumulator(self.fmap_.n_features, self.noise == "per_quantity",
                            {"energy": self.sigma_energy,
                             "forces": self.sigma_forces if use_f else None,
                             "stress": self.sigma_stress if use_s else None})

    def restore_normal_equations(self, frames: Dataset | Sequence[Frame]) -> LinearPotential:
        """Give a fitted model that keeps no normal equations (one read from a file) the
        sums of its training frames, without solving again.

        The model stays as it is (coefficients, hyperparameters, error models);
        :meth:`update` then adds new frames to it exactly as to the model that was
        fitted, when ``frames`` are the frames (in the order) it was fitted on.

        Raises
        ------
        DataError
            No frames, frames without the labels the model was fitted on, or unknown
            species.
        """
        self._check_fitted()
        frames = as_frames(frames)
        if not frames:
            raise DataError("no training frames")
        self._check_labels(frames)
        acc = self._accumulator(frames)
        used = [q for q in QUANTITIES if acc.sigmas[q]]
        unfitted = [q for q in used if q not in self.noise_]
        if unfitted:
            raise DataError(f"the frames have {unfitted} labels this model was not fitted on "
                            "(they are not its training frames)")
        for block, rows, _, _ in self._block_rows(frames, bool(acc.sigmas["forces"]),
                                                  bool(acc.sigmas["stress"])):
            acc.add(rows, block, self._e0_of(block))
        # the noise precisions of the solution, as update reuses and update_state saves them
        self.regression_.betas_ = (np.array([(acc.sigmas[q] / self.noise_[q]) ** 2 for q in used])
                                   if acc.per_quantity else np.array([self.regression_.beta_]))
        self.normal_equations_ = acc
        return self

    def _check_labels(self, frames: list[Frame]) -> None:
        """Every frame has an energy, and forces when force rows are fitted (DataError)."""
        for n, f in enumerate(frames):
            if f.energy is None:
                raise DataError("training frame has no energy", *(f.source or (None, n)))
            if self.sigma_forces and f.forces is None:
                raise DataError("training frame has no forces but sigma_forces is set (give "
                                "sigma_forces: 0 to fit energies only)", *(f.source or (None, n)))

    def update(self, frames: Dataset | Sequence[Frame], reoptimise: bool = False) -> LinearPotential:
        """Add labelled frames to the fit: an exact rank update of its normal equations.

        The frames' design rows (energies per atom, forces, stresses) join the sums kept
        from the last :meth:`fit` or update (``normal_equations_``), and the posterior
        is solved again: one Cholesky factorisation of the (p, p) system, against a
        descriptor pass over every training frame for a refit.

        Parameters
        ----------
        frames : Dataset or sequence of Frame
            New labelled frames (energies; forces when ``sigma_forces`` is set).
        reoptimise : bool, default=False
            ``False``: keep the hyperparameters of the current solution (prior precision
            and noise levels), so the result equals :meth:`fit` on the old and new frames
            with those hyperparameters fixed. ``True``: maximise the evidence again (for
            the hyperparameters given as ``None``), and refit the calibrated error models
            (see Notes).

        Returns
        -------
        self

        Notes
        -----
        Fixed by the first fit: the E0s, the feature map (a sparse GP keeps its sparse
        points) and which quantities are fitted (stress rows join only if the first fit
        had some). With ``uncertainty='calibrated'`` (and forces) each update first
        predicts its new frames, which are held out at that moment; their residuals and
        posterior sigmas are kept (``prequential_``: every frame, the latest 20,000
        atoms). A ``reoptimise=True`` update fits the error models on them (at least
        ``MIN_ATOMS`` atoms and 2 frames), so the calibration follows the states the
        updates reach instead of extrapolating the first fit's, and a first fit too small
        for error models (it warned and used the posterior sigma) gets them; between
        re-optimisations the error models stay.
        """
        self._check_fitted()
        acc = getattr(self, "normal_equations_", None)
        if acc is None:
            raise NotFittedError(f"This {type(self).__name__} has no normal equations to update (a "
                                 "model read from a file keeps none): fit it, or restore them "
                                 "with restore_update_state")
        frames = as_frames(frames)
        if not frames:
            return self
        self._check_labels(frames)
        self._species_index(frames)
        use_f, use_s = bool(acc.sigmas["forces"]), bool(acc.sigmas["stress"])
        calibrated = self.uncertainty == "calibrated" and use_f
        stats = _HeldOut(sum(len(f) for f in frames)) if calibrated else None
        for block, rows, X, sidx in self._block_rows(frames, use_f, use_s):
            e0 = self._e0_of(block)
            if stats is not None:  # predicted before they are learnt: held out
                stats.add(rows, X, block, e0, self.regression_, sidx)
            acc.add(rows, block, e0)
        if stats is not None:
            stats.finish(self.regression_)
            self.prequential_ = (getattr(self, "prequential_", None) or _Prequential()).add(stats)
        self._solve(acc, reuse=None if reoptimise else self.regression_)
        store = self.prequential_ if calibrated else None
        if reoptimise and store is not None and store.n_atoms >= MIN_ATOMS and store.n_frames >= 2:
            self.error_model_ = ForceErrorModel(len(self.species)).fit(*store.atoms)
            self.energy_error_model_ = EnergyErrorModel().fit(*store.frames)
        return self

    def update_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What :meth:`update` needs beyond the model file, as JSON params and arrays.

        The accumulated normal equations (one (p, p) Gram matrix per noise group: as large
        as the model file's posterior factor, so kept apart from it), the noise
        precisions of the current solution and the updates' held-out residuals
        (``prequential_``) of a calibrated model.
        """
        self._check_fitted()
        acc = getattr(self, "normal_equations_", None)
        if acc is None:
            raise NotFittedError(f"This {type(self).__name__} has no normal equations (fit it first)")
        params, arrays = acc.state()
        params["betas"] = np.atleast_1d(self.regression_.betas_).tolist()
        store = getattr(self, "prequential_", None)
        arrays.update(store.state() if store is not None else {})
        return params, arrays

    def restore_update_state(self, params: dict[str, Any], arrays: dict[str, np.ndarray]
                             ) -> LinearPotential:
        """Give a fitted model (e.g. read from a file) the sums :meth:`update_state` wrote."""
        self._check_fitted()
        acc = _Accumulator.from_state(params, arrays, self.fmap_.n_features)
        betas = check_array("update state betas", params.get("betas"), ndim=1, kinds="fi")
        if len(betas) != (sum(1 for q in QUANTITIES if acc.rows[q]) if acc.per_quantity else 1):
            raise DataError(f"update state betas: {len(betas)} values do not match the noise groups")
        self.regression_.betas_ = betas.astype(float)
        self.normal_equations_ = acc
        self.prequential_ = _Prequential.from_state(arrays, self.fmap_.n_features)
        return self

    def _check_fit_memory(self, frames: list[Frame]) -> None:
        """Refuse a fit whose (p, p) matrices would not fit in memory (ConfigError with
        the estimate): about six of them at the solve (normal equations, factor, inverse
        and temporaries) plus the held-out atoms' feature rows of the error model
        (measured: 3BPA p = 9,328, estimate 5.1 GB against a 5.1 GB peak)."""
        from ml4m.resources import check_memory

        p = self.fmap_.n_features
        n_atoms = sum(len(f) for f in frames)
        held = min(20_000, n_atoms // 5) if self.uncertainty == "calibrated" else 0
        check_memory(8.0 * (6 * p * p + held * p),
                     f"a fit of {p:,} coefficients ({type(self).__name__})",
                     hint="use a smaller basis (descriptor n_max, l_max, degrees; for the "
                     "sparse GP fewer sparse points), or raise the limit (--max-memory) on a "
                     "machine with more memory")

    #: groups of training frames for the calibrated uncertainty; the last is held out
    HOLDOUT_GROUPS = 3

    def holdout_split(self, frames: list[Frame]) -> tuple[list[Frame], list[Frame]]:
        """Training frames to fit on, and the frames held out for the error models.

        The frames fall into ``HOLDOUT_GROUPS`` groups (:func:`ml4m.data.frame_groups`:
        whole trajectories when the frames name them, else contiguous chunks) and the
        last group is held out. Without forces or below 10 frames nothing is held out
        (a warning: the sigmas are the posterior's).
        """
        use_f = bool(self.sigma_forces) and all(f.forces is not None for f in frames)
        if not use_f or len(frames) < 10:
            warnings.warn("uncertainty='calibrated' needs forces and at least 10 training frames; "
                          "using the posterior sigma", stacklevel=3)
            return frames, []
        held = frame_groups(frames, self.HOLDOUT_GROUPS) == self.HOLDOUT_GROUPS - 1
        return ([f for f, h in zip(frames, held) if not h], [f for f, h in zip(frames, held) if h])

    def _solve(self, acc: _Accumulator, warn: bool = True,
               reuse: BayesianLinearRegression | None = None) -> None:
        """Posterior of the coefficients from the accumulated normal equations.

        ``reuse``: a fit whose evidence-optimal hyperparameters (prior precision, noise
        levels) are kept, so this solve is one Cholesky factorisation instead of an
        evidence search (the final fit after the held-out one, on 25% more rows).
        The posterior covariance stays unformed (``covariance_`` forms it on first use):
        sigmas need only row variances through its factor (``regression_.variance_rows``).
        """
        used = [q for q in QUANTITIES if acc.rows[q]]
        alpha, beta = self.alpha, self.beta
        if reuse is not None and (not acc.per_quantity or len(reuse.betas_) == len(used)):
            alpha, beta = reuse.alpha_, (reuse.betas_ if acc.per_quantity else reuse.beta_)
        reg = BayesianLinearRegression(alpha=alpha, beta=beta,
                                       prior=self._prior(acc.phi_sq / max(acc.n_atoms, 1)))
        if acc.per_quantity:
            reg.fit_groups([acc.neq[q] for q in used])
        else:
            reg.fit_normal_equations(acc.neq["energy"])
        betas = np.broadcast_to(reg.betas_, (len(used),))
        self.noise_ = {q: float(acc.sigmas[q] / np.sqrt(b)) for q, b in zip(used, betas)}
        if warn and acc.per_quantity and {"energy", "forces"} <= set(self.noise_):
            inflation = (self.noise_["energy"] / self.noise_["forces"]) / (self.sigma_energy / self.sigma_forces)
            if inflation > 30:
                warnings.warn(
                    f"per-quantity evidence set the energy noise to {self.noise_['energy'] * 1000:.3g} "
                    f"meV/atom against {self.noise_['forces'] * 1000:.3g} meV/A for forces ({inflation:.0f}x "
                    "the sigma_energy/sigma_forces ratio): the energies are nearly ignored; the model "
                    "cannot fit energies and forces together at these weights (noise='shared' keeps them)",
                    stacklevel=3)
        self.regression_ = reg
        self.coef_ = self.regression_.coef_

    @property
    def covariance_(self) -> np.ndarray:
        """Posterior covariance of the coefficients, (p, p), formed on first use."""
        self._check_fitted()
        return self.regression_.covariance_

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet. Call 'fit' first.")

    def predict(self, frames, uncertainty: bool = False) -> Prediction:
        """Energies (eV), forces (eV/Angstrom), stresses (eV/Angstrom^3) and sigmas.

        Parameters
        ----------
        frames : Frame, ase.Atoms, or a sequence/Dataset of them
            Structures (labels are ignored).
        uncertainty : bool, default=False
            Also return ``energy_sigma`` (eV) and ``forces_sigma`` (eV/Angstrom per
            component, the same for the three components of an atom when calibrated):
            the calibrated error models' sigmas, or the posterior standard deviations;
            see ``uncertainty``.
        """
        self._check_fitted()
        frames = as_frames(frames)
        self._species_index(frames)
        if not uncertainty:
            return self._predict_adjoint(frames)
        return Prediction.concatenate([self._rows_prediction(block, rows, X, sidx, True)
                                 for block, rows, X, sidx in self._block_rows(frames, True, True)])

    def predict_described(self, block: Sequence[Frame], described: list[Any],
                          uncertainty: bool = False) -> Prediction:
        """:meth:`predict` of ``block`` from its descriptor, :meth:`describe`'s output
        (computed once for several models with the same :meth:`descriptor_key`)."""
        self._check_fitted()
        block = as_frames(block)
        rows, X, sidx = self._rows(block, True, True, described)
        return self._rows_prediction(block, rows, X, sidx, uncertainty)

    def _rows_prediction(self, block: list[Frame], rows: DesignRows, X: np.ndarray,
                         sidx: np.ndarray, uncertainty: bool) -> Prediction:
        """Energy (eV), forces (eV/A), stress (eV/A^3) of a block from its design rows;
        with ``uncertainty`` their sigmas (``energy_sigma``, ``forces_sigma``)."""
        F = rows.forces @ self.coef_
        s = rows.stress @ self.coef_
        s[[not f.pbc.all() for f in block]] = np.nan
        out = {"energy": rows.energy @ self.coef_ + self._e0_of(block), "forces": F, "stress": s,
               "offsets": np.concatenate([[0], np.cumsum([len(f) for f in block])])}
        if not uncertainty:
            return Prediction(**out)
        sig_e = np.sqrt(np.clip(self.regression_.variance_rows(rows.energy), 0, None))
        if self.energy_error_model_ is not None:
            sig_e = self.energy_error_model_.predict(sig_e, [len(f) for f in block])
        sig = self.posterior_force_sigma(rows)
        if self.error_model_ is not None:
            s_atom = self.error_model_.predict(np.linalg.norm(sig, axis=1), np.linalg.norm(F, axis=1),
                                               sidx, X)
            sig = np.repeat(s_atom[:, None], 3, axis=1)
        return Prediction(**out, energy_sigma=sig_e, forces_sigma=sig)

    def posterior_view(self) -> LinearPotential:
        """This fitted model with its sigmas the posterior's: a shallow copy without the
        error models (the same coefficients, so the same energies and forces); the data's
        part of the uncertainty, which labelling more frames reduces."""
        self._check_fitted()
        view = copy.copy(self)
        view.error_model_ = view.energy_error_model_ = None
        return view

    def posterior_force_sigma(self, rows: DesignRows) -> np.ndarray:
        """Posterior standard deviation of each force component of the design ``rows``
        (eV/Angstrom, shape (n_atoms, 3)), before any error model."""
        R = rows.forces.reshape(-1, rows.forces.shape[-1])
        return np.sqrt(np.clip(self.regression_.variance_rows(R), 0, None)).reshape(-1, 3)

    def _descriptor_species_weights(self) -> np.ndarray | None:
        """The fixed weights per descriptor species when the feature map is linear in the
        descriptor (``species_weights``; the rows in the descriptor's species order),
        else None."""
        of = getattr(self.fmap_, "species_weights", None)
        if of is None:
            return None
        W = of(self.coef_)
        rows = np.searchsorted(np.asarray(self.descriptor.species), np.asarray(self.species))
        out = np.zeros((self.descriptor.n_species, W.shape[1]))
        out[rows] = W
        return out

    def _predict_adjoint(self, frames: list[Frame]) -> Prediction:
        """Energies, forces, stresses through ``dE/dX`` and one descriptor VJP per block.

        Never forms per-feature gradients: the cost is that of the descriptor's values
        plus one pass over neighbour pairs (the fast path for MD).
        """
        energy, forces, stress = [], [], []
        weights = self._descriptor_species_weights()
        for block in self._blocks(frames):
            sidx = self._species_index(block)
            off = np.cumsum([0] + [len(f) for f in block])
            if weights is not None:  # linear in the descriptor: no feature rows needed
                atom_e, grad, strain = self.descriptor.energies_and_vjp(block, weights)
            else:
                X, grad, strain = self.descriptor.features_and_vjp(
                    block, lambda X, k: self.fmap_.input_gradient(X, sidx[off[k]:off[k + 1]],
                                                                 self.coef_))
                atom_e = self.fmap_.transform(X, sidx) @ self.coef_
            frame = np.repeat(np.arange(len(block)), np.diff(off))
            e = np.bincount(frame, weights=atom_e, minlength=len(block))
            energy.append(e + self._e0_of(block))
            forces.append(-grad)
            vol = np.array([f.volume if f.pbc.all() else np.nan for f in block])
            s = np.stack([strain[:, a, b] for a, b in VOIGT], axis=1) / vol[:, None]
            stress.append(s)
        offsets = np.concatenate([[0], np.cumsum([len(f) for f in frames])])
        return Prediction(energy=np.concatenate(energy), forces=np.concatenate(forces),
                          stress=np.concatenate(stress), offsets=offsets)

    # ---- persistence ----------------------------------------------------------------------
    def _hyper(self) -> dict[str, Any]:
        """The hyperparameters a model file stores (the descriptor and E0s go apart)."""
        return {k: v for k, v in self.get_params().items() if k not in ("descriptor", "e0")}

    def _feature_map_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {}

    def _restore_feature_map(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> FeatureMap:
        return self._species_blocks()

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        self._check_fitted()

        fm_params, fm_arrays = self._feature_map_state()
        params = {"descriptor": dict(self.descriptor.settings()), "hyper": self._hyper(),
                  "feature_map": fm_params, "alpha_": self.regression_.alpha_,
                  "beta_": self.regression_.beta_, "noise_": self.noise_}
        params["error_model"], em_arrays = (self.error_model_.get_state() if self.error_model_ is not None
                                            else (None, {}))
        params["energy_error_model"] = (self.energy_error_model_.get_state()
                                        if self.energy_error_model_ is not None else None)
        params["error_model_input"] = ERROR_MODEL_INPUT
        factor = self.regression_.posterior_factor_
        # the posterior as its factor F (covariance F F^T) when the fit gave one: the same
        # size, and no p^3 product to form it
        posterior = {"covariance": self.covariance_} if factor is None else {"posterior_factor": factor}
        arrays = {"coef": self.coef_, **posterior,
                  "e0_species": np.array(sorted(self.e0_), dtype=np.int64),
                  "e0_values": np.array([self.e0_[z] for z in sorted(self.e0_)]),
                  **{f"fmap_{k}": v for k, v in fm_arrays.items()},
                  **{f"errm_{k}": v for k, v in em_arrays.items()}}
        return params, arrays

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> LinearPotential:
        """Rebuild a fitted model from :meth:`get_state`'s output (a model file's contents).

        Every entry is checked first (type, range, shape against the descriptor); a bad
        one raises :class:`DataError` naming it (:func:`ml4m.load` adds the file).
        """
        params = check_mapping("params", params, required=_STATE_KEYS, error=DataError)
        hyper = cls.check_params(params["hyper"], prefix="params.hyper.", error=DataError)
        descriptor = check_mapping("params.descriptor", params["descriptor"], error=DataError)
        if check_bool("params.descriptor.average", descriptor.get("average", False),
                      error=DataError):
            raise DataError("params.descriptor.average must be false: a potential sums "
                            "per-atom energies")
        model = cls(from_settings(descriptor), **hyper)
        species, values = _state_e0(arrays)
        model.e0_ = {int(z): float(v) for z, v in zip(species, values)}
        missing = sorted(set(model.species.tolist()) - set(model.e0_))
        if missing:
            raise DataError(f"array 'e0_species' lacks the model's species {missing}")
        fm_arrays = {k[5:]: v for k, v in arrays.items() if k.startswith("fmap_")}
        model.fmap_ = model._restore_feature_map(
            check_mapping("params.feature_map", params["feature_map"], error=DataError), fm_arrays)
        p = model.fmap_.n_features
        model.coef_ = _state_array(arrays, "coef", (None,), kinds="f")
        if model.coef_.shape != (p,):
            raise DataError(f"coefficients have shape {model.coef_.shape}, the descriptor gives "
                            f"{p} features")
        noise = check_mapping("params.noise_", params.get("noise_", {}), error=DataError)
        model.noise_ = {q: check_float(f"params.noise_.{q}", v, low=0.0, error=DataError)
                        for q, v in noise.items()}
        model.error_model_ = model.energy_error_model_ = None
        if params.get("energy_error_model") is not None:
            model.energy_error_model_ = EnergyErrorModel.from_state(
                check_mapping("params.energy_error_model", params["energy_error_model"],
                              error=DataError))
        if params.get("error_model") is not None:
            em_arrays = {k[5:]: v for k, v in arrays.items() if k.startswith("errm_")}
            model.error_model_ = ForceErrorModel.from_state(
                check_mapping("params.error_model", params["error_model"], error=DataError),
                em_arrays)
            _check_error_model(model.error_model_, model.descriptor.n_features,
                               len(model.species))
            _check_error_model_input(params.get("error_model_input", ERROR_MODEL_INPUT))
        alpha, beta = (check_float(f"params.{k}", params[k], low=0.0, low_open=True,
                                   error=DataError) for k in ("alpha_", "beta_"))
        model.regression_ = BayesianLinearRegression(alpha=alpha, beta=beta)
        model.regression_.coef_ = model.coef_
        key = "posterior_factor" if "posterior_factor" in arrays else "covariance"
        if key not in arrays:
            raise DataError(f"model file has no posterior ('posterior_factor' or 'covariance') "
                            f"of {p} rows")
        post = _state_array(arrays, key, (p, p if key == "covariance" else None), kinds="f")
        if key == "posterior_factor":
            model.regression_.posterior_factor_ = post
        else:  # files written before the factor was saved
            model.regression_.covariance_ = post
        model.regression_.alpha_, model.regression_.beta_ = alpha, beta
        model.regression_.n_features_in_ = p
        return model


def json_dumps(value: Any) -> str:
    """``value`` as canonical JSON (sorted keys): a comparable key."""
    import json

    return json.dumps(value, sort_keys=True, default=str)


#: what the force error model reads besides the environment: the norm of each atom's
#: posterior force sigma (files that do not say were written for this input)
ERROR_MODEL_INPUT = "force_posterior"


def _check_error_model_input(value: Any) -> None:
    """Refuse a force error model fitted on another input than the one predict feeds it
    (its coefficient on the log sigma would scale a different quantity: no exact
    conversion exists)."""
    if value != ERROR_MODEL_INPUT:
        raise DataError(f"params.error_model_input is {value!r}: its force error model was "
                        f"fitted on that sigma, but this ml4m feeds it {ERROR_MODEL_INPUT!r} "
                        "(the posterior force sigma), which would mis-scale every predicted "
                        "sigma; refit the model (ml4m fit with the same config)")


#: entries every linear model file's params hold
_STATE_KEYS = ("descriptor", "hyper", "feature_map", "alpha_", "beta_")


def _state_array(arrays: dict[str, np.ndarray], name: str, shape: tuple[int | None, ...],
                 kinds: str = "fiu") -> np.ndarray:
    """A model file's array ``name`` of the expected shape (DataError naming it)."""
    if name not in arrays:
        raise DataError(f"array {name!r} is missing")
    return check_array(f"array {name!r}", arrays[name], shape=shape, kinds=kinds)


def _state_e0(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Reference energies of a model file: known elements, one float each."""
    species = _state_array(arrays, "e0_species", (None,), kinds="iu")
    values = _state_array(arrays, "e0_values", (len(species),), kinds="f")
    if species.size and (species.min() < 1 or species.max() > 118):
        raise DataError(f"array 'e0_species' holds atomic numbers outside [1, 118]: "
                        f"{species.tolist()}")
    return species, values


def _check_error_model(em: ForceErrorModel, n_features: int, n_species: int) -> None:
    """The force error model's arrays against the descriptor (columns) and species."""
    where = {"error": DataError}
    check_int("params.error_model.n_species", em.n_species, low=n_species, high=n_species,
              **where)
    mean = check_array("array 'errm_mean'", em.mean_, shape=(n_features,), kinds="f")
    scale = check_array("array 'errm_scale'", em.scale_, shape=(n_features,), kinds="f")
    if not np.all(scale > 0):
        raise DataError("array 'errm_scale' must be > 0 everywhere")
    comps = check_array("array 'errm_components'", em.components_, shape=(n_features, None),
                        kinds="f")
    k = comps.shape[1]
    check_array("array 'errm_coef'", em.coef_, shape=(3 + n_species * (1 + k),), kinds="f")
    check_float("params.error_model.force_scale", em.force_scale_, low=0.0, low_open=True,
                **where)
    em.mean_, em.scale_, em.components_ = mean, scale, comps


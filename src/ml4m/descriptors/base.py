"""The descriptor template: species handling, validation, frames in, one result type out.

Every local descriptor here is a function of the pair vectors ``r_ij`` (from centre
``i`` to the images of its neighbours ``j`` within ``r_cut``). A subclass implements
:meth:`Descriptor._frame_features`, which returns the per-atom features and, when asked,
the *pair gradients* ``g_p = d B_i / d r_ij`` for every pair ``p = (i, j, shift)``.
The base class turns those into the public gradient layout:

* position derivatives, sparse per (centre, atom) pair, in no particular order: for
  every centre ``i`` an entry for itself and one for every distinct neighbour atom
  ``k != i`` (each pair once),
  ``d B_i / d r_k = sum_{p: j_p = k} g_p - delta_ik sum_p g_p``
  (all periodic images of ``k`` summed);
* strain derivatives ``d B_i / d eps_ab = sum_p g_{p,a} r_{ij,b}`` for the homogeneous
  deformation ``r -> (1 + eps) r`` of positions and cell (cell rows transform as
  ``cell @ (1 + eps).T``).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from ase import Atoms
from ase.data import atomic_numbers as _symbol_to_z
from ase.data import chemical_symbols

from ml4m.data.frames import Dataset, Frame
from ml4m.data.neighbors import NeighborList, neighbor_list
from ml4m.errors import ConfigError, DataError
from ml4m.parallel import resolve_n_jobs, thread_map
from ml4m.resources import check_memory, estimate_neighbors
from ml4m.validation import check_float, check_int

__all__ = ["Descriptor", "DescriptorResult", "as_frames", "parse_species", "padded_layout"]


@dataclass
class DescriptorResult:
    """Descriptors of a list of frames.

    Attributes
    ----------
    features : ndarray of shape (n_rows, n_features)
        One row per atom (frames concatenated in order), or one per frame when the
        descriptor averages.
    frame : ndarray of shape (n_rows,), int64
        Frame index of each row.
    numbers : ndarray of shape (n_rows,), int64
        Atomic number of each row's centre; ``-1`` for averaged (per-frame) rows.
    atom : ndarray of shape (n_rows,), int64
        Index of the centre within its frame; ``-1`` for averaged rows.
    gradient_row : ndarray of shape (n_gradients,), int64, optional
        Row of ``features`` that each gradient entry differentiates.
    gradient_atom : ndarray of shape (n_gradients,), int64, optional
        Global index (frames concatenated) of the atom moved.
    gradients : ndarray of shape (n_gradients, 3, n_features), optional
        ``d features[gradient_row] / d positions[gradient_atom]``, per Angstrom.
        Pairs not listed have zero derivative.
    strain_gradients : ndarray of shape (n_rows, 3, 3, n_features), optional
        ``d features[row] / d eps_ab`` for the deformation ``r -> (1 + eps) r``
        (dimensionless).
    """

    features: np.ndarray
    frame: np.ndarray
    numbers: np.ndarray
    atom: np.ndarray
    gradient_row: np.ndarray | None = None
    gradient_atom: np.ndarray | None = None
    gradients: np.ndarray | None = None
    strain_gradients: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.features)


def parse_species(species: Iterable[str | int] | str | None) -> tuple[int, ...]:
    """Sorted unique atomic numbers from symbols or numbers.

    Parameters
    ----------
    species : iterable of str or int, or a comma-separated str
        E.g. ``["Cu", "Au"]``, ``[29, 79]`` or ``"Cu,Au"``.

    Returns
    -------
    tuple of int
    """
    if species is None:
        raise ConfigError("species must be given (chemical symbols or atomic numbers), got None")
    if isinstance(species, str):
        species = [s for s in species.replace(" ", "").split(",") if s]
    out = set()
    for s in species:
        if isinstance(s, (int, np.integer)) and 0 < int(s) < len(chemical_symbols):
            out.add(int(s))
        elif isinstance(s, str) and s in _symbol_to_z and s != "X":
            out.add(_symbol_to_z[s])
        else:
            raise ConfigError(f"species: unknown element {s!r}")
    if not out:
        raise ConfigError("species must name at least one element, got an empty list")
    return tuple(sorted(out))


def as_frames(frames: Any) -> list[Frame]:
    """Accept one Frame/Atoms, a Dataset or a sequence of them; return a list of frames."""
    if isinstance(frames, (Frame, Atoms)):
        frames = [frames]
    if isinstance(frames, Dataset):
        return list(frames.frames)
    out = []
    for k, f in enumerate(frames):
        if isinstance(f, Atoms):
            f = Frame.from_atoms(f)
        elif not isinstance(f, Frame):
            raise DataError(f"expected a Frame or ase.Atoms, got {type(f).__name__}", frame=k)
        out.append(f)
    return out


def padded_layout(
    key: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Group pair entries by ``key`` into zero-padded blocks.

    Parameters
    ----------
    key : ndarray of shape (n_pairs,), int
        Group of each pair (e.g. its centre), in ``[0, n_groups)``.
    n_groups : int
        Number of groups.

    Returns
    -------
    order : ndarray of shape (n_pairs,)
        Pairs sorted by group (stable).
    group : ndarray of shape (n_pairs,)
        ``key[order]``.
    slot : ndarray of shape (n_pairs,)
        Position of ``order[k]`` within its group.
    width : int
        Largest group size (at least 1).
    """
    order = np.argsort(key, kind="stable")
    ks = key[order]
    counts = np.bincount(ks, minlength=n_groups)
    starts = np.cumsum(counts) - counts
    slot = np.arange(len(ks)) - starts[ks]
    return order, ks, slot, max(1, int(counts.max()) if len(ks) else 1)


def _reduce_pair_gradients(
    nl: NeighborList, g: np.ndarray, n_atoms: int, allow_fast: bool = True, strain: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Pair gradients ``(P, 3, F)`` to (centre, atom) gradients and strain gradients.

    ``g`` may carry ``n_atoms`` spare rows after the ``P`` pairs, ``(P + N, 3, F)``: the
    self entries are then written there instead of into a new (P + N)-row copy.
    ``strain=False`` skips the strain gradients (returned as None)."""
    P, N = len(nl.i), n_atoms
    spare = len(g) == P + N and N > 0
    pairs = g[:P]
    F = g.shape[-1]
    ar = np.arange(P)
    # one pass over g: rows 4 i + 0 collect -g (self entries), rows 4 i + 1 + b collect
    # g * r_b (strain derivative d/d eps_ab)
    w = 4 if strain else 1
    rows = (w * nl.i[:, None] + np.arange(w)).ravel()
    data = (np.concatenate([-np.ones((P, 1)), nl.vectors], axis=1) if strain else -np.ones((P, 1))).ravel()
    M4 = sp.csr_matrix((data, (rows, np.repeat(ar, w))), shape=(w * N, max(P, 1)))
    gflat = pairs.reshape(P, 3 * F) if P else np.zeros((1, 3 * F))
    red = np.asarray(M4 @ gflat).reshape(N, w, 3, F)
    strain_g = np.ascontiguousarray(red[:, 1:].transpose(0, 2, 1, 3)) if strain else None  # (N, a, b, F)
    pair_keys = nl.i * N + nl.j
    if allow_fast and P and np.all(nl.j != nl.i) and np.all(np.diff(np.sort(pair_keys)) > 0):
        # every (i, j) appears once (no periodic images of the same atom): the pair
        # gradients are the entries; the self entries are minus their sums per centre
        if spare:
            g[P:] = red[:, 0]
            entries = g
        else:
            entries = np.concatenate([pairs, red[:, 0]])
        return (np.concatenate([nl.i, np.arange(N)]), np.concatenate([nl.j, np.arange(N)]),
                entries, strain_g)
    keys = np.concatenate([pair_keys, nl.i * N + nl.i, np.arange(N) * (N + 1)])
    uniq, inv = np.unique(keys, return_inverse=True)
    data = np.concatenate([np.ones(P), -np.ones(P), np.zeros(N)])
    cols = np.concatenate([ar, ar, np.zeros(N, dtype=np.int64)])
    M = sp.csr_matrix((data, (inv, cols)), shape=(len(uniq), max(P, 1)))
    grads = np.asarray(M @ gflat).reshape(len(uniq), 3, F)
    return uniq // N, uniq % N, grads, strain_g


class Descriptor(ABC):
    """Base class of ml4m descriptors (see module docstring for the gradient layout).

    Parameters
    ----------
    species : iterable of str or int
        Elements the descriptor is set up for (symbols or atomic numbers); a frame
        with any other element raises :class:`~ml4m.errors.DataError`.
    r_cut : float
        Cutoff radius, Angstrom (> 0).
    """

    #: short name used by the CLI and :func:`ml4m.descriptors.describe_frames`
    name: str = ""

    def __init__(
        self, species: Iterable[str | int], r_cut: float, average: bool = False
    ) -> None:
        self.average = bool(average)
        self.species = parse_species(species)
        self.r_cut = self._check_positive("r_cut", r_cut)
        self._z_index = np.full(max(self.species) + 1, -1, dtype=np.int64)
        self._z_index[list(self.species)] = np.arange(len(self.species))

    # ---- validation helpers -------------------------------------------------------
    @staticmethod
    def _check_positive(name: str, value: Any) -> float:
        """A finite number > 0 (see :func:`ml4m.validation.check_float`)."""
        return check_float(name, value, low=0.0, low_open=True)

    @staticmethod
    def _check_int(name: str, value: Any, low: int, high: int) -> int:
        """An integer in ``[low, high]`` (see :func:`ml4m.validation.check_int`)."""
        return check_int(name, value, low, high)

    @property
    def n_species(self) -> int:
        """Number of species."""
        return len(self.species)

    @property
    def species_symbols(self) -> list[str]:
        """Chemical symbols of :attr:`species`."""
        return [chemical_symbols[z] for z in self.species]

    # ---- to implement --------------------------------------------------------------
    @property
    @abstractmethod
    def n_features(self) -> int:
        """Length of one feature vector."""

    @abstractmethod
    def feature_names(self) -> list[str]:
        """One name per feature, in the stable, documented order of the columns."""

    @abstractmethod
    def _frame_features(
        self, species_index: np.ndarray, nl: NeighborList, gradients: bool,
        gradient_columns: Sequence[np.ndarray | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-atom features ``(N, F)`` and pair gradients ``(P, 3, F)`` (or None).

        ``gradient_columns`` (see :meth:`compute_frame`) lets a descriptor skip the
        gradients a caller does not read; one that cannot skip computes them all."""

    def settings(self) -> dict[str, Any]:
        """The hyperparameters as a JSON-serialisable dict."""
        return {"descriptor": self.name, "species": self.species_symbols, "r_cut": self.r_cut,
                "average": self.average}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items() if k != "descriptor")
        return f"{type(self).__name__}({args})"

    # ---- the template --------------------------------------------------------------
    def _check_frame(self, frame: Frame, k: int) -> np.ndarray:
        path = frame.source[0] if frame.source else None
        index = frame.source[1] if frame.source else k
        if len(frame) == 0:
            raise DataError("structure has no atoms: nothing to describe", path, index)
        if not np.all(np.isfinite(frame.positions)):
            raise DataError("positions contain NaN or infinite values", path, index)
        pbc = np.asarray(frame.pbc, dtype=bool)
        if pbc.any():
            periodic = np.asarray(frame.cell, dtype=np.float64)[pbc]
            if np.linalg.matrix_rank(periodic, tol=1e-6) < pbc.sum():
                raise DataError("periodic structure with a zero-volume cell (periodic cell "
                                "vectors are zero or linearly dependent)", path, index)
        z = np.asarray(frame.numbers, dtype=np.int64)
        idx = np.where(z < len(self._z_index), self._z_index[np.minimum(z, len(self._z_index) - 1)],
                       -1)
        if np.any(idx < 0):
            bad = sorted({int(x) for x in z[idx < 0]})
            names = ", ".join(f"{chemical_symbols[b]} (Z={b})" for b in bad)
            raise DataError(
                f"element(s) {names} not among the descriptor's species "
                f"{self.species_symbols}; set species to include them", path, index)
        return idx

    def compute_frame(
        self, frame: Frame | Atoms, gradients: bool = False, index: int = 0,
        gradient_columns: Sequence[np.ndarray | None] | None = None, strain: bool = True,
    ) -> DescriptorResult:
        """Descriptors of one structure (see :meth:`compute` for the layout).

        Parameters
        ----------
        frame : Frame or ase.Atoms
            The structure (positions in Angstrom).
        gradients : bool, default=False
            Also compute position and strain derivatives.
        index : int, default=0
            Frame index written to ``result.frame`` and used in error messages when the
            frame does not know its source.
        gradient_columns : sequence of (array of int or None), optional
            Per species (in the order of :attr:`species`): the feature columns whose
            gradients the caller reads for rows centred on an atom of that species
            (``None``: all). The gradients of the other columns of those rows may then
            be left at zero, which saves work when a model keeps a smaller basis for
            some species (:class:`~ml4m.descriptors.ACE` does).
        strain : bool, default=True
            With ``gradients``, also the strain derivatives; ``False`` leaves
            ``strain_gradients`` None (a fit without stresses does not read them).

        Returns
        -------
        DescriptorResult
            Atom indices (``gradient_atom``) are local to this frame.
        """
        if isinstance(frame, Atoms):
            frame = Frame.from_atoms(frame)
        idx = self._check_frame(frame, index)
        nl = neighbor_list(frame, self.r_cut, full_list=True)
        X, g = self._frame_features(idx, nl, gradients, gradient_columns)
        N = len(frame)
        res = DescriptorResult(
            features=X, frame=np.full(N, index, dtype=np.int64),
            numbers=np.asarray(frame.numbers, dtype=np.int64).copy(),
            atom=np.arange(N, dtype=np.int64))
        if gradients:
            res.gradient_row, res.gradient_atom, res.gradients, res.strain_gradients = \
                _reduce_pair_gradients(nl, g, N, strain=strain)
        return _average(res, N) if self.average else res

    def compute(
        self,
        frames: Any,
        gradients: bool = False,
        n_jobs: int | None = 1,
        progress: bool = False,
        max_memory: int | str | None = None,
    ) -> DescriptorResult:
        """Descriptors of every atom of every frame.

        Parameters
        ----------
        frames : Frame, ase.Atoms, Dataset or sequence of Frame/Atoms
            Structures (positions in Angstrom).
        gradients : bool, default=False
            Also compute position and strain derivatives (see module docstring).
        n_jobs : int or None, default=1
            Worker threads over frames (``-1``: all cores).
        progress : bool, default=False
            Show a progress bar on stderr.
        max_memory : int or str, optional
            Memory limit, bytes or e.g. ``"4GB"`` (default: half the available memory):
            the work is refused before it starts when :meth:`memory_estimate` exceeds it.

        Returns
        -------
        DescriptorResult
            Rows are atoms, frames concatenated in order.

        Raises
        ------
        DataError
            A frame is empty, has non-finite positions, a zero-volume periodic cell or an
            element not in :attr:`species` (the message names the frame).
        ConfigError
            The estimated memory exceeds ``max_memory`` (e.g. a cutoff far larger than
            the structures need); nothing is computed.
        """
        frames = as_frames(frames)
        self.check_memory(frames, gradients, n_jobs, max_memory)
        parts = thread_map(lambda k: self.compute_frame(frames[k], gradients, k),
                           range(len(frames)), n_jobs, progress, label=f"{self.name} descriptors")
        return _concatenate(parts, gradients, self.n_features, [len(f) for f in frames])

    # ---- resource guard -------------------------------------------------------------
    def memory_estimate(self, frames: Any, gradients: bool = False,
                        n_jobs: int | None = 1) -> tuple[float, float]:
        """Estimated peak memory of :meth:`compute`, bytes, and neighbours per atom.

        The result's rows (``rows x n_features x 8`` bytes), with ``gradients`` its
        gradient entries (one per centre and distinct neighbour, ``x 3 x n_features``)
        and strain gradients, plus the pair arrays of the largest frame once per worker
        (neighbour list and one feature row per pair; three more with gradients).
        Neighbours per atom come from the number density
        (:func:`~ml4m.resources.estimate_neighbors`).

        Parameters
        ----------
        frames : Frame, ase.Atoms, Dataset or sequence of them
        gradients : bool, default=False
        n_jobs : int or None, default=1

        Returns
        -------
        bytes : float
        neighbors : float
            Mean neighbours per atom within :attr:`r_cut`.
        """
        frames = as_frames(frames)
        if not frames:
            return 0.0, 0.0
        atoms = np.array([len(f) for f in frames], dtype=np.float64)
        nn = np.asarray(estimate_neighbors(frames, self.r_cut, per_frame=True))
        F = float(self.n_features)
        rows = len(frames) if self.average else atoms.sum()
        total = rows * F * 8.0
        pair_bytes = 8.0 * (10.0 + F) + (8.0 * 3.0 * F * 3.0 if gradients else 0.0)
        if gradients:
            total += float(np.sum(atoms * (1.0 + np.minimum(nn, atoms)))) * 3.0 * F * 8.0
            total += atoms.sum() * 9.0 * F * 8.0
        workers = min(resolve_n_jobs(n_jobs), len(frames))
        total += workers * float(np.max(atoms * nn)) * pair_bytes
        return total, float(np.dot(atoms, nn) / max(atoms.sum(), 1.0))

    def check_memory(self, frames: Any, gradients: bool = False, n_jobs: int | None = 1,
                     max_memory: int | str | None = None) -> None:
        """Raise :class:`~ml4m.errors.ConfigError` when :meth:`memory_estimate` exceeds
        ``max_memory`` (default: half the available memory); the message gives both."""
        frames = as_frames(frames)
        need, nn = self.memory_estimate(frames, gradients, n_jobs)
        n_atoms = sum(len(f) for f in frames)
        what = (f"{self.name.upper() or type(self).__name__} descriptors"
                f"{' with gradients' if gradients else ''} of {n_atoms:,} atoms in "
                f"{len(frames):,} frames (about {nn:,.3g} neighbours per atom within "
                f"r_cut = {self.r_cut:g} A)")
        check_memory(need, what, max_memory,
                     hint="lower the cutoff (r_cut, --r-cut), describe fewer frames, or "
                          "raise max_memory (--max-memory)")

    # ---- vector-Jacobian products (forces of models built on the descriptor) -------
    def vjp(self, frames: Any, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gradients of ``sum_rows weights[row] . features[row]`` (a scalar per frame).

        This is what a model built on the descriptor needs for forces and stress:
        with ``weights = dE/dX`` it returns ``dE/dr`` and ``dE/d strain`` without
        forming the per-feature gradients (``compute(..., gradients=True)``).

        Parameters
        ----------
        frames : Frame, ase.Atoms, Dataset or sequence of them
            Structures (Angstrom).
        weights : ndarray of shape (n_atoms_total, n_features)
            One weight vector per row of :meth:`compute`'s features.

        Returns
        -------
        position_gradients : ndarray of shape (n_atoms_total, 3)
            ``d/d r_a``, per Angstrom.
        strain_gradients : ndarray of shape (n_frames, 3, 3)
            ``d/d eps_ab`` for the homogeneous deformation ``r -> (1 + eps) r``.
        """
        if self.average:
            raise ConfigError("vjp needs per-atom rows (average=False)")
        frames = as_frames(frames)
        weights = np.asarray(weights, dtype=float)
        n_total = sum(len(f) for f in frames)
        if weights.shape != (n_total, self.n_features):
            raise ConfigError(f"weights must have shape ({n_total}, {self.n_features}), "
                              f"got {weights.shape}")
        offsets = np.cumsum([0] + [len(f) for f in frames])
        _, grad, strain = self.features_and_vjp(
            frames, lambda X, k: weights[offsets[k]:offsets[k + 1]])
        return grad, strain

    def features_and_vjp(
        self, frames: Any, weight_fn: Callable[[np.ndarray, int], np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features, then the VJP with weights computed from them, in one pass per frame.

        For a model ``E = sum_i e(X_i)`` call it with ``weight_fn = dE/dX``: energy,
        forces and stress then cost one neighbour list and one evaluation of the
        descriptor per frame (:meth:`compute` followed by :meth:`vjp` costs two).

        Parameters
        ----------
        frames : Frame, ase.Atoms, Dataset or sequence of them
            Structures (Angstrom).
        weight_fn : callable(features, k) -> ndarray
            Given the features ``(n_atoms_k, n_features)`` of frame ``k``, the weights
            of the same shape.

        Returns
        -------
        features : ndarray of shape (n_atoms_total, n_features)
        position_gradients : ndarray of shape (n_atoms_total, 3)
            ``d (sum W . X) / d r_a``, per Angstrom.
        strain_gradients : ndarray of shape (n_frames, 3, 3)
        """
        return self._vjp_frames(
            frames, lambda idx, nl, k: self._frame_features_vjp(idx, nl, lambda X: weight_fn(X, k)),
            (0, self.n_features), "features_and_vjp")

    def energies_and_vjp(
        self, frames: Any, species_weights: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-atom ``e_i = W_{s_i} . X_i`` with weights fixed per centre species, and the
        VJP of their sum (a linear model's energy, forces and stress).

        Equals :meth:`features_and_vjp` with ``weight_fn`` returning ``W_{s_i}`` rows
        followed by the row sums; descriptors that can evaluate the sum without forming
        the features (ACE: bilinear forms of the density) override
        :meth:`_frame_energies_vjp`.

        Parameters
        ----------
        frames : Frame, ase.Atoms, Dataset or sequence of them
            Structures (Angstrom).
        species_weights : ndarray of shape (n_species, n_features)
            Row ``s``: the weights of centres of ``self.species[s]`` (energy per feature
            unit, e.g. eV).

        Returns
        -------
        energies : ndarray of shape (n_atoms_total,)
        position_gradients : ndarray of shape (n_atoms_total, 3)
            ``d (sum_i e_i) / d r_a``, per Angstrom.
        strain_gradients : ndarray of shape (n_frames, 3, 3)
        """
        W = np.asarray(species_weights, dtype=float)
        if W.shape != (self.n_species, self.n_features):
            raise ConfigError(f"species_weights must have shape ({self.n_species}, "
                              f"{self.n_features}), got {W.shape}")
        return self._vjp_frames(frames, lambda idx, nl, k: self._frame_energies_vjp(idx, nl, W),
                                (0,), "energies_and_vjp")

    def _vjp_frames(self, frames: Any, frame_fn: Callable, empty_shape: tuple[int, ...],
                    name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per frame ``rows, pair_gradients = frame_fn(species_index, nl, k)``; the rows
        concatenated, the pair gradients summed onto atoms and strains."""
        if self.average:
            raise ConfigError(f"{name} needs per-atom rows (average=False)")
        frames = as_frames(frames)
        grad = np.zeros((sum(len(f) for f in frames), 3))
        strain = np.zeros((len(frames), 3, 3))
        rows = [np.zeros(empty_shape)]
        start = 0
        for k, frame in enumerate(frames):
            idx = self._check_frame(frame, k)
            nl = neighbor_list(frame, self.r_cut, full_list=True)
            n = len(frame)
            X, pg = frame_fn(idx, nl, k)
            rows.append(X)
            if len(pg):
                for x in range(3):  # sum over pairs onto atoms: + on j, - on i
                    grad[start:start + n, x] = (np.bincount(nl.j, pg[:, x], minlength=n)
                                                - np.bincount(nl.i, pg[:, x], minlength=n))
                strain[k] = pg.T @ nl.vectors
            start += n
        return np.concatenate(rows), grad, strain

    def _frame_energies_vjp(self, species_index: np.ndarray, nl: NeighborList,
                            species_weights: np.ndarray):
        """``e_i = W_{s_i} . X_i`` ``(N,)`` of one frame and ``d sum_i e_i / d r_ij`` per
        pair, through :meth:`_frame_features_vjp`."""
        W = species_weights[species_index]
        X, pg = self._frame_features_vjp(species_index, nl, lambda X: W)
        return np.einsum("nf,nf->n", X, W), pg

    def _frame_features_vjp(self, species_index: np.ndarray, nl: NeighborList,
                            weight_fn: Callable[[np.ndarray], np.ndarray]):
        """Features ``(N, F)`` of one frame and ``d (sum_i W_i . X_i) / d r_ij`` per pair
        ``(P, 3)`` for ``W = weight_fn(X)``, here from one evaluation with the full pair
        gradients; subclasses with an adjoint that never forms them override it (ACE)."""
        X, g = self._frame_features(species_index, nl, True)
        W = weight_fn(X)
        return X, np.einsum("pxf,pf->px", g, W[nl.i]) if len(nl.i) else np.zeros((0, 3))

    def to_meta(self) -> str:
        """:meth:`settings` as a JSON string."""
        return json.dumps(self.settings())


def _average(res: DescriptorResult, n_atoms: int) -> DescriptorResult:
    """One row per frame: the mean over its atoms (gradients averaged likewise)."""
    out = DescriptorResult(
        features=res.features.mean(axis=0, keepdims=True), frame=res.frame[:1].copy(),
        numbers=np.full(1, -1, dtype=np.int64), atom=np.full(1, -1, dtype=np.int64))
    if res.gradients is not None:
        F = res.features.shape[1]
        M = sp.csr_matrix((np.full(len(res.gradient_atom), 1.0 / n_atoms),
                           (res.gradient_atom, np.arange(len(res.gradient_atom)))),
                          shape=(n_atoms, len(res.gradient_atom)))
        out.gradients = np.asarray(M @ res.gradients.reshape(-1, 3 * F)).reshape(n_atoms, 3, F)
        out.gradient_row = np.zeros(n_atoms, dtype=np.int64)
        out.gradient_atom = np.arange(n_atoms, dtype=np.int64)
        if res.strain_gradients is not None:
            out.strain_gradients = res.strain_gradients.mean(axis=0, keepdims=True)
    return out


def _concatenate(
    parts: Sequence[DescriptorResult], gradients: bool, n_features: int, n_atoms: Sequence[int]
) -> DescriptorResult:
    if not parts:
        e = np.zeros(0, dtype=np.int64)
        res = DescriptorResult(np.zeros((0, n_features)), e, e, e)
        if gradients:
            res.gradient_row, res.gradient_atom = e, e
            res.gradients = np.zeros((0, 3, n_features))
            res.strain_gradients = np.zeros((0, 3, 3, n_features))
        return res
    if len(parts) == 1:
        return parts[0]
    res = DescriptorResult(
        features=np.concatenate([p.features for p in parts]),
        frame=np.concatenate([p.frame for p in parts]),
        numbers=np.concatenate([p.numbers for p in parts]),
        atom=np.concatenate([p.atom for p in parts]),
    )
    if gradients:
        row_off = np.cumsum([0] + [len(p.features) for p in parts])
        atom_off = np.cumsum([0] + list(n_atoms))
        res.gradient_row = np.concatenate([p.gradient_row + o for p, o in zip(parts, row_off)])
        res.gradient_atom = np.concatenate([p.gradient_atom + o
                                            for p, o in zip(parts, atom_off)])
        res.gradients = np.concatenate([p.gradients for p in parts])
        res.strain_gradients = np.concatenate([p.strain_gradients for p in parts])
    return res

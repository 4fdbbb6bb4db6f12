"""Neighbour lists, for one frame or many frames at once.

Periodic, open and mixed boundary conditions are supported, including cells smaller
than the cutoff, where an atom sees its own periodic images. Fully periodic structures
go through vesin's cell list. Open and mixed ones go through a k-d tree over the atoms
and the periodic images they need: vesin's cell list spans the atoms' bounding box,
and a box far larger than the cutoff (two atoms 1e6 Angstrom apart, a periodic cell of
1e6 Angstrom next to an open direction) kills the process with SIGFPE, a cutoff far
larger than a molecule never returns.

Before any search the expected number of pairs is checked against the memory limit
(:func:`ml4m.resources.check_memory`): a cutoff of 1e4 Angstrom in a crystal is refused
with a :class:`~ml4m.errors.ConfigError` instead of exhausting memory.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from ml4m.data.frames import Frame
from ml4m.errors import ConfigError, DataError
from ml4m.resources import check_memory, estimate_neighbors

#: bytes held per pair of a list (i, j, shifts, vectors, distance, and their sort)
PAIR_BYTES = 96
_SMALL = 2**26  # lists that cannot exceed this many bytes skip the neighbour estimate

__all__ = ["NeighborList", "neighbor_list", "batched_neighbor_list",
           "concatenate_neighbor_lists", "PairMinima", "shortest_distances",
           "pair_inner_radii", "verlet_reuse"]


@dataclass(frozen=True)
class NeighborList:
    """Pairs ``(i, j)`` within a cutoff, with their geometry.

    Attributes
    ----------
    i, j : ndarray of shape (n_pairs,), int64
        Centre and neighbour atom indices (global indices for batched lists).
    shifts : ndarray of shape (n_pairs, 3), int64
        Periodic image of ``j``: ``r_ij = r_j + shifts @ cell - r_i``.
    vectors : ndarray of shape (n_pairs, 3), Angstrom
        ``r_ij`` from atom i to the image of atom j.
    distances : ndarray of shape (n_pairs,), Angstrom
        ``|r_ij|``.
    cutoff : float
        Cutoff radius, Angstrom.
    """

    i: np.ndarray
    j: np.ndarray
    shifts: np.ndarray
    vectors: np.ndarray
    distances: np.ndarray
    cutoff: float

    def __len__(self) -> int:
        return len(self.i)


def _vesin():
    """Import vesin lazily, without letting it import PyTorch.

    vesin imports torch (about a second and 200 MB) when it is installed, only to accept
    torch tensors; ml4m passes numpy arrays. If torch is not loaded yet, it is hidden
    while vesin is imported, so data-only commands start fast and stay small.
    """
    if "vesin" in sys.modules or "torch" in sys.modules:
        import vesin

        return vesin
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` fail
    try:
        import vesin
    finally:
        del sys.modules["torch"]
    return vesin


@dataclass(frozen=True)
class _Built:
    """A list built with ``cutoff + skin`` for the atoms at ``positions``."""

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    pairs: NeighborList


#: per active :func:`verlet_reuse` block: its skin (Angstrom) and the lists it built
_REUSE: ContextVar[tuple[float, dict] | None] = ContextVar("ml4m_verlet_reuse", default=None)


#: the skin of MD runs' neighbour lists: built this far beyond their cutoff and reused
#: until an atom has moved half of it, Angstrom
MD_SKIN = 0.4


@contextmanager
def verlet_reuse(skin: float = MD_SKIN) -> Iterator[None]:
    """Within this block, :func:`neighbor_list` reuses its lists while atoms move little.

    A list is built once with ``cutoff + skin`` and then only filtered (the vectors
    recomputed from the new positions) until some atom has moved more than ``skin / 2``
    from where it was at the build, or the cell, the periodicity or the atoms change.
    No pair closer than ``cutoff`` can be missed then (Verlet's argument), so the
    result equals a fresh search (pairs in the same order). For MD, where consecutive
    steps move atoms by hundredths of an Angstrom.

    Parameters
    ----------
    skin : float, default=0.5
        Angstrom (> 0).
    """
    if not np.isfinite(skin) or skin <= 0:
        raise ConfigError(f"skin must be a finite, positive number of Angstrom, got {skin}")
    token = _REUSE.set((float(skin), {}))
    try:
        yield
    finally:
        _REUSE.reset(token)


def _reused(frame: Frame | Atoms, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray,
            cutoff: float, full_list: bool, max_memory) -> NeighborList:
    """The list inside an active :func:`verlet_reuse` block: the block's skin list for
    this cutoff, filtered (built again first when atoms moved too far)."""
    skin, built = _REUSE.get()
    key = (cutoff, full_list)
    numbers = np.asarray(frame.numbers)
    entry = built.get(key)
    if (entry is None or not np.array_equal(entry.numbers, numbers)
            or not np.array_equal(entry.cell, cell) or not np.array_equal(entry.pbc, pbc)
            or np.max(np.einsum("ax,ax->a", positions - entry.positions,
                                positions - entry.positions), initial=0.0) > (skin / 2) ** 2):
        pairs = _search(frame, positions, cell, pbc, cutoff + skin, full_list, max_memory)
        entry = _Built(numbers.copy(), positions.copy(), cell.copy(), pbc.copy(), pairs)
        built[key] = entry  # entries are immutable: concurrent readers see one or the other
    p = entry.pairs
    vectors = positions[p.j] + p.shifts @ cell - positions[p.i]
    distances = np.sqrt(np.einsum("px,px->p", vectors, vectors))
    keep = distances < cutoff
    return NeighborList(i=p.i[keep], j=p.j[keep], shifts=p.shifts[keep], vectors=vectors[keep],
                        distances=distances[keep], cutoff=cutoff)


def _geometry(frame: Frame | Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(frame, Atoms):
        return frame.positions, np.asarray(frame.cell[:]), np.asarray(frame.pbc)
    return frame.positions, frame.cell, frame.pbc


def neighbor_list(
    frame: Frame | Atoms, cutoff: float, full_list: bool = True,
    max_memory: int | str | None = None,
) -> NeighborList:
    """All pairs closer than ``cutoff`` of one structure.

    Parameters
    ----------
    frame : Frame or ase.Atoms
        The structure.
    cutoff : float
        Cutoff radius, Angstrom (> 0).
    full_list : bool, default=True
        Both ``(i, j)`` and ``(j, i)`` when True; each pair once when False.
    max_memory : int or str, optional
        Memory limit for the list (bytes or e.g. ``"4GB"``; default half the available
        memory, see :func:`ml4m.resources.check_memory`).

    Returns
    -------
    NeighborList
        Pairs sorted by ``i``, with shifts, vectors and distances.

    Raises
    ------
    ConfigError
        Bad cutoff, or the expected list exceeds the memory limit.
    DataError
        Non-finite positions, or periodic cell vectors that are zero or linearly dependent.
    """
    if not np.isfinite(cutoff) or cutoff <= 0:
        raise ConfigError(f"cutoff must be a finite, positive number of Angstrom, got {cutoff}")
    positions, cell, pbc = _geometry(frame)
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    box = np.ascontiguousarray(cell, dtype=np.float64)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    if not np.all(np.isfinite(positions)):
        raise DataError("positions contain NaN or infinite values: no neighbour list")
    if pbc.any() and np.linalg.matrix_rank(box[pbc], tol=1e-6) < pbc.sum():
        raise DataError("periodic cell vectors are zero or linearly dependent: no neighbour list")
    if _REUSE.get() is not None:
        return _reused(frame, positions, box, pbc, float(cutoff), full_list, max_memory)
    return _search(frame, positions, box, pbc, float(cutoff), full_list, max_memory)


def _search(frame: Frame | Atoms, positions: np.ndarray, box: np.ndarray, pbc: np.ndarray,
            cutoff: float, full_list: bool, max_memory) -> NeighborList:
    """The pairs of checked geometry: memory estimate, then vesin or the k-d tree."""
    n = len(positions)
    n_pairs = n * (n - 1.0) if not pbc.any() else n * estimate_neighbors(frame, cutoff)
    if n_pairs * PAIR_BYTES > _SMALL:  # small open structures: no estimate needed
        n_pairs = n * estimate_neighbors(frame, cutoff)
    check_memory(n_pairs * PAIR_BYTES * (1 if full_list else 0.5),
                 f"a neighbour list of {n:,} atoms within {cutoff:g} A "
                 f"(about {n_pairs:,.3g} pairs)", max_memory,
                 hint="lower the cutoff or raise max_memory (--max-memory)")
    i, j, s, v, d = _pairs(positions, box, pbc, float(cutoff), full_list)
    return NeighborList(
        i=i.astype(np.int64),
        j=j.astype(np.int64),
        shifts=s.astype(np.int64),
        vectors=v,
        distances=d,
        cutoff=float(cutoff),
    )


def _pairs(positions: np.ndarray, box: np.ndarray, pbc: np.ndarray, cutoff: float,
           full_list: bool) -> tuple[np.ndarray, ...]:
    """``(i, j, shifts, vectors, distances)`` of checked geometry: vesin for a fully
    periodic cell, the k-d tree (:func:`_tree_pairs`) otherwise."""
    if pbc.all():
        calculator = _vesin().NeighborList(cutoff=cutoff, full_list=full_list, sorted=True)
        i, j, s, d, v = calculator.compute(points=positions, box=box, periodic=True,
                                           quantities="ijSdD")
        return i, j, s, v, d
    return _tree_pairs(positions, box, pbc, cutoff, full_list)


def _tree_pairs(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float,
                full_list: bool) -> tuple[np.ndarray, ...]:
    """``(i, j, shifts, vectors, distances)`` of an open or mixed structure by a k-d tree.

    Positions are wrapped into the cell along the periodic directions; the images
    within reach (``ceil(cutoff / plane spacing) + 1`` cells either way) join the tree;
    pairs closer than ``cutoff`` (``d < cutoff``, as vesin; an atom is not its own
    neighbour, its images are) are kept, shifts
    translated back to the unwrapped positions. Cost and memory grow with the atoms
    and images, not with the bounding box.
    """
    from scipy.spatial import cKDTree

    n = len(positions)
    dirs = np.flatnonzero(pbc)
    lattice = cell[dirs]  # (k, 3) periodic vectors
    if len(dirs):
        recip = np.linalg.pinv(lattice)  # (3, k): fractional coordinates along them
        wrap = np.floor(positions @ recip).astype(np.int64)
        wrapped = positions - wrap @ lattice
        reach = [int(np.ceil(cutoff * np.linalg.norm(recip[:, a]))) + 1 for a in range(len(dirs))]
        images = np.array(list(itertools.product(*(range(-r, r + 1) for r in reach))),
                          dtype=np.int64)
    else:
        wrap = np.zeros((n, 0), dtype=np.int64)
        wrapped = positions
        images = np.zeros((1, 0), dtype=np.int64)
    radius = cutoff * (1.0 + 1e-9)  # the exact test d < cutoff follows
    centres = cKDTree(wrapped)
    if len(dirs):
        # every image of every atom, image-major: point p is atom p % n in image p // n
        points = (wrapped[None, :, :] + (images @ lattice)[:, None, :]).reshape(-1, 3)
        pairs = centres.sparse_distance_matrix(cKDTree(points), radius, output_type="ndarray")
        i, p = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64)
    else:  # open: each pair once from the tree, both orders
        half = centres.query_pairs(radius, output_type="ndarray").astype(np.int64)
        i, p = np.concatenate([half[:, 0], half[:, 1]]), np.concatenate([half[:, 1], half[:, 0]])
    j, image = p % n, images[p // n]
    shift_w = image  # in the wrapped frame; back to the given positions:
    shift_k = shift_w + wrap[i] - wrap[j]
    vectors = positions[j] + shift_k @ lattice - positions[i]
    distances = np.sqrt(np.einsum("px,px->p", vectors, vectors))
    keep = (distances < cutoff) & ~((i == j) & ~shift_k.any(axis=1))  # not an atom itself
    if not full_list:
        keep &= (i < j) | ((i == j) & _positive(shift_k))
    i, j, shift_k, vectors, distances = i[keep], j[keep], shift_k[keep], vectors[keep], \
        distances[keep]
    shifts = np.zeros((len(i), 3), dtype=np.int64)
    shifts[:, dirs] = shift_k
    order = np.lexsort((shifts[:, 0], shifts[:, 1], shifts[:, 2], j, i))
    return i[order], j[order], shifts[order], vectors[order], distances[order]


def _positive(shifts: np.ndarray) -> np.ndarray:
    """Shifts whose last non-zero component is positive (one of ``s`` and ``-s``)."""
    out = np.zeros(len(shifts), dtype=bool)
    decided = np.zeros(len(shifts), dtype=bool)
    for a in range(shifts.shape[1] - 1, -1, -1):
        c = shifts[:, a]
        out |= ~decided & (c > 0)
        decided |= c != 0
    return out


def batched_neighbor_list(
    frames: Sequence[Frame | Atoms], cutoff: float, full_list: bool = True
) -> tuple[NeighborList, np.ndarray]:
    """Neighbour lists of many frames concatenated, with global atom indices.

    Parameters
    ----------
    frames : sequence of Frame or ase.Atoms
        The structures.
    cutoff : float
        Cutoff radius, Angstrom.
    full_list : bool, default=True
        See :func:`neighbor_list`.

    Returns
    -------
    nl : NeighborList
        Pairs of all frames; ``i`` and ``j`` index the concatenated atoms.
    pair_frame : ndarray of shape (n_pairs,), int64
        Frame index of each pair.
    """
    frames = list(frames)
    return concatenate_neighbor_lists([neighbor_list(f, cutoff, full_list) for f in frames],
                                      [len(f) for f in frames], cutoff)


def concatenate_neighbor_lists(lists: Sequence[NeighborList], sizes: Sequence[int],
                               cutoff: float) -> tuple[NeighborList, np.ndarray]:
    """Per-frame neighbour lists joined as :func:`batched_neighbor_list` returns them:
    atom indices offset by the atoms (``sizes``) of the frames before, and the frame of
    each pair; ``cutoff`` (Angstrom) is recorded."""
    if not len(lists):
        empty = np.zeros(0, dtype=np.int64)
        return (
            NeighborList(empty, empty, np.zeros((0, 3), np.int64), np.zeros((0, 3)),
                         np.zeros(0), float(cutoff)),
            empty,
        )
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    counts = [len(nl) for nl in lists]
    i = np.concatenate([nl.i + o for nl, o in zip(lists, offsets)])
    j = np.concatenate([nl.j + o for nl, o in zip(lists, offsets)])
    s, v, d = (np.concatenate([getattr(nl, a) for nl in lists])
               for a in ("shifts", "vectors", "distances"))
    frame_of_pair = np.repeat(np.arange(len(lists), dtype=np.int64), counts)
    return NeighborList(i, j, s, v, d, float(cutoff)), frame_of_pair


class PairMinima:
    """The running shortest distance of every element pair, structure by structure.

    Parameters
    ----------
    cutoff : float, default=3.0
        Largest distance looked at, Angstrom; pairs never closer are left out.
    """

    def __init__(self, cutoff: float = 3.0) -> None:
        self.cutoff = float(cutoff)
        self._best: dict[tuple[int, int], float] = {}

    def add(self, frame: Frame | Atoms) -> None:
        """Take in one structure's pairs (periodic images count)."""
        nl = neighbor_list(frame, self.cutoff, full_list=False)
        self.add_pairs(np.asarray(frame.numbers, dtype=np.int64), nl.i, nl.j, nl.distances)

    def add_pairs(self, numbers: np.ndarray, i: np.ndarray, j: np.ndarray,
                  distances: np.ndarray) -> None:
        """Take in pairs ``(i, j)`` of atoms with atomic ``numbers`` at ``distances``
        (Angstrom, each below the cutoff)."""
        if not len(distances):
            return
        a, b = np.minimum(numbers[i], numbers[j]), np.maximum(numbers[i], numbers[j])
        key = a * 1000 + b
        order = np.lexsort((distances, key))
        first = np.flatnonzero(np.r_[True, np.diff(key[order]) != 0])
        for k in order[first]:
            pair = (int(a[k]), int(b[k]))
            self._best[pair] = min(self._best.get(pair, np.inf), float(distances[k]))

    def as_dict(self) -> dict[str, float]:
        """``{"C-H": 0.99, ...}``, Angstrom, keys ``"A-B"`` with the lighter element first,
        in the order of the atomic numbers."""
        from ase.data import chemical_symbols

        return {f"{chemical_symbols[p]}-{chemical_symbols[q]}": d
                for (p, q), d in sorted(self._best.items())}


def shortest_distances(frames: Iterable[Frame | Atoms], cutoff: float = 3.0) -> dict[str, float]:
    """The shortest distance of every element pair in a set of structures.

    A packed store records its own (:class:`~ml4m.data.store.StoreWriter`): for a
    ``cutoff`` up to the recorded one the record answers without reading the frames.

    Parameters
    ----------
    frames : iterable of Frame or ase.Atoms
        The structures (periodic images count), read one at a time, or a packed store.
    cutoff : float, default=3.0
        Largest distance looked at, Angstrom; pairs never closer are left out.

    Returns
    -------
    dict
        ``{"C-H": 0.99, ...}`` in Angstrom, keys ``"A-B"`` with the lighter element first:
        where the radial basis of each pair may start (ACE's ``pair_r_in``, a little below).
    """
    record = getattr(frames, "pair_minima", None)  # a store's, or None
    if record is not None and cutoff <= record[0]:
        return {k: d for k, d in record[1].items() if d < cutoff}
    from ml4m.data.store import PackedStore

    minima = PairMinima(cutoff)
    if isinstance(frames, PackedStore):
        for z, i, j, distances in _store_pairs(frames, cutoff):
            minima.add_pairs(z, i, j, distances)
    else:
        for frame in frames:
            minima.add(frame)
    return minima.as_dict()


def _store_pairs(store, cutoff: float
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """``(numbers, i, j, distances)`` of each of a packed store's structures' pairs closer
    than ``cutoff`` (each pair once), read in batches of arrays: the geometry goes
    straight to :func:`_pairs`, without a :class:`Frame` per structure nor the memory
    estimate (the frames were checked when packed)."""
    for batch in store.iter_batches(frames_per_batch=1024):
        offsets = batch["offsets"]
        for k in range(len(offsets) - 1):
            lo, hi = int(offsets[k]), int(offsets[k + 1])
            positions = np.ascontiguousarray(batch["positions"][lo:hi], dtype=np.float64)
            cell = np.ascontiguousarray(batch["cell"][k], dtype=np.float64)
            pbc = np.asarray(batch["pbc"][k], dtype=bool)
            i, j, _, _, d = _pairs(positions, cell, pbc, float(cutoff), False)
            yield np.asarray(batch["numbers"][lo:hi], dtype=np.int64), i, j, d


def nearest_neighbor_distance(frames: Sequence[Frame | Atoms], cutoff: float = 4.0) -> float | None:
    """Median over the atoms of ``frames`` of each atom's nearest-neighbour distance
    (periodic images count), Angstrom; ``None`` when no atom has a neighbour within
    ``cutoff`` (Angstrom)."""
    nearest = []
    for frame in frames:
        nl = neighbor_list(frame, cutoff, full_list=True)
        if not len(nl):
            continue
        d = np.full(len(frame), np.inf)
        np.minimum.at(d, nl.i, nl.distances)
        nearest.append(d[np.isfinite(d)])
    return float(np.median(np.concatenate(nearest))) if nearest else None


def pair_inner_radii(frames: Sequence[Frame | Atoms], margin: float = 0.25,
                     cutoff: float = 3.0) -> dict[str, float]:
    """Where each element pair's radial basis may start: ``margin`` below its shortest
    distance in ``frames`` (:func:`shortest_distances`), Angstrom, rounded to 1 mA and
    at least 0; ACE's ``pair_r_in``."""
    return {k: round(max(d - margin, 0.0), 3) for k, d in shortest_distances(frames, cutoff).items()}

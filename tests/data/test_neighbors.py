"""Neighbour lists against a brute-force reference over periodic images."""

from __future__ import annotations

import json

import itertools

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.data import chemical_symbols

from ml4m.data import batched_neighbor_list, neighbor_list, pair_inner_radii, shortest_distances
from ml4m.errors import ConfigError


def brute_force(atoms: Atoms, cutoff: float) -> set[tuple[int, int, tuple[int, int, int]]]:
    """Every (i, j, shift) with 0 < |r_j + S.cell - r_i| < cutoff, by enumeration."""
    cell = np.asarray(atoms.cell[:])
    ranges = []
    for k in range(3):
        if atoms.pbc[k]:
            # planes spacing along k: the image count needed to cover the cutoff
            normal = np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])
            spacing = abs(np.dot(cell[k], normal)) / np.linalg.norm(normal)
            n = int(np.ceil(cutoff / spacing)) + 1
            ranges.append(range(-n, n + 1))
        else:
            ranges.append(range(0, 1))
    pos = atoms.positions
    pairs = set()
    for shift in itertools.product(*ranges):
        disp = np.asarray(shift) @ cell
        d = np.linalg.norm(pos[None, :, :] + disp - pos[:, None, :], axis=-1)
        for i, j in zip(*np.nonzero((d < cutoff) & (d > 1e-12))):
            pairs.add((int(i), int(j), tuple(int(s) for s in shift)))
    return pairs


def systems():
    rng = np.random.default_rng(3)
    small = bulk("Cu", "fcc", a=3.6)  # one atom: it sees only its own images
    small.rattle(0.01, seed=1)
    tri = bulk("Cu", "fcc", a=3.6).repeat((2, 1, 1))
    tri.set_cell(tri.cell[:] + rng.normal(scale=0.2, size=(3, 3)), scale_atoms=True)
    slab = fcc111("Cu", (2, 2, 3), vacuum=5.0)  # pbc T T F
    mol = molecule("CH3CH2OH")
    return {"self_images": small, "triclinic": tri, "slab": slab, "molecule": mol}


@pytest.mark.parametrize("name", ["self_images", "triclinic", "slab", "molecule"])
@pytest.mark.parametrize("cutoff", [2.0, 5.5])
def test_matches_brute_force(name, cutoff):
    atoms = systems()[name]
    nl = neighbor_list(atoms, cutoff)
    got = {(int(i), int(j), tuple(int(x) for x in s)) for i, j, s in zip(nl.i, nl.j, nl.shifts)}
    assert got == brute_force(atoms, cutoff)
    expected_vectors = atoms.positions[nl.j] + nl.shifts @ atoms.cell[:] - atoms.positions[nl.i]
    np.testing.assert_allclose(nl.vectors, expected_vectors, atol=1e-10)
    np.testing.assert_allclose(nl.distances, np.linalg.norm(expected_vectors, axis=1), atol=1e-10)


def test_half_list_is_half_of_full():
    atoms = systems()["triclinic"]
    full = neighbor_list(atoms, 5.0)
    half = neighbor_list(atoms, 5.0, full_list=False)
    assert 2 * len(half) == len(full)


def test_batched_offsets_global_indices():
    s = systems()
    frames = [s["molecule"], s["self_images"], s["slab"]]
    nl, pair_frame = batched_neighbor_list(frames, 3.0)
    offsets = np.cumsum([0] + [len(a) for a in frames])
    for k, atoms in enumerate(frames):
        single = neighbor_list(atoms, 3.0)
        sel = pair_frame == k
        np.testing.assert_array_equal(nl.i[sel] - offsets[k], single.i)
        np.testing.assert_array_equal(nl.j[sel] - offsets[k], single.j)
        np.testing.assert_allclose(nl.distances[sel], single.distances)


@pytest.mark.parametrize("cutoff", [0.0, -1.0, float("nan")])
def test_bad_cutoff(cutoff):
    with pytest.raises(ConfigError, match="cutoff must be a finite, positive"):
        neighbor_list(molecule("H2O"), cutoff)


def test_shortest_distances_per_element_pair():
    """Against all distances of an open molecule; periodic images count (one fcc atom sees
    its own at a / sqrt 2); pairs beyond the cutoff are absent."""
    mols = [molecule("CH3CH2OH"), molecule("CH3CH2OH")]
    mols[1].rattle(0.05, seed=4)
    expect: dict[str, float] = {}
    for m in mols:
        D, z = m.get_all_distances(), m.numbers
        for a in range(len(m)):
            for b in range(a + 1, len(m)):
                p, q = sorted((int(z[a]), int(z[b])))
                key = f"{chemical_symbols[p]}-{chemical_symbols[q]}"
                expect[key] = min(expect.get(key, np.inf), D[a, b])
    got = shortest_distances(mols, cutoff=10.0)
    assert got.keys() == expect.keys()
    for key, d in expect.items():
        assert got[key] == pytest.approx(d, rel=1e-12)
    assert "O-O" not in got and set(shortest_distances(mols, cutoff=1.2)) == {"H-C", "H-O"}
    radii = pair_inner_radii(mols, margin=0.25, cutoff=10.0)
    assert radii == {k: round(d - 0.25, 3) for k, d in expect.items()}
    assert set(pair_inner_radii(mols, margin=5.0, cutoff=10.0).values()) == {0.0}
    cu = shortest_distances([bulk("Cu", "fcc", a=3.6)], cutoff=3.0)
    assert cu == {"Cu-Cu": pytest.approx(3.6 / np.sqrt(2), rel=1e-12)}


def _run_isolated(code: str, timeout: float = 60.0):
    """Run ``code`` in a fresh interpreter: a crash (SIGFPE, SIGSEGV) or a hang fails the
    test instead of killing or stalling pytest."""
    import subprocess
    import sys

    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no answer within {timeout} s")


def _far_apart() -> dict[str, Atoms]:
    """Structures whose bounding box dwarfs the cutoff (vesin: SIGFPE) or the reverse
    (vesin: no answer), each with a brute-force reference."""
    mol = molecule("CH3CH2OH")
    far = mol.copy()
    far.positions[0] += [1e5, 0.0, 0.0]  # one atom 1e5 A away
    line = Atoms("H3", positions=[[0, 0, 0], [1.0, 0, 0], [1e6, 0, 0]])
    spread = Atoms("H3", positions=[[0, 0, 0], [0.9, 0, 0], [1e8, 1e8, 1e8]])
    wide = Atoms("H3", positions=[[0, 0, 0], [1.0, 0, 0], [2.0, 1.0, 0]], cell=np.eye(3) * 1e6,
                 pbc=[True, True, False])  # a huge periodic cell beside an open direction
    rod = wide.copy()
    rod.pbc = [True, False, False]
    slab = fcc111("Cu", (2, 2, 3), vacuum=5.0)
    slab.positions[-1, 2] += 1e6  # an adatom far above a periodic slab
    return {"far_atom": far, "line": line, "spread": spread, "wide_cell": wide, "rod": rod,
            "far_adatom": slab}


def test_huge_boxes_match_brute_force():
    """All cases in one fresh interpreter (one start-up); stderr names the case that
    crashed, if one does."""
    import pickle

    cases = {(name, cutoff): atoms for name, atoms in _far_apart().items()
             for cutoff in (2.0, 5.0)}
    code = ("import pickle, sys; from ml4m.data.neighbors import neighbor_list\n"
            f"cases = pickle.loads({pickle.dumps(cases)!r})\n"
            "out = {}\n"
            "for (name, cutoff), a in cases.items():\n"
            "    print(name, cutoff, file=sys.stderr, flush=True)\n"
            "    nl = neighbor_list(a, cutoff)\n"
            "    out[name, cutoff] = sorted((int(i), int(j), tuple(map(int, s)))\n"
            "                               for i, j, s in zip(nl.i, nl.j, nl.shifts))\n"
            "print(repr(out))\n"
            "print(len(neighbor_list(cases['far_atom', 2.0][1:], 1e4)))\n")
    run = _run_isolated(code)
    assert run.returncode == 0, f"exit {run.returncode} at: {run.stderr[-300:]}"
    lines = run.stdout.strip().splitlines()
    got = eval(lines[0])
    for key, atoms in cases.items():
        assert set(got[key]) == brute_force(atoms, key[1]), key
    # a cutoff of 1e4 A around an 8-atom molecule (vesin never returned): all pairs
    assert int(lines[1]) == 8 * 7


def test_open_and_mixed_lists_keep_the_layout():
    """Open and mixed structures: sorted by centre, half list = one of each (i, j, +-S),
    coincident atoms are neighbours, an atom is not its own."""
    slab = systems()["slab"]
    full = neighbor_list(slab, 5.5)
    assert np.all(np.diff(full.i) >= 0)
    half = neighbor_list(slab, 5.5, full_list=False)
    assert 2 * len(half) == len(full)
    one = {(int(i), int(j), tuple(map(int, s))) for i, j, s in zip(half.i, half.j, half.shifts)}
    mirrored = {(j, i, tuple(-x for x in s)) for i, j, s in one}
    assert not one & mirrored and one | mirrored == brute_force(slab, 5.5)
    twin = Atoms("H3", positions=[[0, 0, 0], [0, 0, 0], [3, 0, 0]])
    nl = neighbor_list(twin, 1.0)
    assert sorted(zip(nl.i.tolist(), nl.j.tolist())) == [(0, 1), (1, 0)]


def test_list_beyond_the_memory_limit_is_refused():
    with pytest.raises(ConfigError, match=r"neighbour list of 1 atoms .*--max-memory"):
        neighbor_list(bulk("Cu", "fcc", a=3.6), 1e4)  # ~4e11 pairs
    with pytest.raises(ConfigError, match="limit of 1 kB"):
        neighbor_list(molecule("CH3CH2OH"), 5.0, max_memory="1kB")


@pytest.mark.parametrize("pbc", [True, False])
@pytest.mark.parametrize("full_list", [True, False])
def test_verlet_reuse_equals_fresh_lists_along_a_trajectory(pbc, full_list):
    """Inside verlet_reuse the lists of a drifting structure equal fresh searches pair for
    pair (small steps reuse the skin list; a jump, a cell change or a new species rebuild)."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.pbc = pbc
    rng = np.random.default_rng(3)
    steps = [0.02] * 12 + [0.6] + [0.02] * 4  # cumulative drift passes skin/2 early on
    from ml4m.data.neighbors import _REUSE, verlet_reuse

    builds = []  # the cached lists themselves: id() of a freed list can be reused
    with verlet_reuse(skin=0.3):
        for k, size in enumerate(steps):
            atoms.positions += rng.normal(scale=size, size=atoms.positions.shape)
            if k == 14:
                atoms.set_cell(atoms.cell[:] * 1.01, scale_atoms=True)
            if k == 15:
                atoms.numbers[0] = 79
            got = neighbor_list(atoms, 3.0, full_list=full_list)
            cached = _REUSE.get()[1][(3.0, full_list)]
            if not any(cached is b for b in builds):
                builds.append(cached)
            with verlet_reuse(skin=1.0):  # nested blocks keep their own lists
                neighbor_list(atoms, 3.0, full_list=full_list)
            fresh = _fresh(atoms, 3.0, full_list)
            assert _pair_set(got) == _pair_set(fresh), k
            order = np.lexsort((*got.shifts.T, got.j, got.i))
            order_f = np.lexsort((*fresh.shifts.T, fresh.j, fresh.i))
            np.testing.assert_allclose(got.vectors[order], fresh.vectors[order_f], atol=1e-12)
            np.testing.assert_allclose(got.distances[order], fresh.distances[order_f], atol=1e-12)
            assert np.all(np.diff(got.i) >= 0)  # still sorted by centre
    assert 4 <= len(builds) < len(steps) - 4  # reused between rebuilds, rebuilt on changes


def _pair_set(nl):
    return sorted(zip(nl.i.tolist(), nl.j.tolist(), map(tuple, nl.shifts.tolist())))


def _fresh(atoms, cutoff, full_list):
    """A list outside any reuse block (a context of its own)."""
    import contextvars

    return contextvars.Context().run(neighbor_list, atoms, cutoff, full_list)


def test_verlet_reuse_refuses_a_bad_skin():
    from ml4m.data.neighbors import verlet_reuse

    with pytest.raises(ConfigError, match="skin"):
        with verlet_reuse(skin=-1.0):
            pass


def test_nearest_neighbor_distance_of_a_crystal_and_of_isolated_atoms():
    """fcc: every atom's nearest neighbour is at a / sqrt(2) (periodic images count); a
    rattled crystal gives the median of the atoms' own nearest distances; atoms farther
    apart than the cutoff give None."""
    from ml4m.data import nearest_neighbor_distance

    a = 3.61
    atoms = bulk("Cu", "fcc", a=a, cubic=True)
    assert nearest_neighbor_distance([atoms]) == pytest.approx(a / np.sqrt(2), rel=1e-12)
    rattled = atoms.repeat(2)
    rattled.rattle(0.05, seed=1)
    d = rattled.get_all_distances(mic=True) + np.eye(len(rattled)) * 1e9
    assert nearest_neighbor_distance([rattled]) == pytest.approx(np.median(d.min(axis=1)))
    far = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 9.0]], cell=[30, 30, 30], pbc=False)
    assert nearest_neighbor_distance([far], cutoff=4.0) is None


def test_shortest_distances_of_a_packed_store_equal_those_of_its_frames(tmp_path):
    """A store is scanned from its arrays in batches (no Frame per structure): the same
    distances as its frames one by one, for periodic, open and mixed structures."""
    from ml4m.data import Frame, StoreWriter, open_store

    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    cu.symbols[[0, 3]] = "Au"
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
    structures = [cu, slab, molecule("CH3CH2OH")]
    with StoreWriter(tmp_path / "s.store") as w:
        for k in range(7):
            atoms = structures[k % 3].copy()
            atoms.rattle(0.05, seed=k)
            w.add(Frame.from_atoms(atoms))
    store = open_store(tmp_path / "s.store")
    expect = shortest_distances(list(store), cutoff=3.0)
    assert set(expect) == {"C-C", "H-C", "H-H", "H-O", "C-O", "Cu-Cu", "Cu-Au", "Au-Au"}
    # the distances the writer recorded answer up to its cutoff; beyond, the arrays are
    # scanned, as they are for a store written without the record
    assert store.pair_minima == (3.0, expect)
    meta = json.loads((tmp_path / "s.store" / "meta.json").read_text())
    del meta["pair_minima"]
    (tmp_path / "s.store" / "meta.json").write_text(json.dumps(meta))
    unrecorded = open_store(tmp_path / "s.store")
    assert unrecorded.pair_minima is None
    for cutoff in (1.5, 3.0, 3.5):
        frame_by_frame = shortest_distances(list(store), cutoff=cutoff)
        assert shortest_distances(store, cutoff=cutoff) == frame_by_frame
        assert shortest_distances(unrecorded, cutoff=cutoff) == frame_by_frame
    assert len(shortest_distances(store, cutoff=1.5)) < len(expect)

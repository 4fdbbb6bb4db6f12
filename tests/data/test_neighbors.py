"""Neighbour lists against a brute-force reference over periodic images."""

from __future__ import annotations

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

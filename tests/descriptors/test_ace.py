"""ACE basis: the documented truncation, and linear independence of B."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from ml4m.descriptors import ACE
from ml4m.errors import ConfigError


def test_truncation_and_parity():
    ace = ACE(["Cu", "Au"], n_max=3, l_max=3, correlation_order=4, total_degree=8)
    orders = set()
    for combo, L in ace._basis:
        degrees = [k % ace.n_max + 1 + l for l, k in combo]
        assert sum(degrees) <= 8
        assert sum(l for l, _ in combo) % 2 == 0
        assert list(combo) == sorted(combo)
        orders.add(len(combo))
        if len(combo) == 4:
            (l1, _), (l2, _), (l3, _), (l4, _) = combo
            assert abs(l1 - l2) <= L <= l1 + l2 and abs(l3 - l4) <= L <= l3 + l4
    assert orders == {1, 2, 3, 4}
    # a larger total degree only adds functions
    bigger = ACE(["Cu", "Au"], n_max=3, l_max=3, correlation_order=4, total_degree=9)
    assert set(ace.feature_names()) < set(bigger.feature_names())


def test_total_degree_per_correlation_order():
    per = ACE(["Cu", "Au"], n_max=6, l_max=3, correlation_order=3, total_degree=[9, 7, 5])
    for combo, _ in per._basis:
        assert sum(k % per.n_max + 1 + l for l, k in combo) <= [9, 7, 5][len(combo) - 1]
    # each order holds exactly the functions of a uniform truncation at its own bound
    for nu, deg in enumerate([9, 7, 5], start=1):
        uni = ACE(["Cu", "Au"], n_max=6, l_max=3, correlation_order=3, total_degree=deg)
        names = {f for f in uni.feature_names() if f.startswith(f"B{nu}[")}
        assert names == {f for f in per.feature_names() if f.startswith(f"B{nu}[")}
    same = ACE(["Cu"], n_max=4, l_max=2, correlation_order=3, total_degree=[7, 7, 7])
    assert same.feature_names() == ACE(["Cu"], n_max=4, l_max=2, correlation_order=3,
                                       total_degree=7).feature_names()
    with pytest.raises(ConfigError, match="one entry per correlation order"):
        ACE(["Cu"], correlation_order=3, total_degree=[8, 6])
    with pytest.raises(ConfigError, match="total_degree"):
        ACE(["Cu"], correlation_order=2, total_degree=[8, 0])


def test_degree_subset_is_the_smaller_basis():
    """The columns of a smaller truncation hold exactly that basis's functions and values."""
    big = ACE(["Cu", "Au"], r_cut=4.0, n_max=5, l_max=2, correlation_order=3, total_degree=[9, 7, 6])
    small = ACE(["Cu", "Au"], r_cut=4.0, n_max=5, l_max=2, correlation_order=3, total_degree=[9, 6, 5])
    cols = big.degree_subset([9, 6, 5])
    assert [big.feature_names()[c] for c in cols] == small.feature_names()
    rng = np.random.default_rng(3)
    frame = Atoms(numbers=rng.choice([29, 79], 7), positions=rng.normal(size=(7, 3)) * 1.4)
    np.testing.assert_allclose(big.compute([frame]).features[:, cols], small.compute([frame]).features,
                               rtol=1e-12, atol=1e-14)
    assert len(big.degree_subset(6)) == ACE(["Cu", "Au"], n_max=5, l_max=2, correlation_order=3,
                                            total_degree=6).n_features
    with pytest.raises(ConfigError, match="exceeds the basis's total_degree"):
        big.degree_subset([9, 8, 6])
    with pytest.raises(ConfigError, match="one entry per correlation order"):
        big.degree_subset([9, 6])


def test_a_basis_is_the_same_numbers_inside_a_larger_n_max():
    """The functions of a basis, found by name in one with more radial functions (a basis
    search's nested rungs), have the same values and gradients: the radial tables' nodes
    do not depend on ``n_max`` (they did above 12 functions: 4e-10 relative)."""
    small = ACE(["Cu"], r_cut=5.0, n_max=6, l_max=3, correlation_order=2, total_degree=[6, 5],
                pair_r_in={"Cu-Cu": 1.9})
    big = ACE(["Cu"], r_cut=5.0, n_max=16, l_max=3, correlation_order=3,
              total_degree=[16, 12, 11], pair_r_in={"Cu-Cu": 1.9})
    index = {name: k for k, name in enumerate(big.feature_names())}
    cols = [index[name] for name in small.feature_names()]
    rng = np.random.default_rng(4)
    frame = Atoms("Cu8", positions=rng.uniform(0, 5.0, (8, 3)), cell=[5.2, 5.2, 5.2], pbc=True)
    a, b = small.compute_frame(frame, gradients=True), big.compute_frame(frame, gradients=True)
    np.testing.assert_allclose(b.features[:, cols], a.features, rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(a.gradient_row, b.gradient_row)
    np.testing.assert_allclose(b.gradients[..., cols], a.gradients, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("agnostic", [0, 2])
def test_gradient_columns_give_the_same_gradients_of_those_columns(agnostic):
    """Per centre species, the gradients of the requested columns equal the full ones, and
    the columns a species did not request are skipped (zero), not computed."""
    ace = ACE(["H", "C", "O"], r_cut=4.0, n_max=4, l_max=2, correlation_order=3,
              total_degree=[8, 7, 6], agnostic_from=agnostic)
    rng = np.random.default_rng(5)
    frame = Atoms(numbers=rng.choice([1, 6, 8], 9), positions=rng.normal(size=(9, 3)) * 1.3)
    cols = (ace.degree_subset([8, 5, 4]), None, ace.degree_subset([6, 6, 5]))
    full = ace.compute_frame(frame, gradients=True)
    part = ace.compute_frame(frame, gradients=True, gradient_columns=cols)
    np.testing.assert_array_equal(part.gradient_row, full.gradient_row)
    species = np.searchsorted(ace.species, frame.numbers)
    for s, c in enumerate(cols):
        rows = species[part.gradient_row] == s
        keep = np.arange(ace.n_features) if c is None else c
        np.testing.assert_allclose(part.gradients[rows][:, :, keep], full.gradients[rows][:, :, keep],
                                   rtol=1e-12, atol=1e-14)
        srows = species == s
        np.testing.assert_allclose(part.strain_gradients[srows][..., keep],
                                   full.strain_gradients[srows][..., keep], rtol=1e-12, atol=1e-14)
        if c is not None:  # skipped columns: zero, although the full gradients are not
            rest = np.setdiff1d(np.arange(ace.n_features), c)
            assert np.abs(full.gradients[rows][:, :, rest]).max() > 1e-3
            assert not part.gradients[rows][:, :, rest].any()
    with pytest.raises(ValueError, match="one entry per species"):
        ace.compute_frame(frame, gradients=True, gradient_columns=cols[:2])


def test_basis_functions_are_linearly_independent():
    rng = np.random.default_rng(0)
    ace = ACE(["Cu", "Au"], r_cut=4.0, n_max=2, l_max=2, correlation_order=4, total_degree=6)
    frames = []
    for _ in range(300):
        n = int(rng.integers(4, 9))
        pos = rng.normal(size=(n, 3)) * 1.3
        frames.append(Atoms(numbers=rng.choice([29, 79], n), positions=pos))
    X = ace.compute(frames).features
    s = np.linalg.svd(X / np.linalg.norm(X, axis=0), compute_uv=False)
    assert (s > 1e-8 * s[0]).sum() == ace.n_features


def test_feature_degrees_follow_the_names():
    """``feature_degrees`` is sum (n + l) of each function's factors, read off its name."""
    import re

    ace = ACE(["H", "C"], r_cut=4.0, n_max=3, l_max=2, correlation_order=3, total_degree=[6, 6, 5])
    deg = ace.feature_degrees()
    assert deg.shape == (ace.n_features,)
    for name, d in zip(ace.feature_names(), deg):
        factors = re.findall(r"[A-Z][a-z]?(\d+)l(\d+)", name.split("(")[0])
        assert d == sum(int(n) + int(l) for n, l in factors)
    assert deg.min() == 0 and deg.max() == 4  # order 2: sum (n + 1 + l) <= 6 over two factors


def test_agnostic_channels_are_the_summed_density():
    """An element-agnostic product is the product of the species-summed density:
    B2[X0l1,X0l1] = B2[Cu0l1,Cu0l1] + 2 B2[Cu0l1,Au0l1] + B2[Au0l1,Au0l1]."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 2, 1))
    atoms.numbers[::3] = 79
    atoms.positions += np.random.default_rng(2).normal(scale=0.1, size=atoms.positions.shape)
    kw = dict(r_cut=4.0, n_max=3, l_max=2, correlation_order=2, total_degree=6)
    mixed = ACE(["Cu", "Au"], agnostic_from=2, **kw)
    full = ACE(["Cu", "Au"], **kw)
    Xm, Xf = mixed.compute(atoms).features, full.compute(atoms).features
    col = {name: k for k, name in enumerate(full.feature_names())}
    expect = Xf[:, col["B2[Cu0l1,Cu0l1]"]] + 2 * Xf[:, col["B2[Cu0l1,Au0l1]"]] + Xf[:, col["B2[Au0l1,Au0l1]"]]
    got = Xm[:, mixed.feature_names().index("B2[X0l1,X0l1]")]
    np.testing.assert_allclose(got, expect, rtol=1e-10)
    # order 1 stays element-resolved, order 2 has only agnostic factors
    assert all(("X" in name) == name.startswith("B2") for name in mixed.feature_names())


def test_pair_radial_settings():
    """A pair's own ``r_in``/``r0`` act on that pair only: a cluster with one Au atom has
    Cu-Cu and Cu-Au pairs, so setting just those two pairs to other radii gives the
    features of the global setting at those radii (through the stacked tables, since
    Au-Au keeps the first setting). Keys are unordered pairs; bad ones are named."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 1, 1))
    atoms.pbc = False
    atoms.numbers[0] = 79
    atoms.rattle(0.1, seed=3)
    kw = dict(r_cut=4.0, n_max=4, l_max=2, correlation_order=3, total_degree=[6, 6, 5])
    target = ACE(["Cu", "Au"], r_in=1.3, r0=0.9, **kw)
    pairs = ACE(["Cu", "Au"], r_in=0.5, r0=1.5, pair_r_in={"Cu-Cu": 1.3, "Au-Cu": 1.3},
                pair_r0={"Cu-Cu": 0.9, "Cu-Au": 0.9}, **kw)
    assert len(pairs._pair_radii) == 2 and pairs.pair_r_in == {"Cu-Au": 1.3, "Cu-Cu": 1.3}
    np.testing.assert_allclose(pairs.compute(atoms).features, target.compute(atoms).features,
                               rtol=1e-12, atol=1e-14)
    plain = ACE(["Cu", "Au"], r_in=0.5, r0=1.5, **kw)
    assert np.abs(pairs.compute(atoms).features - plain.compute(atoms).features).max() > 1e-3
    # settings round-trip
    again = ACE(["Cu", "Au"], **{k: v for k, v in pairs.settings().items()
                                 if k not in ("descriptor", "species")})
    np.testing.assert_array_equal(again.compute(atoms).features, pairs.compute(atoms).features)
    with pytest.raises(ConfigError, match="'Cu-Ag' is not a pair"):
        ACE(["Cu", "Au"], pair_r_in={"Cu-Ag": 1.0}, **kw)
    with pytest.raises(ConfigError, match="Cu-Au is given twice"):
        ACE(["Cu", "Au"], pair_r_in={"Cu-Au": 1.0, "Au-Cu": 1.1}, **kw)
    with pytest.raises(ConfigError, match=r"pair_r_in\['Cu-Cu'\] must lie in"):
        ACE(["Cu", "Au"], pair_r_in={"Cu-Cu": 3.5}, **kw)
    with pytest.raises(ConfigError, match="pair_r0"):
        ACE(["Cu", "Au"], pair_r0={"Cu-Cu": -1.0}, **kw)
    with pytest.raises(ConfigError, match=r"pair_r_in\['Cu-Cu'\] must be a distance"):
        ACE(["Cu", "Au"], pair_r_in={"Cu-Cu": "near"}, **kw)
    with pytest.raises(ConfigError, match="must map element pairs"):
        ACE(["Cu", "Au"], pair_r_in="auto", **kw)

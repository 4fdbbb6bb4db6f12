"""Curation: distinct, seeded selections that cover every cluster; streaming equals reading."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase.build import bulk, molecule

from ml4m.data import Dataset, Frame, default_dataset, pack_frames, write_extxyz
from ml4m.descriptors import ACE
from ml4m.errors import ConfigError, DataError
from ml4m.md.curation import SELECTORS, pool_features, resolve_n_select, select

#: cluster sizes of the synthetic mixture: two dense basins, a small one, a rare one
SIZES = (600, 250, 40, 6)


@pytest.fixture(scope="module")
def mixture():
    """Gaussian clusters (std 1) along distinct axes, 12 apart, plus two noise columns."""
    rng = np.random.default_rng(7)
    rows, labels = [], []
    for c, size in enumerate(SIZES):
        center = np.zeros(6)
        center[c] = 12.0
        rows.append(center + rng.normal(size=(size, 6)))
        labels.append(np.full(size, c))
    X, y = np.concatenate(rows), np.concatenate(labels)
    order = rng.permutation(len(X))
    return X[order], y[order]


@pytest.mark.parametrize("method", SELECTORS)
def test_n_distinct_indices_deterministic_per_seed(mixture, method):
    X, _ = mixture
    a = select(X, 25, method, seed=3)
    assert len(a.indices) == 25 and len(np.unique(a.indices)) == 25
    assert a.indices.min() >= 0 and a.indices.max() < len(X)
    np.testing.assert_array_equal(a.indices, select(X, 25, method, seed=3).indices)
    if method in ("fps", "density", "random"):  # the seed matters to these
        assert not np.array_equal(a.indices, select(X, 25, method, seed=4).indices)


@pytest.mark.parametrize("method", ["fps", "cur", "density", "doptimal"])
def test_every_cluster_covered(mixture, method):
    X, y = mixture
    for seed in range(3):
        picked = y[select(X, 12, method, seed=seed).indices]
        assert set(picked) == set(range(len(SIZES))), (method, seed, np.bincount(picked))


def test_density_keeps_rare_cluster_random_misses(mixture):
    X, y = mixture
    rare = len(SIZES) - 1  # 6 of 896 frames: random 20 of them miss it 87% of the time
    hits = {m: [rare in y[select(X, 20, m, seed=s).indices] for s in range(8)]
            for m in ("density", "random")}
    assert all(hits["density"])
    assert sum(hits["random"]) <= 4
    # and dense basins are thinned: the largest basin gets far less than its 67% share
    share = np.mean(y[select(X, 40, "density", seed=0).indices] == 0)
    assert share < 0.45


def test_density_alpha_zero_follows_the_pool(mixture):
    X, y = mixture
    counts = np.bincount(y[select(X, 200, "density", seed=1, alpha=0.0).indices],
                         minlength=len(SIZES))
    expected = 200 * np.array(SIZES) / sum(SIZES)
    assert np.all(np.abs(counts - expected) <= np.maximum(3, 0.2 * expected))


def test_fps_matches_direct_farthest_point_sampling(mixture):
    X, _ = mixture
    sel = select(X, 15, "fps", seed=5)
    Z = (X - X.mean(0)) / X.std(0)
    order = [int(sel.indices[0])]
    d = np.linalg.norm(Z - Z[order[0]], axis=1)
    for _ in range(14):
        order.append(int(np.argmax(d)))
        d = np.minimum(d, np.linalg.norm(Z - Z[order[-1]], axis=1))
    np.testing.assert_array_equal(sel.indices, order)
    assert np.all(np.diff(sel.scores[1:]) <= 1e-12)  # FPS distances never grow


def test_fps_matches_scikit_matter(mixture):
    skfs = pytest.importorskip("skmatter.feature_selection", reason="optional comparison")
    X, _ = mixture
    sel = select(X, 20, "fps", seed=2)
    Z = (X - X.mean(0)) / X.std(0)
    with warnings.catch_warnings():  # skmatter 0.2.0 calls np.minimum(a, b, out) positionally
        warnings.simplefilter("ignore", DeprecationWarning)
        ref = skfs.FPS(n_to_select=20, initialize=int(sel.indices[0])).fit(Z.T)
    np.testing.assert_array_equal(sel.indices, ref.selected_idx_)
    np.testing.assert_allclose(sel.scores[1:] ** 2, ref.hausdorff_at_select_[sel.indices[1:]],
                               rtol=1e-10)


def test_fps_on_duplicate_rows_picks_distinct_rows():
    """Three distinct points, each repeated: the first three picks are the three points
    (score > 0), the rest are distinct copies at distance 0."""
    X = np.repeat(np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 3.0]]), 4, axis=0)
    sel = select(X, 8, "fps", seed=1)
    assert len(np.unique(sel.indices)) == 8
    assert len({tuple(X[i]) for i in sel.indices[:3]}) == 3
    assert np.all(sel.scores[1:3] > 0) and np.all(sel.scores[3:] == 0)


@pytest.mark.parametrize("shape", [(300, 12), (60, 200)])
def test_cur_matches_scikit_matter(shape):
    CUR = pytest.importorskip("skmatter.feature_selection", reason="optional comparison").CUR

    rng = np.random.default_rng(1)
    X = rng.normal(size=shape) @ rng.normal(size=(shape[1], shape[1]))
    Z = (X - X.mean(0)) / X.std(0)
    ours = select(X, 10, "cur").indices
    np.testing.assert_array_equal(ours, CUR(n_to_select=10).fit(Z.T).selected_idx_)
    # past the rank of the rows: a new round, still distinct frames
    more = select(X[:, :3], 12, "cur").indices
    assert len(np.unique(more)) == 12


def test_doptimal_gains_are_log_det_increments_and_non_increasing(mixture):
    X, _ = mixture
    X = X[:300]
    sel = select(X, 10, "doptimal", prior_scale=2.0)
    assert np.all(np.diff(sel.scores) <= 1e-10)
    s0 = 2.0 * len(X) / np.sum(X * X)
    for t in (1, 4, 10):
        A = X[sel.indices[:t]]
        _, logdet = np.linalg.slogdet(np.eye(t) + s0 * A @ A.T)
        assert np.sum(sel.scores[:t]) == pytest.approx(logdet, rel=1e-9)
    # the greedy first pick is the row of largest prior variance
    assert sel.indices[0] == np.argmax(np.sum(X * X, axis=1))
    # a posterior covariance given explicitly: the isotropic one reproduces the default
    same = select(X, 10, "doptimal", prior_scale=2.0, covariance=s0 * np.eye(X.shape[1]))
    np.testing.assert_array_equal(same.indices, sel.indices)
    np.testing.assert_allclose(same.scores, sel.scores, rtol=1e-9)


def test_frame_rows_are_species_resolved_means(tmp_path):
    """A frame's row is, per species, the sum of its atoms' descriptors over n_atoms,
    and does not depend on the order of the atoms."""
    water = molecule("H2O")
    water.center(vacuum=3.0)
    path = tmp_path / "w.extxyz"
    write_extxyz(Dataset([Frame.from_atoms(water), Frame.from_atoms(water[[2, 0, 1]])]), path)
    desc = ACE(["H", "O"], r_cut=4.0)
    pool = pool_features(path, desc)
    X = desc.compute(Frame.from_atoms(water)).features  # O, H, H
    F = desc.n_features
    np.testing.assert_allclose(pool.features[0, :F], X[[1, 2]].sum(0) / 3)
    np.testing.assert_allclose(pool.features[0, F:], X[0] / 3)
    np.testing.assert_allclose(pool.features[1], pool.features[0], atol=1e-12)
    assert pool.species == (1, 8) and list(pool.n_atoms) == [3, 3]


def test_streaming_from_store_equals_file_and_any_chunk(tmp_path):
    frames = default_dataset()[::6]
    path = tmp_path / "pool.extxyz"
    write_extxyz(frames, path)
    store = pack_frames(frames, tmp_path / "pool.store")
    a = pool_features(path, "ace", chunk_frames=7)
    b = pool_features(store.path, "ace", chunk_frames=64)
    np.testing.assert_allclose(a.features, b.features, rtol=1e-12, atol=1e-12)
    for method in SELECTORS:
        np.testing.assert_array_equal(select(a, 8, method, seed=2).indices,
                                      select(b, 8, method, seed=2).indices)


def test_unknown_element_and_bad_n_are_named(tmp_path):
    path = tmp_path / "cu.extxyz"
    write_extxyz(Dataset([Frame.from_atoms(bulk("Cu", cubic=True))]), path)
    with pytest.raises(DataError, match=r"frame 0: element\(s\) Cu .* not among"):
        pool_features(path, ACE(["Au"]))
    assert resolve_n_select("0.25", 40) == 10 and resolve_n_select("7", 40) == 7
    for bad, match in (("0", "n must be"), ("41", "only 40"), ("1.5", "fraction"),
                       ("abc", "count or a fraction"), ("-0.1", "fraction")):
        with pytest.raises(ConfigError, match=match):
            resolve_n_select(bad, 40)
    with pytest.raises(ConfigError, match="method must be one of"):
        select(np.ones((5, 2)), 2, "kmeans")


def test_doptimal_from_a_fitted_linear_model_uses_its_posterior(tmp_path):
    """Frame rows in the model's feature space with its posterior covariance: the prior
    variance of each frame's per-atom energy is the model's own energy sigma squared."""
    from ml4m.models.linear import LinearACE
    from ml4m.md.curation import linear_model_prior

    frames = default_dataset()[::8]
    path = tmp_path / "pool.extxyz"
    write_extxyz(frames, path)
    model = LinearACE(ACE(["Cu"], r_cut=4.0, n_max=3, l_max=2, total_degree=5),
                      uncertainty="posterior").fit(frames[::3])
    desc, fmap, cov = linear_model_prior(model)
    pool = pool_features(path, desc, feature_map=fmap)
    noise = model.noise_["energy"]
    sigma = model.predict(frames, uncertainty=True).energy_sigma / pool.n_atoms
    prior_var = np.einsum("ij,jk,ik->i", pool.features, cov, pool.features) * noise**2
    np.testing.assert_allclose(prior_var, sigma**2, rtol=1e-6)
    sel = select(pool, 5, "doptimal", covariance=cov)
    assert sel.scores[0] == pytest.approx(np.log1p(np.max(prior_var) / noise**2))
    with pytest.raises(ConfigError, match="fitted linear potential"):
        linear_model_prior(LinearACE(desc))


def test_environment_level_picks_a_frame_for_its_one_rare_atom(tmp_path):
    """Frames of bulk Cu, one of which has a single displaced atom: its mean row is
    ordinary (1 atom of 32) but FPS on environments picks it among the first frames,
    and every selector returns distinct frames whose atom rows average to frame rows."""
    frames = []
    for k in range(30):
        atoms = bulk("Cu", cubic=True, a=3.61).repeat(2)
        atoms.rattle(0.02, seed=k)
        if k == 17:
            atoms.positions[5] += [0.55, 0.0, 0.0]
        frames.append(Frame.from_atoms(atoms))
    path = tmp_path / "pool.extxyz"
    write_extxyz(Dataset(frames), path)
    desc = ACE(["Cu"], r_cut=4.0, n_max=3, l_max=2, total_degree=5)
    atoms_pool = pool_features(path, desc, level="atoms", chunk_frames=8)
    frames_pool = pool_features(path, desc)
    from ml4m.md.curation import frame_rows

    np.testing.assert_allclose(frame_rows(atoms_pool), frames_pool.features, atol=1e-12)
    for seed in range(3):  # the first environment is random, the second the odd one
        assert 17 in select(atoms_pool, 3, "fps", seed=seed).indices[:2]
    for method in SELECTORS:
        sel = select(atoms_pool, 6, method, seed=1)
        assert len(np.unique(sel.indices)) == 6 and sel.indices.max() < 30

"""Splits (reproducible, disjoint, group-preserving) and fitted reference energies."""

from __future__ import annotations

import numpy as np
import pytest

from ml4m.data import Dataset, Frame, fit_reference_energies, split_dataset, split_indices
from ml4m.data.reference import resolve_reference_energies
from ml4m.errors import ConfigError


def test_random_split_reproducible_disjoint_covering():
    a = split_indices(100, valid=0.2, test=0.1, seed=7)
    b = split_indices(100, valid=0.2, test=0.1, seed=7)
    c = split_indices(100, valid=0.2, test=0.1, seed=8)
    for part in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
    assert not np.array_equal(a.valid, c.valid)
    allidx = np.concatenate([a.train, a.valid, a.test])
    assert sorted(allidx.tolist()) == list(range(100))
    assert (len(a.train), len(a.valid), len(a.test)) == (70, 20, 10)


def test_group_split_keeps_groups_whole():
    groups = [f"traj{k // 10}" for k in range(200)]  # 20 trajectories of 10 frames
    s = split_indices(200, valid=0.2, test=0.1, seed=0, groups=groups)
    owner = {}
    for part in ("train", "valid", "test"):
        for idx in getattr(s, part):
            owner.setdefault(groups[idx], set()).add(part)
    assert all(len(parts) == 1 for parts in owner.values())
    assert len(s.valid) == 40 and len(s.test) == 20


@pytest.mark.parametrize("valid,test", [(-0.1, 0.1), (0.6, 0.5), (1.0, 0.0)])
def test_bad_fractions(valid, test):
    with pytest.raises(ConfigError, match="fraction|must leave"):
        split_indices(10, valid=valid, test=test)


def _frame(numbers, energy):
    n = len(numbers)
    pos = np.arange(n * 3, dtype=float).reshape(n, 3) * 2.0
    return Frame(np.asarray(numbers), pos, np.zeros((3, 3)), np.zeros(3, bool), energy=energy)


def test_fit_reference_energies_recovers_known_e0():
    rng = np.random.default_rng(0)
    e0 = {29: -3.5, 79: -1.25}
    frames = []
    for _ in range(30):
        n_cu, n_au = rng.integers(1, 10, size=2)
        numbers = [29] * n_cu + [79] * n_au
        frames.append(_frame(numbers, n_cu * e0[29] + n_au * e0[79] + rng.normal(scale=1e-3)))
    fitted = fit_reference_energies(Dataset(frames))
    assert fitted[29] == pytest.approx(-3.5, abs=1e-3)
    assert fitted[79] == pytest.approx(-1.25, abs=1e-3)


def test_single_species_e0_is_mean_energy_per_atom():
    frames = [_frame([29] * n, e) for n, e in [(2, -1.0), (4, -3.0), (3, -1.2)]]
    fitted = fit_reference_energies(Dataset(frames))
    # least squares of E = n * e0: e0 = sum(n E) / sum(n^2)
    assert fitted[29] == pytest.approx((2 * -1.0 + 4 * -3.0 + 3 * -1.2) / (4 + 16 + 9), rel=1e-6)


def test_resolve_given_e0s():
    ds = Dataset([_frame([29, 79], -1.0)])
    assert resolve_reference_energies(ds, {"Cu": -1.0, "Au": -2.0}) == {29: -1.0, 79: -2.0}
    with pytest.raises(ConfigError, match=r"missing for species \['Au'\]"):
        resolve_reference_energies(ds, {"Cu": -1.0})


def test_split_dataset_by_info_key():
    frames = [_frame([29, 29], float(k)) for k in range(12)]
    for k, f in enumerate(frames):
        f.info["config_type"] = "abc"[k % 3]
    split, parts = split_dataset(Dataset(frames), valid=0.3, test=0.3, seed=1, by="config_type")
    types = {p: {f.info["config_type"] for f in parts[p]} for p in parts}
    assert all(len(t) == 1 for t in types.values())
    with pytest.raises(ConfigError, match="no frame has info key 'nope'"):
        split_dataset(Dataset(frames), by="nope")

"""Prediction containers: joining blocks of frames."""

from __future__ import annotations

import numpy as np

from ml4m.models.base import Prediction


def _block(n_atoms: list[int], rng, sigma: bool) -> Prediction:
    n, b = sum(n_atoms), len(n_atoms)
    extra = ({"energy_sigma": rng.random(b), "forces_sigma": rng.random((n, 3)),
              "stress_sigma": rng.random((b, 6)), "energies": rng.random(n)} if sigma else {})
    return Prediction(energy=rng.random(b), forces=rng.random((n, 3)), stress=rng.random((b, 6)),
                      offsets=np.concatenate([[0], np.cumsum(n_atoms)]), **extra)


def test_concatenated_blocks_give_each_frame_back():
    rng = np.random.default_rng(0)
    parts = [_block([3, 2], rng, True), _block([4], rng, True), _block([1, 5, 2], rng, True)]
    joined = Prediction.concatenate(parts)
    np.testing.assert_array_equal(joined.offsets, [0, 3, 5, 9, 10, 15, 17])
    frames = [p.frame(k) for p in parts for k in range(len(p.energy))]
    for k, expected in enumerate(frames):
        got = joined.frame(k)
        assert got.keys() == expected.keys()
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])


def test_an_optional_quantity_missing_in_one_block_is_dropped():
    rng = np.random.default_rng(1)
    joined = Prediction.concatenate([_block([2], rng, True), _block([3], rng, False)])
    assert joined.forces_sigma is None and joined.energies is None
    assert joined.forces.shape == (5, 3)

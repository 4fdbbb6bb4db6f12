"""Training a network in one call (ml4m.training.finetune): from scratch or on from its
weights, inside a baseline, as a committee."""

from __future__ import annotations

import numpy as np
import pytest

from ml4m.training import TrainSettings
from ml4m.training.finetune import fine_tune_settings, is_network, train_network

from models.toy_potentials import ToyPair, emt_cu_frames


@pytest.fixture(scope="module")
def frames():
    return emt_cu_frames(12, seed=5, source="cu.extxyz")


def _weights(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.module_.state_dict().items()}


def _first(frames):
    return train_network(ToyPair(), frames[:6], TrainSettings(
        batch_size=2, lr=0.02, max_epochs=3, progress=False, seed=1))


def test_training_goes_on_from_the_weights_of_a_copy(frames):
    first = _first(frames)
    before = _weights(first)
    # a vanishing rate: the copy keeps the weights, so it predicts as the model does
    still = train_network(first, frames, fine_tune_settings(
        {"lr": 1e-14, "min_lr": 1e-15, "max_epochs": 1, "ema_decay": None}))
    np.testing.assert_allclose(still.predict(frames).forces, first.predict(frames).forces,
                               rtol=0, atol=1e-10)
    tuned = train_network(first, frames, fine_tune_settings({"lr": 0.02, "max_epochs": 3}))
    after = _weights(first)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # the model is unchanged
    assert tuned is not first
    assert not np.allclose(tuned.predict(frames).forces, first.predict(frames).forces)


def test_a_fitted_baseline_is_kept_and_the_network_learns_the_residuals(frames):
    from ml4m.models.baseline import Baselined, PairRepulsion

    start = train_network(Baselined(ToyPair(), PairRepulsion()), frames[:6], TrainSettings(
        batch_size=2, lr=0.02, max_epochs=2, progress=False))
    assert isinstance(start, Baselined) and is_network(start)
    tuned = train_network(start, frames, fine_tune_settings({"max_epochs": 2}))
    assert isinstance(tuned, Baselined) and tuned.baseline_ is start.baseline_
    assert not np.allclose(tuned.model_.predict(frames).forces,
                           start.model_.predict(frames).forces)


def test_a_linear_model_is_not_a_network():
    from ml4m.models import Committee
    from ml4m.models.linear import LinearACE

    assert is_network(ToyPair()) and is_network(Committee(ToyPair(), n_members=2))
    assert not is_network(Committee(LinearACE(None), n_members=2))

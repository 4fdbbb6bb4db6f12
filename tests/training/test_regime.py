"""The regime of a network fit (:mod:`ml4m.training.regime`): the passes a run will make,
the settings each regime takes, the config's settings kept, a resumed run's settings
taken from its checkpoint, and ``ml4m fit`` applying them."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch

from ml4m.cli.main import main
from ml4m.models.mpnn import MPNN
from ml4m.models.serialization import load as load_model
from ml4m.training import regime as regime_mod
from ml4m.training.batches import GraphSet
from ml4m.training.checkpoint import identity
from ml4m.training.costs import step_seconds
from ml4m.training.regime import (
    MANY_PASSES,
    choose_regime,
    expected_passes,
    regime_of_checkpoint,
)
from ml4m.training.settings import TrainSettings
from models.toy_potentials import emt_cu_frames, write_emt_cu_split

DEFAULTS = {"data_limited": {"training": {"amsgrad": True}},
            "step_limited": {"params": {"path_mix": True}}}
SMALL = dict(r_max=4.0, n_channels=4, radial_mlp=8, n_radial=4, l_max=1, hidden_l=1)


def test_expected_passes_are_the_epochs_or_what_the_budget_allows():
    assert expected_passes(7, None, None) == 7.0
    assert expected_passes(None, 60.0, 2.0) == pytest.approx(30.0)  # 60 s of 2-s passes
    assert expected_passes(10, 60.0, 2.0) == 10.0  # the epochs end it first
    assert expected_passes(None, None, None) == math.inf


def test_the_regime_turns_at_many_passes_and_keeps_the_configs_settings():
    many = choose_regime(MANY_PASSES, DEFAULTS, {}, {})
    few = choose_regime(MANY_PASSES - 1, DEFAULTS, {}, {})
    assert (many["regime"], many["training"], many["params"]) == (
        "data_limited", {"amsgrad": True}, {})
    assert (few["regime"], few["training"], few["params"]) == (
        "step_limited", {}, {"path_mix": True})
    # the config's own settings win: nothing left to choose
    assert choose_regime(1e6, DEFAULTS, {}, {"amsgrad": False})["training"] == {}
    assert choose_regime(1.0, DEFAULTS, {"path_mix": False}, {})["params"] == {}
    assert choose_regime(math.inf, DEFAULTS, {}, {})["passes"] is None  # JSON-safe


def test_step_seconds_leaves_the_parameters_alone():
    frames = emt_cu_frames(6, 0)
    model = MPNN(**SMALL, seed=1).prepare(frames)
    before = {k: v.clone() for k, v in model.module_.state_dict().items()}
    seconds = step_seconds(model, GraphSet(frames), batch_size=2)
    assert 0.0 < seconds < 60.0
    after = model.module_.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.module_.parameters())


def test_a_resumed_run_takes_its_checkpoints_settings():
    frames = emt_cu_frames(4, 0)
    model = MPNN(**SMALL, path_mix=True).prepare(frames)
    settings = TrainSettings(amsgrad=False).resolved(2, model.training_defaults)
    payload = {"identity": identity(model, settings)}
    got = regime_of_checkpoint(payload, DEFAULTS, {}, {})
    assert (got["params"], got["training"]) == ({"path_mix": True}, {"amsgrad": False})
    # what the config gives is not overridden
    assert regime_of_checkpoint(payload, DEFAULTS, {"path_mix": False}, {})["params"] == {}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_emt_cu_split(tmp_path_factory.mktemp("regime"), 8, 2)


def _fit(files, tmp_path, params=None, training=None, argv=()):
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "fit.json"
    cfg.write_text(json.dumps({
        "model": "mpnn", "train": str(files / "train.extxyz"),
        "valid": str(files / "valid.extxyz"), "params": {**SMALL, **(params or {})},
        "training": {"batch_size": 4, **({"max_epochs": 3} if not argv else {}),
                     **(training or {})}}))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["fit", str(cfg), "-o", str(tmp_path / "m.ml4m"), "--json", *argv]) == 0
    metrics = json.loads(out.getvalue())
    return metrics, load_model(tmp_path / "m.ml4m").model  # the network under its core


def test_fit_applies_the_step_limited_settings(files, tmp_path):
    metrics, model = _fit(files, tmp_path)
    regime = metrics["training"]["regime"]
    assert regime["regime"] == "step_limited" and regime["passes"] == 3
    assert model.path_mix is True
    assert metrics["training"]["settings"]["amsgrad"] is False


def test_fit_applies_the_data_limited_settings_unless_the_config_sets_them(
        files, tmp_path, monkeypatch):
    monkeypatch.setattr(regime_mod, "MANY_PASSES", 3)  # 3 epochs count as many
    metrics, model = _fit(files, tmp_path / "a")
    assert metrics["training"]["regime"]["regime"] == "data_limited"
    assert metrics["training"]["settings"]["amsgrad"] is True and model.path_mix is False
    metrics, _ = _fit(files, tmp_path / "b", training={"amsgrad": False})
    assert metrics["training"]["settings"]["amsgrad"] is False


def test_a_budgets_passes_are_not_those_of_a_run_without_one(files, tmp_path, monkeypatch):
    """With ``--max-minutes`` and no ``max_epochs`` the budget ends the run: its passes
    are the training seconds over the timed pass, not the epochs a run without a budget
    makes (here made 1 by ``AUTO_STEPS``). How well they foretell the passes made is
    measured on real fits (benchmarks/results/fit_defaults.md: 48 / 44 on 3BPA); on this
    12-s toy a loaded machine leaves from 1 to 119 epochs (CI, here), so only the
    forecast's formula is checked."""
    from ml4m.training import settings as settings_mod

    monkeypatch.setattr(settings_mod, "AUTO_STEPS", 1)
    monkeypatch.setattr(settings_mod, "MIN_EPOCHS", 1)
    metrics, _ = _fit(files, tmp_path, argv=("--max-minutes", "0.2"))
    regime = metrics["training"]["regime"]
    # 8 frames in batches of 4: a pass is two timed steps and a validation
    assert regime["seconds_per_pass"] >= 2 * regime["step_seconds"] > 0
    assert regime["train_seconds"] < 12.0
    # the budget's passes, not min(1 epoch, ...): tens of passes when the machine is idle
    assert regime["passes"] == pytest.approx(max(regime["train_seconds"], 0.0)
                                             / regime["seconds_per_pass"])

"""Trainer: the loss falls, the weight average, checkpoints resume exactly, failures are
named, data parallelism equals one process with the global batch, the time budget holds."""

from __future__ import annotations

import math
import time
import types

import numpy as np
import pytest
import torch
from ase.calculators.emt import EMT

from ml4m.data import Frame
from ml4m.errors import ConfigError, DataError, TrainingError
from ml4m.models.torch_potential import TorchPotential
from ml4m.training import Trainer, TrainSettings
from ml4m.training.ema import WeightAverage
from ml4m.training.settings import BUDGET_EPOCHS
from models.toy_potentials import ToyPair, emt_cu_frames


def _cu_frames(n: int, seed: int = 0, source: str = "cu.extxyz") -> list[Frame]:
    """``n`` rattled and strained 8-atom Cu cells labelled by EMT."""
    return emt_cu_frames(n, seed, source=source)


@pytest.fixture(scope="module")
def cu():
    return _cu_frames(16, seed=0), _cu_frames(6, seed=1, source="cu_valid.extxyz")


def _settings(**kw) -> TrainSettings:
    base = {"batch_size": 4, "lr": 0.02, "max_epochs": 4, "progress": False, "seed": 3}
    return TrainSettings(**{**base, **kw})


def _params(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.module_.state_dict().items()}


def test_loss_decreases_and_history_is_complete(cu, tmp_path):
    train, valid = cu
    trainer = Trainer(_settings(max_epochs=8, log_csv=str(tmp_path / "log.csv"),
                                weights={"energy": 1.0, "forces": 10.0, "stress": 1.0}))
    model = trainer.fit(ToyPair(), train, valid)
    h = trainer.history
    assert [r["epoch"] for r in h] == list(range(8)) and h[-1]["step"] == 8 * 4
    assert h[-1]["valid_loss"] < 0.3 * h[0]["valid_loss"]
    assert h[-1]["valid_forces_mae_mev_per_a"] < 0.5 * h[0]["valid_forces_mae_mev_per_a"]
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert len(rows) == 9 and rows[0].startswith("epoch,step,seconds,lr,train_loss")
    # the returned weights are the best epoch's: their valid error is the one logged
    pred = model.predict(valid)
    f_ref = np.concatenate([f.forces for f in valid])
    best = min(h, key=lambda r: r["valid_loss"])
    assert 1000 * np.abs(pred.forces - f_ref).mean() == pytest.approx(
        best["valid_forces_mae_mev_per_a"], rel=1e-9)


def test_default_epochs_make_the_auto_steps(cu, monkeypatch):
    """Without ``max_epochs`` a run takes the passes that make ``AUTO_STEPS`` steps (here
    16 frames in batches of 4: 4 steps per pass), at least ``MIN_EPOCHS``; the resolved
    number is what the trainer reports."""
    from ml4m.training import settings

    assert TrainSettings().resolved(8).max_epochs == -(-settings.AUTO_STEPS // 8)
    assert TrainSettings().resolved(10**6).max_epochs == settings.MIN_EPOCHS
    assert TrainSettings(max_epochs=7).resolved(8).max_epochs == 7
    # the rate and the weight decay: as given, else the model's, else the fallback
    model = {"lr": 3e-3, "weight_decay": 0.1}
    assert TrainSettings().resolved(8, model).lr == 3e-3
    assert TrainSettings().resolved(8, model).weight_decay == 0.1
    assert TrainSettings(lr=0.02, weight_decay=0.0).resolved(8, model).lr == 0.02
    assert TrainSettings(lr=0.02, weight_decay=0.0).resolved(8, model).weight_decay == 0.0
    assert TrainSettings().resolved(8, {"lr": 3e-3}).weight_decay == 0.0
    assert TrainSettings().resolved(8).lr == TorchPotential.training_defaults["lr"]
    monkeypatch.setattr(settings, "AUTO_STEPS", 10)
    monkeypatch.setattr(settings, "MIN_EPOCHS", 2)
    trainer = Trainer(_settings(max_epochs=None, patience=50))
    trainer.fit(ToyPair(), *cu)
    assert trainer.settings.max_epochs == 3 and trainer.stop_reason == "max_epochs"
    assert len(trainer.history) == 3 and trainer.history[-1]["step"] == 12


def test_weight_average_is_the_exponential_average():
    module = torch.nn.Linear(2, 1).double()
    avg = WeightAverage(module, decay=0.9)
    expected = module.weight.detach().clone()
    for n in range(30):
        with torch.no_grad():
            module.weight.add_(0.1 * (n + 1))
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * module.weight.detach()
        avg.update(module)
    torch.testing.assert_close(avg.state["weight"], expected, rtol=1e-12, atol=1e-12)
    with avg.applied(module):
        torch.testing.assert_close(module.weight, expected)
    assert not torch.allclose(module.weight, expected)  # restored after the block


@pytest.mark.parametrize("ema", [None, 0.9])
def test_final_weights_are_the_average_or_the_last_step(cu, tmp_path, ema):
    train, _ = cu
    ckpt = tmp_path / "run.ckpt"
    model = Trainer(_settings(ema_decay=ema, max_epochs=2, checkpoint=str(ckpt))).fit(
        ToyPair(), train)
    saved = torch.load(ckpt, weights_only=True)
    final = model.module_.state_dict()
    if ema is None:
        assert "ema" not in saved
        torch.testing.assert_close(final, saved["module"], rtol=0, atol=0)
    else:
        torch.testing.assert_close(final, saved["ema"]["state"], rtol=0, atol=0)
        assert not torch.allclose(final["alpha"], saved["module"]["alpha"])


class _Interrupt(Exception):
    pass


def _fail_at(model, call: int, nan: bool = False):
    """A forward hook that raises (or returns a NaN energy) from the ``call``-th forward on."""
    count = {"n": 0}

    def hook(module, args, out):
        count["n"] += 1
        if count["n"] >= call:
            if nan:
                return {**out, "energy": out["energy"] * float("nan")}
            raise _Interrupt(f"killed at forward {count['n']}")
        return out

    return model.module_.register_forward_hook(hook)


def test_resume_after_interrupt_equals_uninterrupted_run(cu, tmp_path):
    train, valid = cu
    settings = _settings(max_epochs=4, checkpoint=str(tmp_path / "a.ckpt"), checkpoint_every=3)
    whole = Trainer(settings)
    reference = _params(whole.fit(ToyPair(), train, valid))

    settings = _settings(max_epochs=4, checkpoint=str(tmp_path / "b.ckpt"), checkpoint_every=3)
    torch.manual_seed(settings.seed)
    model = ToyPair().prepare(train)
    # forward 1 looks for last-layer features; then 4 steps an epoch + 2 validation
    # batches: forward 16 is step 11 (the 3rd of epoch 2), 2 after the checkpoint at step 9
    _fail_at(model, 16)
    with pytest.raises(_Interrupt):
        Trainer(settings).fit(model, train, valid)
    assert torch.load(tmp_path / "b.ckpt", weights_only=True)["run"]["step"] == 9
    resumed = Trainer(settings)
    got = _params(resumed.fit(ToyPair(), train, valid, resume=True))
    for k in reference:
        np.testing.assert_array_equal(got[k], reference[k], err_msg=k)
    assert [r["valid_loss"] for r in resumed.history] == [r["valid_loss"] for r in whole.history]

    other = _settings(max_epochs=4, checkpoint=str(tmp_path / "b.ckpt"), lr=0.5)
    with pytest.raises(ConfigError, match=r"b.ckpt: the checkpoint is of another settings "
                                          r"\(lr: 0.02 there, 0.5 now\)"):
        Trainer(other).fit(ToyPair(), train, valid, resume=True)
    with pytest.raises(ConfigError, match="another model"):
        Trainer(settings).fit(ToyPair(r_cut=3.5), train, valid, resume=True)
    with pytest.raises(ConfigError, match="no checkpoint to resume from"):
        Trainer(_settings(checkpoint=str(tmp_path / "none.ckpt"))).fit(
            ToyPair(), train, resume=True)


def test_cosine_schedule_resumed_with_more_epochs_anneals_from_where_it_stands(cu, tmp_path):
    """Killed at epoch 2 of 4 and resumed with max_epochs 8: the rate goes on from the
    one reached and falls along half a cosine to min_lr at epoch 8 (never rising)."""
    import math

    train, _ = cu
    lr, low = 0.02, 1e-4
    kw = {"scheduler": "cosine", "lr": lr, "min_lr": low, "checkpoint_every": 4,
          "checkpoint": str(tmp_path / "run.ckpt")}
    model = ToyPair().prepare(train)
    _fail_at(model, 10)  # forward 1 looks for features; 4 steps an epoch: epoch 2's first
    with pytest.raises(_Interrupt):
        Trainer(_settings(max_epochs=4, **kw)).fit(model, train)
    resumed = Trainer(_settings(max_epochs=8, **kw))
    resumed.fit(ToyPair(), train, resume=True)
    rates = [r["lr"] for r in resumed.history]

    def cosine(e, e0, lr0, end):
        return low + (lr0 - low) * 0.5 * (1 + math.cos(math.pi * (e - e0) / (end - e0)))

    expected = [cosine(e, 0, lr, 4) for e in range(3)]
    expected += [cosine(e, 2, expected[2], 8) for e in range(3, 8)]
    np.testing.assert_allclose(rates, expected, rtol=1e-12)
    assert np.all(np.diff(rates) < 0)


@pytest.mark.parametrize("max_epochs", [10_000, None])
def test_cosine_schedule_anneals_to_the_end_of_a_time_budget(cu, max_epochs):
    """With 10,000 epochs allowed (or no limit given) and a 3-second budget, the cosine
    rate still falls most of the way to min_lr by the last epoch (over 10,000 epochs it
    would still be above 0.99 lr), never rising; the budget, not a count of steps, ends
    the run."""
    train, valid = cu
    lr, low = 0.02, 1e-5
    trainer = Trainer(_settings(scheduler="cosine", lr=lr, min_lr=low, max_epochs=max_epochs,
                                max_minutes=0.05, patience=10_000))
    trainer.fit(ToyPair(), train, valid)
    rates = np.array([r["lr"] for r in trainer.history])
    assert trainer.stop_reason == "max_minutes" and len(rates) < 10_000
    assert trainer.settings.max_epochs == (max_epochs or BUDGET_EPOCHS)
    assert np.all(np.diff(rates) <= 0) and rates[-1] < 0.3 * rates[0], rates[-5:]


def test_a_budgeted_cosine_follows_the_larger_of_the_epoch_and_time_fractions():
    """The phase is the largest of the epoch fraction and every time fraction so far: a
    time fraction that falls back (a slow step widened the margin, then left the window)
    does not raise the rate; a budget anchors at the rate reached."""
    from ml4m.training.loop import CosineSchedule

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = CosineSchedule(opt, max_epochs=10, min_lr=0.0)
    sched.step()  # epoch 1 of 10
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    sched.budget()  # anchor: from epoch 1 and its rate
    start = opt.param_groups[0]["lr"]
    expected = []
    for fraction, phase in [(0.5, 0.5), (0.3, 0.5), (0.05, 0.5), (0.9, 0.9), (1.0, 1.0)]:
        sched.step(fraction)
        expected.append(start * 0.5 * (1 + math.cos(math.pi * phase)))
        assert opt.param_groups[0]["lr"] == pytest.approx(expected[-1]), fraction
    sched.step(0.0)
    assert opt.param_groups[0]["lr"] == 0.0  # min_lr once the phase reached 1


def test_a_clock_measures_the_fraction_of_its_budget_passed():
    from ml4m.training.loop import Clock

    clock = Clock(time.perf_counter() + 10.0, after_seconds=1.0, valid_seconds=0.5)
    clock.step_seconds = [0.1] * 10 + [0.5]  # the slowest recent step sets the margin
    clock.started -= 3.5  # 3.5 s of the (10 + 3.5 - 1 - 0.5 - 2 x 0.5) = 11 s usable
    assert clock.fraction() == pytest.approx(3.5 / 11, abs=1e-3)
    assert not clock.time_up()
    clock.step_seconds.append(5.0)  # a margin past the deadline: time is up, fraction 1
    assert clock.time_up() and clock.fraction() == 1.0
    assert Clock(float("inf")).fraction() == 0.0


def test_a_training_batch_is_the_batch_graph_of_its_frames(cu):
    """Graphs built frame by frame and joined equal the batch built at once (a molecule
    keeps its zero cell), with the labels in full 3x3 stress form."""
    from ase.cluster import Octahedron

    from ml4m.models.torch_potential import batch_graph
    from ml4m.training.batches import GraphSet, collate

    cluster = Octahedron("Cu", 3)
    frames = [cu[0][0], Frame.from_atoms(cluster, energy=1.0), cu[0][1]]
    data, labels = collate(GraphSet(frames).graphs([0, 1, 2], 4.0, [29], "float64"))
    reference = batch_graph(frames, 4.0, [29])
    assert data.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(data[key], value, rtol=0, atol=0, msg=key)
    assert labels["stress_mask"].tolist() == [True, False, True]
    s = cu[0][1].stress
    full = [[s[0], s[5], s[4]], [s[5], s[1], s[3]], [s[4], s[3], s[2]]]
    np.testing.assert_array_equal(labels["stress_ref"][2].numpy(), full)


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(cu, tmp_path):
    train, _ = cu
    ckpt = tmp_path / "run.ckpt"
    model = ToyPair().prepare(train)
    _fail_at(model, 8, nan=True)  # forward 1 looks for features; forward 8 is step 7
    with pytest.raises(TrainingError, match=rf"training diverged: loss nan at epoch 1, step 7; "
                                            rf"the checkpoint {ckpt} keeps step 5"):
        Trainer(_settings(checkpoint=str(ckpt), checkpoint_every=5)).fit(model, train)
    assert torch.load(ckpt, weights_only=True)["run"]["step"] == 5


def test_missing_labels_are_named(cu):
    train, _ = cu
    unlabelled = list(train)
    unlabelled[5] = Frame(train[5].numbers, train[5].positions, train[5].cell, train[5].pbc,
                          energy=train[5].energy, source=("cu.extxyz", 5))
    with pytest.raises(DataError, match=r"cu.extxyz, frame 5: the loss weighs forces .* has no "
                                        r"forces label"):
        Trainer(_settings()).fit(ToyPair(), unlabelled)
    # without a force weight the same frames train
    Trainer(_settings(max_epochs=1, weights={"energy": 1.0})).fit(ToyPair(), unlabelled)


@pytest.mark.parametrize("mapping,match", [
    ({"learning_rate": 0.1}, r"unknown key\(s\) \['learning_rate'\]"),
    ({"lr": 0}, "training.lr must be > 0.0"),
    ({"batch_size": 2.5}, "training.batch_size must be an integer"),
    ({"weights": {"energy": 1, "charges": 1}}, r"weights has unknown key\(s\) \['charges'\]"),
    ({"weights": {"energy": 0}}, "weight > 0"),
    ({"scheduler": "step"}, "training.scheduler must be one of"),
    ({"ema_decay": 1.0}, "training.ema_decay must be < 1.0"),
    ({"progress": "yes"}, "training.progress must be true or false"),
    ({"amsgrad": "yes"}, "training.amsgrad must be true or false"),
    ({"final_weights": {"energy": 1, "dipole": 1}}, r"final_weights has unknown key"),
    ({"final_from": 1.0}, "training.final_from must be < 1.0"),
])
def test_bad_settings_are_named(mapping, match):
    with pytest.raises(ConfigError, match=match) as info:
        TrainSettings.from_mapping(mapping, source="fit.yaml")
    assert str(info.value).startswith("fit.yaml: ")


class _DecayedPair(ToyPair):
    training_defaults = {"lr": 1e-2, "weight_decay": 0.25}


@pytest.mark.parametrize("given,model,expected", [
    ({"amsgrad": False}, ToyPair, {"amsgrad": False, "weight_decay": 0.0}),
    ({"amsgrad": True}, ToyPair, {"amsgrad": True, "weight_decay": 0.0}),
    ({}, _DecayedPair, {"amsgrad": False, "weight_decay": 0.25}),
    ({"weight_decay": 0.5}, _DecayedPair, {"amsgrad": False, "weight_decay": 0.5})])
def test_settings_and_model_defaults_reach_the_optimizer(cu, monkeypatch, given, model,
                                                          expected):
    """AMSGrad and the weight decay as given, else the model's ``training_defaults``."""
    seen = []
    init = torch.optim.AdamW.__init__

    def spy(self, params, **kw):
        seen.append({k: kw.get(k) for k in expected})
        init(self, params, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "__init__", spy)
    Trainer(_settings(max_epochs=1, **given)).fit(model(), *cu)
    assert seen == [expected]


def test_final_weights_take_over_at_their_phase(cu, monkeypatch):
    """A second stage: from phase ``final_from`` on, steps and validation weigh the loss
    with ``final_weights``, and the model is chosen among that stage's epochs."""
    from ml4m.training import loop

    seen = []
    real = loop.weighted_loss

    def spy(sums, weights, counts, scale=1):
        seen.append(dict(weights))
        return real(sums, weights, counts, scale=scale)

    monkeypatch.setattr(loop, "weighted_loss", spy)
    train, valid = cu
    first, final = {"energy": 1.0, "forces": 100.0}, {"energy": 1000.0, "forces": 1.0}
    trainer = Trainer(_settings(max_epochs=8, weights=first, final_weights=final,
                                final_from=0.5, ema_decay=None))
    model = trainer.fit(ToyPair(), train, valid)
    calls = 4 + 1  # per epoch: 16 frames in batches of 4, then the validation loss
    assert len(seen) == 8 * calls
    # the cosine phase reaches 0.5 at the end of epoch 3 (4 of 8 passes)
    assert seen[:4 * calls] == [first] * (4 * calls)
    assert seen[4 * calls:] == [final] * (4 * calls)
    h = trainer.history
    best = min(h[4:], key=lambda r: r["valid_loss"])
    f_ref = np.concatenate([f.forces for f in valid])
    assert 1000 * np.abs(model.predict(valid).forces - f_ref).mean() == pytest.approx(
        best["valid_forces_mae_mev_per_a"], rel=1e-9)
    # the second stage's loss weighs energies 1000x: its valid loss is of another scale
    assert h[4]["valid_loss"] > 10 * h[3]["valid_loss"]


def test_max_minutes_is_honoured(cu):
    train, _ = cu
    Trainer(_settings(max_epochs=1)).fit(ToyPair(), train)  # torch's one-time start-up costs
    budget = 0.05  # minutes
    t0 = time.perf_counter()
    trainer = Trainer(_settings(max_epochs=10_000, max_minutes=budget))
    trainer.fit(ToyPair(), train)
    seconds = time.perf_counter() - t0
    assert trainer.stop_reason == "max_minutes"
    assert 0.5 * 60 * budget < seconds <= 1.1 * 60 * budget
    # the last epoch ends before the deadline, up to the scheduling jitter of a shared
    # machine (CI once measured 3.011 s for a 3 s budget)
    assert trainer.history[-1]["seconds"] <= 60 * budget + 0.1


def test_store_streams_the_same_training(cu, tmp_path):
    from ml4m.data.store import open_store, pack_frames

    train, _ = cu
    pack_frames(train, tmp_path / "train.store")
    store = open_store(tmp_path / "train.store")
    a = _params(Trainer(_settings(max_epochs=2)).fit(ToyPair(), train))
    b = _params(Trainer(_settings(max_epochs=2)).fit(ToyPair(), store))
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-12, atol=1e-12, err_msg=k)


def _ddp_worker(rank: int, world: int, port: int, frames, out: str) -> None:
    import os

    os.environ.update({"WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    model = Trainer(_settings(batch_size=2, max_epochs=2, ema_decay=None, clip_grad=None,
                              scheduler="none")).fit(ToyPair(), *frames)
    np.savez(f"{out}.{rank}.npz", **_params(model))


def test_two_processes_match_one_with_the_doubled_batch(cu, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    train, valid = cu  # validation is shared out too; the best epoch's weights are kept
    mp.start_processes(_ddp_worker, args=(2, port, (train, valid), str(tmp_path / "ddp")),
                       nprocs=2, start_method="fork")
    one = _params(Trainer(_settings(batch_size=4, max_epochs=2, ema_decay=None, clip_grad=None,
                                    scheduler="none")).fit(ToyPair(), train, valid))
    for rank in (0, 1):
        got = np.load(tmp_path / f"ddp.{rank}.npz")
        for k in one:
            np.testing.assert_allclose(got[k], one[k], rtol=1e-10, atol=1e-12, err_msg=k)
    start = ToyPair()
    torch.manual_seed(3)
    start.prepare(train)
    assert not np.allclose(_params(start)["alpha"], one["alpha"])  # training moved them


def _plan_worker(rank: int, world: int, port: int, folder: str) -> None:
    """``fit_network`` of a small BPNN with a budget, in process ``rank`` of ``world``,
    each process measuring other evaluation costs; writes the plan it followed."""
    import json
    import os
    from pathlib import Path

    import ml4m.training.costs
    from ml4m.training.config import FitConfig
    from ml4m.training.network import fit_network

    os.environ.update({"WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    ml4m.training.costs.evaluation_costs = lambda model, frames: {
        "forces": 1e-3 * (1 + rank), "features": 1e-4, "sigma": 1e-3 * (1 + rank),
        "jacobian": 1e-3, "last_layer": True}
    cfg = FitConfig.from_mapping({
        "model": "bpnn", "train": f"{folder}/train.extxyz", "valid": f"{folder}/valid.extxyz",
        "params": {"hidden": [4], "r_cut": 4.0, "g2_params": [[0.5, 0.0]],
                   "g4_params": [[0.1, 1.0, 1.0]]},
        "training": {"batch_size": 4, "max_epochs": 1}, "max_minutes": 0.2})
    plan = fit_network(cfg, Path(folder) / "m.ml4m", time.perf_counter(), False, False,
                       write=False)[3]["plan"]
    Path(f"{folder}/plan.{rank}.json").write_text(json.dumps(plan))


def test_data_parallel_processes_follow_the_first_ones_plan(cu, tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp

    from ml4m.data import Dataset, write_extxyz

    write_extxyz(Dataset(cu[0]), tmp_path / "train.extxyz")
    write_extxyz(Dataset(cu[1]), tmp_path / "valid.extxyz")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_plan_worker, args=(2, port, str(tmp_path)), nprocs=2,
                       start_method="fork")
    plans = [json.loads((tmp_path / f"plan.{rank}.json").read_text()) for rank in (0, 1)]
    assert plans[0]["costs"]["forces"] == 1e-3  # the first process's measurement
    assert plans[1] == plans[0]


def test_evaluations_shrink_to_fit_the_budget(cu, monkeypatch):
    import ml4m.training.costs
    from ml4m.data import Dataset
    from ml4m.training.network import EVAL_FRACTION, plan_evaluations

    cost = {"forces": 1e-3, "features": 5e-4, "sigma": 2e-3, "jacobian": 1e-3,
            "last_layer": True}  # s/atom
    monkeypatch.setattr(ml4m.training.costs, "evaluation_costs", lambda model, frames: cost)
    train, valid = Dataset(cu[0]), Dataset(cu[1])  # 16 and 6 frames of 8 atoms
    roomy = plan_evaluations(None, train, valid, seconds=1e6)
    assert (roomy["train_frames"], roomy["valid_frames"]) == (16, 6)
    # valid: validation + calibration + metrics with sigmas; train: features, their
    # Jacobian (one backward pass per feature) and metrics
    total = (1e-3 + 2 * 2e-3) * 48 + (5e-4 + 1e-3 + 1e-3) * 128
    tight = plan_evaluations(None, train, valid, seconds=0.26 * total / EVAL_FRACTION)
    assert (tight["train_frames"], tight["valid_frames"]) == (4, 1)  # 0.26 rounded down
    # the metrics' predictions: forces of 4 training frames, sigmas of 1 valid frame
    assert tight["after_seconds"] == pytest.approx(1e-3 * 32 + 2e-3 * 8)
    # the Jacobian is taken on at most jacobian_atoms atoms: a cap lets more frames in
    capped = plan_evaluations(types.SimpleNamespace(jacobian_atoms=8), train, valid,
                              seconds=0.26 * total / EVAL_FRACTION)
    assert capped["train_frames"] > 4


def test_costs_are_timed_warm_and_sigmas_through_predict():
    """A fake model whose first call is slow and whose calls sleep known times per atom:
    the measured costs are those times, not the first call's."""
    from ml4m.training.costs import evaluation_costs

    atoms, per_atom = 8, {"forces": 0.01, "sigma": 0.04, "fit": 0.1}

    class Fake:
        cutoff, species_, device, dtype = 4.0, [29], "cpu", "float64"
        jacobian_atoms = 2048
        calls = 0

        def module_(self, data):
            return {"energy": None, "features": None}

        def predict(self, frames, uncertainty=False):
            Fake.calls += 1
            time.sleep((0.5 if Fake.calls == 1 else 0.0)
                       + per_atom["sigma" if uncertainty else "forces"] * atoms)
            assert not uncertainty or hasattr(self, "last_layer_")

        def fit_last_layer(self, frames, valid):
            time.sleep(per_atom["fit"] * atoms)
            self.last_layer_ = "posterior"

    model = Fake()
    model.last_layer_ = "trained"  # left as it was
    cost = evaluation_costs(model, _cu_frames(1))
    assert cost["last_layer"] and model.last_layer_ == "trained"
    assert cost["forces"] == pytest.approx(per_atom["forces"], rel=0.2)
    assert cost["sigma"] == pytest.approx(per_atom["sigma"], rel=0.2)
    # the fit less its sigmas (the fake's forward pass, the features, costs nothing)
    assert cost["jacobian"] == pytest.approx(per_atom["fit"] - per_atom["sigma"], rel=0.2)


def test_last_layer_shrinks_to_the_time_left(cu, monkeypatch):
    """A posterior too slow for the budget is fitted on fewer frames, and the fit ends
    within the budget."""
    from ml4m.training.costs import last_layer_seconds

    train, valid = cu
    seen = {}

    def fit_last_layer(self, frames, held):
        seen.update(train=len(frames), valid=len(held))
        time.sleep(last_layer_seconds(cost, 8 * len(frames), 8 * len(held), 2048))

    cost = {"forces": 1e-4, "features": 1e-4, "sigma": 1e-3, "jacobian": 0.05,
            "last_layer": True}  # all 16 training frames: 6.5 s
    monkeypatch.setattr(Trainer, "_has_features", staticmethod(lambda model, data: True))
    monkeypatch.setattr(ToyPair, "fit_last_layer", fit_last_layer, raising=False)
    budget = 5 / 60
    t0 = time.perf_counter()
    Trainer(_settings(max_epochs=100, max_minutes=budget)).fit(ToyPair(), train, valid,
                                                               costs=cost)
    assert time.perf_counter() - t0 < 60 * budget + 0.5
    assert 1 <= seen["train"] < 16 and 1 <= seen["valid"] <= 6


def test_molecules_and_stressed_cells_train_together(cu):
    from ase.cluster import Octahedron

    cluster = Octahedron("Cu", 3)  # no cell: no stress label, no stress term
    cluster.rattle(0.05, seed=2)
    cluster.calc = EMT()
    molecule = Frame.from_atoms(cluster, energy=cluster.get_potential_energy(),
                                forces=cluster.get_forces(), source=("cluster.extxyz", 0))
    frames = [molecule] + list(cu[0][:7])  # the molecule shares a batch with stressed cells
    trainer = Trainer(_settings(max_epochs=3, weights={"energy": 1.0, "forces": 10.0,
                                                       "stress": 100.0}))
    model = trainer.fit(ToyPair(), frames)
    assert all(np.isfinite(r["train_loss"]) for r in trainer.history)
    assert trainer.history[-1]["train_loss"] < trainer.history[0]["train_loss"]
    assert all(np.isfinite(v).all() for v in _params(model).values())


def test_a_stress_term_no_training_frame_carries_costs_no_strain_derivative(cu, monkeypatch):
    """Molecules alone (no stress labels): the steps take forces but no strain derivative,
    and the weights they reach are those of a loss without the stress weight; with stressed
    cells in the set, the stress term is kept."""
    from ase.cluster import Octahedron

    frames = []
    for seed in range(4):
        cluster = Octahedron("Cu", 3)
        cluster.rattle(0.05, seed=seed)
        cluster.calc = EMT()
        frames.append(Frame.from_atoms(cluster, energy=cluster.get_potential_energy(),
                                       forces=cluster.get_forces()))
    asked = []
    original = ToyPair.energy_and_derivatives

    def spy(self, data, *args, **kwargs):
        asked.append(kwargs.get("stress", False))
        return original(self, data, *args, **kwargs)

    monkeypatch.setattr(ToyPair, "energy_and_derivatives", spy)
    weights = {"energy": 1.0, "forces": 10.0}
    with_stress = Trainer(_settings(max_epochs=2, weights={**weights, "stress": 100.0})).fit(
        ToyPair(), frames)
    assert asked and not any(asked)
    without = Trainer(_settings(max_epochs=2, weights={**weights, "stress": 0.0})).fit(
        ToyPair(), frames)
    for k, v in _params(with_stress).items():
        np.testing.assert_allclose(v, _params(without)[k], rtol=0, atol=0)
    asked.clear()
    Trainer(_settings(max_epochs=1, weights={**weights, "stress": 100.0})).fit(
        ToyPair(), frames + list(cu[0][:3]))
    assert any(asked)


def test_tensorboard_gets_the_history(cu, tmp_path, monkeypatch):
    import sys
    import types

    written = []

    class SummaryWriter:  # stands in for tensorboard's (not installed here)
        def __init__(self, folder):
            written.append(("folder", folder))

        def add_scalar(self, key, value, step):
            written.append((key, value, step))

        def close(self):
            written.append(("closed",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard",
                        types.SimpleNamespace(SummaryWriter=SummaryWriter))
    train, valid = cu
    # with the progress bar on (drawn only on a terminal)
    trainer = Trainer(_settings(max_epochs=2, progress=True, log_csv=str(tmp_path / "run.csv")))
    trainer.fit(ToyPair(), train, valid)
    assert written[0] == ("folder", str(tmp_path / "run_tb")) and written[-1] == ("closed",)
    losses = [(v, step) for key, v, *rest in written[1:-1] if key == "valid_loss"
              for step in rest]
    assert losses == [(r["valid_loss"], r["step"]) for r in trainer.history]


def test_a_cosine_schedule_counts_patience_late_in_its_anneal(cu, monkeypatch):
    """Under the cosine schedule, epochs without a better valid loss count towards
    ``patience`` only from phase ``EARLY_STOP_FROM`` on: worse losses before it do not
    stop the run, two worse ones after a best just before it do."""
    import math

    from ml4m.training.loop import EARLY_STOP_FROM, TrainingRun

    n = 10  # the phase after epoch e is (e + 1) / n
    first = math.ceil(EARLY_STOP_FROM * n - 1e-9) - 1  # first epoch that counts
    assert 3 <= first <= n - 3
    worse = [3.0 + k for k in range(first - 1)]  # epochs 0 .. first - 2: none counts
    seq = worse + [2.9, 3.5, 3.6, 1.0]  # a best at first - 1, then two worse: stop
    losses = iter(seq)

    def evaluate(self):
        return {"loss": next(losses), "energy": 1.0, "forces": 1.0}

    monkeypatch.setattr(TrainingRun, "evaluate", evaluate)
    train, valid = cu
    trainer = Trainer(_settings(max_epochs=n, patience=2))
    trainer.fit(ToyPair(), train, valid)
    assert trainer.stop_reason == "early_stopping"
    assert [r["valid_loss"] for r in trainer.history] == seq[:-1]


def test_early_stopping_keeps_the_best_epoch_and_stays_stopped(cu, tmp_path, monkeypatch):
    from ml4m.training.loop import TrainingRun

    losses = iter([3.0, 2.0, 2.5, 2.6, 1.0, 0.5])
    seen = {}

    def evaluate(self):
        seen[self.position["epoch"]] = {k: v.clone() for k, v in self.ema.state.items()}
        return {"loss": next(losses), "energy": 1.0, "forces": 1.0}

    monkeypatch.setattr(TrainingRun, "evaluate", evaluate)
    train, valid = cu
    settings = _settings(max_epochs=6, patience=2, checkpoint=str(tmp_path / "run.ckpt"),
                         scheduler="none")
    trainer = Trainer(settings)
    model = trainer.fit(ToyPair(), train, valid)
    assert trainer.stop_reason == "early_stopping"
    assert [r["valid_loss"] for r in trainer.history] == [3.0, 2.0, 2.5, 2.6]
    torch.testing.assert_close(model.module_.state_dict(), seen[1], rtol=0, atol=0)
    again = Trainer(settings)
    again.fit(ToyPair(), train, valid, resume=True)  # a finished run trains no further
    assert again.stop_reason == "early_stopping" and len(again.history) == 4


def test_auto_final_weights_raise_only_the_energy_weight():
    from ml4m.training.settings import FINAL_ENERGY_FACTOR

    assert TrainSettings().final_weights is None and not TrainSettings().has_final_stage
    s = TrainSettings(weights={"energy": 2.0, "forces": 100.0, "stress": 10.0},
                      final_weights="auto")
    assert s.has_final_stage
    assert s.stage_weights(False) == {"energy": 2.0, "forces": 100.0, "stress": 10.0}
    assert s.stage_weights(True) == {"energy": 2.0 * FINAL_ENERGY_FACTOR, "forces": 100.0,
                                     "stress": 10.0}
    assert s.weight("energy") == 2.0 * FINAL_ENERGY_FACTOR and s.weight("forces") == 100.0
    # without an energy term there is no second stage, and no energy label is needed
    forces_only = TrainSettings(weights={"forces": 1.0}, final_weights="auto")
    assert not forces_only.has_final_stage and forces_only.weight("energy") == 0.0
    assert TrainSettings.from_mapping({"final_weights": "auto"}).final_weights == "auto"
    with pytest.raises(ConfigError, match="final_weights must be a mapping"):
        TrainSettings.from_mapping({"final_weights": "energy"}, source="fit.yaml")

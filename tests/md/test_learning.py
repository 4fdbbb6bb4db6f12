"""On-the-fly active learning: when the reference is called, exact updates, resume, workers."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write

from ml4m.data import read_dataset
from ml4m.errors import ConfigError, DataError
from ml4m.md.learning import ReferenceCalculationError, reference_executor, run_learning
from ml4m.md.learning_settings import LearnSettings, WalkerSettings, parse_threshold
from ml4m.md.learning_state import frames_from_arrays
from ml4m.models.linear import LinearACE

FIT = {"model": "ace", "descriptor": {"r_cut": 4.0, "n_max": 4, "l_max": 2, "correlation_order": 3},
       "params": {"uncertainty": "posterior"}}


@pytest.fixture(scope="module")
def files(tmp_path_factory, write_rattled_cu):
    """A 32-atom Cu cell and six EMT-labelled rattled copies of it."""
    d = tmp_path_factory.mktemp("learn")
    write_rattled_cu(d)
    atoms = bulk("Cu", cubic=True, a=3.61).repeat(2)
    gold = atoms.copy()
    gold.symbols[0] = "Au"
    write(d / "gold.extxyz", gold)
    return d


def _settings(files, **changes) -> LearnSettings:
    start = str(files / "start.extxyz")
    base = dict(walkers=(WalkerSettings(start, 300.0, 900.0, 0), WalkerSettings(start, 600.0, None, 1)),
                fit=FIT, initial=str(files / "init.extxyz"), steps=40, dt_fs=2.0,
                threshold=parse_threshold(0.0022), check_interval=5, max_calls=20,
                reoptimise_every=3, refit_growth=0.0)  # updates only, unless a test asks
    return LearnSettings(**{**base, **changes})


class FailAfter:
    """A reference factory (EMT) that raises from its (n+1)-th call on."""

    def __init__(self, n: int) -> None:
        self.n, self.count = n, 0

    def __call__(self):
        self.count += 1
        if self.count > self.n:
            raise RuntimeError("reference crashed")
        return EMT()


def _train(folder):
    return read_dataset(folder / "train.extxyz")


def _assert_same_run(a, b):
    """Same training frames (positions, labels, walker and step) and the same model."""
    ta, tb = _train(a), _train(b)
    assert len(ta) == len(tb)
    for fa, fb in zip(ta, tb):
        assert (fa.info.get("walker"), fa.info.get("step")) == (fb.info.get("walker"), fb.info.get("step"))
        np.testing.assert_array_equal(fa.positions, fb.positions)
        np.testing.assert_array_equal(fa.forces, fb.forces)
    import ml4m

    ma, mb = ml4m.load(a / "model.ml4m"), ml4m.load(b / "model.ml4m")
    np.testing.assert_array_equal(ma.model_.coef_, mb.model_.coef_)  # inside the core
    assert ma.baseline_.r_in_ == mb.baseline_.r_in_


@pytest.fixture(scope="module")
def uninterrupted(files):
    """A loop whose model is only ever updated (no fit after the initial one)."""
    out = files / "whole"
    result = run_learning(_settings(files), out)
    return out, result


class ScriptedSigma(LinearACE):
    """Linear ACE whose k-th force-sigma evaluation returns ``script[k]`` (eV/A) everywhere."""

    script: list[float] = []
    n_checks = 0

    def predict(self, frames, uncertainty=False):
        pred = super().predict(frames, uncertainty=uncertainty)
        if not uncertainty:
            return pred
        value = self.script[self.n_checks]
        self.n_checks += 1
        return dataclasses.replace(pred, forces_sigma=np.full_like(pred.forces, value))


def test_reference_is_called_exactly_when_sigma_is_above_the_threshold(files):
    from ml4m.descriptors import make_descriptor

    desc = make_descriptor("ace", species=["Cu"], **FIT["descriptor"])
    model = ScriptedSigma(desc, uncertainty="posterior").fit(read_dataset(files / "init.extxyz"))
    # one walker, a check every 2 steps: 10 checks; 0.1 itself is not above 0.1
    model.script = [0.05, 0.2, 0.1, 0.3, 0.01, 0.5, 0.1, 0.0999, 0.11, 0.02]
    settings = _settings(files, walkers=(WalkerSettings(str(files / "start.extxyz"), 300.0),),
                         fit=None, steps=20, check_interval=2,
                         threshold=parse_threshold(0.1), reoptimise_every=0)
    result = run_learning(settings, files / "scripted", model=model)
    expected = [2 * (k + 1) for k, s in enumerate(model.script) if s > 0.1]
    labelled = [f.info["step"] for f in _train(files / "scripted")[6:]]
    assert labelled == expected == [4, 8, 12, 18]
    assert result["reference_calls"] == 4 and model.n_checks == 10
    # a walker waits min_steps_between_calls after a call: sigma always above, calls 6 apart
    model.script, model.n_checks = [0.2] * 10, 0
    run_learning(dataclasses.replace(settings, min_steps_between_calls=6), files / "spaced",
                 model=model)
    assert [f.info["step"] for f in _train(files / "spaced")[6:]] == [2, 8, 14, 20]
    # the labels are the reference's (EMT) at the flagged frames
    frame = _train(files / "scripted")[6]
    atoms = frame.to_atoms(with_labels=False)
    atoms.calc = EMT()
    np.testing.assert_allclose(frame.forces, atoms.get_forces(), atol=1e-6)


def test_loop_updates_equal_a_refit_on_its_training_set(files, uninterrupted):
    import ml4m

    out, result = uninterrupted
    assert 3 <= result["reference_calls"] <= 20 and result["n_train"] == 6 + result["reference_calls"]
    from ml4m.data import shortest_distances
    from ml4m.models.baseline import Baselined, PairRepulsion
    from ml4m.models.baseline.repulsion import MARGIN

    model = ml4m.load(out / "model.ml4m")
    assert model.kind == "baselined"  # inside the repulsive core, as ml4m fit gives it
    inner, reg = model.model_, model.model_.regression_
    with np.load(out / "state" / "train.npz", allow_pickle=False) as z:  # full precision
        train = frames_from_arrays(dict(z), "train.npz")
    # the core follows the data: zero down to the shortest distance of every frame learnt
    assert model.baseline_.r_in_["Cu-Cu"] == pytest.approx(shortest_distances(train)["Cu-Cu"]
                                                           - MARGIN)
    refit = Baselined(LinearACE(inner.descriptor, e0=inner.e0_, alpha=reg.alpha_, beta=reg.beta_,
                                uncertainty="posterior"), PairRepulsion()).fit(train)
    # forces to 1e-6, coefficients to 1e-4 (the weak evidence prior leaves near-null
    # directions of the Gram matrix to rounding, see tests/models/test_update.py)
    pa, pb = model.predict(train[6:]), refit.predict(train[6:])
    np.testing.assert_allclose(pa.forces, pb.forces, rtol=0, atol=1e-6 * np.abs(pb.forces).max())
    np.testing.assert_allclose(inner.coef_, refit.model_.coef_, rtol=0,
                               atol=1e-4 * np.abs(refit.model_.coef_).max())
    # both walkers were flagged in one round at least, and added in walker order
    steps = [(f.info["step"], f.info["walker"]) for f in _train(out)[6:]]
    assert steps == sorted(steps) and len({s for s, _ in steps}) < len(steps)
    assert (out / "learning.png").stat().st_size > 1000


def test_resume_after_a_kill_gives_the_uninterrupted_result(files, uninterrupted):
    whole, result = uninterrupted
    out = files / "killed"
    with pytest.raises(ReferenceCalculationError, match="walker .* at step .*reference crashed"):
        run_learning(_settings(files), out, reference=FailAfter(3))
    saved = json.loads((out / "state" / "state.json").read_text())
    assert saved["calls"] <= 3 and not (out / "model.ml4m").exists()  # the last update's state
    # a kill between appending frames to train.extxyz and saving the state that counts them
    with open(out / "train.extxyz", "a") as fh:
        fh.write("32\nLattice=\"7.22 0 0 0 7.22 0 0 0 7.22\" Properties=species:S:1:pos:R:3\n"
                 "Cu 0.0 0.0")
    resumed = run_learning(_settings(files), out, resume=True)
    assert resumed["resumed"] and resumed["reference_calls"] == result["reference_calls"]
    _assert_same_run(whole, out)
    with pytest.raises(ConfigError, match="other settings .*threshold"):
        run_learning(_settings(files, threshold=parse_threshold(0.003)), out, resume=True)
    with pytest.raises(ConfigError, match="pass --resume"):
        run_learning(_settings(files), out)


def test_worker_count_does_not_change_the_result(files, uninterrupted):
    whole, _ = uninterrupted
    with reference_executor(workers=2) as pool:
        run_learning(_settings(files), files / "two", executor=pool)
    _assert_same_run(whole, files / "two")


def test_failing_reference_frame_is_skipped_when_asked(files):
    result = run_learning(_settings(files, on_reference_error="skip", steps=30), files / "skip",
                          reference=FailAfter(2))  # its first call is the check before the run
    assert result["skipped"] == result["reference_calls"] - 1 >= 1
    assert result["n_train"] == 7


def test_bad_input_fails_before_any_work(files, tmp_path):
    with pytest.raises(DataError, match=r"gold.extxyz.*\['Au'\] are not known"):
        run_learning(_settings(files, walkers=(WalkerSettings(str(files / "gold.extxyz")),)),
                     tmp_path / "a")
    assert not (tmp_path / "a" / "state").exists()
    with pytest.raises(ConfigError, match="cannot import calculator"):
        run_learning(_settings(files, reference="nowhere.module:Calc"), tmp_path / "b")
    for bad in (0, -0.1, "0x", "fast"):
        with pytest.raises(ConfigError, match="threshold"):
            parse_threshold(bad)
    with pytest.raises(ConfigError, match="temperature_end needs a thermostat"):
        _settings(files, ensemble="nve")
    with pytest.raises(ConfigError, match="scheduler"):
        with reference_executor(scheduler="tcp://127.0.0.1:1", timeout_s=1.0):
            pass
    with pytest.raises(ConfigError, match="holds no learning state"):
        run_learning(_settings(files), tmp_path / "c", resume=True)


def test_walkers_start_from_the_last_frame_without_labels(files):
    """ml4m.data.read_structure (walkers, ml4m md and relax): the last frame, no labels."""
    from ase.io import read

    from ml4m.data import read_structure

    atoms = read_structure(files / "init.extxyz")
    last = read(files / "init.extxyz", index=-1)
    np.testing.assert_array_equal(atoms.positions, last.positions)
    assert atoms.calc is None and "forces" not in atoms.arrays


def test_model_file_is_used_as_it_is(files):
    """A model file with its training frames (``initial``) continues as the fitted model
    in memory does (normal equations rebuilt, each update adds the new frames); without
    them, the loop refuses to start instead of refitting on the labelled frames alone."""
    from ml4m.descriptors import make_descriptor

    init = read_dataset(files / "init.extxyz")
    desc = make_descriptor("ace", species=["Cu"], **FIT["descriptor"])
    path = LinearACE(desc, uncertainty="posterior").fit(init).save(files / "start.ml4m")
    settings = _settings(files, fit=None, reoptimise_every=0, steps=20)
    run_learning(settings, files / "in_memory",
                 model=LinearACE(desc, uncertainty="posterior").fit(init))
    from_file = run_learning(dataclasses.replace(settings, model=str(path)), files / "from_file")
    assert from_file["reference_calls"] >= 2
    a, b = _train(files / "in_memory"), _train(files / "from_file")
    assert [(f.info.get("walker"), f.info.get("step")) for f in a] == \
        [(f.info.get("walker"), f.info.get("step")) for f in b]
    import ml4m

    ma, mb = ml4m.load(files / "in_memory" / "model.ml4m"), ml4m.load(files / "from_file" / "model.ml4m")
    pa, pb = ma.predict(b), mb.predict(b)
    np.testing.assert_allclose(pb.forces, pa.forces, rtol=0, atol=1e-6 * np.abs(pa.forces).max())
    np.testing.assert_allclose(mb.regression_.alpha_, ma.regression_.alpha_, rtol=1e-12)
    with pytest.raises(ConfigError, match=r"model .*start\.ml4m: new frames are added to its "
                                          r"normal equations.*give 'initial'"):
        run_learning(dataclasses.replace(settings, model=str(path), initial=None),
                     files / "no_initial")
    assert not (files / "no_initial" / "state").exists()


def test_training_file_grows_by_appending(files, monkeypatch):
    """Each save appends only the new frames (no rewrite of the whole set); the state
    records the frames and bytes of train.extxyz that are its training set."""
    import ase.io
    from ase.io import read

    from ml4m.md.learning_state import load_state

    written = []
    original = ase.io.write

    def counting(filename, images, *args, **kwargs):
        written.append(1 if hasattr(images, "positions") else len(images))
        return original(filename, images, *args, **kwargs)

    monkeypatch.setattr(ase.io, "write", counting)
    out = files / "appended"
    result = run_learning(_settings(files, steps=20), out)
    assert result["reference_calls"] >= 2 and sum(written) == result["n_train"]
    path = out / "train.extxyz"
    record = json.loads((out / "state" / "state.json").read_text())["train_extxyz"]
    assert record == {"frames": result["n_train"], "bytes": path.stat().st_size}
    assert len(_train(out)) == result["n_train"]
    # a resume cuts what a killed save appended, and rewrites a file that is not the state's
    monkeypatch.undo()
    starts = [read(files / "start.extxyz")] * 2
    complete = path.read_bytes()
    path.write_bytes(complete + b"32\nLattice=")
    load_state(out, starts)
    assert path.read_bytes() == complete
    path.write_bytes(b"junk\n" + complete)
    load_state(out, starts)
    assert path.read_bytes() == complete
    # a rewrite that is killed leaves the file it replaces whole, and no temporary
    path.write_bytes(b"junk\n" + complete)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ase.io, "write", killed)
    with pytest.raises(KeyboardInterrupt):
        load_state(out, starts)
    assert path.read_bytes() == b"junk\n" + complete
    assert not [p for p in out.iterdir() if p.name.startswith(".train")]  # no temporary left


NETWORK_FIT = {"model": "mpnn", "params": {"r_max": 4.0, "n_channels": 8, "radial_mlp": 16,
                                           "l_max": 1, "correlation": 2, "dtype": "float64"},
               "training": {"max_epochs": 3, "batch_size": 2}}


def test_a_network_learns_on_the_fly_by_fine_tuning(files):
    """A network (fit: model mpnn) runs the loop: trained on ``initial`` first, then, at
    each reference call, trained on from its weights on the whole training set (the
    ``fine_tune`` settings); the result is deterministic, and a resume refuses other
    fine-tuning settings."""
    import ml4m
    from ml4m.training.finetune import fine_tune_settings, train_network

    settings = _settings(files, fit=NETWORK_FIT, walkers=_settings(files).walkers[:1],
                         steps=10, threshold=parse_threshold(1e-6), check_interval=5,
                         max_calls=2, reoptimise_every=0, fine_tune={"max_epochs": 2})
    result = run_learning(settings, files / "net")
    assert result["reference_calls"] == 2
    train = list(_train(files / "net"))
    assert len(train) == 6 + 2 and [f.info.get("step") for f in train[6:]] == [5, 10]
    model = ml4m.load(files / "net" / "model.ml4m")  # inside its repulsive core (default)
    assert model.kind == "baselined" and model.model_.kind == "mpnn" and model.has_uncertainty
    # its force noise (a relative threshold's unit): the RMS force error of the frames
    # its sigma was calibrated on, the training frames
    error = model.predict(train).forces - np.concatenate([f.forces for f in train])
    assert parse_threshold("2x").resolve(model) == pytest.approx(
        2 * np.sqrt(np.mean(error ** 2)), rel=1e-6)
    # the same loop by hand: initial training, then two fine-tuning runs from the weights
    init = list(read_dataset(files / "init.extxyz"))
    from ml4m.training import TrainSettings
    from ml4m.training.fit import build_model
    from ml4m.training.config import FitConfig
    from ml4m.models.baseline import with_baseline

    cfg = FitConfig.from_mapping({**NETWORK_FIT, "train": str(files / "init.extxyz")})
    first = train_network(with_baseline(build_model(cfg, [29], None), cfg.repulsion_settings),
                          init,
                          TrainSettings.from_mapping({**NETWORK_FIT["training"], "seed": 0,
                                                      "progress": False}))
    tuned = train_network(first, init + [train[6]], fine_tune_settings({"max_epochs": 2}))
    tuned = train_network(tuned, init + train[6:], fine_tune_settings({"max_epochs": 2}))
    # the learnt frames move the weights: the fine-tuned model differs from the first
    assert not np.allclose(first.predict(train[6:]).forces, tuned.predict(train[6:]).forces)
    np.testing.assert_allclose(model.predict(train).forces, tuned.predict(train).forces,
                               rtol=0, atol=1e-9)
    with pytest.raises(ConfigError, match="fine_tune"):
        run_learning(dataclasses.replace(settings, fine_tune={"max_epochs": 3}),
                     files / "net", resume=True)


def test_fine_tune_settings_are_checked(files):
    with pytest.raises(ConfigError, match=r"fine_tune: training\.lr must be > 0"):
        _settings(files, fine_tune={"lr": -1.0})
    with pytest.raises(ConfigError, match=r"fine_tune.*unknown|fine_tune.*bogus"):
        _settings(files, fine_tune={"bogus": 1})


def test_fit_committee_trains_the_members_as_ml4m_fit_does(files):
    """``fit: {committee: 2}``: the loop's starting model is a committee of two networks,
    member k the single network of seed ``seed + k`` (as ``ml4m fit --committee``),
    spread uncalibrated (no held-out frames in the loop); the loop runs with it."""
    from ml4m.md.learning import _fit_initial
    from ml4m.models import Committee

    init = list(read_dataset(files / "init.extxyz"))
    committee = _fit_initial(_settings(files, fit={**NETWORK_FIT, "committee": 2,
                                                   "seed": 3}), init)
    assert isinstance(committee, Committee) and len(committee.members_) == 2
    assert committee.calibration_ == {"energy": 1.0, "forces": 1.0}
    for k, member in enumerate(committee.members_):
        single = _fit_initial(_settings(files, fit={**NETWORK_FIT, "seed": 3 + k}), init)
        np.testing.assert_array_equal(member.predict(init).forces, single.predict(init).forces)
    a, b = (m.predict(init).forces for m in committee.members_)
    assert not np.allclose(a, b)
    settings = _settings(files, fit={**NETWORK_FIT, "committee": 2},
                         walkers=_settings(files).walkers[:1], steps=5,
                         threshold=parse_threshold(1e-6), check_interval=5, max_calls=1,
                         reoptimise_every=0, fine_tune={"max_epochs": 1})
    result = run_learning(settings, files / "fit_committee")
    assert result["reference_calls"] == 1
    import ml4m

    end = ml4m.load(files / "fit_committee" / "model.ml4m")
    assert isinstance(end, Committee) and len(end.members_) == 2


def test_a_committee_of_networks_learns_on_the_fly(files):
    """A committee of networks (an in-memory model) passes through the loop: each member
    is trained on from its own weights with its own seed, so they stay distinct."""
    from ml4m.models import Committee
    from ml4m.training import TrainSettings
    from ml4m.training.config import FitConfig
    from ml4m.training.fit import build_model
    from ml4m.training.finetune import train_network

    init = list(read_dataset(files / "init.extxyz"))
    cfg = FitConfig.from_mapping({**NETWORK_FIT, "train": str(files / "init.extxyz")})
    template = Committee(build_model(cfg, [29], None), n_members=2, resample="seed")
    start = train_network(template, init, TrainSettings.from_mapping(
        {**NETWORK_FIT["training"], "progress": False}))
    assert isinstance(start, Committee) and len(start.members_) == 2
    settings = _settings(files, fit=None, walkers=_settings(files).walkers[:1], steps=5,
                         threshold=parse_threshold(1e-6), check_interval=5, max_calls=1,
                         reoptimise_every=0, fine_tune={"max_epochs": 1})
    result = run_learning(settings, files / "net_committee", model=start)
    assert result["reference_calls"] == 1
    import ml4m

    end = ml4m.load(files / "net_committee" / "model.ml4m")
    new = list(_train(files / "net_committee"))[-1:]
    before = [m.predict(new).forces for m in start.members_]
    after = [m.predict(new).forces for m in end.members_]
    assert len(after) == 2 and not np.allclose(after[0], after[1])
    assert all(not np.allclose(a, b) for a, b in zip(after, before))
    assert end.predict(new, uncertainty=True).forces_sigma.max() > 0
    # its force noise (a relative threshold's unit) is its members' mean
    assert parse_threshold("1x").resolve(end) == pytest.approx(
        np.mean([m.noise_["forces"] for m in end.members_]))


class TwoSigmas(LinearACE):
    """Linear ACE whose own force sigma is 1 eV/A everywhere and whose posterior view's is
    0: which one the loop reads decides every call."""

    posterior = False

    def predict(self, frames, uncertainty=False):
        pred = super().predict(frames, uncertainty=uncertainty)
        if not uncertainty:
            return pred
        return dataclasses.replace(pred, forces_sigma=np.full_like(pred.forces, 0.0 if self.posterior else 1.0))

    def posterior_view(self):
        view = super().posterior_view()
        view.posterior = True
        return view


@pytest.mark.parametrize("threshold, calls", [("1x", 0), (0.5, 4)])
def test_a_relative_threshold_reads_the_posterior_sigma_an_absolute_one_the_models(files, threshold,
                                                                                   calls):
    from ml4m.descriptors import make_descriptor

    desc = make_descriptor("ace", species=["Cu"], **FIT["descriptor"])
    model = TwoSigmas(desc, uncertainty="posterior").fit(read_dataset(files / "init.extxyz"))
    settings = _settings(files, walkers=(WalkerSettings(str(files / "start.extxyz"), 300.0),),
                         fit=None, steps=8, check_interval=2, threshold=parse_threshold(threshold),
                         reoptimise_every=0)
    result = run_learning(settings, files / f"two_sigmas_{calls}", model=model)
    assert result["reference_calls"] == calls


def test_posterior_view_keeps_the_predictions_and_drops_the_error_models():
    from ase.build import bulk as build

    from ml4m.data import Frame
    from ml4m.descriptors import make_descriptor
    from ml4m.models.baseline import Baselined, PairRepulsion

    rng = np.random.default_rng(3)
    frames = []
    for _ in range(12):  # the calibrated error models need 10 frames or more
        atoms = build("Cu", cubic=True, a=3.61).repeat(2)
        atoms.positions += rng.normal(0, 0.08, atoms.positions.shape)
        atoms.calc = EMT()
        frames.append(Frame.from_atoms(atoms, energy=atoms.get_potential_energy(),
                                       forces=atoms.get_forces()))
    desc = make_descriptor("ace", species=["Cu"], **FIT["descriptor"])
    model = Baselined(LinearACE(desc), PairRepulsion()).fit(frames)
    assert model.model_.error_model_ is not None
    calibrated = model.predict(frames[:2], uncertainty=True)
    view = model.posterior_view()
    seen = view.predict(frames[:2], uncertainty=True)
    np.testing.assert_array_equal(seen.forces, calibrated.forces)
    np.testing.assert_array_equal(seen.energy, calibrated.energy)
    # the posterior's sigmas: those of the same coefficients without error models, per
    # component (a calibrated sigma is one per atom)
    inner = model.model_
    expected = np.concatenate([inner.posterior_force_sigma(rows) for _, rows, _, _
                               in inner._block_rows(frames[:2], True, True)])
    np.testing.assert_allclose(seen.forces_sigma, expected, rtol=1e-12)
    assert not np.allclose(seen.forces_sigma, calibrated.forces_sigma)
    assert np.ptp(calibrated.forces_sigma, axis=1).max() == 0 < np.ptp(seen.forces_sigma, axis=1).max()
    # the model itself keeps its error models
    np.testing.assert_array_equal(model.predict(frames[:2], uncertainty=True).forces_sigma,
                                  calibrated.forces_sigma)


def test_the_loop_fits_again_as_its_data_grow_and_below_its_basis_range(files):
    from ase.build import bulk as build

    from ml4m.data import Frame, pair_inner_radii
    from ml4m.descriptors import make_descriptor
    from ml4m.md.learning import below_range, refit_reason, with_inner_radii
    from ml4m.models.baseline import Baselined, PairRepulsion

    init = list(read_dataset(files / "init.extxyz"))
    desc = make_descriptor("ace", species=["Cu"], **{**FIT["descriptor"], "pair_r_in": {"Cu-Cu": 2.4}})
    model = Baselined(LinearACE(desc, uncertainty="posterior", smoothness=2.0), PairRepulsion()).fit(init)

    def labelled(a):  # an fcc cell of lattice constant a: nearest neighbours at a / sqrt 2
        atoms = build("Cu", cubic=True, a=a).repeat(2)
        atoms.calc = EMT()
        return Frame.from_atoms(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())

    wide, close = labelled(3.61), labelled(3.30)  # 2.55 and 2.33 A
    assert below_range(model, [wide]) == [] and below_range(model, [close]) == ["Cu-Cu"]
    n = len(init)
    assert refit_reason(model, n + 1, n, [wide], 2.0) is None
    assert refit_reason(model, n + 1, n, [close], 2.0) == "range"
    assert refit_reason(model, 2 * n, n, [close], 2.0) == "growth"  # the whole fit first
    assert refit_reason(model, 2 * n, n, [wide], 0.0) is None  # never by growth
    assert refit_reason(object(), 10 * n, n, [close], 2.0) is None  # no normal equations
    plain = LinearACE(make_descriptor("ace", species=["Cu"], **FIT["descriptor"]),
                      uncertainty="posterior").fit(init)
    assert below_range(plain, [close]) == []  # a basis from r = 0 reaches every distance
    # the same basis and hyperparameters, inner radii from every frame, fitted on them
    frames = init + [close]
    refit = with_inner_radii(model, frames)
    radii = pair_inner_radii(frames)
    assert refit.model_.descriptor.pair_r_in == pytest.approx(radii) and radii["Cu-Cu"] < 2.4
    assert refit.model_.smoothness == 2.0 and below_range(refit, [close]) == []
    expected = Baselined(LinearACE(make_descriptor("ace", species=["Cu"],
                                                   **{**FIT["descriptor"], "pair_r_in": radii}),
                                   uncertainty="posterior", smoothness=2.0), PairRepulsion()).fit(frames)
    np.testing.assert_allclose(refit.model_.coef_, expected.model_.coef_, rtol=1e-10, atol=1e-12)


def test_a_loop_with_its_own_fit_fits_again_when_its_data_double(files, tmp_path):
    import ml4m

    # 6 initial frames, a threshold every check passes: 2 calls a round, a fit at 12 frames
    settings = _settings(files, steps=15, check_interval=5, threshold=parse_threshold(1e-6),
                         reoptimise_every=0, refit_growth=2.0)
    run_learning(settings, tmp_path / "doubling")
    train = list(_train(tmp_path / "doubling"))
    assert len(train) == 12
    record = json.loads((tmp_path / "doubling" / "state" / "state.json").read_text())
    assert record["fitted_on"] == 12  # kept for a resume
    loop = ml4m.load(tmp_path / "doubling" / "model.ml4m")
    with np.load(tmp_path / "doubling" / "state" / "train.npz", allow_pickle=False) as z:
        frames = frames_from_arrays(dict(z), "train.npz")
    from ml4m.md.learning import fit_one
    from ml4m.training.config import FitConfig

    refit = fit_one(FitConfig.from_mapping({**FIT, "train": "frames"}), frames)
    # the same fit on the same frames (hyperparameters re-optimised on all 12: no updates
    # since reoptimise_every is 0, so only a whole fit moves them)
    np.testing.assert_allclose(loop.model_.coef_, refit.model_.coef_, rtol=1e-8, atol=1e-12)
    held = run_learning(dataclasses.replace(settings, refit_growth=0.0), tmp_path / "updates")
    assert held["n_train"] == 12
    kept = ml4m.load(tmp_path / "updates" / "model.ml4m")
    assert kept.model_.regression_.alpha_ != pytest.approx(loop.model_.regression_.alpha_)
    # a loop that ends between doublings writes the fit of all its frames
    run_learning(dataclasses.replace(settings, steps=10), tmp_path / "ends")
    ends = ml4m.load(tmp_path / "ends" / "model.ml4m")
    with np.load(tmp_path / "ends" / "state" / "train.npz", allow_pickle=False) as z:
        frames = frames_from_arrays(dict(z), "train.npz")
    assert len(frames) == 10
    refit = fit_one(FitConfig.from_mapping({**FIT, "train": "frames"}), frames)
    np.testing.assert_allclose(ends.model_.coef_, refit.model_.coef_, rtol=1e-8, atol=1e-12)


def test_an_ace_fit_without_descriptor_searches_its_basis_as_ml4m_fit_does(files, tmp_path):
    import ml4m
    from ml4m.data import pair_inner_radii
    from ml4m.training.search import RUNGS

    fit = {"model": "ace", "params": {"uncertainty": "posterior"}}
    settings = _settings(files, fit=fit, steps=2, check_interval=2, threshold=parse_threshold(100.0))
    run_learning(settings, tmp_path / "loop")
    loop = ml4m.load(tmp_path / "loop" / "model.ml4m").model_
    # a rung of the search's ladder (which rung depends on the budget and the machine's
    # load), with the search's radial basis from the sampled distances; the descriptor's
    # bare defaults (total degree 8, radial basis from r = 0) would have neither
    assert loop.descriptor.total_degree in [list(r["total_degree"]) for r in RUNGS]
    init = list(read_dataset(files / "init.extxyz"))
    assert loop.descriptor.pair_r_in == pytest.approx(pair_inner_radii(init))
    assert loop.descriptor.n_max == loop.descriptor.total_degree[0]  # the search's settings

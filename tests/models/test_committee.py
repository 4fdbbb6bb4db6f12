"""Committee: members' versions checked on load; a descriptor shared by its members."""

from __future__ import annotations

import numpy as np
import pytest

import ml4m
from ml4m.data import default_dataset
from ml4m.descriptors import make_descriptor
from ml4m.errors import DataError
from ml4m.models.committee import Committee
from ml4m.models.kernel import SparseGPPotential
from ml4m.models.linear import LinearACE
from ml4m.models.serialization import save_model_file


def _ace():
    return make_descriptor("ace", species=["Cu"], r_cut=4.0, n_max=4, l_max=2,
                           correlation_order=3)


@pytest.fixture(scope="module")
def data():
    ds = default_dataset()
    return list(ds[::12]), list(ds[5::40])


@pytest.fixture(scope="module")
def committee(data):
    return Committee(LinearACE(_ace(), uncertainty="posterior"), n_members=3, seed=2).fit(data[0])


def _count_descriptor_passes(descriptor, monkeypatch) -> list[int]:
    """One entry per descriptor evaluation of a frame (each starts at ``_check_frame``)."""
    calls: list[int] = []
    original = type(descriptor)._check_frame

    def counting(self, frame, k):
        calls.append(k)
        return original(self, frame, k)

    monkeypatch.setattr(type(descriptor), "_check_frame", counting)
    return calls


def _alone(members, frames):
    preds = [m.predict(frames) for m in members]
    return {q: np.stack([getattr(p, q) for p in preds]) for q in ("energy", "forces", "stress")}


@pytest.mark.parametrize("uncertainty", [False, True])
def test_members_with_one_descriptor_share_it(committee, data, monkeypatch, uncertainty):
    """Same mean and spread as each member predicting alone; the descriptor of each frame
    is computed once for the three members: the mean model's one adjoint pass, or with
    sigmas (from SHARED_GRADIENTS_FROM members) one pass with gradients for all."""
    from ml4m.models import committee as module

    frames = data[1]
    alone = _alone(committee.members_, frames)
    monkeypatch.setattr(module, "SHARED_GRADIENTS_FROM", 3)
    calls = _count_descriptor_passes(committee.members_[0].descriptor, monkeypatch)
    pred = committee.predict(frames, uncertainty=uncertainty)
    assert len(calls) == len(frames)
    scale = np.abs(alone["forces"]).max()
    np.testing.assert_allclose(pred.forces, alone["forces"].mean(axis=0), rtol=0,
                               atol=1e-9 * scale)
    np.testing.assert_allclose(pred.energy, alone["energy"].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(pred.stress, alone["stress"].mean(axis=0), rtol=0, atol=1e-12)
    if uncertainty:
        np.testing.assert_allclose(pred.forces_sigma, alone["forces"].std(axis=0, ddof=1),
                                   rtol=0, atol=1e-9 * scale)
    else:
        assert pred.forces_sigma is None


def test_members_with_other_descriptors_predict_alone(committee, data, monkeypatch):
    """Members whose descriptors differ (another r_cut) are not grouped."""
    from ml4m.models import committee as module

    monkeypatch.setattr(module, "SHARED_GRADIENTS_FROM", 2)
    other = LinearACE(make_descriptor("ace", species=["Cu"], r_cut=4.5, n_max=4, l_max=2,
                                      correlation_order=3), uncertainty="posterior").fit(data[0])
    mixed = Committee(committee.model, n_members=2)
    mixed.members_ = [committee.members_[0], other]
    frames = data[1][:3]
    alone = _alone(mixed.members_, frames)["forces"]
    for uncertainty in (False, True):
        np.testing.assert_allclose(mixed.predict(frames, uncertainty).forces, alone.mean(axis=0),
                                   rtol=0, atol=1e-12 * np.abs(alone).max())


def test_sparse_gp_members_share_the_descriptor_not_the_features(data, monkeypatch):
    """Sparse GP members (their own sparse points: other feature maps) share the
    descriptor with its gradients, each with its kernel features."""
    from ml4m.models import committee as module

    monkeypatch.setattr(module, "SHARED_GRADIENTS_FROM", 2)
    gp = SparseGPPotential(make_descriptor("soap", species=["Cu"], r_cut=4.0, n_max=3, l_max=3),
                           n_sparse=20, zeta=2, uncertainty="posterior")
    model = Committee(gp, n_members=2, seed=1).fit(data[0][:20])
    frames = data[1][:3]
    alone = _alone(model.members_, frames)["forces"]
    calls = _count_descriptor_passes(model.members_[0].descriptor, monkeypatch)
    for uncertainty in (False, True):
        np.testing.assert_allclose(model.predict(frames, uncertainty).forces, alone.mean(axis=0),
                                   rtol=0, atol=1e-9 * np.abs(alone).max())
    assert len(calls) == 2 * len(frames)  # once per call of predict


def test_member_state_version_is_checked_on_load(committee, tmp_path):
    """A member state newer than its kind reads is refused naming the file and the key;
    files without the entry (older) load."""
    params, arrays = committee.get_state()
    assert params["member_state_version"] == committee.members_[0].state_version
    older = {k: v for k, v in params.items() if k != "member_state_version"}
    path = save_model_file(tmp_path / "old.ml4m", "committee", older, arrays)
    frames = default_dataset()[:1]
    np.testing.assert_array_equal(ml4m.load(path).predict(frames).forces,
                                  committee.predict(frames).forces)
    version = committee.members_[0].state_version + 1
    newer = {**params, "member_state_version": version}
    path = save_model_file(tmp_path / "new.ml4m", "committee", newer, arrays)
    with pytest.raises(DataError, match=r"new\.ml4m.*params\.member_state_version.*"
                                        rf"'linear_ace' model of state version {version}\b.*"
                                        r"update ml4m"):
        ml4m.load(path)


def test_a_committee_of_networks_trained_one_by_one(tmp_path):
    """``from_members`` joins networks fitted elsewhere: mean and spread (ddof 1) of the
    members, the same after save/load; mixed kinds or cutoffs and one member refused."""
    from ase.build import molecule

    from ml4m.data import Frame
    from ml4m.errors import ConfigError
    from ml4m.models.mpnn import MPNN

    mol = molecule("CH3CH2OH")
    mol.rattle(0.05, seed=3)
    frames = [Frame.from_atoms(mol, energy=-30.0, forces=np.zeros((9, 3)))]
    small = dict(r_max=4.0, n_channels=8, radial_mlp=16, n_radial=6)
    members = [MPNN(**small, seed=s).prepare(frames) for s in (0, 1, 2)]
    model = Committee.from_members(members)
    got = model.predict(frames, uncertainty=True)
    each = np.stack([m.predict(frames).forces for m in members])
    np.testing.assert_allclose(got.forces, each.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(got.forces_sigma, each.std(axis=0, ddof=1), rtol=1e-12)
    assert got.forces_sigma.max() > 1e-6
    loaded = ml4m.load(model.save(tmp_path / "c"))
    np.testing.assert_array_equal(loaded.predict(frames, uncertainty=True).forces_sigma,
                                  got.forces_sigma)
    with pytest.raises(ConfigError, match="at least 2 members"):
        Committee.from_members(members[:1])
    with pytest.raises(ConfigError, match="cutoff"):
        Committee.from_members([members[0], MPNN(**{**small, "r_max": 3.0}).prepare(frames)])
    with pytest.raises(ConfigError, match="one kind"):
        Committee.from_members([members[0], LinearACE(_ace())])


def _ratio(frames, pred, key):
    """Reference-minus-prediction RMS over RMS sigma of ``energy`` or ``forces``."""
    ref = np.concatenate([np.ravel(getattr(f, key)) for f in frames])
    err, sigma = ref - np.ravel(getattr(pred, key)), np.ravel(getattr(pred, f"{key}_sigma"))
    return np.sqrt(np.mean(err**2)) / np.sqrt(np.mean(sigma**2))


def test_calibration_scales_the_spread_to_the_held_out_error(committee, data, tmp_path):
    """``calibrate`` makes the RMS error over the RMS sigma 1 on its frames for energies
    and forces alike, by one factor each (the ranking of the sigmas is kept; the stress
    takes the force factor); the factors are saved; a file without them (older) loads
    with the raw spread; ``fit`` with ``valid`` calibrates on it."""
    import copy

    held = data[1]
    raw = committee.predict(held, uncertainty=True)
    calibrated = copy.deepcopy(committee).calibrate(held)
    got = calibrated.predict(held, uncertainty=True)
    c = calibrated.calibration_
    assert _ratio(held, raw, "forces") > 1.2  # the raw spread is too small here
    for key in ("energy", "forces"):
        assert _ratio(held, got, key) == pytest.approx(1.0, rel=1e-10)
        assert c[key] == pytest.approx(_ratio(held, raw, key), rel=1e-10)
    np.testing.assert_allclose(got.forces_sigma, c["forces"] * raw.forces_sigma, rtol=1e-12)
    np.testing.assert_allclose(got.stress_sigma, c["forces"] * raw.stress_sigma, rtol=1e-12)
    np.testing.assert_array_equal(got.forces, raw.forces)
    loaded = ml4m.load(calibrated.save(tmp_path / "calibrated"))
    assert loaded.calibration_ == c
    params, arrays = calibrated.get_state()
    older = {k: v for k, v in params.items() if k != "calibration"}
    path = save_model_file(tmp_path / "older.ml4m", "committee", older, arrays)
    np.testing.assert_array_equal(ml4m.load(path).predict(held, uncertainty=True).forces_sigma,
                                  raw.forces_sigma)
    bad = {**params, "calibration": {"energy": 1.0, "forces": -2.0}}
    with pytest.raises(DataError, match=r"params\.calibration\.forces"):
        ml4m.load(save_model_file(tmp_path / "bad.ml4m", "committee", bad, arrays))
    fitted = Committee(LinearACE(_ace(), uncertainty="posterior"), n_members=3,
                       seed=2).fit(data[0], held)
    assert fitted.calibration_ == pytest.approx(c, rel=1e-8)

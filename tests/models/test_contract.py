"""The potential contract: one suite that every registered potential kind passes.

A new kind must add a small builder to ``BUILDERS`` (the first test fails until it
does); it then gets the whole suite: hyperparameters, derivatives, invariances,
persistence, the calculator and bad input.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

import ml4m
from ml4m.data import default_dataset
from ml4m.descriptors import make_descriptor
from ml4m.errors import ConfigError, DataError
from ml4m.models.base import Potential
from ml4m.models.bpnn import BPNN
from ml4m.models.committee import Committee
from ml4m.models.kernel import SparseGPPotential
from ml4m.models.linear import LinearACE, LinearPotential
from ml4m.models.registry import model_kind, model_kinds

from .potential_checks import (
    assert_forces_are_energy_gradients,
    assert_invariant_and_equivariant,
    assert_stress_is_strain_derivative,
)


def _ace():
    return make_descriptor("ace", species=["Cu"], r_cut=4.0, n_max=4, l_max=2,
                           correlation_order=3)


def _soap():
    return make_descriptor("soap", species=["Cu"], r_cut=4.0, n_max=3, l_max=3)


BUILDERS = {
    "linear": lambda: LinearPotential(_soap()),
    "linear_ace": lambda: LinearACE(_ace()),
    "sparse_gp": lambda: SparseGPPotential(_soap(), n_sparse=30, zeta=2),
    "committee": lambda: Committee(LinearACE(_ace(), uncertainty="posterior"), n_members=3),
    "baselined": lambda b=__import__("ml4m.models.baseline", fromlist=["*"]): b.Baselined(LinearACE(_ace()), b.PairRepulsion()),  # noqa: E501
    "bpnn": lambda: BPNN(r_cut=4.0, hidden=(16, 16)),
    "mpnn": lambda m=__import__("ml4m.models.mpnn", fromlist=["*"]): m.MPNN(r_max=4.0, n_channels=8, radial_mlp=16, l_max=2, dtype="float64"),  # noqa: E501
}


def test_every_registered_potential_kind_has_a_builder():
    kinds = {k.name for k in model_kinds() if k.potential}
    assert kinds == set(BUILDERS)
    assert model_kind("ace").name == "linear_ace" and model_kind("gp").name == "sparse_gp"
    assert not model_kind("krr").potential
    with pytest.raises(ConfigError, match="unknown model kind 'nope'"):
        model_kind("nope")


@pytest.fixture(scope="module")
def data():
    ds = default_dataset()
    return list(ds[::6]), list(ds[3::12])


def fit_for_contract(model: Potential, frames) -> Potential:
    """``model`` fitted on ``frames``; a network is prepared (data statistics, initial
    weights) and gets its last-layer posterior, which is all the contract needs
    (training loops live in ml4m.training and are tested there)."""
    from ml4m.models.torch_potential import TorchPotential

    if isinstance(model, TorchPotential):
        return model.prepare(frames).fit_last_layer(frames)
    return model.fit(frames)


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def fitted(request, data):
    return fit_for_contract(BUILDERS[request.param](), data[0])


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_hyperparameters_follow_the_constructor(kind):
    model = BUILDERS[kind]()
    params = model.get_params()
    assert list(params) == type(model).param_names()
    twin = model.clone()
    assert type(twin) is type(model) and twin is not model
    assert twin.get_params().keys() == params.keys()
    assert not hasattr(twin, "coef_") and not hasattr(twin, "members_")  # unfitted
    with pytest.raises(ConfigError, match="unknown key"):
        model.set_params(no_such_setting=1)
    for name, check in type(model).param_checks.items():  # every declared check refuses junk
        with pytest.raises(ConfigError, match=name):
            type(model).check_params({name: object()})


def test_contract_properties(fitted):
    assert isinstance(fitted, Potential)
    assert list(fitted.species) == [29]
    assert fitted.cutoff == pytest.approx(4.0)
    assert fitted.n_parameters > 0
    props = fitted.implemented_properties
    assert props[:4] == ["energy", "free_energy", "forces", "stress"]
    props.append("junk")  # a fresh list each time: no shared state
    assert "junk" not in fitted.implemented_properties
    assert ("forces_sigma" in props) == fitted.has_uncertainty


def _rattled(seed=0, n=2):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(n)
    atoms.rattle(0.08, seed=seed)
    return atoms


def test_forces_and_stress_are_energy_derivatives(fitted):
    atoms = _rattled()
    assert_forces_are_energy_gradients(fitted, atoms, [(0, 0), (5, 2)], h=1e-4, rel=1e-4,
                                       abs=1e-6)
    assert_stress_is_strain_derivative(fitted, atoms, h=1e-5, rel=1e-4, abs=1e-7)


def test_invariances_and_equivariance(fitted):
    assert_invariant_and_equivariant(fitted, _rattled(seed=1))


def test_uncertainty_and_round_trip(fitted, data, tmp_path):
    frames = data[1][:3]
    a = fitted.predict(frames, uncertainty=True)
    assert a.energy_sigma.shape == (3,) and np.all(a.energy_sigma > 0)
    assert a.forces_sigma.shape == a.forces.shape and np.all(a.forces_sigma > 0)
    path = fitted.save(tmp_path / "m")
    loaded = ml4m.load(path)
    assert type(loaded) is type(fitted) and loaded.get_params().keys() == fitted.get_params().keys()
    b = loaded.predict(frames, uncertainty=True)
    for q in ("energy", "forces", "stress", "energy_sigma", "forces_sigma"):
        np.testing.assert_allclose(getattr(b, q), getattr(a, q), rtol=1e-9, atol=1e-12)
    atoms = frames[0].to_atoms(with_labels=False)
    atoms.calc = loaded.as_calculator()
    assert atoms.get_potential_energy() == pytest.approx(a.energy[0], abs=1e-8)
    with pytest.raises(dataclasses_frozen()):
        a.energy = None  # a Prediction is frozen


def dataclasses_frozen():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_unknown_element_is_refused(fitted):
    from ase import Atoms

    with pytest.raises(DataError, match="not known"):
        fitted.predict([Atoms("Ar2", positions=[[0, 0, 0], [0, 0, 3]])])


def test_committee_spread_shrinks_with_data_and_knows_its_members(data, tmp_path):
    """Members fitted on bootstrap samples disagree; the committee's sigma is their spread,
    and more data (all of train against a quarter) narrows it."""
    small = Committee(LinearACE(_ace(), uncertainty="posterior"), n_members=4, seed=1)
    large = small.clone()
    small.fit(data[0][: len(data[0]) // 4])
    large.fit(data[0])
    frames = data[1]
    p_small, p_large = small.predict(frames, uncertainty=True), large.predict(frames, True)
    members = np.stack([m.predict(frames).forces for m in large.members_])
    np.testing.assert_allclose(p_large.forces, members.mean(axis=0))
    np.testing.assert_allclose(p_large.forces_sigma, members.std(axis=0, ddof=1))
    assert np.median(p_large.forces_sigma) < np.median(p_small.forces_sigma)
    with pytest.raises(ConfigError, match="n_members"):
        Committee(LinearACE(_ace()), n_members=1).fit(data[0])
    with pytest.raises(ConfigError, match="no seed hyperparameter"):  # identical members
        Committee(LinearACE(_ace()), n_members=2, resample="seed").fit(data[0])
    with pytest.raises(DataError, match="at least 2"):
        Committee(LinearACE(_ace())).fit(data[0][:1])

"""BPNN: symmetry functions in torch equal ml4m.descriptors.ACSF's; forces and stress are
energy derivatives (float64 finite differences); invariances; the energy is linear in the
per-element last layer; settings are checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from ml4m.data import Frame
from ml4m.descriptors.acsf import ACSF
from ml4m.errors import ConfigError
from ml4m.models.bpnn import BPNN, default_symmetry_functions
from ml4m.models.torch_potential import batch_graph

from .potential_checks import (
    assert_forces_are_energy_gradients,
    assert_invariant_and_equivariant,
    assert_stress_is_strain_derivative,
)

G2 = [(0.5, 0.0), (1.0, 2.5), (0.1, 1.0)]
G4 = [(0.005, 1.0, -1.0), (0.01, 2.0, 1.0)]
G5 = [(0.02, 4.0, 1.0), (0.003, 1.5, -1.0)]
ANI = [(2.0, 4.0, 0.5, 2.2), (1.0, 8.0, 2.0, 2.8)]


def _cuau(seed: int = 1) -> Frame:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 1))
    atoms.symbols[[1, 6, 11]] = "Au"
    atoms.rattle(0.1, seed=seed)
    return Frame.from_atoms(atoms)


def _cluster() -> Frame:
    mol = molecule("CH4")
    mol.symbols[:] = ["Au", "Cu", "Cu", "Au", "Cu"]
    mol.positions *= 2.1
    return Frame.from_atoms(mol)


def _model(**kw) -> BPNN:
    kw = {"r_cut": 4.2, "g2_params": G2, "g4_params": G4, "g5_params": G5, "ani_params": ANI,
          "r_cut_angular": 4.2, "hidden": (8, 6), **kw}
    return BPNN(**kw).prepare([_cuau(2), _cluster()])


@pytest.fixture(scope="module")
def model():
    return _model()


def _torch_acsf(model, frames):
    data = batch_graph(frames, model.cutoff, model.species_)
    with torch.no_grad():
        return model.module_.acsf(data).numpy()


def test_symmetry_functions_equal_the_numpy_descriptor(model):
    frames = [_cuau(), _cluster()]
    ref = ACSF([29, 79], r_cut=4.2, g2_params=G2, g4_params=G4, g5_params=G5,
               ani_params=ANI).compute(frames)
    got = _torch_acsf(model, frames)
    assert got.shape == ref.features.shape
    np.testing.assert_allclose(got, ref.features, rtol=1e-10, atol=1e-12)
    n_ani = 3 * len(ANI)  # three element pairs
    assert np.abs(ref.features[:, -n_ani:]).max() > 1e-2  # ANI terms are there
    assert np.abs(ref.features[:, -n_ani - 3 * len(G4 + G5):-n_ani]).max() > 1e-2  # G4/G5


def test_defaults_are_ani_style_functions_and_angular_cutoff_is_its_own():
    frames = [_cuau()]
    default = BPNN(r_cut=4.2, hidden=(4,)).prepare(frames)
    assert default.angular_cutoff == 3.5 and default.cutoff == 4.2
    params = default_symmetry_functions(4.2, 3.5)
    assert default.symmetry_functions() == params
    assert len(params["g2_params"]) == 16 and len(params["ani_params"]) == 32
    got = _torch_acsf(default, frames)
    radial = ACSF([29, 79], r_cut=4.2, **params).compute(frames).features
    angular = ACSF([29, 79], r_cut=3.5, **params).compute(frames).features
    n_rad = 2 * 17  # two neighbour elements, G1 and 16 G2
    np.testing.assert_allclose(got[:, :n_rad], radial[:, :n_rad], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[:, n_rad:], angular[:, n_rad:], rtol=1e-10, atol=1e-12)
    # the Gaussians tile the cutoff: every distance in (0.8, r_cut - d) A is within half a
    # height of some radial centre
    eta, rs = np.array(params["g2_params"]).T
    r = np.linspace(0.8, rs[-1], 200)
    assert np.exp(-eta[:, None] * (r - rs[:, None]) ** 2).max(0).min() > 0.5
    with pytest.raises(ValueError, match="above 0.8"):
        default_symmetry_functions(0.5, 0.5)


def test_a_version_1_file_keeps_its_functions(tmp_path):
    """Before ``ani_params``, unset parameters meant ACSF's defaults and an angular
    cutoff of ``r_cut``: such a state loads to the same model."""
    from ml4m.descriptors.acsf import DEFAULT_G2, DEFAULT_G4

    frames = [_cuau(), _cluster()]
    old = BPNN(r_cut=4.2, g2_params=DEFAULT_G2, g4_params=DEFAULT_G4, r_cut_angular=4.2,
               hidden=(4,)).prepare(frames)
    params, arrays = old.get_state()
    hyper = {k: v for k, v in params["hyper"].items() if k != "ani_params"}
    hyper.update(g2_params=None, g4_params=None, r_cut_angular=None)
    loaded = BPNN.from_state({**params, "hyper": hyper}, arrays)
    np.testing.assert_allclose(loaded.predict(frames).forces, old.predict(frames).forces,
                               rtol=1e-12, atol=1e-12)


def test_forces_and_stress_equal_finite_differences(model):
    atoms = _cuau().to_atoms(with_labels=False)
    assert_forces_are_energy_gradients(model, atoms, [(0, 0), (6, 2), (11, 1)])
    assert_stress_is_strain_derivative(model, atoms)


def test_rotation_translation_permutation_and_batching(model):
    frame = _cuau(3)
    atoms = frame.to_atoms(with_labels=False)
    assert_invariant_and_equivariant(model, atoms, shift=1.3)
    ref = model.predict([atoms])
    both = model.predict([_cluster(), frame])  # one batch of two equals each alone
    np.testing.assert_allclose(both.energy[1], ref.energy[0], rtol=1e-12)
    np.testing.assert_allclose(both.forces[5:], ref.forces, atol=1e-12)


def test_energy_is_linear_in_the_per_element_last_layer(model):
    data = batch_graph([_cuau()], model.cutoff, model.species_)
    m = model.module_
    with torch.no_grad():
        out = m(data)
        h, spec = out["features"], out["feature_block"]
        assert h.shape == (len(spec), 6) and torch.equal(spec, data["species"])
        expect = m.e0[spec] + m.shift + m.scale * ((h * m.weight[spec]).sum(1) + m.bias[spec])
        np.testing.assert_allclose(out["energies"].numpy(), expect.numpy(), rtol=1e-12)
        # an element's weights move only its own atoms' energies
        m.weight[1] += 0.1
        moved = m(data)["energies"]
        m.weight[1] -= 0.1
    changed = (moved - out["energies"]).abs() > 1e-12
    assert torch.equal(changed, spec == 1)


def test_prepare_standardises_features_per_element():
    frames = [_cuau(s) for s in range(4)]
    model = BPNN(r_cut=4.2, hidden=(4,)).prepare(frames)
    data = batch_graph(frames, model.cutoff, model.species_)
    m = model.module_
    with torch.no_grad():
        x = ((m.acsf(data) - m.feature_mean[data["species"]])
             / m.feature_std[data["species"]]).numpy()
        G = m.acsf(data).numpy()
    spec = data["species"].numpy()
    for s in (0, 1):
        rows, raw = x[spec == s], G[spec == s]
        sd = raw.std(0)
        varying = sd > 1e-8 * max(1.0, np.abs(raw).max())  # constant ones keep a scale of 1
        floor = np.median(sd[varying])
        np.testing.assert_allclose(rows.mean(0), 0.0, atol=1e-9)
        # unit spread where the raw spread reaches the element's median, less below it:
        # a rarely active function is not blown up
        np.testing.assert_allclose(rows[:, varying].std(0),
                                   np.minimum(1.0, sd[varying] / floor), rtol=1e-9)
        assert (sd[varying] < floor).any() and (sd[varying] > floor).any()
    np.testing.assert_allclose(m.e0.numpy(), model.stats_["e0"])


def test_settings_are_checked_and_fit_names_the_trainer():
    with pytest.raises(ConfigError, match="activation"):
        BPNN.check_params({"activation": "relu"})
    with pytest.raises(ConfigError, match="hidden"):
        BPNN.check_params({"hidden": [64, 0]})
    with pytest.raises(ConfigError, match="g4_params"):
        BPNN(g4_params=[(0.01, 1.0, 2.0)]).prepare([_cuau()])
    with pytest.raises(ConfigError, match="Trainer"):
        BPNN().fit([_cuau()])
    model = BPNN(hidden=(4,), dtype="float32").prepare([_cuau()])
    assert model.module_.weight.dtype == torch.float32
    twin = BPNN(hidden=(4,), seed=0).prepare([_cuau()])
    other = BPNN(hidden=(4,), seed=1).prepare([_cuau()])
    assert torch.equal(twin.module_.weight.float(), model.module_.weight)
    assert not torch.equal(twin.module_.weight, other.module_.weight)


def test_angular_cutoff_beyond_the_radial_one_keeps_the_energy_continuous():
    """With r_cut_angular > r_cut the graph reaches the angular cutoff: a pair crossing
    r_cut changes the energy smoothly (only the radial cutoff function, zero there)."""
    from ase import Atoms

    def triangle(d):
        return Atoms("Cu3", positions=[[0, 0, 0], [2.4, 0, 0], [1.2, d, 0]])

    model = BPNN(r_cut=3.0, r_cut_angular=5.0, hidden=(8,), seed=0).prepare(
        [Frame.from_atoms(triangle(d)) for d in (2.0, 2.6, 3.2)])
    assert model.cutoff == 5.0
    # the 1-3 and 2-3 distances cross r_cut = 3 A at d = sqrt(3^2 - 1.2^2) = 2.7495 A;
    # a 2e-6 A step around it moves a smooth energy by ~1e-7 eV, a cut angular term by meV
    cross = np.sqrt(3.0**2 - 1.2**2)
    e = model.predict([triangle(d) for d in (cross - 1e-6, cross + 1e-6)]).energy
    assert abs(e[1] - e[0]) < 1e-5

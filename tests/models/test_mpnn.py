"""MPNN: symmetries, derivatives, the product basis's equivariance, persistence, learning."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

import ml4m
from ml4m.data import Frame
from ml4m.errors import ConfigError
from ml4m.models.mpnn import MPNN
from ml4m.models.mpnn.basis import RadialBasis, edge_harmonics
from ml4m.models.mpnn.network import neighbour_slots, padded
from ml4m.models.mpnn.product import SymmetricProduct
from ml4m.models.torch_potential import batch_graph

from .potential_checks import assert_forces_are_energy_gradients, assert_stress_is_strain_derivative

SHARED = Path(os.environ.get("ML4M_SHARED_DATA", Path(__file__).parents[3] / "shared" / "data"))
SMALL = dict(r_max=4.0, n_channels=8, radial_mlp=16, n_radial=6, dtype="float64")


def _cuau() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.65, cubic=True).repeat((2, 2, 1))
    atoms.symbols[[1, 6, 11]] = "Au"
    atoms.rattle(0.1, seed=2)
    return atoms


def _molecule() -> Atoms:
    mol = molecule("CH3CH2OH")
    mol.rattle(0.05, seed=3)
    return mol


def _labelled(atoms: Atoms, seed: int) -> Frame:
    """A frame with made-up labels (prepare() reads their statistics)."""
    rng = np.random.default_rng(seed)
    return Frame.from_atoms(atoms, energy=float(rng.normal() - 3 * len(atoms)),
                            forces=rng.normal(scale=0.5, size=(len(atoms), 3)))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread (the machine is shared), restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module",
                params=[{"hidden_l": 0, "element_mix": False},
                        {"hidden_l": 1, "element_mix": False},
                        {"hidden_l": 1, "element_mix": True},
                        {"hidden_l": 1, "element_mix": True, "path_mix": True,
                         "radial_depth": 3}],
                ids=["scalar_states", "vector_states", "element_mix", "path_mix"])
def model(request) -> MPNN:
    """Untrained models whose interactions pass scalars, or scalars and vectors, one
    whose first interaction mixes channels per element, and one that also mixes the
    coupling paths of each degree and has three hidden radial layers."""
    frames = [_labelled(_cuau(), 0), _labelled(_molecule(), 1)]
    return MPNN(**SMALL, **request.param, seed=1).prepare(frames)


def _rotation(seed: int) -> np.ndarray:
    q = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))[0]
    return q * np.sign(np.linalg.det(q))


def _wigner(R: np.ndarray, l_max: int) -> torch.Tensor:
    """Matrix ``D`` with ``Y(R v) = D Y(v)`` (all degrees), fitted on random directions."""
    v = torch.as_tensor(np.random.default_rng(7).normal(size=(200, 3)))
    Y, Yr = edge_harmonics(v, l_max), edge_harmonics(v @ torch.as_tensor(R).T, l_max)
    D = torch.linalg.lstsq(Y, Yr).solution.T
    assert torch.allclose(Y @ D.T, Yr, atol=1e-10)
    return D


@pytest.mark.parametrize("correlation", [1, 2, 3])
def test_product_basis_rotates_with_its_input(correlation):
    """Rotating (or reflecting) A by its Wigner matrices rotates each output degree L by
    D_L: invariants stay, vectors and l=2 tensors turn; reflections act as (-1)**L."""
    torch.manual_seed(0)
    l_max, out_ls = 3, (0, 1, 2)
    product = SymmetricProduct(l_max, out_ls, correlation, n_channels=4, n_species=2).double()
    A = torch.randn(16, 5, 4, dtype=torch.float64)
    species = torch.tensor([0, 1, 1, 0, 1])
    B = product(A, species)
    assert B.shape == (9, 5, 4) and B.abs().max() > 1e-3
    for R in (_rotation(5), -_rotation(6)):
        D = _wigner(R, l_max)
        D_out = torch.block_diag(*(D[L * L:(L + 1) ** 2, L * L:(L + 1) ** 2] for L in out_ls))
        moved = product(torch.einsum("ed,dnk->enk", D, A), species)
        torch.testing.assert_close(moved, torch.einsum("ed,dnk->enk", D_out, B),
                                   atol=1e-12, rtol=1e-10)
    # products of the input: doubling A scales the order-nu terms by 2**nu
    if correlation == 1:
        torch.testing.assert_close(product(2 * A, species), 2 * B)


def test_padded_neighbour_sums_equal_scatter_sums():
    i = torch.tensor([2, 0, 2, 1, 2, 0])
    x = torch.randn(6, 3, dtype=torch.float64)
    slots, width = neighbour_slots(i, 4)
    assert width == 3 and len(set(slots.tolist())) == 6
    sums = padded(x, slots, 4, width).sum(dim=1)
    torch.testing.assert_close(sums, torch.zeros(4, 3, dtype=x.dtype).index_add(0, i, x))


@pytest.mark.parametrize("l_max", [1, 3, 6])
def test_edge_harmonics_are_the_descriptor_harmonics_with_their_gradients(l_max):
    """The monomial form equals ml4m's recursion (times sqrt(4 pi)) on vectors of any
    length, and so do the gradients with respect to the vectors (float64)."""
    import math

    from ml4m.descriptors.spherical_harmonics import real_spherical_harmonics

    v = torch.as_tensor(np.random.default_rng(l_max).normal(size=(300, 3)) * 2.0)
    weights = torch.as_tensor(np.random.default_rng(9).normal(size=(300, (l_max + 1) ** 2)))
    got, ref = v.clone().requires_grad_(True), v.clone().requires_grad_(True)
    Y = edge_harmonics(got, l_max)
    Y_ref = real_spherical_harmonics(ref, l_max)[0] * math.sqrt(4 * math.pi)
    torch.testing.assert_close(Y, Y_ref, atol=1e-12, rtol=1e-12)
    (g,) = torch.autograd.grad((Y * weights).sum(), got)
    (g_ref,) = torch.autograd.grad((Y_ref * weights).sum(), ref)
    torch.testing.assert_close(g, g_ref, atol=1e-11, rtol=1e-11)


def test_radial_basis_vanishes_smoothly_at_the_cutoff():
    radial = RadialBasis(4.0, 8).double()
    r = torch.tensor([3.999999, 4.0, 4.5], dtype=torch.float64, requires_grad=True)
    values = radial(r)
    (grad,) = torch.autograd.grad(values.sum(), r)
    assert values.abs().max() < 1e-12 and grad.abs().max() < 1e-9


def test_energy_is_invariant_and_forces_rotate(model):
    for atoms in (_cuau(), _molecule()):
        ref = model.predict([atoms])
        R = _rotation(11)
        moved = atoms.copy()
        if atoms.pbc.all():
            moved.set_cell(atoms.cell @ R.T, scale_atoms=False)
        moved.positions = atoms.positions @ R.T + np.array([0.4, -1.1, 2.3])
        perm = np.random.default_rng(4).permutation(len(atoms))  # mixes Cu and Au, C, O, H
        moved = moved[perm]
        got = model.predict([moved])
        assert got.energy[0] == pytest.approx(ref.energy[0], rel=1e-10, abs=1e-10)
        np.testing.assert_allclose(got.forces, (ref.forces @ R.T)[perm], atol=1e-10)
        np.testing.assert_allclose(got.energies, ref.energies[perm], atol=1e-10)
        mirrored = atoms.copy()
        mirrored.positions[:, 0] *= -1
        if atoms.pbc.all():
            mirrored.cell[:, 0] *= -1
        assert model.predict([mirrored]).energy[0] == pytest.approx(ref.energy[0], rel=1e-10)
    assert abs(ref.forces).max() > 1e-4  # not trivially zero


def test_forces_and_stress_equal_finite_differences(model):
    for atoms in (_cuau(), _molecule()):
        assert_forces_are_energy_gradients(model, atoms, [(0, 0), (1, 2), (6, 1)])
    assert_stress_is_strain_derivative(model, _cuau())


def test_features_give_the_energies_linearly(model):
    data = batch_graph([Frame.from_atoms(_cuau())], model.cutoff, model.species_)
    out = model.module_(data)
    m = model.module_
    w = torch.cat([r.weight for r in m.readouts] + [m.last.weight], dim=1)[0]
    assert out["features"].shape == (len(_cuau()), SMALL["n_channels"] + m.hidden.out_features)
    torch.testing.assert_close(out["energies"], m.e0[data["species"]] + m.shift
                               + m.scale * out["features"] @ w)


def test_save_and_load_reproduce_predictions(model, tmp_path):
    frames = [_cuau(), _molecule()]
    path = model.save(tmp_path / "mpnn")
    loaded = ml4m.load(path)
    assert isinstance(loaded, MPNN) and loaded.get_params() == model.get_params()
    a, b = model.predict(frames), loaded.predict(frames)
    for q in ("energy", "forces", "energies"):
        np.testing.assert_array_equal(getattr(a, q), getattr(b, q))
    np.testing.assert_array_equal(a.stress[0], b.stress[0])


def test_vector_states_carry_information_between_interactions():
    """With hidden_l=1 the second interaction reads the first one's vectors: cutting the
    vector input changes the energy; hidden_l above l_max is refused."""
    frames = [_labelled(_molecule(), 1)]
    model = MPNN(**SMALL, hidden_l=1, seed=1).prepare(frames)
    layer = model.module_.interactions[1]
    assert len(layer.up_l) == 1 and len(model.module_.interactions[0].up_l) == 0
    before = model.predict(frames).energy[0]
    with torch.no_grad():
        layer.up_l[0].zero_()
    assert abs(model.predict(frames).energy[0] - before) > 1e-6
    with pytest.raises(ValueError, match="hidden_l"):
        MPNN(**SMALL, l_max=1, hidden_l=2).prepare(frames)


def test_element_mix_maps_channels_by_the_centres_element():
    """With element_mix the first interaction holds one channel map per element: zeroing
    the map of H changes a molecule's energy and leaves a Cu-Au crystal's unchanged;
    the later interactions keep one map per degree."""
    frames = [_labelled(_cuau(), 0), _labelled(_molecule(), 1)]
    model = MPNN(**SMALL, element_mix=True, seed=1).prepare(frames)
    layers = model.module_.interactions
    assert layers[0].mix.shape[0] == len(model.species_) and layers[1].mix.dim() == 3
    before = model.predict(frames).energy
    with torch.no_grad():
        layers[0].mix[list(model.species_).index(1)].zero_()
    after = model.predict(frames).energy
    assert after[0] == before[0] and abs(after[1] - before[1]) > 1e-6


def test_path_mix_with_equal_maps_per_path_equals_summed_paths():
    """A path-resolved map that repeats one ``K x K`` map for every path to a degree
    equals summing the paths and mixing with that map: the path_mix model then predicts
    what the default model with those maps does (float64)."""
    frames = [_labelled(_cuau(), 0), _labelled(_molecule(), 1)]
    plain = MPNN(**SMALL, seed=1).prepare(frames)
    paths = MPNN(**SMALL, path_mix=True, seed=1).prepare(frames)
    layer, target = plain.module_.interactions[1], paths.module_.interactions[1]
    assert target.path_mix and max(target.paths_per_l3) > 1
    with torch.no_grad():
        for name, tensor in plain.module_.state_dict().items():
            if ".mix" not in name:
                paths.module_.state_dict()[name].copy_(tensor)
        for l3, n in enumerate(target.paths_per_l3):
            target.mix[l3].copy_(layer.mix[l3].repeat(n, 1))
        paths.module_.interactions[0].mix.copy_(plain.module_.interactions[0].mix)
    np.testing.assert_allclose(paths.predict(frames).forces, plain.predict(frames).forces,
                               rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        target.mix[1][: SMALL["n_channels"]].mul_(2.0)  # weigh the first path to l3 = 1 apart
    assert np.abs(paths.predict(frames).forces - plain.predict(frames).forces).max() > 1e-8


def test_a_file_written_before_vector_states_loads_as_scalar_states(tmp_path):
    """A version-1 file has no ``hidden_l``: it loads with scalar states, predictions
    unchanged."""
    import json
    import zipfile

    frames = [_labelled(_molecule(), 1)]
    # as such a file's model was: no per-element channel maps either
    model = MPNN(**SMALL, hidden_l=0, element_mix=False, seed=1).prepare(frames)
    path = model.save(tmp_path / "new")
    old = tmp_path / "old.ml4m"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "meta.json":
                meta = json.loads(data)
                del meta["params"]["hyper"]["hidden_l"]
                for key in ("element_mix", "path_mix", "radial_depth"):
                    del meta["params"]["hyper"][key]
                meta["state_version"] = 1
                data = json.dumps(meta)
            dst.writestr(item, data)
    loaded = ml4m.load(old)
    assert loaded.hidden_l == 0 and loaded.element_mix is False and loaded.path_mix is False
    assert loaded.radial_depth == 2
    np.testing.assert_array_equal(loaded.predict(frames).forces, model.predict(frames).forces)


def test_hyperparameters_are_checked_and_seed_sets_weights():
    with pytest.raises(ConfigError, match="correlation"):
        MPNN.check_params({"correlation": 4})
    with pytest.raises(ConfigError, match="dtype"):
        MPNN.check_params({"dtype": "float16"})
    with pytest.raises(ConfigError, match="ml4m.training"):  # training lives there
        MPNN().fit([_cuau()])
    frames = [_labelled(_cuau(), 0)]
    state = torch.get_rng_state()
    e = [MPNN(**SMALL, seed=s).prepare(frames).predict(frames).energy[0] for s in (3, 3, 4)]
    assert torch.equal(state, torch.get_rng_state())  # the global generator is untouched
    assert e[0] == e[1] != e[2]


@pytest.mark.skipif(not (SHARED / "cu_emt" / "train.extxyz").exists(),
                    reason="shared cu_emt data set absent")
def test_training_reduces_the_force_error():
    """ml4m.training's Trainer on energies and forces of 10 Cu EMT frames (one batch,
    40 steps): the force MAE falls well below that of the initial weights."""
    from ml4m.data import read_dataset
    from ml4m.training import Trainer, TrainSettings

    frames = list(read_dataset(SHARED / "cu_emt" / "train.extxyz", index=":10"))
    forces = np.concatenate([f.forces for f in frames])
    model = MPNN(r_max=4.0, n_channels=8, radial_mlp=16, l_max=2, seed=0).prepare(frames)
    before = np.abs(model.predict(frames).forces - forces).mean()
    settings = TrainSettings(batch_size=10, lr=0.01, max_epochs=40, ema_decay=None,
                             scheduler="none", progress=False)
    model = Trainer(settings).fit(model, frames)
    after = np.abs(model.predict(frames).forces - forces).mean()
    assert after < 0.5 * before, (before, after)


def test_batches_follow_the_edge_budget_and_leave_results_unchanged(monkeypatch):
    """predict and fit_last_layer split frames by their edges; a budget that puts one
    or two frames in each batch gives the predictions, sigmas and posterior of one
    batch for all (float64)."""
    from ml4m.data.neighbors import neighbor_list

    frames = [_labelled(_cuau(), k) if k % 2 else _labelled(_molecule(), k) for k in range(7)]
    model = MPNN(**SMALL, seed=1).prepare(frames)
    edges = [len(neighbor_list(f, model.cutoff)) for f in frames]
    monkeypatch.setattr(MPNN, "predict_edges", 10**9)
    assert [len(chunk) for chunk, _ in model._graphs(frames)] == [len(frames)]
    whole = model.fit_last_layer(frames[:5], frames[5:])
    posterior = whole.last_layer_
    one_batch = whole.predict(frames, uncertainty=True)

    budget = max(edges) + min(edges)
    monkeypatch.setattr(MPNN, "predict_edges", budget)
    chunks = list(model._graphs(frames))
    assert 1 < len(chunks) < len(frames)
    assert [id(f) for chunk, _ in chunks for f in chunk] == [id(f) for f in frames]
    start = 0
    for chunk, data in chunks:  # in order, each once
        assert data["edge_index"].shape[1] == sum(edges[start:start + len(chunk)]) <= budget
        start += len(chunk)
    split = model.predict(frames, uncertainty=True)
    for key in ("energy", "forces", "stress", "energies", "energy_sigma", "forces_sigma"):
        np.testing.assert_allclose(getattr(split, key), getattr(one_batch, key), rtol=1e-10,
                                   atol=1e-12, equal_nan=True)
    refit = model.fit_last_layer(frames[:5], frames[5:]).last_layer_
    np.testing.assert_allclose(refit.factor, posterior.factor, rtol=1e-8, atol=1e-12)
    assert refit.noise_sigma == pytest.approx(posterior.noise_sigma, rel=1e-8)

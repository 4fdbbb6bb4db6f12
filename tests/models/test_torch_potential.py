"""TorchPotential: forces and stress by autograd equal finite differences; invariances;
precision; persistence of the module's state as arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from ml4m.data import Frame
from ml4m.errors import ConfigError, DataError
from ml4m.models.torch_potential import batch_graph, edge_vectors, species_index

from .potential_checks import (
    assert_forces_are_energy_gradients,
    assert_invariant_and_equivariant,
    assert_stress_is_strain_derivative,
)
from .toy_potentials import ToyPair


def _structures():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    cu.symbols[[1, 5]] = "Au"
    cu.rattle(0.1, seed=1)
    mol = molecule("CH4")
    mol.symbols[:] = ["Au", "Cu", "Cu", "Cu", "Au"]
    mol.positions *= 2.2
    return [Frame.from_atoms(cu), Frame.from_atoms(mol)]


def _toy(**params) -> ToyPair:
    """The toy potential with a 4.5 A cutoff, prepared (seeded) on the test structures."""
    torch.manual_seed(0)
    return ToyPair(**{"r_cut": 4.5, **params}).prepare(_structures())


@pytest.fixture(scope="module")
def model():
    return _toy()


def test_batch_graph_edges_are_the_neighbour_list(model):
    from ml4m.data.neighbors import neighbor_list

    frames = _structures()
    data = batch_graph(frames, model.cutoff, model.species_)
    r = torch.linalg.vector_norm(edge_vectors(data), dim=1)
    assert torch.all(r < model.cutoff) and torch.all(r > 0.5)
    assert int(data["n_atoms"].sum()) == len(data["positions"]) == sum(len(f) for f in frames)
    i, j = data["edge_index"]
    assert torch.all(data["batch"][i] == data["batch"][j])  # no edge between structures
    pairs = [neighbor_list(f, model.cutoff).distances for f in frames]
    np.testing.assert_allclose(r.numpy(), np.concatenate(pairs), atol=1e-12)
    assert data["cell"][1].abs().sum() == 0  # a molecule has no cell
    species = np.concatenate([f.numbers for f in frames])
    np.testing.assert_array_equal(np.array(model.species_)[data["species"].numpy()], species)


def test_species_index_and_unknown_species_named(model):
    numbers = np.array([79, 29, 8, 79, 1])
    np.testing.assert_array_equal(species_index(numbers, [79, 8, 29]), [0, 2, 1, 0, -1])
    np.testing.assert_array_equal(species_index(numbers, []), [-1] * 5)
    frames = _structures()
    frames[1] = Frame.from_atoms(molecule("H2O"), source=("mols.extxyz", 7))
    with pytest.raises(DataError, match=r"mols.extxyz, frame 7: species \['H', 'O'\] are not "
                                        r"known to this model \(trained on \['Cu', 'Au'\]\)"):
        batch_graph(frames, model.cutoff, model.species_)


def test_forces_stress_and_per_atom_energies_are_consistent(model):
    frames = _structures()
    pred = model.predict(frames)
    np.testing.assert_allclose(np.add.reduceat(pred.energies, pred.offsets[:-1]), pred.energy)
    atoms = frames[0].to_atoms(with_labels=False)
    assert_forces_are_energy_gradients(model, atoms, [(0, 0), (3, 2), (6, 1)])
    assert_stress_is_strain_derivative(model, atoms)
    assert np.all(np.isnan(pred.stress[1]))  # a molecule has no stress


def test_prediction_with_frozen_weights_equals_the_trainable_graph(model):
    """predict() runs with the weights frozen (and without a strain for a batch of
    molecules): the same energies and forces as the graph a training step builds, and
    the weights are trainable again afterwards, also after an exception."""
    from ml4m.models.torch_potential import frozen_parameters

    frames = _structures()
    pred = model.predict(frames)
    for k, frame in enumerate(frames):
        data = batch_graph([frame], model.cutoff, model.species_)
        full = model.energy_and_derivatives(data, create_graph=True)  # weights require grad
        assert full["energy"].requires_grad
        np.testing.assert_allclose(pred.energy[k], full["energy"].item(), rtol=1e-12)
        np.testing.assert_allclose(pred.forces[pred.offsets[k]:pred.offsets[k + 1]],
                                   full["forces"].detach().numpy(), atol=1e-12)
    molecule_only = model.predict(frames[1:])
    assert np.all(np.isnan(molecule_only.stress))
    np.testing.assert_array_equal(molecule_only.forces, pred.forces[pred.offsets[1]:])
    weights = list(model.module_.parameters())
    assert weights and all(w.requires_grad for w in weights)
    with pytest.raises(RuntimeError, match="inside"):
        with frozen_parameters(model.module_):
            assert not any(w.requires_grad for w in weights)
            raise RuntimeError("inside")
    assert all(w.requires_grad for w in weights)


def test_rotation_translation_permutation(model):
    frame = _structures()[0]
    atoms = frame.to_atoms(with_labels=False)
    assert_invariant_and_equivariant(model, atoms, shift=1.7)


def test_float32_close_to_float64_and_state_round_trip(model):
    frames = _structures()
    params, arrays = model.get_state()
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    again = ToyPair.from_state(params, arrays)
    a, b = model.predict(frames), again.predict(frames)
    np.testing.assert_array_equal(a.forces, b.forces)
    single = ToyPair.from_state({**params, "hyper": {**params["hyper"],
                                                                 "dtype": "float32"}}, arrays)
    c = single.predict(frames)
    np.testing.assert_allclose(c.energy, a.energy, rtol=1e-5)
    np.testing.assert_allclose(c.forces, a.forces, atol=1e-4)
    with pytest.raises(DataError, match="module state"):
        ToyPair.from_state(params, {"module.depth": arrays["module.depth"]})
    with pytest.raises(ConfigError, match="dtype"):
        _toy(dtype="float16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(model):
    params, arrays = model.get_state()
    gpu = ToyPair.from_state({**params, "hyper": {**params["hyper"],
                                                              "device": "cuda"}}, arrays)
    frames = _structures()
    np.testing.assert_allclose(gpu.predict(frames).forces, model.predict(frames).forces,
                               atol=1e-10)


def test_prepare_sets_species_statistics_and_module():
    from ase.calculators.emt import EMT

    frames = []
    for seed in range(3):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
        atoms.symbols[: 2 * seed + 1] = "Au"  # compositions differ: E0s are determined
        atoms.rattle(0.05, seed=seed)
        atoms.calc = EMT()
        frames.append(Frame.from_atoms(atoms, energy=atoms.get_potential_energy(),
                                       forces=atoms.get_forces()))
    model = ToyPair(r_cut=4.5).prepare(frames)
    assert model.species_ == [29, 79]
    forces = np.concatenate([f.forces for f in frames])
    assert np.isclose(model.stats_["scale"], np.sqrt(np.mean(forces ** 2)))
    counts = np.array([[np.sum(f.numbers == z) for z in (29, 79)] for f in frames])
    energies = np.array([f.energy for f in frames])
    resid = energies - counts @ model.stats_["e0"]
    # least squares E0s leave no residual orthogonal to the composition columns
    assert np.allclose(counts.T @ resid, 0, atol=1e-4)
    # fcc at a = 3.6 A, 4.5 A cut: shells at 2.55 (12), 3.6 (6) and 4.41 A (24), rattled
    assert 36 <= model.stats_["avg_neighbors"] <= 44
    assert model.n_parameters > 0


def test_stress_loss_gradient_is_finite_with_molecules_in_the_batch(model):
    """A molecule's stress is NaN, but a loss on the cells' stresses keeps finite gradients."""
    import torch

    data = batch_graph(_structures(), model.cutoff, model.species_)
    out = model.energy_and_derivatives(data, create_graph=True)
    assert torch.isnan(out["stress"][1]).all() and torch.isfinite(out["stress"][0]).all()
    loss = out["stress"][0].pow(2).sum()
    grads = torch.autograd.grad(loss, list(model.module_.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_start_from_takes_the_weights_but_not_the_energy_reference():
    """A network prepared on data of another energy reference and started from a
    trained one: its forces are those of the trained one, its energies differ by its own
    E0s; another architecture, kind or element set is refused, naming the difference."""
    trained = _toy()
    with torch.no_grad():  # weights no freshly prepared network has
        trained.module_.alpha.fill_(1.23)
        trained.module_.depth.mul_(1.7)
    frames = _structures()
    shifted = [Frame(f.numbers, f.positions, f.cell, f.pbc, energy=5.0 * len(f)) for f in frames]
    tuned = ToyPair(r_cut=4.5).prepare(shifted).start_from(trained)
    a, b = tuned.predict(frames), trained.predict(frames)
    np.testing.assert_allclose(a.forces, b.forces, rtol=0, atol=1e-12)
    e0 = dict(zip(tuned.species_, tuned.module_.e0.numpy()))
    e0_trained = dict(zip(trained.species_, trained.module_.e0.numpy()))
    expected = [sum(e0[z] - e0_trained[z] for z in f.numbers) for f in frames]
    np.testing.assert_allclose(a.energy - b.energy, expected, atol=1e-10)
    assert not np.allclose(a.energy, b.energy)
    with pytest.raises(ConfigError, match=r"other hyperparameters: r_cut 4\.5 \(here 4\.0\)"):
        ToyPair(r_cut=4.0).prepare(frames).start_from(trained)
    copper = [Frame(f.numbers * 0 + 29, f.positions, f.cell, f.pbc, energy=-3.0 * len(f))
              for f in frames]
    with pytest.raises(DataError, match=r"built for the elements \['Cu'\]; .* \['Cu', 'Au'\]"):
        ToyPair(r_cut=4.5).prepare(copper).start_from(trained)
    # prepared for the trained network's elements on Cu-only frames: Au keeps its energy
    cu_only = ToyPair(r_cut=4.5).prepare(copper, species=trained.species_).start_from(trained)
    a, b = cu_only.predict(frames), trained.predict(frames)
    np.testing.assert_allclose(a.forces, b.forces, rtol=0, atol=1e-12)
    new_e0 = dict(zip(cu_only.species_, cu_only.module_.e0.numpy()))
    assert new_e0[79] == e0_trained[79] and new_e0[29] != e0_trained[29]
    np.testing.assert_allclose(a.energy - b.energy, [
        np.sum(f.numbers == 29) * (new_e0[29] - e0_trained[29]) for f in frames], atol=1e-10)
    with pytest.raises(DataError, match=r"hold the elements \['Cu', 'Au'\], beyond \['Cu'\]"):
        ToyPair(r_cut=4.5).prepare(frames, species=[29])
    with pytest.raises(ConfigError, match="not prepared"):
        ToyPair(r_cut=4.5).start_from(trained)

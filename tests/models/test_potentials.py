"""Linear (ACE) and sparse-GP potentials: derivatives, persistence, recovery, bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.verlet import VelocityVerlet
from ase import units

import ml4m
from ml4m.data import Dataset, Frame, default_dataset
from ml4m.errors import ConfigError, DataError
from ml4m.models.kernel import SparseGPPotential
from ml4m.models.linear import LinearACE, LinearPotential


def _descriptor(kind: str, species=("Cu",)):
    from ml4m.descriptors import make_descriptor

    if kind == "ace":
        return make_descriptor("ace", species=list(species), r_cut=4.0, n_max=4, l_max=2, correlation_order=3)
    return make_descriptor("soap", species=list(species), r_cut=4.0, n_max=3, l_max=3)


MODELS = {
    "linear_ace": lambda: LinearACE(_descriptor("ace")),
    "sparse_gp": lambda: SparseGPPotential(_descriptor("soap"), n_sparse=40, zeta=2),
}


@pytest.fixture(scope="module")
def data():
    ds = default_dataset()
    return ds[::6], ds[3::12]


@pytest.fixture(scope="module", params=sorted(MODELS))
def fitted(request, data):
    return MODELS[request.param]().fit(data[0])


def _energy(model, atoms):
    return model.predict([atoms]).energy[0]


def _derivative(f, h=1e-3):
    """Fourth-order central difference of f at 0 (robust to rounding in large sums)."""
    return (-f(2 * h) + 8 * f(h) - 8 * f(-h) + f(-2 * h)) / (12 * h)


def _check_paths_gradient_and_file(model, atoms, a, c, path):
    """Both prediction paths agree, the force on (atom a, component c) is minus the FD
    energy gradient, and the saved file predicts the same forces; returns the fast path."""
    fast, full = model.predict([atoms]), model.predict([atoms], uncertainty=True)
    np.testing.assert_allclose(fast.forces, full.forces, rtol=1e-6, atol=1e-8)

    def energy(d):
        moved = atoms.copy()
        moved.positions[a, c] += d
        return _energy(model, moved)

    assert full.forces[a, c] == pytest.approx(-_derivative(energy), rel=2e-6, abs=1e-8)
    loaded = ml4m.load(model.save(path))
    np.testing.assert_array_equal(loaded.predict([atoms]).forces, fast.forces)
    return fast


def test_forces_are_minus_energy_gradient(fitted, data):
    atoms = data[1][2].to_atoms(with_labels=False)
    pred = fitted.predict([atoms])
    for a, c in [(0, 0), (3, 1), (len(atoms) - 1, 2)]:
        def energy(d, a=a, c=c):
            moved = atoms.copy()
            moved.positions[a, c] += d
            return _energy(fitted, moved)

        assert pred.forces[a, c] == pytest.approx(-_derivative(energy), rel=2e-6, abs=1e-8)


def test_stress_is_strain_derivative(fitted, data):
    frame = next(f for f in data[1] if f.pbc.all())
    atoms = frame.to_atoms(with_labels=False)
    pred = fitted.predict([atoms])
    for v, (i, j) in enumerate([(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]):
        def energy(eps, i=i, j=j):
            D = np.zeros((3, 3))
            D[i, j] += eps / 2
            D[j, i] += eps / 2
            strained = atoms.copy()
            strained.set_cell(atoms.cell[:] @ (np.eye(3) + D), scale_atoms=True)
            return _energy(fitted, strained)

        fd = _derivative(energy) / atoms.get_volume()
        assert pred.stress[0, v] == pytest.approx(fd, rel=2e-6, abs=1e-9)


def test_adjoint_prediction_equals_design_rows(fitted, data):
    """The fast path (dE/dX and one VJP) equals the per-feature design rows."""
    fast = fitted.predict(data[1][:4])
    full = fitted.predict(data[1][:4], uncertainty=True)
    # summation orders differ; the GP's large, cancelling coefficients leave ~1e-9 eV
    np.testing.assert_allclose(fast.energy, full.energy, rtol=0, atol=1e-8)
    np.testing.assert_allclose(fast.forces, full.forces, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(fast.stress, full.stress, rtol=1e-6, atol=1e-9)


def test_learns_emt(fitted, data):
    """Validation errors well below the spread of the labels (eV/atom and eV/A)."""
    from ml4m.models import error_metrics

    m = error_metrics(fitted.predict(data[1]), data[1])
    e_spread = np.std([f.energy / len(f) for f in data[1]]) * 1000
    f_spread = np.std(np.concatenate([f.forces for f in data[1]])) * 1000
    assert m["energy"]["mae_mev_per_atom"] < 0.2 * e_spread
    assert m["forces"]["mae_mev_per_a"] < 0.2 * f_spread


def test_save_load_identical_and_calculator(fitted, data, tmp_path):
    assert fitted.error_model_ is not None  # the calibrated force sigma travels with the file
    path = fitted.save(tmp_path / "model")
    loaded = ml4m.load(path)
    a = fitted.predict(data[1][:3], uncertainty=True)
    b = loaded.predict(data[1][:3], uncertainty=True)
    for key in ("energy", "forces", "stress", "energy_sigma", "forces_sigma"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    atoms = data[1][0].to_atoms(with_labels=False)
    atoms.calc = loaded.as_calculator()
    atoms.get_potential_energy()
    assert "forces_sigma" not in atoms.calc.results  # uncertainty is off unless asked
    atoms.calc = loaded.as_calculator(uncertainty=True)
    # one frame through the calculator against a batch of three: same up to summation order
    assert atoms.get_potential_energy() == pytest.approx(a.energy[0], abs=1e-8)  # eV
    np.testing.assert_allclose(atoms.get_forces(), a.forces[: len(atoms)], rtol=1e-8, atol=1e-10)
    assert atoms.calc.results["forces_sigma"].shape == (len(atoms), 3)


def test_file_holds_the_posterior_factor_and_reads_a_covariance(fitted, data):
    """Files keep the posterior as its factor F (Sigma = F F^T, no p^3 product to form
    it); a file with the covariance itself (as written before) gives the same sigmas,
    and one with neither fails with the entry named."""
    params, arrays = fitted.get_state()
    F = arrays.pop("posterior_factor")
    assert "covariance" not in arrays
    old = type(fitted).from_state(params, {**arrays, "covariance": F @ F.T})
    frames = data[1][:3]
    a, b = fitted.predict(frames, uncertainty=True), old.predict(frames, uncertainty=True)
    # a^T (F F^T) a loses digits to cancellation that |F^T a|^2 keeps: under the GP's
    # nearly singular K_mm prior (steep whitening) up to 0.3% of an energy sigma
    np.testing.assert_allclose(b.forces_sigma, a.forces_sigma, rtol=1e-2)
    np.testing.assert_allclose(b.energy_sigma, a.energy_sigma, rtol=1e-2)
    with pytest.raises(DataError, match="posterior"):  # file contents are data
        type(fitted).from_state(params, arrays)


def test_uncertainty_grows_outside_training_data(fitted):
    """A strongly compressed crystal is far from the training set: larger sigma."""
    near = bulk("Cu", cubic=True, a=3.62).repeat(2)
    far = bulk("Cu", cubic=True, a=3.15).repeat(2)
    s_near = fitted.predict([near], uncertainty=True).energy_sigma[0]
    s_far = fitted.predict([far], uncertainty=True).energy_sigma[0]
    assert s_far > 3 * s_near


def test_nve_energy_is_conserved(fitted):
    atoms = bulk("Cu", cubic=True, a=3.6).repeat(2)
    atoms.rattle(0.05, seed=1)
    atoms.calc = fitted.as_calculator()
    e0 = atoms.get_total_energy()
    VelocityVerlet(atoms, timestep=1.0 * units.fs).run(40)
    assert abs(atoms.get_total_energy() - e0) / len(atoms) < 2e-4  # eV/atom


def test_unknown_species_at_prediction(fitted):
    alloy = bulk("Cu", cubic=True).repeat(2)
    alloy[0].symbol = "Au"
    with pytest.raises(DataError, match=r"species \['Au'\] are not known to this model"):
        fitted.predict([alloy])


def test_missing_forces_when_force_weight_set(data):
    frames = [Frame(f.numbers, f.positions, f.cell, f.pbc, energy=f.energy, source=f.source)
              for f in data[0][:3]]
    with pytest.raises(DataError, match="no forces but sigma_forces is set") as info:
        LinearPotential(_descriptor("soap")).fit(Dataset(frames))
    assert info.value.frame == frames[0].source[1]


def test_recovers_a_known_linear_model_in_the_basis(data):
    """Labels made by a linear model in the ACE basis are fitted back exactly."""
    truth = LinearACE(_descriptor("ace"), e0={"Cu": -0.3})
    truth.e0_ = {29: -0.3}
    truth.fmap_ = truth._make_feature_map([])
    rng = np.random.default_rng(0)
    truth.coef_ = rng.normal(size=truth.fmap_.n_features) / truth.fmap_.n_features
    frames = []
    for f in data[0][:20]:
        p = truth.predict([f])
        frames.append(Frame(f.numbers, f.positions, f.cell, f.pbc, energy=float(p.energy[0]),
                            forces=p.forces, stress=p.stress[0] if f.pbc.all() else None))
    # posterior: one evidence fit on all frames (the calibrated mode would keep the
    # hyperparameters of a fit without the held-out fifth, less sharp on noise-free labels)
    fit = LinearACE(_descriptor("ace"), e0={"Cu": -0.3}, sigma_energy=1e-6, sigma_forces=1e-5,
                    sigma_stress=1e-6, uncertainty="posterior").fit(Dataset(frames))
    test = data[1][:4]
    np.testing.assert_allclose(fit.predict(test).forces, truth.predict(test).forces, atol=1e-6)
    np.testing.assert_allclose(fit.predict(test).energy, truth.predict(test).energy, atol=1e-6)


def test_smoothness_prior_penalises_degree(data):
    """The ACE prior is (1 + degree)^p per species block; a rougher prior shrinks the
    high-degree coefficients relative to the low-degree ones; bad prior settings fail."""
    frames = data[0][:12]
    desc = _descriptor("ace")
    deg = desc.feature_degrees()
    fits = {p: LinearACE(_descriptor("ace"), smoothness=p, uncertainty="posterior").fit(frames)
            for p in (0.0, 6.0)}
    prior = fits[6.0].regression_.prior
    np.testing.assert_allclose(prior, (1 + deg) ** 6 / np.mean((1 + deg) ** 6))
    high, low = deg >= np.percentile(deg, 75), deg <= np.percentile(deg, 25)

    def ratio(model):
        c = np.abs(model.coef_)
        return c[high].mean() / c[low].mean()

    assert ratio(fits[6.0]) < 0.5 * ratio(fits[0.0]), (ratio(fits[6.0]), ratio(fits[0.0]))
    with pytest.raises(ConfigError, match="needs a descriptor with feature degrees"):
        LinearPotential(_descriptor("soap"), prior="smoothness").fit(frames)
    with pytest.raises(ConfigError, match="prior must be"):
        LinearACE(_descriptor("ace"), prior="flat").fit(frames)


def test_emt_reference_is_what_we_fit():
    """Sanity: the embedded labels are EMT's (so the fits above learn EMT)."""
    f = default_dataset()[0]
    atoms = f.to_atoms(with_labels=False)
    atoms.calc = EMT()
    assert atoms.get_potential_energy() == pytest.approx(f.energy, abs=1e-6)


def test_gp_linear_baseline_fits_an_alloy():
    """On Cu-Au (diverse environments) the kernel alone underfits; the baseline fixes it."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(0)
    frames = []
    for k in range(24):
        a = bulk("Cu", cubic=True, a=3.75).repeat((2, 2, 1))
        a.symbols[rng.choice(len(a), size=int(rng.integers(2, 9)), replace=False)] = "Au"
        a.rattle(0.08, seed=k)
        a.calc = EMT()
        frames.append(Frame.from_atoms(a, energy=a.get_potential_energy(), forces=a.get_forces()))
    train, valid = Dataset(frames[:18]), Dataset(frames[18:])
    desc = _descriptor("soap", species=("Cu", "Au"))
    errs = {}
    for baseline in (False, True):
        m = SparseGPPotential(desc, n_sparse=20, zeta=4, sigma_stress=None,
                              linear_baseline=baseline).fit(train)
        ref = np.concatenate([f.forces for f in valid])
        errs[baseline] = np.mean(np.abs(m.predict(valid).forces - ref))
    assert errs[True] < 0.5 * errs[False]


def test_per_quantity_noise_finds_the_noise_added_to_forces(data):
    """Forces with 50 meV/A of Gaussian noise, clean energies: the evidence gives the
    forces a noise level of sqrt(0.05^2 + model error^2) and the energies one far below
    the sigma_energy ratio; a shared noise scale keeps the sigma_energy/sigma_forces ratio."""
    import dataclasses

    rng = np.random.default_rng(3)
    noisy = [dataclasses.replace(f, forces=f.forces + rng.normal(scale=0.05, size=f.forces.shape),
                                 stress=None) for f in data[0] + data[1]]
    per = LinearACE(_descriptor("ace"), noise="per_quantity").fit(noisy)
    shared = LinearACE(_descriptor("ace")).fit(noisy)
    assert per.noise_["forces"] == pytest.approx(0.05, rel=0.1)  # eV/A
    assert per.noise_["energy"] < 0.2 * 0.001 / 0.03 * per.noise_["forces"]  # eV/atom
    assert shared.noise_["energy"] / shared.noise_["forces"] == pytest.approx(0.001 / 0.03)
    assert per.regression_.log_evidence_ > shared.regression_.log_evidence_


@pytest.fixture(scope="module")
def cuau_frames():
    rng = np.random.default_rng(5)
    frames = []
    for _ in range(8):
        atoms = bulk("Cu", "fcc", a=3.75, cubic=True).repeat(2)
        atoms.symbols[rng.choice(len(atoms), 10, replace=False)] = "Au"
        atoms.rattle(0.08, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        frames.append(Frame.from_atoms(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces(),
                                       stress=atoms.get_stress()))
    return frames


@pytest.mark.parametrize("zeta,n_sparse", [(1, 12), (3, 12), (2, 50)])
def test_two_species_gp_derivatives(cuau_frames, zeta, n_sparse, monkeypatch):
    """Cu-Au: kernel gradients species by species; forces = -FD gradient, both paths agree;
    the two ways to the rows' own projections (in the sparse points' GEMM, or one einsum)
    give the same rows (at 50 points: Au, 10 rows, takes the GEMM; Cu, 22 rows, the einsum)."""
    from ml4m.descriptors import make_descriptor
    from ml4m.models.kernel import DotProductKernelMap

    desc = make_descriptor("soap", species=["Cu", "Au"], r_cut=4.0, n_max=3, l_max=2)
    model = SparseGPPotential(desc, n_sparse=n_sparse, zeta=zeta, uncertainty="posterior"
                              ).fit(Dataset(cuau_frames[:6]))
    rows = {}
    for name, fraction in [("gemm", np.inf), ("einsum", 0.0)]:
        monkeypatch.setattr(DotProductKernelMap, "own_rows_fraction", fraction)
        rows[name] = model._rows([cuau_frames[7]], True, True)[0]
    monkeypatch.undo()
    for q in ("forces", "stress"):
        np.testing.assert_allclose(getattr(rows["gemm"], q), getattr(rows["einsum"], q), rtol=1e-10, atol=1e-12)
    atoms = cuau_frames[7].to_atoms(with_labels=False)
    fast, full = model.predict([atoms]), model.predict([atoms], uncertainty=True)
    np.testing.assert_allclose(fast.forces, full.forces, rtol=1e-6, atol=1e-7)
    for a, c in [(0, 0), (int(np.flatnonzero(atoms.numbers == 79)[0]), 1)]:
        def energy(d, a=a, c=c):
            moved = atoms.copy()
            moved.positions[a, c] += d
            return _energy(model, moved)

        assert full.forces[a, c] == pytest.approx(-_derivative(energy), rel=2e-6, abs=1e-8)


def test_species_degree_blocks(cuau_frames, tmp_path):
    """A smaller basis for one centre species: a known model of that shape is fitted back,
    forces are -FD gradients on both paths, the file round-trips; bad settings fail."""
    from ml4m.descriptors import make_descriptor

    def desc():
        return make_descriptor("ace", species=["Cu", "Au"], r_cut=4.0, n_max=4, l_max=2,
                               correlation_order=3, total_degree=8)

    truth = LinearACE(desc(), e0={"Cu": -0.3, "Au": -0.2}, species_degree={"Au": [8, 6, 5]})
    truth.e0_ = {29: -0.3, 79: -0.2}
    truth.fmap_ = truth._make_feature_map([])
    n_cu, n_au = desc().n_features, len(desc().degree_subset([8, 6, 5]))
    assert truth.fmap_.n_features == n_cu + n_au and n_au < n_cu
    truth.coef_ = np.random.default_rng(2).normal(size=truth.fmap_.n_features) / truth.fmap_.n_features
    frames = []
    for f in cuau_frames:
        p = truth.predict([f])
        frames.append(Frame(f.numbers, f.positions, f.cell, f.pbc, energy=float(p.energy[0]),
                            forces=p.forces, stress=p.stress[0]))
    fit = LinearACE(desc(), e0={"Cu": -0.3, "Au": -0.2}, sigma_energy=1e-6, sigma_forces=1e-5,
                    sigma_stress=1e-6, uncertainty="posterior", species_degree={"Au": [8, 6, 5]}
                    ).fit(Dataset(frames[:7]))
    atoms = cuau_frames[7].to_atoms(with_labels=False)
    au = int(np.flatnonzero(atoms.numbers == 79)[0])
    fast = _check_paths_gradient_and_file(fit, atoms, au, 2, tmp_path / "blocks")
    np.testing.assert_allclose(fast.forces, truth.predict([atoms]).forces, atol=1e-6)
    with pytest.raises(ConfigError, match="'Ag' is not one of the model's species"):
        LinearACE(desc(), species_degree={"Ag": 6}).fit(Dataset(frames[:2]))
    with pytest.raises(ConfigError, match="exceeds the basis's total_degree"):
        LinearACE(desc(), species_degree={"Au": 9}).fit(Dataset(frames[:2]))
    with pytest.raises(ConfigError, match="needs a descriptor with a degree truncation"):
        LinearPotential(_descriptor("soap", ("Cu", "Au")), species_degree={"Au": 6}).fit(Dataset(frames[:2]))


def test_gp_kernel_on_species_columns(cuau_frames, tmp_path, monkeypatch):
    """kernel_columns='species': an Au kernel reads only the Au block's columns (its values
    equal a kernel on those columns alone), skipping the other columns' gradients leaves
    the design rows unchanged, forces are -FD gradients on both paths, and the file
    round-trips; 'all' reads every column."""
    from ml4m.descriptors import make_descriptor
    from ml4m.models.kernel import DotProductKernelMap
    from ml4m.models.linear.design import SumMap

    desc = make_descriptor("ace", species=["Cu", "Au"], r_cut=4.0, n_max=4, l_max=2,
                           correlation_order=3, total_degree=8)
    au_cols = desc.degree_subset([8, 6, 5])
    train = Dataset(cuau_frames[:6])

    def fit(kind):
        return SparseGPPotential(desc, n_sparse=10, zeta=2, uncertainty="posterior", kernel_columns=kind,
                                 species_degree={"Au": [8, 6, 5]}).fit(train)

    model = fit("species")
    kernel = model._kernel()
    frame = cuau_frames[7]
    X = desc.compute([frame]).features
    sidx = model._species_index([frame])
    au = np.flatnonzero(sidx == 1)
    # the same kernel on the Au columns alone (sparse points cut to those columns)
    alone = DotProductKernelMap(kernel.sparse[:, au_cols], kernel.sparse_species, 2)
    np.testing.assert_allclose(kernel.transform(X, sidx)[au], alone.transform(X[au][:, au_cols], sidx[au]),
                               rtol=1e-12, atol=1e-14)
    outside = np.setdiff1d(np.arange(desc.n_features), au_cols)
    assert not np.any(kernel.sparse[np.ix_(kernel.sparse_species == 1, outside)])
    # the skipped columns' gradients do not matter: rows equal those from all gradients
    assert model.fmap_.columns[0] is None and np.array_equal(model.fmap_.columns[1], au_cols)
    rows, _, _ = model._rows([frame], True, True)
    monkeypatch.setattr(SumMap, "columns", property(lambda self: None))
    rows_all, _, _ = model._rows([frame], True, True)
    monkeypatch.undo()
    np.testing.assert_allclose(rows.forces, rows_all.forces, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rows.stress, rows_all.stress, rtol=1e-10, atol=1e-12)
    _check_paths_gradient_and_file(model, frame.to_atoms(with_labels=False), int(au[0]), 0,
                                   tmp_path / "species_kernel")
    every = fit("all")
    assert every._kernel().columns is None and np.any(every._kernel().sparse[np.ix_(
        every._kernel().sparse_species == 1, outside)])
    # a degree bound: the kernels read the two- and three-body columns of their blocks
    low = fit([8, 6, 1])
    three_body = desc.degree_subset([8, 6, 1])
    cols = low._kernel().columns
    np.testing.assert_array_equal(cols[0], three_body)
    np.testing.assert_array_equal(cols[1], np.intersect1d(au_cols, three_body))
    assert not np.any(low._kernel().sparse[:, np.setdiff1d(np.arange(desc.n_features), three_body)])
    # so few columns that cosines and gradients are computed on them alone: both paths and
    # finite differences below check that cut
    np.testing.assert_array_equal(low._kernel()._union, three_body)
    _check_paths_gradient_and_file(low, frame.to_atoms(with_labels=False), int(au[0]), 1,
                                   tmp_path / "low_kernel")
    with pytest.raises(ConfigError, match="kernel_columns must be 'species', 'all' or a degree bound"):
        SparseGPPotential(desc, n_sparse=10, kernel_columns="some").fit(train)


def test_molecule_force_rows_drop_rigid_motions():
    """Force rows of an invariant model have no component along a rigid motion of a free
    molecule; the normal equations keep 3n - 6 rows per molecule (3n - 5 when linear) with
    the same Gram matrix and right-hand side, and a net force on the reference (which no
    invariant model can fit) leaves only the target sum of squares."""
    from ase.build import molecule

    from ml4m.descriptors import make_descriptor
    from ml4m.models.linear.bayesian import NormalEquations
    from ml4m.models.linear.potential import _Accumulator, _rigid_complement

    rng = np.random.default_rng(3)
    frames = []
    for name in ("CH3CH2OH", "CH3CH2OH", "CO2"):
        atoms = molecule(name)
        if name != "CO2":  # kept linear: one rotation fewer
            atoms.rattle(0.05, rng=rng)
        atoms.calc = EMT()
        frames.append(Frame.from_atoms(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces()))
    desc = make_descriptor("ace", species=["H", "C", "O"], r_cut=4.0, n_max=4, l_max=2, correlation_order=3)
    model = LinearACE(desc)
    model.fmap_ = model._make_feature_map(frames)
    rows, _, _ = model._rows(frames, True, False)
    p = rows.energy.shape[1]
    start = 0
    for f in frames:
        R = rows.forces[start:start + len(f)].reshape(-1, p)
        Q = _rigid_complement(f, p)
        assert Q.shape == (3 * len(f), 3 * len(f) - (5 if len(f) == 3 else 6))
        # the discarded directions: R has nothing along them
        P = np.eye(3 * len(f)) - Q @ Q.T
        assert np.abs(P @ R).max() < 1e-9 * np.abs(R).max()
        start += len(f)
    # where the product Q^T R would cost more than the rows it saves (3 n^2 >= p): none
    assert _rigid_complement(frames[0], 3 * len(frames[0]) ** 2) is None
    sig = {"energy": 1e-3, "forces": 0.03, "stress": None}
    n_at = np.array([len(f) for f in frames], dtype=float)
    y_e = np.array([f.energy for f in frames]) / n_at
    shift = np.array([0.2, -0.1, 0.05])  # a net force on every frame's reference

    def accumulate(offset):
        moved = [dataclasses.replace(f, forces=f.forces + offset) for f in frames]
        acc = _Accumulator(p, False, sig)
        acc.add(rows, moved, np.zeros(len(frames)))
        return acc.neq["energy"]

    ref = NormalEquations(p)
    ref.add(rows.energy / n_at[:, None], y_e, 1e6)
    ref.add(rows.forces.reshape(-1, p), np.concatenate([f.forces for f in frames]).ravel(), 1 / 0.03**2)
    acc, moved = accumulate(0.0), accumulate(shift)
    assert acc.n == ref.n - 6 - 6 - 5
    np.testing.assert_allclose(acc.AtA, ref.AtA, rtol=0, atol=1e-9 * np.abs(ref.AtA).max())
    np.testing.assert_allclose(acc.Aty, ref.Aty, rtol=0, atol=1e-9 * np.abs(ref.Aty).max())
    np.testing.assert_allclose(moved.Aty, acc.Aty, rtol=0, atol=1e-9 * np.abs(ref.Aty).max())
    assert moved.yty == pytest.approx(acc.yty, rel=1e-9)  # the net force is not data
    assert acc.yty == pytest.approx(ref.yty, rel=1e-6)  # EMT forces have no net force or torque


def test_fit_refuses_a_basis_larger_than_memory(data, monkeypatch):
    """The (p, p) matrices of the fit are estimated before the rows are built: a basis
    that would not fit in memory fails at once with the estimate, not by the OOM killer."""
    import ml4m.resources as resources

    model = LinearACE(_descriptor("ace"))
    p = model._species_blocks().n_features
    monkeypatch.setattr(resources, "_NEGLIGIBLE", 0)  # a tiny test basis: check it anyway
    monkeypatch.setattr(resources, "available_memory", lambda: 2 * 8 * 6 * p * p - 1)
    with pytest.raises(ConfigError, match=f"a fit of {p:,} coefficients .* would need about"):
        model.fit(data[0])
    monkeypatch.setattr(resources, "available_memory", lambda: 40 * 8 * 6 * p * p)
    assert model.fit(data[0]).n_parameters == p


def test_gp_adopts_sparse_points_of_a_smaller_basis(cuau_frames):
    """A sparse GP on a larger ACE basis that adopts the sparse environments of one on a
    smaller basis (kernel on the same two- and three-body functions) has the same kernel
    features as a GP selecting its own; kernels on different functions are refused."""
    from ml4m.descriptors import make_descriptor

    small = make_descriptor("ace", species=["Cu", "Au"], r_cut=4.0, n_max=6, l_max=2,
                            correlation_order=2, total_degree=[6, 5])
    large = make_descriptor("ace", species=["Cu", "Au"], r_cut=4.0, n_max=6, l_max=2,
                            correlation_order=3, total_degree=[8, 7, 6])
    train = Dataset(cuau_frames[:6])
    source = SparseGPPotential(small, n_sparse=10, zeta=2, kernel_columns=[6, 5],
                               uncertainty="posterior").fit(train)
    own = SparseGPPotential(large, n_sparse=10, zeta=2, kernel_columns=[6, 5, 1],
                            uncertainty="posterior").fit(train)
    adopted = SparseGPPotential(large, n_sparse=10, zeta=2, kernel_columns=[6, 5, 1])
    adopted.adopt_sparse_points(source)
    frame = cuau_frames[7]
    X, sidx = large.compute([frame]).features, own._species_index([frame])
    np.testing.assert_allclose(adopted._kernel().transform(X, sidx), own._kernel().transform(X, sidx),
                               rtol=1e-9, atol=1e-12)
    assert adopted.fmap_.n_features == own.fmap_.n_features  # linear block + kernel
    wider = SparseGPPotential(large, n_sparse=10, zeta=2, kernel_columns=[6, 6, 1])
    with pytest.raises(ConfigError, match="kernels read different columns"):
        wider.adopt_sparse_points(source)
    with pytest.raises(ConfigError, match="same species and zeta"):
        SparseGPPotential(large, n_sparse=10, zeta=4, kernel_columns=[6, 5, 1]).adopt_sparse_points(source)

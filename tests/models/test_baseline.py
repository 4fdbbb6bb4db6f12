"""Baselines: the ZBL core, its switch, derivatives, delta learning and persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

import ml4m
from ml4m.data import Frame, default_dataset, read_dataset, shortest_distances
from ml4m.descriptors import make_descriptor
from ml4m.errors import ConfigError, DataError
from ml4m.models.baseline import (
    Baselined,
    CalculatorBaseline,
    LabelBaseline,
    PairRepulsion,
    SumBaseline,
    attach_baseline_labels,
    baseline_from_config,
    residual_frames,
    switch,
    with_baseline,
    zbl,
)
from ml4m.models.baseline.repulsion import MARGIN
from ml4m.models.linear import LinearACE
from ml4m.models.metrics import error_metrics
from ml4m.models.serialization import load

DATA = Path("/work/shared/data")


def _ace(species=("Cu",), **kw):
    settings = dict(r_cut=4.0, n_max=4, l_max=2, correlation_order=3) | kw
    return make_descriptor("ace", species=list(species), **settings)


@pytest.fixture(scope="module")
def cu():
    ds = default_dataset()
    return list(ds[::6]), list(ds[3::12])


def test_zbl_matches_the_universal_formula():
    r, z1, z2 = np.array([0.3, 0.8, 1.7]), 6, 1
    a = 0.8854 * 0.529177 / (z1**0.23 + z2**0.23)
    x = r / a
    phi = (0.18175 * np.exp(-3.1998 * x) + 0.50986 * np.exp(-0.94229 * x)
           + 0.28022 * np.exp(-0.4029 * x) + 0.02817 * np.exp(-0.20162 * x))
    energy, slope = zbl(r, z1, z2)
    np.testing.assert_allclose(energy, 14.399645 * z1 * z2 / r * phi, rtol=1e-5)
    h = 1e-6
    fd = (zbl(r + h, z1, z2)[0] - zbl(r - h, z1, z2)[0]) / (2 * h)
    np.testing.assert_allclose(slope, fd, rtol=1e-6)
    assert np.all(slope < 0) and np.all(energy > 0)  # repulsive everywhere


def test_switch_is_c2_at_both_ends():
    r_in, w, h = 1.2, 0.3, 1e-5
    for end, inside in ((r_in - w, 1.0), (r_in, 0.0)):
        s, ds = switch(np.array([end - h, end, end + h]), r_in, w)
        np.testing.assert_allclose(s, inside, atol=1e-12)
        np.testing.assert_allclose(ds, 0.0, atol=1e-6)
        # second derivative on each side: O(h) here, where a C1 switch has ~6 / w^2 = 67
        for side in (-1, 1):
            d2 = (switch(end + side * 2 * h, r_in, w)[1] - switch(end + side * h, r_in, w)[1])
            assert abs(d2 / h) < 0.1
    r = np.linspace(r_in - w, r_in, 7)[1:-1]
    fd = (switch(r + h, r_in, w)[0] - switch(r - h, r_in, w)[0]) / (2 * h)
    np.testing.assert_allclose(switch(r, r_in, w)[1], fd, rtol=1e-6)
    assert np.all(np.diff(switch(r, r_in, w)[0]) < 0)


def _frame(atoms):
    return Frame.from_atoms(atoms)


def _squeezed_cu():
    atoms = bulk("Cu", "fcc", a=3.5, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=2)
    atoms.positions[0] += [0.55, 0.5, 0.1]  # deep below the shortest training distance
    return atoms


@pytest.mark.parametrize("system", ["cu_bulk", "molecule"])
def test_repulsion_forces_and_stress_are_energy_derivatives(system, cu):
    if system == "cu_bulk":
        rep, atoms = PairRepulsion(width=0.4).fit(cu[0]), _squeezed_cu()
    else:
        atoms = molecule("CH3CH2OH")
        rep = PairRepulsion(r_in={"C-H": 1.3, "H-O": 1.2, "C-C": 1.7, "C-O": 1.6, "H-H": 2.0})
        rep.fit([_frame(atoms)])
    values = rep.evaluate([_frame(atoms)])
    assert values.energy[0] > 0.1 and np.isclose(values.energies.sum(), values.energy[0])

    def energy(a):
        return rep.evaluate([_frame(a)]).energy[0]

    h = 1e-5
    for i in range(len(atoms)):
        for c in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, c] += h
            minus.positions[i, c] -= h
            assert values.forces[i, c] == pytest.approx(-(energy(plus) - energy(minus)) / (2 * h),
                                                        rel=1e-5, abs=1e-6)
    if system == "molecule":
        assert np.all(np.isnan(values.stress))  # no cell, no stress
        return
    for a, b, voigt in ((0, 0, 0), (1, 2, 3), (0, 1, 5)):
        strained = []
        for s in (h, -h):
            eps = np.eye(3)
            eps[a, b] += s / (2 if a != b else 1)
            eps[b, a] += s / 2 if a != b else 0
            x = atoms.copy()
            x.set_cell(atoms.cell @ eps, scale_atoms=True)
            strained.append(energy(x))
        fd = (strained[0] - strained[1]) / (2 * h) / atoms.get_volume()
        assert values.stress[0, voigt] == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_repulsion_is_zero_where_the_data_lives(cu):
    rep = PairRepulsion().fit(cu[0])
    shortest = shortest_distances(cu[0])["Cu-Cu"]
    r_in = shortest - MARGIN  # the core starts a margin below the data
    assert MARGIN > 0 and rep.r_in_ == {"Cu-Cu": pytest.approx(r_in)}
    values = rep.evaluate(cu[0])
    assert np.all(values.energy == 0) and np.all(values.forces == 0)
    assert np.all(values.stress[np.isfinite(values.stress)] == 0)
    dimer = [_frame(Atoms("Cu2", positions=[[0, 0, 0], [0, 0, r]]))
             for r in (shortest + 0.5, shortest, r_in, r_in - 0.01, r_in - 0.3, 1.0)]
    energy = rep.evaluate(dimer).energy
    assert np.all(energy[:3] == 0) and 0 < energy[3] < energy[4] < energy[5]
    assert PairRepulsion(margin=0.0).fit(cu[0]).r_in_ == {"Cu-Cu": pytest.approx(shortest)}
    assert energy[5] == pytest.approx(zbl(1.0, 29, 29)[0])  # full ZBL below r_in - width
    # an element pair absent from the data starts at 0.75 of its covalent-radii sum
    assert PairRepulsion().fit(cu[0]).evaluate([_frame(Atoms("Cu2", positions=[
        [0, 0, 0], [0, 0, 1.0]]))]).energy[0] > 0
    with pytest.raises(ConfigError, match="r_in keys must be element pairs"):
        PairRepulsion(r_in={"Cu-Xx": 1.0}).fit(cu[0])
    with pytest.raises(ConfigError, match="width"):
        PairRepulsion(width=0.0).fit(cu[0])


def test_baselined_on_its_own_reference_learns_a_zero_residual(cu):
    """EMT labels minus an EMT baseline are zero: the inner model learns nothing, and
    the prediction is EMT's, here and on structures far from the data."""
    model = Baselined(LinearACE(_ace()), CalculatorBaseline("emt")).fit(*cu)
    inner = model.model_.predict(cu[1])
    assert np.sqrt(np.mean(inner.forces**2)) < 1e-6 and np.abs(inner.energy).max() < 1e-6
    atoms = _squeezed_cu()
    atoms.calc = EMT()
    pred = model.predict([atoms])
    np.testing.assert_allclose(pred.forces, atoms.get_forces(), atol=1e-5)
    assert pred.energy[0] == pytest.approx(atoms.get_potential_energy(), abs=1e-5)
    assert model.n_parameters > 0 and model.cutoff == pytest.approx(4.0)


def test_round_trip_keeps_baseline_and_inner_model(cu, tmp_path):
    model = Baselined(LinearACE(_ace(), uncertainty="posterior"),
                      SumBaseline([PairRepulsion(width=0.25), CalculatorBaseline("emt")]))
    model.fit(cu[0])
    frames = cu[1][:3] + [_frame(_squeezed_cu())]
    before = model.predict(frames, uncertainty=True)
    loaded = ml4m.load(model.save(tmp_path / "m"))
    assert isinstance(loaded, Baselined) and isinstance(loaded.baseline_, SumBaseline)
    assert loaded.baseline_.parts[0].r_in_ == model.baseline_.parts[0].r_in_
    after = loaded.predict(frames, uncertainty=True)
    for q in ("energy", "forces", "stress", "energy_sigma", "forces_sigma"):
        np.testing.assert_allclose(getattr(after, q), getattr(before, q), rtol=1e-10, atol=1e-12)
    # the inner prediction's sigmas, with the repulsion acting on the squeezed frame
    inner = model.model_.predict(frames, uncertainty=True)
    np.testing.assert_allclose(before.forces_sigma, inner.forces_sigma)
    assert before.energy[-1] - inner.energy[-1] > model.baseline_.parts[1].evaluate(
        frames[-1:]).energy[0] + 1.0


def test_label_baseline_needs_its_calculator_for_new_structures(cu, tmp_path):
    """Labels stand in for the calculator on the data; elsewhere the calculator is
    required, and a saved model records it."""
    train = cu[0][::3]
    emt = CalculatorBaseline("emt").evaluate(train)
    offsets = np.cumsum([0] + [len(f) for f in train])
    labelled = [Frame(**{**f.__dict__, "info": {**f.info, "emt_e": float(emt.energy[k]),
                                                 "emt_f": emt.forces[offsets[k]:offsets[k + 1]],
                                                 "emt_s": emt.stress[k]}})
                for k, f in enumerate(train)]
    bare = LabelBaseline("emt_e", "emt_f", "emt_s")
    res = residual_frames(labelled, bare)
    assert max(abs(r.energy) for r in res) < 1e-6 and labelled[0].energy != res[0].energy
    unpredictable = Baselined(LinearACE(_ace()), bare).fit(labelled)
    with pytest.raises(ConfigError, match="only with the calculator that made its labels"):
        unpredictable.predict(cu[1][:1])
    path = unpredictable.save(tmp_path / "labels_only")
    with pytest.raises(DataError, match="only with the calculator that made its labels"):
        ml4m.load(path)  # the load check predicts a structure without labels
    assert load(path, check=False).predict(labelled[:1]).energy.shape == (1,)
    model = Baselined(LinearACE(_ace()), LabelBaseline("emt_e", "emt_f", "emt_s", calculator="emt"))
    loaded = ml4m.load(model.fit(labelled).save(tmp_path / "m"))
    assert loaded.baseline_.calculator == "emt"
    np.testing.assert_allclose(loaded.predict(cu[1]).forces, np.concatenate(
        [f.forces for f in cu[1]]), atol=1e-5)


def test_config_builds_the_baseline_and_names_bad_keys():
    model = LinearACE(_ace())
    assert with_baseline(model, repulsion=False) is model
    built = with_baseline(model)
    assert isinstance(built, Baselined) and isinstance(built.baseline, PairRepulsion)
    both = baseline_from_config({"width": 0.2}, {"labels": {"energy": "gfn2_energy",
                                                           "forces": "gfn2_forces"}})
    assert [type(p) for p in both.parts] == [LabelBaseline, PairRepulsion]
    assert both.parts[1].width == 0.2
    with pytest.raises(ConfigError, match="repulsion has unknown key"):
        baseline_from_config({"widht": 0.2})
    with pytest.raises(ConfigError, match="repulsion must be true or false"):
        baseline_from_config("yes")
    with pytest.raises(ConfigError, match="baseline needs 'calculator' or 'labels'"):
        baseline_from_config(False, {})
    with pytest.raises(ConfigError, match="calculator_kwargs must hold JSON"):
        CalculatorBaseline("emt", {"x": object()}).fit([])
    with pytest.raises(ConfigError, match="cannot import calculator"):
        CalculatorBaseline("no_such_pkg:Calc").fit([])
    with pytest.raises(ConfigError, match="baseline must be a baseline"):
        Baselined(model, "emt").fit([])


def test_a_model_with_an_external_baseline_loads_without_running_it(cu, tmp_path, monkeypatch):
    """Loading checks the file's own numbers: a delta model whose baseline calculator
    fails on the load check's made-up structure (as GFN2-xTB does on a periodic C-H-O
    cell) still loads and predicts the inner model plus the calculator."""
    from ase.calculators.calculator import CalculationFailed

    import ml4m.data.generation as generation

    train, valid = cu
    model = Baselined(LinearACE(_ace()), CalculatorBaseline("emt")).fit(train)
    path = model.save(tmp_path / "delta")

    class Refuses(EMT):  # no SCF for structures of under 4 atoms (the check's has 1)
        def calculate(self, atoms=None, *args, **kwargs):
            if len(atoms) < 4:
                raise CalculationFailed("SCF not converged in 250 cycles")
            super().calculate(atoms, *args, **kwargs)

    monkeypatch.setattr(generation, "make_calculator", lambda name, kwargs=None: Refuses())
    loaded = ml4m.load(path)
    np.testing.assert_allclose(loaded.predict(valid[:3]).forces, model.predict(valid[:3]).forces,
                               atol=1e-10)
    assert not PairRepulsion().external and SumBaseline([PairRepulsion(),
                                                        CalculatorBaseline("emt")]).external


def test_tampered_baseline_record_is_refused(cu, tmp_path):
    model = Baselined(LinearACE(_ace()), PairRepulsion()).fit(cu[0])
    params, arrays = model.get_state()
    params["baseline"]["kind"] = "nope"
    with pytest.raises(DataError, match="unknown baseline kind 'nope'"):
        Baselined.from_state(params, arrays)


@pytest.mark.skipif(not (DATA / "ethanol_pbe").is_dir(), reason="shared data sets absent")
def test_delta_learning_on_xtb_labels_beats_the_direct_fit():
    """Ethanol PBE forces learned as a correction to GFN2-xTB: at the same small basis
    the valid force error falls well below the direct fit's."""
    folder = DATA / "ethanol_pbe"
    train, valid = (read_dataset(folder / f"{s}.extxyz") for s in ("train", "valid"))
    baseline = LabelBaseline("gfn2_energy", "gfn2_forces")
    train_l = baseline.attach(train, folder / "train.extxyz")[::2]
    train = train[::2]
    assert train_l[0].info["gfn2_forces"].shape == (9, 3) and "gfn2_forces" not in train[0].info
    ace = _ace(("C", "H", "O"), r_cut=4.0, n_max=3, l_max=2, correlation_order=2)
    direct = LinearACE(ace).fit(train)
    delta = Baselined(LinearACE(ace), baseline).fit(train_l)
    valid_l = attach_baseline_labels(delta, valid, folder / "valid.extxyz")
    assert attach_baseline_labels(direct, valid, folder / "valid.extxyz")[0] is valid[0]
    rmse_direct = error_metrics(direct.predict(valid), valid)["forces"]["rmse_mev_per_a"]
    rmse_delta = error_metrics(delta.predict(valid_l), valid)["forces"]["rmse_mev_per_a"]
    assert rmse_delta < 0.7 * rmse_direct, (rmse_delta, rmse_direct)
    with pytest.raises(DataError, match="carry 'gfn2_energy'"):
        baseline.attach(train[:5], folder / "train.extxyz")

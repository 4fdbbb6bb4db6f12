"""The basis search: CV from per-fold sums, nested rungs, determinism and the budget."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ml4m.data import default_dataset
from ml4m.errors import ConfigError
from ml4m.models.linear import LinearACE
from ml4m.training import search
from ml4m.training.fold_sums import (FoldSums, Sums, _sub_equations, cv_rmse, group_sums,
                                     log_evidence)
from ml4m.training.search import (KERNEL_POINTS, RUNGS, RUNGS_MANY_ELEMENTS, _descriptor, _rung_columns, cv_folds,
                                  search_linear_ace, species_bounds)


@pytest.fixture(scope="module")
def frames():
    return list(default_dataset())[::6]


def _folds_for(frames, top):
    from ml4m.data import pair_inner_radii
    from ml4m.data.frames import Dataset
    from ml4m.data.reference import resolve_reference_energies

    species = [29]
    pair_r_in = pair_inner_radii(frames, 0.25)
    model = LinearACE(_descriptor(species, RUNGS[top], pair_r_in))
    model.e0_ = resolve_reference_energies(Dataset(frames), model.e0)
    model.fmap_ = model._make_feature_map(frames)
    return model, FoldSums(model, frames, cv_folds(frames), True, False), pair_r_in


def _columns(model, rung, pair_r_in):
    names = model.descriptor.feature_names()
    sub = _descriptor([29], RUNGS[rung], pair_r_in).feature_names()  # its own n_max
    return np.array([names.index(n) for n in sub])


def test_a_rung_scores_the_same_inside_any_larger_pass(frames):
    """Rung 1's CV errors from the sums of rung 1 itself and from those of rung 3 agree:
    the ladder's bases are nested, so one pass serves every rung."""
    small, folds_small, r_in = _folds_for(frames, 1)
    large, folds_large, _ = _folds_for(frames, 3)
    own = cv_rmse(folds_small, _columns(small, 1, r_in), small._prior(np.ones(small.fmap_.n_features)))
    inside = cv_rmse(folds_large, _columns(large, 1, r_in), large._prior(np.ones(large.fmap_.n_features)))
    for q in own:
        assert inside[q] == pytest.approx(own[q], rel=1e-4)  # evidence search tolerance


def test_cv_error_equals_explicit_held_out_predictions(frames):
    """``cv_rmse``'s CV errors (from per-fold sums, sub-matrix of a larger pass) equal
    refitting a model on the other folds' frames (the same hyperparameters) and
    predicting each fold's frames."""
    from ml4m.models.linear.bayesian import BayesianLinearRegression

    model, folds, r_in = _folds_for(frames, 2)
    cols = _columns(model, 1, r_in)
    P = model._prior(np.ones(model.fmap_.n_features))
    cv = cv_rmse(folds, cols, P)
    # the evidence's hyperparameters on all folds, as cv_rmse finds them
    reg = BayesianLinearRegression(prior=P[cols] / P[cols].mean()).fit_normal_equations(
        _sub_equations(*group_sums(folds, folds.quantities, cols)))
    fold = cv_folds(frames)
    sq = {"energy": [], "forces": []}
    for k in range(3):
        fit = LinearACE(_descriptor([29], RUNGS[1], r_in), e0=model.e0_, alpha=reg.alpha_,
                        beta=reg.beta_, uncertainty="posterior", sigma_stress=None)
        fit.fit([f for f, j in zip(frames, fold) if j != k])
        held = [f for f, j in zip(frames, fold) if j == k]
        pred = fit.predict(held, uncertainty=False)
        n = np.array([len(f) for f in held])
        sq["energy"].append(((pred.energy - [f.energy for f in held]) / n) ** 2)
        sq["forces"].append((pred.forces - np.concatenate([f.forces for f in held])).ravel() ** 2)
    for q in sq:
        explicit = np.sqrt(np.mean(np.concatenate(sq[q])))
        assert cv[q] == pytest.approx(explicit, rel=1e-6), q
    assert cv["forces"] < np.sqrt(np.mean(np.concatenate([f.forces for f in frames]) ** 2)) / 3


def test_fold_sums_keep_rows_or_a_gram_matrix_alike():
    """A quantity with few rows is kept as rows, with many as a Gram matrix; both give
    the same sub-matrix Gram, right-hand side and squared error."""
    rng = np.random.default_rng(0)
    A, y = rng.normal(size=(30, 8)), rng.normal(size=30)
    few, many = Sums(200), Sums(8)
    for s in (few, many):
        s.add(A[:10], y[:10], 4.0)
        s.add(A[10:], y[10:], 4.0)
    assert few.neq is None and many.neq is not None
    cols, c = np.array([1, 3, 4, 6]), rng.normal(size=8)
    np.testing.assert_allclose(few.gram(cols), 4.0 * A[:, cols].T @ A[:, cols], rtol=1e-12)
    np.testing.assert_allclose(many.gram(cols), few.gram(cols), rtol=1e-12)
    np.testing.assert_allclose(many.rhs(cols), 4.0 * A[:, cols].T @ y, rtol=1e-12)
    assert many.sse(c) == pytest.approx(4.0 * np.sum((A @ c - y) ** 2), rel=1e-10)
    assert few.sse(c) == pytest.approx(many.sse(c), rel=1e-10)


def test_many_element_ladder_is_nested_per_species():
    """Every species' degree bound (the rung's, or its rare / hydrogen bound) never
    shrinks along the many-element ladder, and never exceeds the rung's own."""
    counts = {1: 40, 6: 40, 7: 6, 8: 3}  # H, C common; N, O rare (3BPA-like shares)
    previous = None
    for rung in RUNGS_MANY_ELEMENTS:
        own = rung["total_degree"]
        bounds = species_bounds(rung, counts)
        per = {s: bounds.get(s, own) for s in ("H", "C", "N", "O")}
        for b in per.values():
            assert len(b) == len(own) and all(x <= o for x, o in zip(b, own))
        if previous is not None:
            for s, b in per.items():
                assert all(x >= p for x, p in zip(b, previous[s])), (s, b, previous[s])
        previous = per
    assert set(species_bounds(RUNGS_MANY_ELEMENTS[-1], counts)) == {"H", "N", "O"}
    assert species_bounds(RUNGS_MANY_ELEMENTS[-1], {6: 5, 7: 5, 8: 5}) == {}


def test_species_rung_columns_select_each_blocks_bound(frames):
    """A rung with per-species bounds keeps, in each species block of the top rung's map,
    exactly the functions that species' bound admits."""
    from ml4m.data.frames import Frame

    rng = np.random.default_rng(1)
    mol = [Frame(numbers=np.array([6, 6, 1, 1, 8]), positions=rng.normal(scale=1.2, size=(5, 3)),
                 cell=np.zeros((3, 3)), pbc=np.zeros(3, bool), energy=0.0,
                 forces=np.zeros((5, 3)))]
    species = [1, 6, 8]
    rung, top = RUNGS_MANY_ELEMENTS[4], RUNGS_MANY_ELEMENTS[5]
    counts = {1: 10, 6: 10, 8: 1}
    d_top = _descriptor(species, top, None)
    model = LinearACE(d_top, species_degree=species_bounds(top, counts))
    model.fmap_ = model._make_feature_map(mol)
    d_rung = _descriptor(species, rung, None)
    bounds = species_bounds(rung, counts)
    cols = _rung_columns(model, d_rung, bounds)
    own = LinearACE(d_rung, species_degree=bounds)._make_feature_map(mol)
    assert len(cols) == own.n_features < model.fmap_.n_features
    names_top, names_rung = d_top.feature_names(), d_rung.feature_names()
    picked = [names_top[d] for d in model.fmap_.descriptor_columns[cols]]
    assert picked == [names_rung[d] for d in own.descriptor_columns]


def test_search_is_deterministic_and_keeps_its_budget(frames, monkeypatch):
    monkeypatch.setattr(search, "RUNGS", RUNGS[:4])
    results = []
    for _ in range(2):
        t0 = time.perf_counter()
        res = search_linear_ace(frames, 20.0, lambda d, b: LinearACE(d, species_degree=b),
                                r0="auto")
        assert time.perf_counter() - t0 <= 20.0 * 1.1 + 1.0  # + timer and start-up slack
        results.append(res)
    a, b = results
    assert a.descriptor == b.descriptor
    assert [r["score"] for r in a.table] == [r["score"] for r in b.table]
    best = min(a.table, key=lambda r: r["score"])
    assert a.descriptor["total_degree"] == best["total_degree"]
    # the plan lists each top it weighed, largest first: every refused one needed more
    # than the seconds left, the chosen one (or rung 0) fitted them
    cands = a.plan["candidates"]
    assert [c["rung"] for c in cands] == list(range(3, a.plan["top"] - 1, -1))
    parts = ("pass", "final_and_report", "cv_solves", "md_probe")
    for c in cands[:-1]:
        assert sum(c[k] for k in parts) > c["left"] - 0.5  # rounded to 0.1 s each
    last = cands[-1]
    assert last["rung"] == 0 or sum(last[k] for k in parts) <= last["left"] + 0.5
    # the smoothness prior's exponent: the grid's largest evidence, used by the final fit
    chosen = a.plan["smoothness"]
    evidence = {float(k): v for k, v in chosen["log_evidence"].items()}
    assert set(evidence) == set(search.SMOOTHNESS_GRID)
    assert chosen["chosen"] == max(evidence, key=evidence.get) == a.params["smoothness"]
    assert a.model.smoothness == a.params["smoothness"]
    # the radial transform: the candidate of larger evidence, in the chosen descriptor
    # (or none, when the budget's share left too few frames for its two passes)
    r0 = a.plan["r0"]
    assert r0.get("chosen") == a.descriptor.get("r0") == a.model.descriptor.r0
    if "skipped" not in r0:
        best_key = max(r0["log_evidence"], key=r0["log_evidence"].get)
        assert best_key == ("none" if r0["chosen"] is None else f"{r0['chosen']:g}")


def test_log_evidence_from_fold_sums_equals_a_direct_fit(frames):
    """The evidence of a rung inside a larger pass, for two prior shapes, equals the
    evidence of a model of that rung fitted on every frame: the search compares the
    smoothness priors on the data's own marginal likelihood."""
    model, folds, r_in = _folds_for(frames, 2)
    cols = _columns(model, 1, r_in)
    ones = np.ones(model.fmap_.n_features)
    evidence = log_evidence(folds, cols, {s: model._prior(ones, s) for s in (0.0, 3.0)})
    for s, value in evidence.items():
        fit = LinearACE(_descriptor([29], RUNGS[1], r_in), e0=model.e0_, smoothness=s,
                        uncertainty="posterior", sigma_stress=None).fit(frames)
        assert value == pytest.approx(fit.regression_.log_evidence_, rel=1e-6, abs=1e-3), s
    assert evidence[0.0] != pytest.approx(evidence[3.0], abs=1e-2)  # the shapes differ


def test_folds_follow_trajectories_when_the_frames_have_them(frames):
    tagged = []
    for n, f in enumerate(frames[:12]):
        g = type(f)(**{**f.__dict__, "info": {**f.info, "traj": n // 4}})
        tagged.append(g)
    fold = cv_folds(tagged)
    assert [len(set(fold[k * 4:(k + 1) * 4])) for k in range(3)] == [1, 1, 1]
    assert sorted(set(fold)) == [0, 1, 2]


def test_fit_searches_in_budget_never_reads_valid_and_its_config_refits(tmp_path, capsys):
    """``ml4m fit`` with default settings: the search keeps its budget, poisoning the
    valid file changes nothing it chose, and the written config refits the same model
    without a search."""
    import json

    import ase.io

    import ml4m
    from ml4m.cli.main import main
    from ml4m.data import default_dataset_path

    frames = ase.io.read(default_dataset_path(), ":")
    ase.io.write(tmp_path / "train.extxyz", frames[::5])
    valid = frames[2::25]
    ase.io.write(tmp_path / "valid.extxyz", valid)
    poisoned = [a.copy() for a in valid]
    for a, ref in zip(poisoned, valid):
        a.calc = type(ref.calc)(ref, energy=ref.get_potential_energy() * 3,
                                forces=ref.get_forces()[::-1] * 5)
    ase.io.write(tmp_path / "poisoned.extxyz", poisoned)
    chosen = []
    # a budget the ladder does not reach on 36 frames (every rung fits it, in about 15 s):
    # the choice then depends on the data alone, not on the machine's load
    for name, v in (("a", "valid"), ("b", "poisoned")):
        t0 = time.perf_counter()
        code = main(["fit", "--train", str(tmp_path / "train.extxyz"), "--valid",
                     str(tmp_path / f"{v}.extxyz"), "--max-minutes", "5",
                     "-o", str(tmp_path / name / "m.ml4m"), "--json"])
        assert code == 0, capsys.readouterr().err
        assert time.perf_counter() - t0 <= 300 * 1.1 + 5  # budget + 10%, plus start-up
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        search = metrics["search"]
        assert search["plan"]["top"] == len(RUNGS) - 1 and "budget" not in search["stopped"]
        table = metrics["search"]["table"]
        assert len(table) >= 2 and (tmp_path / name / "m_search.png").exists()
        chosen.append((metrics["search"]["descriptor"], [row["score"] for row in table]))
    assert chosen[0] == chosen[1]
    capsys.readouterr()
    config = tmp_path / "a" / "m_chosen.yaml"
    assert main(["fit", str(config), "-o", str(tmp_path / "again.ml4m"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert "search" not in again
    a, b = ml4m.load(tmp_path / "a" / "m.ml4m"), ml4m.load(tmp_path / "again.ml4m")
    # the search fits from its own sums, over the top rung's functions: the same functions,
    # whose four-body values round differently in a larger basis (1e-7 relative in their
    # gradients); the refit describes the frames in the chosen basis itself
    assert b.model_.n_parameters == a.model_.n_parameters
    # the evidence is flat in alpha: rounding-level changes of the sums move it by up to
    # 4e-4 (measured) and the predictions by 1e-7
    for name in ("alpha_", "beta_"):
        assert getattr(b.model_.regression_, name) == pytest.approx(
            getattr(a.model_.regression_, name), rel=3e-3)
    pa, pb = a.predict(valid), b.predict(valid)
    scale = np.sqrt(np.mean(pa.forces**2))
    assert np.abs(pb.forces - pa.forces).max() < 1e-5 * scale
    assert np.abs(pb.energy - pa.energy).max() < 1e-7 * len(valid[0]) * len(valid)


def test_fit_from_fold_sums_equals_a_fit(frames):
    """The final fit from the search's per-fold sums (every fold, and every fold but the
    held-out one for the calibration) is the model ``fit`` gives on the same frames:
    hyperparameters, coefficients, error models."""
    from ml4m.training.fold_sums import accumulator

    model = _folds_for(frames, 2)[0]
    folds = FoldSums(model, frames, cv_folds(frames), True, True)  # stresses too, as fit
    cols = np.arange(model.fmap_.n_features)
    held = cv_folds(frames).max()
    direct = LinearACE(model.descriptor).fit(frames)
    from_sums = LinearACE(model.descriptor).fit_from_sums(
        frames, accumulator(folds, cols, False, skip=int(held)), accumulator(folds, cols, False))
    assert from_sums.regression_.alpha_ == pytest.approx(direct.regression_.alpha_, rel=1e-6)
    assert from_sums.regression_.beta_ == pytest.approx(direct.regression_.beta_, rel=1e-6)
    np.testing.assert_allclose(from_sums.coef_, direct.coef_, rtol=0,
                               atol=1e-6 * np.abs(direct.coef_).max())
    a, b = direct.predict(frames[:4], uncertainty=True), from_sums.predict(frames[:4], uncertainty=True)
    np.testing.assert_allclose(b.forces_sigma, a.forces_sigma, rtol=1e-5)
    np.testing.assert_allclose(b.energy_sigma, a.energy_sigma, rtol=1e-5)
    with pytest.raises(ConfigError, match="not over this model's"):
        LinearACE(model.descriptor).fit_from_sums(
            frames, accumulator(folds, cols[:-1], False), accumulator(folds, cols[:-1], False))


def test_the_md_probe_passes_over_a_rung_that_blows_up(frames, monkeypatch):
    """Rungs are probed best CV score first; one whose MD fails is passed over for the
    next, each probed row records its outcome, and the chosen rung is fitted."""
    from ml4m.training.probe import ProbeResult

    monkeypatch.setattr(search, "RUNGS", RUNGS[:4])
    make = lambda d, b: LinearACE(d, species_degree=b)  # noqa: E731
    plain = search_linear_ace(frames, 60.0, make)
    ranked = sorted(plain.table, key=lambda r: r["score"])
    unstable = ranked[0]["n_coefficients"]
    probed = []

    def probe(model):
        probed.append(model.n_parameters)
        stable = model.n_parameters != unstable
        return ProbeResult(stable, 10 if stable else 3, 0.005, "" if stable else "atoms too close",
                           0.01)

    res = search_linear_ace(frames, 60.0, make, probe=probe, probe_steps=10)
    assert probed == [unstable, ranked[1]["n_coefficients"]]
    assert res.descriptor["total_degree"] == ranked[1]["total_degree"]
    assert res.model.n_parameters == ranked[1]["n_coefficients"]
    rows = {r["n_coefficients"]: r for r in res.table}
    assert rows[unstable]["md_probe"]["stable"] is False
    assert rows[ranked[1]["n_coefficients"]]["md_probe"]["stable"] is True
    assert "MD probe: rung" in res.stopped
    # no rung stable: the best by CV, said so
    res = search_linear_ace(frames, 60.0, make, probe=lambda m: ProbeResult(
        False, 1, 0.0005, "atoms too close", 0.01), probe_steps=10)
    assert res.descriptor == plain.descriptor
    assert f"none of {search.MAX_PROBES} rung(s) stable" in res.stopped


def test_md_probes_leave_the_final_fit_its_time():
    """A probe runs only when, after it, the final fit and report of the rung then
    chosen still fit before the deadline; otherwise the probing stops."""
    from ml4m.training.probe import ProbeResult
    from ml4m.training.search import SearchResult, _probe_rungs

    def table():
        res = SearchResult(descriptor={}, folds=3, pass_seconds=0.0)
        res.table = [{"rung": r, "score": float(r)} for r in range(search.MAX_PROBES + 1)]
        return res

    def probe(model):
        return ProbeResult(False, 1, 0.0005, "atoms too close", 0.01)

    deadline = time.perf_counter() + 30.0
    res = table()
    assert _probe_rungs(res, lambda row: None, probe, 1.0, deadline) is None
    assert [("md_probe" in r) for r in res.table] == [r < search.MAX_PROBES
                                                       for r in range(len(res.table))]
    assert res.plan["md_probe_stable"] is False
    res = table()
    assert _probe_rungs(res, lambda row: None, probe, 1.0, deadline, lambda row: 60.0) is None
    assert not any("md_probe" in r for r in res.table)
    assert res.plan["md_probe_stable"] is None and "budget spent after 0" in res.stopped
    # the best rung is probed and fails; the next one's final fit would not fit: stop,
    # recording that the probed rung was unstable
    res = table()
    assert _probe_rungs(res, lambda row: None, probe, 1.0, deadline,
                        lambda row: 60.0 * row["rung"]) is None
    assert [("md_probe" in r) for r in res.table] == [r == 0 for r in range(len(res.table))]
    assert res.plan["md_probe_stable"] is False and "budget spent after 1" in res.stopped


def test_r0_is_chosen_by_the_evidence_of_each_radial_transform(frames):
    """Each candidate's recorded evidence is that of a model with its radial transform
    fitted on the frames, at its best smoothness exponent; the larger one is chosen; with
    no time for a pass the choice is skipped and ``r0`` stays unset."""
    from ml4m.data import pair_inner_radii
    from ml4m.data.frames import Dataset
    from ml4m.data.reference import resolve_reference_energies

    r_in = pair_inner_radii(frames, 0.25)
    e0 = resolve_reference_energies(Dataset(frames), "fit")
    make = lambda d, b: LinearACE(d, sigma_stress=None)  # noqa: E731
    r0, record = search._r0_by_evidence(frames, make, [29], RUNGS[2], {}, r_in, e0, True,
                                        False, 60.0, None)
    assert record["n_frames"] == len(frames) and len(record["log_evidence"]) == 2
    for key, value in record["log_evidence"].items():
        radial = None if key == "none" else float(key)
        direct = max(LinearACE(_descriptor([29], RUNGS[2], r_in, radial), e0=e0, smoothness=s,
                               uncertainty="posterior", sigma_stress=None).fit(frames)
                     .regression_.log_evidence_ for s in search.SMOOTHNESS_GRID)
        assert value == pytest.approx(direct, rel=1e-6, abs=1e-2), key
    best = max(record["log_evidence"], key=record["log_evidence"].get)
    assert r0 == (None if best == "none" else float(best)) == record["chosen"]
    low, high = sorted(record["log_evidence"].values())
    assert high - low > 1.0  # the transforms differ
    skipped, why = search._r0_by_evidence(frames, make, [29], RUNGS[2], {}, r_in, e0, True,
                                          False, 0.0, None)
    assert skipped is None and "skipped" in why


def test_gp_search_fits_the_sparse_gp_of_the_chosen_rung(frames, monkeypatch):
    """With a kernel model, the search's final model is the sparse GP on the chosen rung
    (here a lower one than the top, by the probe), equal to that GP fitted directly: its
    kernel on rung 0's functions, its sparse environments chosen once."""
    from ml4m.descriptors import make_descriptor
    from ml4m.models.kernel import SparseGPPotential
    from ml4m.training.probe import ProbeResult

    def make_gp(d, b, kernel):
        return SparseGPPotential(d, species_degree=b, kernel_columns=kernel, n_sparse=30, zeta=2,
                                 noise="shared", sigma_stress=None)

    calls = []

    def probe(model):  # the best rung by CV "blows up", the next is stable
        calls.append(model)
        return ProbeResult(len(calls) > 1, 10, 0.1, "", 0.01)

    monkeypatch.setattr(search, "RUNGS", RUNGS[:4])
    res = search_linear_ace(frames, 60.0, lambda d, b: LinearACE(d, species_degree=b, sigma_stress=None),
                            probe=probe, probe_steps=10, r0=None, make_kernel_model=make_gp)
    chosen = [row for row in res.table if row.get("md_probe", {}).get("stable")][0]
    assert chosen["rung"] < max(row["rung"] for row in res.table) and res.descriptor["total_degree"] == chosen["total_degree"]
    assert res.params["kernel_columns"] == search.kernel_columns(RUNGS[chosen["rung"]])
    model = res.model
    assert isinstance(model, SparseGPPotential)
    assert model.fmap_.n_features == chosen["n_coefficients"] + 30
    direct = make_gp(make_descriptor("ace", species=[29], **res.descriptor), None,
                     res.params["kernel_columns"])
    direct.smoothness = res.params["smoothness"]
    direct.fit(frames)
    # alpha up to the rounding of the sums (summed per fold here), which moves the flat
    # evidence's optimum by up to 4e-4 (measured) and the forces by 1e-7
    assert model.regression_.alpha_ == pytest.approx(direct.regression_.alpha_, rel=3e-3)
    a, b = model.predict(frames[:4]), direct.predict(frames[:4])
    scale = np.sqrt(np.mean(a.forces ** 2))
    assert np.abs(a.forces - b.forces).max() < 1e-5 * scale


def test_fit_gp_with_default_flags_searches_and_its_config_refits(tmp_path, capsys):
    """``ml4m fit --model gp`` with default flags: a sparse GP on the ACE basis the search
    chose, whose written config (ACE descriptor, kernel columns) refits the same model."""
    import json

    import ase.io

    import ml4m
    from ml4m.cli.main import main
    from ml4m.data import default_dataset_path
    from ml4m.models.kernel import SparseGPPotential

    frames = ase.io.read(default_dataset_path(), ":")
    ase.io.write(tmp_path / "train.extxyz", frames[::8])
    valid = frames[3::40]
    ase.io.write(tmp_path / "valid.extxyz", valid)
    assert main(["fit", "--model", "gp", "--train", str(tmp_path / "train.extxyz"), "--valid",
                 str(tmp_path / "valid.extxyz"), "--max-minutes", "1",
                 "-o", str(tmp_path / "gp.ml4m"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    a = ml4m.load(tmp_path / "gp.ml4m")
    assert isinstance(a.model_, SparseGPPotential)
    search_record = metrics["search"]
    chosen = [row for row in search_record["table"]
              if row["total_degree"] == search_record["descriptor"]["total_degree"]]
    assert len(chosen) == 1 and "kernel_columns" in search_record["params"]
    # the chosen rung's linear columns and every sparse point of the one species
    assert a.model_.fmap_.n_features == chosen[0]["n_coefficients"] + KERNEL_POINTS
    assert main(["fit", str(tmp_path / "gp_chosen.yaml"), "-o", str(tmp_path / "again.ml4m"),
                 "--json"]) == 0
    capsys.readouterr()
    b = ml4m.load(tmp_path / "again.ml4m")
    # the same model: the same sparse environments (chosen again from the same frames and
    # seed; described in the top rung's basis by the search, rounding differently),
    # kernel columns and prior
    ka, kb = a.model_._kernel(), b.model_._kernel()
    assert np.array_equal(ka.sparse_species, kb.sparse_species)
    assert np.abs(ka.sparse - kb.sparse).max() < 1e-12
    assert repr(b.model_.get_params()) == repr(a.model_.get_params())
    # up to the rounding of its sums (the search sums per fold, over the top rung's
    # columns): this GP's evidence is flat enough (whitened Gram condition ~1e10, the
    # residual a 1/2,700 part of y^T y) that rounding-level changes of the Gram matrix move
    # alpha by 3e-5 and the forces by up to 5e-5 of their RMS (measured with a rung-0
    # choice; a 1e-15 relative perturbation of the Gram matrix moves alpha by 3%)
    pa, pb = a.predict(valid), b.predict(valid)
    gap = np.abs(pb.forces - pa.forces).max() / np.sqrt(np.mean(pa.forces**2))
    assert gap < 5e-4, (gap, metrics["search"]["plan"], metrics["search"]["stopped"])
    assert b.model_.regression_.alpha_ == pytest.approx(a.model_.regression_.alpha_, rel=3e-3)


def test_cv_folds_of_fewer_frames_than_folds_are_single_frames(frames):
    from ml4m.training.search import N_FOLDS

    assert len(frames) > N_FOLDS
    assert cv_folds(frames[:2]).tolist() == [0, 1]
    assert cv_folds(frames[:N_FOLDS + 1]).max() == N_FOLDS - 1
    with pytest.raises(ConfigError, match="at least 2 training frames"):
        cv_folds(frames[:1])


def test_the_search_tries_no_basis_far_larger_than_its_data(frames):
    few = frames[:2]  # an active-learning loop's first fit
    n_rows = sum(1 + 3 * len(f) + 6 * (f.stress is not None) for f in few)
    res = search_linear_ace(few, 600.0, lambda d, b: LinearACE(d, species_degree=b))
    assert res.plan["top"] < len(RUNGS) - 1  # the budget allowed all; the data did not
    assert all(row["n_coefficients"] <= search.ROWS_RATIO * n_rows for row in res.table)
    assert max(row["n_coefficients"] for row in res.table) > n_rows  # the prior pins the rest


def test_the_ladder_prices_each_rung_at_its_own_costs(frames, monkeypatch):
    """Whether a rung may still be tried depends on its own final fit and MD probe: the
    ladder times each rung below the top (its descriptors, its MD step) instead of pricing
    it at the top's cost, which stopped a 4-minute Cu-Au search at rung 0."""
    monkeypatch.setattr(search, "RUNGS", RUNGS[:4])
    priced = []
    real = search._rung_seconds

    def recording(model, *args):
        out = real(model, *args)
        priced.append((model.descriptor.n_features, *out))
        return out

    monkeypatch.setattr(search, "_rung_seconds", recording)
    res = search_linear_ace(frames, 120.0, lambda d, b: LinearACE(d, species_degree=b))
    assert res.plan["top"] == 3 and len(res.table) >= 3  # an ample budget
    (n_top, _, _), below = priced[0], priced[1:]  # the candidates' timing of the top first
    sizes = [row["n_coefficients"] for row in res.table]
    # rungs 1 .. top - 1 that were reached are priced, each at its own size
    assert [n for n, _, _ in below] == sizes[1:min(len(sizes), 3)]
    assert all(n < n_top for n, _, _ in below) and all(t > 0 and st > 0 for _, t, st in priced)

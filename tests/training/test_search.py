"""The basis search: CV from per-fold sums, nested rungs, determinism and the budget."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ml4m.data import default_dataset
from ml4m.models.linear import LinearACE
from ml4m.training import search
from ml4m.training.search import RUNGS, _cv_rung, _descriptor, _Folds, cv_folds, search_linear_ace


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
    return model, _Folds(model, frames, cv_folds(frames), True, False), pair_r_in


def _columns(model, rung, pair_r_in):
    names = model.descriptor.feature_names()
    sub = _descriptor([29], RUNGS[rung], pair_r_in).feature_names()  # its own n_max
    return np.array([names.index(n) for n in sub])


def test_a_rung_scores_the_same_inside_any_larger_pass(frames):
    """Rung 1's CV errors from the sums of rung 1 itself and from those of rung 3 agree:
    the ladder's bases are nested, so one pass serves every rung."""
    small, folds_small, r_in = _folds_for(frames, 1)
    large, folds_large, _ = _folds_for(frames, 3)
    own = _cv_rung(folds_small, _columns(small, 1, r_in), small._prior(np.ones(small.fmap_.n_features)))
    inside = _cv_rung(folds_large, _columns(large, 1, r_in), large._prior(np.ones(large.fmap_.n_features)))
    for q in own:
        assert inside[q] == pytest.approx(own[q], rel=1e-4)  # evidence search tolerance


def test_held_out_error_from_sums_equals_explicit_prediction(frames):
    """The fold error computed from sums equals predicting the fold's frames with the
    coefficients fitted (same hyperparameters) on the other folds."""
    import scipy.linalg

    from ml4m.models.linear.bayesian import BayesianLinearRegression

    model, folds, r_in = _folds_for(frames, 2)
    cols = np.arange(model.fmap_.n_features)
    fold = cv_folds(frames)
    # the search's own answer for fold 0 alone: restrict to two folds' worth of sums
    P = model._prior(np.ones(len(cols)))
    P = P / P.mean()
    parts = {q: [folds.sums(q, k, cols) for k in range(3)] for q in ("energy", "forces")}
    reg = BayesianLinearRegression(alpha=1e-3, beta=1.0, prior=P)
    H = np.diag(1e-3 * P) + sum(parts[q][k][0] for q in parts for k in (1, 2))
    rhs = sum(parts[q][k][1] for q in parts for k in (1, 2))
    c = scipy.linalg.solve(H, rhs, assume_a="pos")
    G, b, yy, n = parts["forces"][0]
    sse_sums = c @ G @ c - 2 * c @ b + yy
    # explicit: forces of fold 0 predicted with c (the rows are weighted by 1/sigma_F^2)
    model.coef_ = c
    held = [f for f, k in zip(frames, fold) if k == 0]
    pred = model._predict_adjoint(held)
    ref = np.concatenate([f.forces for f in held])
    sse_explicit = np.sum((pred.forces - ref) ** 2) / model.sigma_forces ** 2
    assert reg is not None and sse_sums == pytest.approx(sse_explicit, rel=1e-6)


def test_search_is_deterministic_and_keeps_its_budget(frames, monkeypatch):
    monkeypatch.setattr(search, "RUNGS", RUNGS[:4])
    results = []
    for _ in range(2):
        t0 = time.perf_counter()
        res = search_linear_ace(frames, 20.0, lambda d: LinearACE(d))
        assert time.perf_counter() - t0 <= 20.0 * 1.1 + 1.0  # + timer and start-up slack
        results.append(res)
    a, b = results
    assert a.descriptor == b.descriptor
    assert [r["score"] for r in a.table] == [r["score"] for r in b.table]
    best = min(a.table, key=lambda r: r["score"])
    assert a.descriptor["total_degree"] == best["total_degree"]


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
    for name, v in (("a", "valid"), ("b", "poisoned")):
        t0 = time.perf_counter()
        code = main(["fit", "--train", str(tmp_path / "train.extxyz"), "--valid",
                     str(tmp_path / f"{v}.extxyz"), "--max-minutes", "0.5",
                     "-o", str(tmp_path / name / "m.ml4m"), "--json"])
        assert code == 0, capsys.readouterr().err
        assert time.perf_counter() - t0 <= 30 * 1.1 + 5  # budget + 10%, plus start-up
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
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
    np.testing.assert_allclose(b.model_.coef_, a.model_.coef_, rtol=1e-10, atol=1e-12)

"""Budgeted fits: the cost model is measured, the budget is kept, every frame when it fits."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from ml4m.errors import ConfigError
from ml4m.data import evenly_spaced
from ml4m.training.budget import fit_within_budget


def test_evenly_spaced_indices_are_distinct_sorted_and_cover_the_ends():
    for total, n in [(10, 3), (10, 10), (10, 50), (1000, 17), (1, 1)]:
        idx = evenly_spaced(total, n)
        assert len(idx) == min(n, total)
        assert idx[0] == 0 and idx[-1] == total - 1
        assert np.all(np.diff(idx) > 0)


def _slow_fit(fixed, per_frame, seen):
    def fit(frames):
        seen.append(len(frames))
        time.sleep(fixed + per_frame * len(frames))
        return len(frames)
    return fit


def test_fit_uses_every_frame_when_the_budget_allows():
    seen = []
    # 5 ms per frame: the probes (8 and 16 frames) differ by 40 ms, far above timer noise
    model, plan = fit_within_budget(_slow_fit(0.01, 5e-3, seen), list(range(200)), 5.0)
    assert model == 200 and plan.n_frames_used == 200
    assert seen[:2] == [8, 16]
    assert plan.seconds_per_frame == pytest.approx(5e-3, rel=0.5)


def test_fit_shrinks_to_the_budget_and_keeps_it():
    seen = []
    t0 = time.perf_counter()
    model, plan = fit_within_budget(_slow_fit(0.02, 2e-3, seen), list(range(1000)), 1.0, t0)
    wall = time.perf_counter() - t0
    assert 16 < model < 1000 and model == plan.n_frames_used == seen[-1]
    assert wall < 1.0  # 80% planned; the probes are counted
    # the model of the cost was right: the final fit took about what was planned
    assert model == pytest.approx((0.8 - sum(plan.probe_seconds) - 0.02) / 2e-3, rel=0.3)


def test_budget_too_small_for_a_probe_is_a_clear_error():
    with pytest.raises(ConfigError, match="raise --max-minutes"):
        fit_within_budget(_slow_fit(0.05, 0.0, []), list(range(100)), 0.01)


def test_cli_fit_with_budget_records_the_plan(tmp_path, capsys):
    import ase.io

    from ml4m.cli.main import main
    from ml4m.data import default_dataset_path

    frames = ase.io.read(default_dataset_path(), ":")
    ase.io.write(tmp_path / "train.extxyz", frames)
    code = main(["fit", "--train", str(tmp_path / "train.extxyz"), "--max-minutes", "2",
                 "--search", "off", "-o", str(tmp_path / "m.ml4m"), "--json"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    b = metrics["budget"]
    assert b["n_frames_total"] == len(frames) and b["n_frames_used"] == len(frames)
    assert b["budget_seconds"] == 120.0


def test_cli_fit_max_memory_reaches_the_model(tmp_path, capsys):
    import ase.io

    from ml4m.cli.main import main
    from ml4m.data import default_dataset_path

    ase.io.write(tmp_path / "train.extxyz", ase.io.read(default_dataset_path(), ":20"))
    argv = ["fit", "--train", str(tmp_path / "train.extxyz"), "-o", str(tmp_path / "m.ml4m")]
    assert main(argv + ["--max-memory", "10KB"]) == 2
    err = capsys.readouterr().err
    assert "would need about" in err and "limit of 10 kB (max_memory)" in err
    assert not (tmp_path / "m.ml4m").exists()
    assert main(argv + ["--max-memory", "lots"]) == 2
    assert "max-memory" in capsys.readouterr().err

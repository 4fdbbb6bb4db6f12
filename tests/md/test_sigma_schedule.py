"""The sigma schedule of MD: fixed intervals, and 'auto' spacing by measured cost."""

from __future__ import annotations

import math

import pytest

from ml4m.errors import ConfigError
from ml4m.md.sigma_schedule import (
    MAX_AUTO_INTERVAL,
    SIGMA_TIME_FRACTION,
    SigmaSchedule,
    parse_interval,
)


def _simulate(schedule: SigmaSchedule, steps: int, plain_s: float, sigma_s: float) -> list[int]:
    """Drive ``schedule`` with synthetic step times; the steps that computed a sigma."""
    sigma_steps = []
    for step in range(steps + 1):
        with_sigma = schedule.due(step)
        if with_sigma:
            sigma_steps.append(step)
        schedule.record(step, sigma_s if with_sigma else plain_s, with_sigma)
    return sigma_steps


@pytest.mark.parametrize("ratio", [1.5, 5.0, 9.0])
def test_auto_keeps_the_sigma_overhead_within_its_share(ratio):
    schedule = SigmaSchedule("auto")
    steps = 5000
    sigma_steps = _simulate(schedule, steps, plain_s=1.0, sigma_s=ratio)
    expected = math.ceil((ratio - 1.0) / SIGMA_TIME_FRACTION)
    # step 0, then every `expected` steps: no provisional sigma step before the costs
    # are timed, so the whole run's sigma steps take their share and no more
    assert sigma_steps == list(range(0, steps + 1, expected))
    assert schedule.interval == expected
    overhead = len(sigma_steps) * (ratio - 1.0) / (steps + 1)
    step_zero = (ratio - 1.0) / (steps + 1)  # the sigma at step 0 comes on top
    assert SIGMA_TIME_FRACTION * 0.8 <= overhead <= SIGMA_TIME_FRACTION + step_zero


def test_auto_interval_is_bounded():
    cheap, costly = SigmaSchedule("auto"), SigmaSchedule("auto")
    _simulate(cheap, 300, plain_s=1.0, sigma_s=1.0)  # free sigma: every step
    _simulate(costly, 3000, plain_s=1.0, sigma_s=1000.0)
    assert cheap.interval == 1 and costly.interval == MAX_AUTO_INTERVAL
    assert costly.description.startswith("auto (mean")


def test_fixed_intervals_and_never():
    assert _simulate(SigmaSchedule(7), 30, 1.0, 50.0) == [0, 7, 14, 21, 28]
    assert _simulate(SigmaSchedule("3"), 7, 1.0, 1.0) == [0, 3, 6]
    never = SigmaSchedule(0)
    assert _simulate(never, 30, 1.0, 1.0) == [] and never.n_sigma == 0


@pytest.mark.parametrize("bad", [-1, "sometimes", 2.5, "1e3", None])
def test_bad_intervals_are_refused_by_name(bad):
    with pytest.raises(ConfigError, match="uncertainty_interval"):
        parse_interval(bad)

"""Fit within a wall-time budget: measure the cost per frame, then fit what fits.

A linear or sparse-GP fit costs about ``a + b * n_frames`` seconds (descriptors and
normal-equation rows grow with the frames, the solve does not). Two probe fits on
evenly spaced subsets measure ``a`` and ``b``; the final fit then uses every frame if
the prediction fits the time left, or the largest evenly spaced subset that does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any


from ml4m.data.split import evenly_spaced
from ml4m.errors import ConfigError

__all__ = ["BudgetPlan", "fit_within_budget"]

#: share of the budget the final fit may be planned to use (the rest absorbs timing noise,
#: prediction of the train/valid metrics and the plots)
PLANNED_SHARE = 0.8


@dataclass
class BudgetPlan:
    """How a budgeted fit was planned (stored in ``metrics.json`` under ``budget``).

    Attributes
    ----------
    budget_seconds : float
        The wall-time budget, s.
    probe_frames : list of int
        Frames of the two probe fits.
    probe_seconds : list of float
        Their wall times, s.
    seconds_per_frame, fixed_seconds : float
        The fitted cost model ``fixed + per_frame * n``, s.
    n_frames_total, n_frames_used : int
        Training frames available and used by the final fit.
    """

    budget_seconds: float
    probe_frames: list[int]
    probe_seconds: list[float]
    seconds_per_frame: float
    fixed_seconds: float
    n_frames_total: int
    n_frames_used: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_within_budget(fit: Callable[[Sequence[Any]], Any], frames: Sequence[Any],
                      budget_seconds: float, started: float | None = None,
                      min_frames: int = 8) -> tuple[Any, BudgetPlan]:
    """Fit on as many of ``frames`` as ``budget_seconds`` allows.

    Parameters
    ----------
    fit : callable
        ``fit(frames) -> model``: builds and fits a fresh model on the given frames.
    frames : sequence
        Training frames, in file order (trajectories stay spread when subsampled).
    budget_seconds : float
        Wall-time budget of the whole job, s.
    started : float, optional
        ``time.perf_counter()`` at the start of the job (default: now); time already
        spent counts against the budget.
    min_frames : int
        Smallest probe.

    Returns
    -------
    model
        The final fit.
    BudgetPlan

    Raises
    ------
    ConfigError
        The budget does not allow even the smaller probe plus a fit.
    """
    from ml4m.validation import check_float

    budget_seconds = check_float("max_minutes (in seconds)", budget_seconds, 0, low_open=True)
    started = time.perf_counter() if started is None else started
    n = len(frames)
    n1 = min(n, max(min_frames, n // 50))
    n2 = min(n, 2 * n1)
    sizes, times, model = [], [], None
    for size in dict.fromkeys((n1, n2)):
        t0 = time.perf_counter()
        model = fit([frames[i] for i in evenly_spaced(n, size)])
        sizes.append(size)
        times.append(time.perf_counter() - t0)
        left = budget_seconds - (time.perf_counter() - started)
        if left < 0:
            raise ConfigError(
                f"max_minutes: a fit on {size} of {n} training frames took {times[-1]:.1f} s and "
                f"the budget of {budget_seconds / 60:.2f} min is spent; raise --max-minutes")
    if len(sizes) == 2 and sizes[1] > sizes[0]:
        per_frame = max((times[1] - times[0]) / (sizes[1] - sizes[0]), 0.0)
    else:
        per_frame = times[-1] / sizes[-1]
    fixed = max(times[-1] - per_frame * sizes[-1], 0.0)
    left = PLANNED_SHARE * budget_seconds - (time.perf_counter() - started)
    if per_frame > 0:
        affordable = int((left - fixed) / per_frame)
    else:
        affordable = n
    use = min(n, affordable)
    plan = BudgetPlan(budget_seconds=float(budget_seconds), probe_frames=sizes,
                      probe_seconds=[float(t) for t in times], seconds_per_frame=float(per_frame),
                      fixed_seconds=float(fixed), n_frames_total=n, n_frames_used=sizes[-1])
    if use <= sizes[-1]:
        return model, plan  # the larger probe is the best fit the budget allows
    plan.n_frames_used = use
    return fit([frames[i] for i in evenly_spaced(n, use)]), plan

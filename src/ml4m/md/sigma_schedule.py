"""When an MD run computes its model's force sigma: every N steps, or within a time budget.

A model's predictive sigma costs several force evaluations (a linear ACE forms the
per-feature force Jacobian: 4-9 times an energy-and-forces step), so MD computes it only
on some steps. With ``interval="auto"`` the schedule times the steps it sees and spaces
the sigma steps so that they add at most ``SIGMA_TIME_FRACTION`` to the run's wall time:

    extra = t_sigma - t_plain,   interval = ceil(extra / (SIGMA_TIME_FRACTION * t_plain))

clamped to ``1 .. MAX_AUTO_INTERVAL`` steps (a sigma at least every
``MAX_AUTO_INTERVAL`` steps however costly), where ``t_sigma`` is the latest step with a
sigma and ``t_plain`` the median of recent steps without (s). Step 0 computes a sigma;
the gap after it is set once ``TIMED_PLAIN_STEPS`` plain steps have been timed (no
provisional sigma step before the costs are known).

>>> s = SigmaSchedule(4)
>>> [step for step in range(10) if s.due(step)]
[0, 4, 8]
"""

from __future__ import annotations

import math
from collections import deque

from ml4m.errors import ConfigError
from ml4m.validation import check_int

__all__ = ["SigmaSchedule", "AUTO", "SIGMA_TIME_FRACTION", "MAX_AUTO_INTERVAL",
           "TIMED_PLAIN_STEPS", "parse_interval"]

AUTO = "auto"
#: share of the MD wall time that ``auto`` lets the sigma steps add
SIGMA_TIME_FRACTION = 0.05
#: longest gap between sigma steps under ``auto``, steps
MAX_AUTO_INTERVAL = 1000
#: plain steps timed before ``auto`` sets the gap after a sigma step with no timings yet
TIMED_PLAIN_STEPS = 5


def parse_interval(value: int | str) -> int | str:
    """``'auto'`` or an integer >= 0 (0: never), from a flag or a call.

    Raises
    ------
    ConfigError
        Anything else, naming ``uncertainty_interval``.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"uncertainty_interval must be 'auto' or an integer >= 0, "
                              f"got {value!r}") from None
    check_int("uncertainty_interval", value, low=0)
    return int(value)


class SigmaSchedule:
    """Which steps compute the force sigma.

    Parameters
    ----------
    interval : int or 'auto'
        Steps between sigma steps (0: never), or ``'auto'``: spaced by the measured
        cost (module docstring). The first sigma step is step 0.
    """

    def __init__(self, interval: int | str) -> None:
        interval = parse_interval(interval)
        self.auto = interval == AUTO
        self.interval = 0 if self.auto else int(interval)
        self.next = 0 if self.auto or self.interval > 0 else None
        self.n_sigma = 0
        self._plain: deque[float] = deque(maxlen=25)
        self._sigma_seconds: float | None = None
        self._pending: int | None = None  # a sigma step whose next gap awaits timings
        self._gap_sum = 0  # of the gaps scheduled after each sigma step

    def due(self, step: int) -> bool:
        """Whether step ``step``'s evaluation computes the sigma."""
        return self.next is not None and step == self.next

    def record(self, step: int, seconds: float, with_sigma: bool) -> None:
        """Note that step ``step`` took ``seconds`` (s), with or without a sigma, and
        schedule the next sigma step after a sigma step."""
        if not with_sigma:
            self._plain.append(seconds)
            if self._pending is not None and len(self._plain) >= TIMED_PLAIN_STEPS:
                self._schedule(self._pending, self._auto_interval(), earliest=step + 1)
                self._pending = None
            return
        self.n_sigma += 1
        self._sigma_seconds = seconds
        if not self.auto:
            self._schedule(step, self.interval)
        elif len(self._plain) >= TIMED_PLAIN_STEPS:
            self._schedule(step, self._auto_interval())
        else:  # costs unknown yet: the gap is set after a few timed plain steps
            self._pending, self.next = step, None

    def _schedule(self, step: int, interval: int, earliest: int = 0) -> None:
        self.interval = interval
        self._gap_sum += interval
        self.next = max(step + interval, earliest)

    def _auto_interval(self) -> int:
        plain = sorted(self._plain)[len(self._plain) // 2]
        extra = max(0.0, self._sigma_seconds - plain)
        if plain <= 0:
            return MAX_AUTO_INTERVAL
        return min(MAX_AUTO_INTERVAL, max(1, math.ceil(extra / (SIGMA_TIME_FRACTION * plain))))

    @property
    def description(self) -> int | str | None:
        """The fixed interval, ``'auto (mean N)'``, or ``'auto'`` before the first sigma."""
        if not self.auto:
            return self.interval
        if not self.n_sigma:
            return AUTO
        return f"auto (mean {self._gap_sum / self.n_sigma:.0f})"

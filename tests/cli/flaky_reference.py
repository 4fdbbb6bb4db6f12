"""A reference calculator that fails on demand, for the loops' kill-and-resume tests."""

from __future__ import annotations

from ase.calculators.emt import EMT


class FlakyEMT(EMT):
    """EMT that raises from its ``fail_after + 1``-th calculation on (``None``: never)."""

    fail_after: int | None = None
    count = 0

    def calculate(self, *args, **kwargs):
        type(self).count += 1
        if self.fail_after is not None and type(self).count > self.fail_after:
            raise RuntimeError("SCF did not converge")
        super().calculate(*args, **kwargs)


#: the name ``reference: {calculator: ...}`` gives it by
FLAKY = f"{FlakyEMT.__module__}:FlakyEMT"

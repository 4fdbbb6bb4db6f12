"""Exponential moving average of a module's weights (validated, and kept as the final model)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["WeightAverage"]


class WeightAverage:
    """``avg <- d * avg + (1 - d) * w`` after every step, with
    ``d = min(decay, (1 + n) / (10 + n))`` at update ``n`` (so the first updates follow
    the weights closely).

    Buffers (data statistics) are copied, not averaged.

    Parameters
    ----------
    module : torch.nn.Module
        The trained module.
    decay : float
        In [0, 1).
    """

    def __init__(self, module: Any, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def update(self, module: Any) -> None:
        """Fold the module's current weights into the average."""
        import torch

        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        self.updates += 1
        with torch.no_grad():
            params = dict(module.named_parameters())
            for k, v in module.state_dict().items():
                if k in params and v.dtype.is_floating_point:
                    self.state[k].mul_(d).add_(v.detach(), alpha=1.0 - d)
                else:
                    self.state[k].copy_(v)

    @contextlib.contextmanager
    def applied(self, module: Any) -> Iterator[None]:
        """The average loaded into ``module`` for the block; the weights restored after."""
        saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(self.state)
        try:
            yield
        finally:
            module.load_state_dict(saved)

    def state_dict(self) -> dict[str, Any]:
        """The average and the update count (tensors and an int)."""
        return {"state": self.state, "updates": self.updates}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        for k, v in saved["state"].items():
            self.state[k].copy_(v)
        self.updates = int(saved["updates"])

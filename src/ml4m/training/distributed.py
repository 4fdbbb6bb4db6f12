"""Data parallelism across processes started by ``torchrun`` (or any launcher that sets
``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).

Each process takes its share of every global batch (:func:`ml4m.training.batches.shard`),
the module is wrapped in ``DistributedDataParallel`` (gradients averaged over processes),
and the few numbers the processes must agree on (label counts, error sums, stop flags)
are summed with :meth:`Distributed.sum`; what the first process measured or planned
(evaluation costs, a time budget's plan) reaches the others by
:meth:`Distributed.broadcast`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = ["Distributed"]


@dataclass
class Distributed:
    """This process's place in the group: ``rank`` of ``world`` (1: no group)."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False

    @classmethod
    def from_env(cls, device: str = "cpu") -> Distributed:
        """Join the process group the environment describes (``WORLD_SIZE`` > 1): gloo
        on CPU, nccl on CUDA. A group already initialised by the caller is used as is."""
        import torch.distributed as dist

        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1 or not dist.is_available():
            return cls()
        owns = False
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device == "cuda" else "gloo")
            owns = True
        if device == "cuda":
            import torch

            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return cls(dist.get_rank(), dist.get_world_size(), owns)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Whether this process writes checkpoints and logs."""
        return self.rank == 0

    def wrap(self, module: Any) -> Any:
        """``module`` in DistributedDataParallel (unchanged with one process)."""
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel

        params = next(module.parameters())
        ids = [params.device.index] if params.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)

    def sum(self, values: list[float], like: Any) -> list[float]:
        """``values`` summed over the processes (returned as is with one)."""
        if not self.active:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=like.device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast(self, value: Any) -> Any:
        """The first process's ``value`` on every process (``value`` as is with one):
        what the processes must decide alike, such as a plan from measured times."""
        if not self.active:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """Leave the group if this object joined it."""
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False

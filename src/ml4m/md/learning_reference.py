"""Reference labels for active learning: a picklable calculator factory, the labelling
function workers run, and the executors that run it (inline, a process pool, Dask)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms

from ml4m.errors import ConfigError, SimulationError

__all__ = ["InlineExecutor", "Reference", "ReferenceCalculationError", "label_frames",
           "label_structure", "reference_executor"]


class ReferenceCalculationError(SimulationError):
    """Raised when the reference calculator fails on a frame and the loop stops
    (``on_reference_error: stop``); the message names the walker, the step and where the
    state is kept."""


@dataclass(frozen=True)
class Reference:
    """A picklable factory of the reference calculator: a name or import path and its
    constructor's arguments (:func:`ml4m.data.make_calculator`)."""

    name: str = "emt"
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __call__(self):
        from ml4m.data import make_calculator

        return make_calculator(self.name, dict(self.kwargs))


def label_structure(reference: Callable[[], Any], atoms: Atoms) -> dict[str, Any]:
    """Energy (eV), forces (eV/Angstrom) and, for a periodic cell, stress (eV/Angstrom^3,
    Voigt) of ``atoms`` by a fresh calculator from ``reference`` (run in a worker)."""
    atoms = atoms.copy()
    atoms.calc = reference()
    out = {"energy": float(atoms.get_potential_energy()),
           "forces": np.array(atoms.get_forces(), dtype=float), "stress": None}
    if atoms.pbc.all():
        out["stress"] = np.array(atoms.get_stress(voigt=True), dtype=float)
    return out


class InlineExecutor(Executor):
    """Runs each call at submission, in this process (one worker, no pool to start)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # delivered through the future, as a pool would
            future.set_exception(exc)
        return future


@contextlib.contextmanager
def reference_executor(workers: int = 1, scheduler: str | None = None,
                       timeout_s: float = 10.0) -> Iterator[Executor]:
    """The executor that labels frames: inline (``workers=1``), a process pool of
    ``workers``, or a Dask ``distributed`` client of the scheduler at ``scheduler``.

    Raises
    ------
    ConfigError
        ``workers`` < 1; ``scheduler`` without ``distributed`` installed, or a scheduler
        that does not answer within ``timeout_s`` seconds.
    """
    from ml4m.validation import check_float, check_int

    workers = check_int("workers", workers, low=1)
    timeout_s = check_float("scheduler timeout", timeout_s, low=0.0, low_open=True)
    if scheduler is not None:
        try:
            from distributed import Client
        except ImportError:
            raise ConfigError("--scheduler needs Dask's 'distributed' package (the optional "
                              "extra: pip install distributed)") from None
        try:
            client = Client(scheduler, timeout=timeout_s)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {scheduler!r}: "
                              f"{type(exc).__name__}: {exc}") from None
        try:
            yield client.get_executor()
        finally:
            client.close()
        return
    if workers == 1:
        yield InlineExecutor()
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # not fork: the MD process holds BLAS and prefetch threads, which fork would copy
    # mid-call; a fork server that imported the labelling code once forks the workers
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        yield pool


def label_frames(executor: Executor, reference: Callable[[], Any], structures: list[Atoms]
                  ) -> list[dict[str, Any] | Exception]:
    """Labels of ``structures`` in their order (an exception where the reference raised)."""
    # a copy without its calculator: the model would be pickled with every call
    futures = [executor.submit(label_structure, reference, a.copy()) for a in structures]
    out: list[dict[str, Any] | Exception] = []
    try:
        for f in futures:
            exc = f.exception()
            out.append(exc if exc is not None else f.result())
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    return out

"""Search for the lowest-energy structure over a few degrees of freedom.

Each reference call sets the degrees of freedom (:mod:`ml4m.md.optimize_structure`) on
the starting structure, relaxes everything else with them held
(:func:`ml4m.md.dynamics.relax`, FIRE) and records the energy. The next values come from
:func:`ml4m.md.optimize_search.propose`: Bayesian optimisation on a Gaussian-process
surrogate, a random search or a grid search with the same budget of calls.

The output folder holds, as the search goes:

* ``evaluations.extxyz``: every relaxed structure, appended and flushed as it is
  produced, with ``call``, the set values of each degree of freedom (keyed by its label,
  e.g. ``torsion(1,6,7,8)``), ``REF_energy`` (eV), ``converged`` and ``relax_steps`` in
  ``info`` and ``REF_forces`` (eV/Angstrom) in the arrays;
* ``state.json``: settings, every call's unit-cube point, values and energy, and the
  length of ``evaluations.extxyz`` it covers; replaced atomically after every call, so
  a killed search resumes where it stopped (``resume=True``) and proposes what an
  uninterrupted one would;

and at the end ``best.extxyz``, ``summary.json`` and ``progress.png`` (best energy
against calls).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from ml4m._fileio import atomic_path, read_json_record
from ml4m.data.read import read_structure
from ml4m.errors import ConfigError, DataError, SimulationError
from ml4m.md.optimize_search import propose
from ml4m.md.optimize_settings import OptimizeSettings
from ml4m.md.optimize_structure import apply_dofs, constraints_for, measure_dofs
from ml4m.outputs import mark_folder

__all__ = ["FOLDER_KIND", "OptimizeStatus", "evaluate", "run_optimize"]

#: the kind of output folder a search writes (:func:`ml4m.outputs.claim_output`)
FOLDER_KIND = "optimize"
_FORMAT = "ml4m-optimize-state"
_EVALUATIONS = "evaluations.extxyz"


@dataclass(frozen=True)
class OptimizeStatus:
    """The search after a call (one log line).

    Attributes
    ----------
    call, budget : int
        Calls made (1-based) and asked for.
    values : tuple of float
        The degrees of freedom of this call.
    energy, best_energy : float
        This call's relaxed energy and the lowest so far, eV.
    converged : bool
        Whether the relaxation reached ``fmax``.
    seconds : float
        Wall time of the call, s.
    """

    call: int
    budget: int
    values: tuple[float, ...]
    energy: float
    best_energy: float
    converged: bool
    seconds: float


def evaluate(start: Atoms, settings: OptimizeSettings, values: np.ndarray, calculator: Any
             ) -> tuple[Atoms, dict[str, Any]]:
    """The structure at ``values`` of the degrees of freedom, relaxed with them held.

    Returns
    -------
    atoms : Atoms
        Relaxed, without constraints or calculator.
    result : dict
        ``energy`` (eV), ``forces`` (eV/Angstrom, (n_atoms, 3)), ``converged``,
        ``steps``, ``measured`` (the degrees of freedom after the relaxation).

    A relaxation that stops early (``FixInternals`` cannot hold its targets from the
    geometry reached) keeps that geometry, reported as not converged; an error of the
    calculator itself propagates.
    """
    from ml4m.md.dynamics import relax

    atoms = start.copy()
    atoms.constraints = []
    apply_dofs(atoms, settings.dofs, values)
    atoms.set_constraint(constraints_for(settings.dofs, values, settings.fix))
    atoms.calc = calculator
    converged, steps = True, 0
    if settings.relax_steps > 0:
        try:
            out = relax(atoms, fmax=settings.fmax, steps=settings.relax_steps)
            converged, steps = out["converged"], out["steps"]
        except (ValueError, ArithmeticError, SimulationError):  # a constraint ASE cannot hold
            converged, steps = False, settings.relax_steps
    energy = float(atoms.get_potential_energy())
    forces = np.array(atoms.get_forces(), dtype=float)
    if not (np.isfinite(energy) and np.isfinite(forces).all()):
        raise SimulationError(f"energy or forces not finite at {values.tolist()}")
    measured = measure_dofs(atoms, settings.dofs)
    atoms.calc = None
    atoms.constraints = []
    return atoms, {"energy": energy, "forces": forces, "converged": bool(converged),
                   "steps": int(steps), "measured": measured}


def _calculator(settings: OptimizeSettings) -> Any:
    """The reference calculator (ConfigError if it cannot be imported or built)."""
    from ml4m.data import make_calculator

    try:
        return make_calculator(settings.reference, settings.reference_kwargs)
    except ConfigError as exc:
        raise ConfigError(f"reference: {exc}") from None


def _load_state(output: Path) -> dict[str, Any]:
    return read_json_record(output / "state.json", _FORMAT, "optimize state")


def _save_state(output: Path, record: dict[str, Any]) -> None:
    mark_folder(output, FOLDER_KIND)  # the folder is an 'optimize' output
    with atomic_path(output / "state.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))


def _append(path: Path, atoms: Atoms, info: dict[str, Any], forces: np.ndarray) -> int:
    """Append one frame to ``path`` (flushed to disk); the file's length after it, bytes."""
    import ase.io

    atoms = atoms.copy()
    atoms.info = dict(info)
    atoms.arrays["REF_forces"] = forces
    with open(path, "a") as fh:
        ase.io.write(fh, atoms, format="extxyz")
        fh.flush()
        os.fsync(fh.fileno())
        return fh.tell()


def _start_state(settings: OptimizeSettings, output: Path, resume: bool, overwrite: bool
                 ) -> dict[str, Any]:
    """The state to continue: the saved one (``resume``; evaluations cut back to what it
    covers), or a fresh one."""
    evaluations = output / _EVALUATIONS
    saved = (output / "state.json").is_file()
    if resume:
        if not saved:
            raise ConfigError(f"--resume: {output} holds no optimize state to resume")
        record = _load_state(output)
        diff = settings.differences(record.get("settings", {}))
        if diff:
            raise ConfigError(f"--resume: the state in {output} was run with other settings "
                              f"({', '.join(diff)} differ); use the same config, or another "
                              "output folder")
        size = int(record["evaluations_bytes"])
        if not evaluations.is_file() or evaluations.stat().st_size < size:
            raise DataError(f"shorter than the {len(record['history'])} calls of the saved "
                            "state", evaluations)
        os.truncate(evaluations, size)  # a frame written after the last save is dropped
        return record
    if saved and not overwrite:
        raise ConfigError(f"{output} holds the state of a search: pass --resume to continue "
                          "it, --overwrite to start over, or choose another output folder")
    output.mkdir(parents=True, exist_ok=True)
    (output / "state.json").unlink(missing_ok=True)  # never beside the new evaluations
    evaluations.unlink(missing_ok=True)
    return {"format": _FORMAT, "settings": settings.record(), "history": [],
            "evaluations_bytes": 0}


def run_optimize(settings: OptimizeSettings, output: str | os.PathLike, *, resume: bool = False,
                 overwrite: bool = False, calculator: Any = None,
                 on_call: Callable[[OptimizeStatus], None] | None = None) -> dict[str, Any]:
    """Run (or resume) a search; its files go to the folder ``output``.

    Parameters
    ----------
    settings : OptimizeSettings
    output : path
        Folder (claimed by the caller: :func:`ml4m.outputs.claim_output`).
    resume : bool
        Continue the state in ``output`` (ConfigError if there is none, or if it was run
        with other settings).
    overwrite : bool
        Start afresh over a state in ``output``.
    calculator : ASE calculator, optional
        Instead of the one ``settings.reference`` names (which a resume still compares).
    on_call : callable, optional
        Called with an :class:`OptimizeStatus` after every call.

    Returns
    -------
    dict
        ``best_energy_ev``, ``best_dofs`` (label to value), ``best_call``, ``calls``,
        ``budget``, ``method``, ``seed``, ``history`` (per call: ``call``, ``dofs``,
        ``energy_ev``, ``best_energy_ev``, ``converged``, ``relax_steps``), ``seconds``,
        ``resumed`` and the paths ``best``, ``evaluations``, ``summary``, ``plot``.

    Raises
    ------
    ConfigError, DataError
        Bad settings or inputs (nothing run), or a resume under other settings.
    SimulationError
        The reference failed or gave non-finite values (the state of the calls before
        is kept).
    """
    started = time.perf_counter()
    output = Path(output)
    start = read_structure(settings.structure, settings.frame)
    settings.check_atoms(len(start))
    apply_dofs(start.copy(), settings.dofs, measure_dofs(start, settings.dofs))  # ill-posed DOFs
    if calculator is None:
        calculator = _calculator(settings)
    record = _start_state(settings, output, resume, overwrite)
    history = record["history"]
    space, labels = settings.space, settings.labels
    evaluations = output / _EVALUATIONS
    for call in range(len(history), settings.budget):
        u_done = np.array([h["u"] for h in history], dtype=float).reshape(-1, space.dim)
        y_done = np.array([h["energy"] for h in history], dtype=float)
        u = propose(space, settings.method, call, u_done, y_done, seed=settings.seed,
                    budget=settings.budget, n_initial=settings.n_initial,
                    acquisition=settings.acquisition, xi=settings.xi, kappa=settings.kappa)
        if u is None:
            break
        values = space.values(u)
        t0 = time.perf_counter()
        try:
            atoms, res = evaluate(start, settings, values, calculator)
        except (ConfigError, DataError):
            raise
        except Exception as exc:  # the reference's own failure: stop, state kept
            raise SimulationError(
                f"the reference ({settings.reference}) failed at call {call + 1} "
                f"({dict(zip(labels, values.tolist()))}): {type(exc).__name__}: {exc}; the "
                f"state of the {call} calls before is kept in {output} (--resume continues "
                "it)") from None
        seconds = time.perf_counter() - t0
        info = {"call": call + 1, **dict(zip(labels, values.tolist())),
                "REF_energy": res["energy"], "converged": res["converged"],
                "relax_steps": res["steps"]}
        record["evaluations_bytes"] = _append(evaluations, atoms, info, res["forces"])
        history.append({"u": u.tolist(), "values": values.tolist(), "energy": res["energy"],
                        "converged": res["converged"], "steps": res["steps"],
                        "measured": res["measured"].tolist(), "seconds": seconds})
        _save_state(output, record)
        if on_call is not None:
            on_call(OptimizeStatus(call + 1, settings.budget, tuple(values.tolist()),
                                   res["energy"], min(h["energy"] for h in history),
                                   res["converged"], seconds))
    return _finish(settings, output, record, time.perf_counter() - started, resume)


def _finish(settings: OptimizeSettings, output: Path, record: dict[str, Any], seconds: float,
            resumed: bool) -> dict[str, Any]:
    """Write ``best.extxyz``, ``summary.json`` and ``progress.png``; the summary."""
    import ase.io

    from ml4m.md.optimize_plots import plot_progress

    history, labels = record["history"], settings.labels  # never empty: budget >= 1
    energies = np.array([h["energy"] for h in history], dtype=float)
    best_so_far = np.minimum.accumulate(energies)
    k = int(np.argmin(energies))
    best = ase.io.read(output / _EVALUATIONS, index=k, format="extxyz")
    with atomic_path(output / "best.extxyz") as tmp:
        ase.io.write(tmp, best, format="extxyz")
    result: dict[str, Any] = {
        "method": settings.method, "seed": settings.seed, "budget": settings.budget,
        "calls": len(history), "reference": settings.reference, "dofs": labels,
        "history": [{"call": j + 1, "dofs": dict(zip(labels, h["values"])),
                     "energy_ev": h["energy"], "best_energy_ev": float(b),
                     "converged": h["converged"], "relax_steps": h["steps"]}
                    for j, (h, b) in enumerate(zip(history, best_so_far))],
        "seconds": seconds, "resumed": resumed, "evaluations": str(output / _EVALUATIONS),
        "best_energy_ev": float(energies[k]), "best_call": k + 1,
        "best_dofs": dict(zip(labels, history[k]["values"])),
        "best": str(output / "best.extxyz"),
        "plot": str(plot_progress(best_so_far, energies, output / "progress.png",
                                  settings.method))}
    with atomic_path(output / "summary.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    result["summary"] = str(output / "summary.json")
    return result

"""Reference-data generation with any ASE calculator: MD, strain, vacancies, surfaces.

The protocol follows the reference sets in ``shared/data``: an equilibrium lattice
constant from the calculator's equation of state, then Langevin NVT trajectories
(bulk at several temperatures, randomly strained cells, a single vacancy, a free
surface slab), sampled every ``sample_every`` steps after equilibration. Every frame
carries ``config_type``, ``T_K``, ``traj`` and ``t_fs`` in ``info``.

Generation is resumable: each finished trajectory is written atomically into a parts
folder beside the output; a rerun with the same settings skips the finished ones, and
the output file appears only when all are done.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.calculator import Calculator
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixCom
from ase.data import atomic_numbers, reference_states
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from ml4m._fileio import atomic_path
from ml4m.errors import ConfigError

__all__ = [
    "GenerateConfig", "Task", "make_calculator", "plan_tasks", "generate", "config_from_mapping"
]

#: short calculator names: the import path and default settings (a config's own
#: settings override them); ``xtb``/``gfn2`` need the optional extra ``ml4m[xtb]``
_SHORT_NAMES: dict[str, tuple[str, dict[str, Any]]] = {
    "emt": ("ase.calculators.emt:EMT", {}),
    "lj": ("ase.calculators.lj:LennardJones", {}),
    "morse": ("ase.calculators.morse:MorsePotential", {}),
    "xtb": ("tblite.ase:TBLite", {"method": "GFN2-xTB", "verbosity": 0}),
    "gfn2": ("tblite.ase:TBLite", {"method": "GFN2-xTB", "verbosity": 0}),
}


def make_calculator(name: str, kwargs: dict[str, Any] | None = None) -> Calculator:
    """Instantiate an ASE calculator from a short name or an import path.

    Parameters
    ----------
    name : str
        ``emt``, ``lj``, ``morse``, ``xtb``/``gfn2`` (tblite's GFN2-xTB), or
        ``package.module:Class`` / ``package.module.Class``.
    kwargs : dict, optional
        Keyword arguments for the calculator's constructor (over a short name's
        defaults).

    Returns
    -------
    ase.calculators.calculator.Calculator
    """
    path, defaults = _SHORT_NAMES.get(name.lower(), (name, {}))
    kwargs = {**defaults, **(kwargs or {})}
    module_name, sep, cls_name = path.partition(":")
    if not sep:
        module_name, _, cls_name = path.rpartition(".")
    if not module_name or not cls_name:
        raise ConfigError(
            f"calculator {name!r} is neither a known name ({sorted(_SHORT_NAMES)}) nor an "
            "import path like 'package.module:Class'"
        )
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as exc:
        hint = (" (GFN2-xTB needs tblite: pip install 'ml4m[xtb]')"
                if module_name.startswith("tblite") else "")
        raise ConfigError(f"cannot import calculator {path!r}: {exc}{hint}") from exc
    from ase.calculators.calculator import BaseCalculator

    if not (isinstance(cls, type) and issubclass(cls, BaseCalculator)):
        raise ConfigError(f"calculator {path!r} is not an ASE calculator class")
    _check_calculator_kwargs(cls, path, kwargs)
    try:
        return cls(**kwargs)
    except Exception as exc:  # the calculator's own check of its settings
        raise ConfigError(f"calculator {path!r} refused its settings {kwargs}: "
                          f"{type(exc).__name__}: {exc}") from exc


def _check_calculator_kwargs(cls: type, path: str, kwargs: dict[str, Any]) -> None:
    """Refuse settings an ASE calculator would silently ignore.

    ASE's ``Calculator.__init__`` stores unknown ``**kwargs`` as parameters without a
    word; the known ones are the constructor's named arguments (of the class and its
    bases) and the class's ``default_parameters``. A calculator that takes ``**kwargs``
    and declares no defaults cannot be checked and is trusted.
    """
    import inspect

    from ml4m.validation import check_mapping

    kwargs = check_mapping("calculator_kwargs", kwargs)
    named: set[str] = set(getattr(cls, "default_parameters", None) or {})
    open_ended = False
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            return
        named |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        open_ended |= any(p.kind is p.VAR_KEYWORD for p in params) and klass is cls
    if open_ended and not getattr(cls, "default_parameters", None):
        return
    unknown = sorted(set(kwargs) - named - {"self"})
    if unknown:
        raise ConfigError(f"calculator {path!r} has no setting(s) {unknown}; known: "
                          f"{sorted(named - {'self'})}")


@dataclass
class GenerateConfig:
    """Settings of :func:`generate` (all lengths in Angstrom, times in fs).

    Parameters
    ----------
    system : str
        An element (``"Cu"``: its ASE reference crystal) or two elements joined by
        ``-`` (``"Cu-Au"``): a random substitutional alloy on the first one's lattice
        with ``alloy_fractions`` of the second.
    calculator : str
        See :func:`make_calculator`.
    calculator_kwargs : dict
        Constructor arguments of the calculator.
    supercells : list of int
        Repetitions of the cubic conventional cell (2 -> 32 atoms for fcc).
    temperatures : list of float
        Thermostat temperatures, K.
    trajectories : int
        Independent trajectories per (cell, temperature) for bulk MD.
    frames_per_trajectory : int
        Frames kept per trajectory.
    sample_every : int
        MD steps between kept frames.
    equilibration_steps : int
        MD steps before the first kept frame.
    timestep_fs : float
        MD time step, fs.
    friction : float
        Langevin friction, 1/fs.
    n_strained : int
        Randomly strained cells (each component uniform in ``[-max_strain, max_strain]``).
    max_strain : float
        Largest strain component.
    vacancies : bool
        Add single-vacancy trajectories (at the higher temperatures).
    surface : bool
        Add a free (111) (fcc) / (110) (bcc) / (001) (hcp) slab, periodic in-plane.
    alloy_fractions : list of float
        Fractions of the second element for alloys.
    seed : int
        Master seed; every trajectory derives its own.
    """

    system: str = "Cu"
    calculator: str = "emt"
    calculator_kwargs: dict[str, Any] = field(default_factory=dict)
    supercells: list[int] = field(default_factory=lambda: [2, 3])
    temperatures: list[float] = field(default_factory=lambda: [300.0, 600.0, 1200.0])
    trajectories: int = 1
    frames_per_trajectory: int = 10
    sample_every: int = 40
    equilibration_steps: int = 200
    timestep_fs: float = 2.0
    friction: float = 0.01
    n_strained: int = 4
    max_strain: float = 0.03
    vacancies: bool = True
    surface: bool = True
    alloy_fractions: list[float] = field(default_factory=lambda: [0.25])
    seed: int = 0

    def validate(self, source: str | os.PathLike | None = None) -> None:
        """Check every setting's type and range (and canonicalise numbers in place).

        Raises
        ------
        ConfigError
            Naming the first invalid setting (prefixed with ``source``).
        """
        from ml4m.validation import check_bool, check_float, check_int, check_mapping, check_str

        w = {"source": source}
        check_str("system", self.system, **w)
        check_str("calculator", self.calculator, **w)
        self.calculator_kwargs = check_mapping("calculator_kwargs", self.calculator_kwargs, **w)
        for name, low in (("trajectories", 1), ("frames_per_trajectory", 1), ("sample_every", 1),
                          ("equilibration_steps", 0), ("n_strained", 0), ("seed", 0)):
            setattr(self, name, check_int(name, getattr(self, name), low, 10**9, **w))
        self.timestep_fs = check_float("timestep_fs", self.timestep_fs, 0, 100, low_open=True, **w)
        self.friction = check_float("friction", self.friction, 0, 10, **w)
        self.max_strain = check_float("max_strain", self.max_strain, 0, 0.5, **w)
        self.vacancies = check_bool("vacancies", self.vacancies, **w)
        self.surface = check_bool("surface", self.surface, **w)
        for name, check in (("supercells", lambda k, v: check_int(k, v, 1, 20, **w)),
                            ("temperatures", lambda k, v: check_float(k, v, 0, 1e5, low_open=True,
                                                                      **w)),
                            ("alloy_fractions", lambda k, v: check_float(k, v, 0, 1, **w))):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(f"{source + ': ' if source else ''}{name} must be a non-empty "
                                  f"list, got {values!r}")
            setattr(self, name, [check(f"{name}[{i}]", v) for i, v in enumerate(values)])
        for el in self.elements:
            if el not in atomic_numbers:
                raise ConfigError(f"unknown element {el!r} in system {self.system!r}")
        if reference_states[atomic_numbers[self.elements[0]]] is None or reference_states[
            atomic_numbers[self.elements[0]]
        ].get("symmetry") not in ("fcc", "bcc", "hcp", "sc", "diamond"):
            raise ConfigError(f"{self.elements[0]} has no crystalline reference state in ASE")

    @property
    def elements(self) -> list[str]:
        """Element symbols of the system."""
        return [s for s in self.system.replace(",", "-").split("-") if s]

    def digest(self) -> str:
        """Hash of the settings (a resumed run must have the same)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Task:
    """One trajectory to run: how to build its start and how to sample it."""

    kind: str  # bulk, strained, vacancy, slab
    supercell: int
    temperature: float
    fraction: float
    seed: int
    traj: str

    @property
    def config_type(self) -> str:
        """``bulk_300K``, ``strained3pct_600K``, ... as in shared/data."""
        return f"{self.kind}_{int(round(self.temperature))}K"


def plan_tasks(cfg: GenerateConfig) -> list[Task]:
    """The list of trajectories :func:`generate` runs, in order (deterministic)."""
    cfg.validate()
    fractions = cfg.alloy_fractions if len(cfg.elements) > 1 else [0.0]
    temps = sorted(cfg.temperatures)
    tasks: list[Task] = []
    rng = np.random.default_rng(cfg.seed)

    def add(kind: str, n: int, T: float, x: float, tag: str) -> None:
        seed = int(rng.integers(2**31))
        label = f"{cfg.system}_{kind}_n{n}_{int(T)}K" + (f"_x{x:.2f}" if x else "") + f"_{tag}"
        tasks.append(Task(kind, n, float(T), float(x), seed, label))

    pct = int(round(cfg.max_strain * 100))
    for x in fractions:
        for n in cfg.supercells:
            for T in temps:
                for r in range(cfg.trajectories):
                    add("bulk", n, T, x, f"r{r}")
        for s in range(cfg.n_strained):
            add(f"strained{pct}pct", cfg.supercells[s % len(cfg.supercells)], temps[s % min(2, len(temps))], x, f"s{s}")
        if cfg.vacancies:
            for T in temps[-2:]:
                add("vacancy", cfg.supercells[0], T, x, "r0")
        if cfg.surface:
            miller = "".join(map(str, _surface_miller(cfg.elements[0])))
            for T in temps[:2]:
                add(f"slab{miller}", cfg.supercells[0], T, x, "r0")
    return tasks


def _surface_miller(symbol: str) -> tuple[int, int, int]:
    """The close-packed surface of ``symbol``'s reference crystal."""
    sym = reference_states[atomic_numbers[symbol]]["symmetry"]
    return {"fcc": (1, 1, 1), "bcc": (1, 1, 0), "hcp": (0, 0, 1)}.get(sym, (1, 0, 0))


def _lattice_constants(cfg: GenerateConfig, calc: Calculator, a_host: float) -> dict[float, float]:
    """The host crystal's lattice constant (Angstrom) for each alloy fraction of ``cfg``:
    ``a_host`` (the host's own at 0 K by the calculator) scaled by Vegard's law on the
    atomic volumes, ``(1 - x) v_host + x v_solute`` (each element's reference crystal by
    the calculator), so that an alloy cell starts near zero pressure whatever its
    composition; ``{0.0: a_host}`` for one element."""
    if len(cfg.elements) == 1:
        return {0.0: a_host}
    v_host = _atomic_volume(cfg.elements[0], a_host)
    v_solute = _atomic_volume(cfg.elements[1], _lattice_constant(cfg.elements[1], calc))
    return {float(x): a_host * ((1 - x) + x * v_solute / v_host) ** (1 / 3)
            for x in cfg.alloy_fractions}


def _atomic_volume(symbol: str, a: float) -> float:
    """Volume per atom (Angstrom^3) of ``symbol``'s reference crystal at lattice constant ``a``."""
    ref = bulk(symbol, a=a, cubic=True)
    return ref.get_volume() / len(ref)


def _lattice_constant(symbol: str, calc: Calculator) -> float:
    """Zero-temperature lattice constant of ``symbol``'s reference crystal by the calculator."""
    from ase.eos import EquationOfState

    ref = bulk(symbol, cubic=True)
    a0 = ref.cell.lengths()[0]
    volumes, energies = [], []
    for s in np.linspace(0.97, 1.03, 7):
        atoms = ref.copy()
        atoms.set_cell(ref.cell * s, scale_atoms=True)
        atoms.calc = calc
        volumes.append(atoms.get_volume())
        try:
            energies.append(atoms.get_potential_energy())
        except Exception as exc:
            raise ConfigError(f"the calculator failed on {symbol}'s reference crystal: "
                              f"{type(exc).__name__}: {exc}") from exc
    try:
        v0, _, _ = EquationOfState(volumes, energies).fit()
    except Exception as exc:
        raise ConfigError(f"the calculator's equation of state of {symbol} has no minimum near "
                          f"its reference lattice constant {a0:.3f} A ({exc})") from exc
    if not np.isfinite(v0) or v0 <= 0:
        raise ConfigError(f"the calculator gives no finite lattice constant for {symbol}")
    return float(a0 * (v0 / ref.get_volume()) ** (1 / 3))


def _start_structure(task: Task, cfg: GenerateConfig, a: float) -> Atoms:
    rng = np.random.default_rng(task.seed)
    host = cfg.elements[0]
    n = task.supercell
    if task.kind.startswith("slab"):
        from ase.build import surface

        atoms = surface(bulk(host, a=a, cubic=True), _surface_miller(host), layers=4, vacuum=10.0)
        atoms = atoms.repeat((max(2, n), max(2, n), 1))
        atoms.pbc = (True, True, False)
    else:
        atoms = bulk(host, a=a, cubic=True).repeat((n, n, n))
    if task.fraction > 0:
        k = int(round(task.fraction * len(atoms)))
        idx = rng.choice(len(atoms), size=k, replace=False)
        symbols = np.array(atoms.get_chemical_symbols(), dtype=object)
        symbols[idx] = cfg.elements[1]
        atoms.set_chemical_symbols(list(symbols))
    if task.kind.startswith("strained"):
        eps = rng.uniform(-cfg.max_strain, cfg.max_strain, size=(3, 3))
        eps = 0.5 * (eps + eps.T)
        atoms.set_cell(atoms.cell[:] @ (np.eye(3) + eps), scale_atoms=True)
    if task.kind == "vacancy":
        del atoms[int(rng.integers(len(atoms)))]
    return atoms


def _run_task(task: Task, cfg: GenerateConfig, calc: Calculator, a: float,
              tick: Callable[[], None]) -> list[Atoms]:
    atoms = _start_structure(task, cfg, a)
    atoms.calc = calc
    rng = np.random.default_rng(task.seed + 1)
    thermalize_momenta(atoms, temperature_K=task.temperature, rng=rng)
    Stationary(atoms)
    atoms.set_constraint(FixCom())
    dyn = Langevin(
        atoms,
        timestep=cfg.timestep_fs * units.fs,
        temperature_K=task.temperature,
        friction=cfg.friction / units.fs,
        fixcm=False,
        rng=rng,
    )
    if cfg.equilibration_steps:
        dyn.run(cfg.equilibration_steps)
    frames = []
    for k in range(cfg.frames_per_trajectory):
        dyn.run(cfg.sample_every)
        snap = atoms.copy()
        snap.set_constraint()
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        if atoms.pbc.all():
            results["stress"] = atoms.get_stress(voigt=True)
        snap.calc = SinglePointCalculator(snap, **results)
        snap.info.update(
            config_type=task.config_type,
            T_K=task.temperature,
            traj=task.traj,
            t_fs=(k + 1) * cfg.sample_every * cfg.timestep_fs,
        )
        frames.append(snap)
        tick()
    return frames


def generate(
    cfg: GenerateConfig,
    output: str | os.PathLike,
    progress: bool = True,
    restart: bool = False,
) -> dict[str, Any]:
    """Run every trajectory of :func:`plan_tasks` and write one labelled extxyz file.

    Finished trajectories are kept in ``.OUTPUT.parts/`` beside the output with the
    settings that made them; a rerun with the same settings resumes there. One process
    at a time writes ``output`` (:func:`ml4m.outputs.output_lock`).

    Parameters
    ----------
    cfg : GenerateConfig
        What to generate.
    output : str or PathLike
        The extxyz file to write (atomically, once complete).
    progress : bool, default=True
        Show a progress bar on stderr.
    restart : bool, default=False
        Discard the finished trajectories of an earlier run with *different* settings
        (without it such a run is refused, so that no two settings mix in one file).

    Returns
    -------
    dict
        ``n_frames``, ``n_trajectories``, ``lattice_constant_a`` (the host's, Angstrom),
        ``alloy_lattice_constants`` (Angstrom, by alloy fraction),
        ``resumed_trajectories``.

    Raises
    ------
    ConfigError
        Invalid settings, a partial run with other settings, or another process
        writing the same output.
    """
    from rich.progress import Progress

    from ml4m.outputs import check_output, output_lock

    tasks = plan_tasks(cfg)
    output = Path(output)
    check_output(output)
    calc = make_calculator(cfg.calculator, cfg.calculator_kwargs)
    a = _lattice_constant(cfg.elements[0], calc)
    a_of = _lattice_constants(cfg, calc, a)
    with output_lock(output):
        parts = output.with_name(f".{output.name}.parts")
        resumed = _claim_parts(parts, _run_digest(cfg, a_of), asdict(cfg), restart)
        total = len(tasks) * cfg.frames_per_trajectory
        with Progress(disable=not progress, transient=True) as bar:
            job = bar.add_task(f"generating {cfg.system} with {cfg.calculator}", total=total)
            for k, task in enumerate(tasks):
                part = parts / f"traj_{k:05d}.extxyz"
                if part.exists():
                    bar.advance(job, cfg.frames_per_trajectory)
                    continue
                frames = _run_task(task, cfg, calc, a_of[task.fraction], lambda: bar.advance(job))
                with atomic_path(part) as tmp:
                    ase.io.write(tmp, frames, format="extxyz")
        with atomic_path(output) as tmp:
            with open(tmp, "wb") as out:
                for k in range(len(tasks)):
                    with open(parts / f"traj_{k:05d}.extxyz", "rb") as src:
                        shutil.copyfileobj(src, out)
        shutil.rmtree(parts)
    return {
        "n_frames": total,
        "n_trajectories": len(tasks),
        "lattice_constant_a": a,
        "alloy_lattice_constants": {f"{x:g}": v for x, v in sorted(a_of.items())},
        "resumed_trajectories": resumed,
        "output": str(output),
    }


def _run_digest(cfg: GenerateConfig, lattice: dict[float, float]) -> str:
    """What makes a run's trajectories: its settings and the lattice constants its cells
    start from (the calculator's, so that parts of a run built on other lattices, e.g. by
    an older ml4m, never join this one's file)."""
    cells = {f"{x:g}": round(a, 6) for x, a in sorted(lattice.items())}
    return hashlib.sha256(json.dumps([cfg.digest(), cells]).encode()).hexdigest()[:16]


def _claim_parts(parts: Path, digest: str, config: dict[str, Any], restart: bool) -> int:
    """Prepare the parts folder of a run (``digest``: :func:`_run_digest`; ``config``:
    its settings, recorded); return the number of finished trajectories.

    A parts folder holding another run's digest (or none readable) is refused unless
    ``restart``; ``settings.json`` is written before the first trajectory.
    """
    settings = parts / "settings.json"
    if parts.exists():
        try:
            old = json.loads(settings.read_text())
            old_digest = old.get("digest") if isinstance(old, dict) else None
        except (OSError, ValueError):
            old_digest = None
        if old_digest != digest:
            if not restart:
                what = "other settings" if old_digest else "unreadable settings"
                done = len(list(parts.glob("traj_*.extxyz")))
                raise ConfigError(
                    f"{parts} holds {done} finished trajectories of an interrupted run with "
                    f"{what}; rerun with the same settings to resume it, or pass --overwrite "
                    "to discard it")
            shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    with atomic_path(settings) as tmp:
        tmp.write_text(json.dumps({"digest": digest, "config": config}))
    return len(list(parts.glob("traj_*.extxyz")))


def config_from_mapping(mapping: dict[str, Any], base: GenerateConfig | None = None,
                        source: str | os.PathLike | None = None) -> GenerateConfig:
    """A checked :class:`GenerateConfig` from a dict (YAML): ``mapping`` over ``base``.

    Raises
    ------
    ConfigError
        Unknown keys or invalid values, named (prefixed with ``source``).
    """
    from ml4m.validation import check_mapping

    base = base or GenerateConfig()
    values = asdict(base)
    values.update(check_mapping("generate settings", mapping, keys=values, source=source))
    cfg = GenerateConfig(**values)
    cfg.validate(source)
    return cfg

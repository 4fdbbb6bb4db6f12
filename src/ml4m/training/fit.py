"""Fit a model from a :class:`FitConfig`, and test a saved model on labelled data."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ml4m._fileio import atomic_path
from ml4m.data import LabelKeys, open_frames, read_dataset
from ml4m.errors import ConfigError
from ml4m.models.metrics import error_metrics
from ml4m.outputs import claim_output, own_copy, write_shared
from ml4m.training.config import FitConfig, is_network

__all__ = ["build_model", "fit_model", "model_outputs", "search_fit", "test_model"]

#: how far below a pair's shortest training distance ``pair_r_in: auto`` starts its radial basis
PAIR_R_IN_MARGIN = 0.25
#: budget of a fit with a basis search when ``max_minutes`` is not given, minutes
DEFAULT_SEARCH_MINUTES = 10.0
#: length of the search's MD probe, ps, and its time step, fs
PROBE_PS = 1.0
PROBE_DT_FS = 0.5


def _descriptor_settings(cfg: FitConfig, train) -> dict[str, Any]:
    """``cfg.descriptor`` with ``pair_r_in: auto`` resolved on the training frames: each
    element pair's radial basis from ``PAIR_R_IN_MARGIN`` below its shortest distance there
    (Angstrom; pairs never closer than 3 A keep ``r_in``)."""
    settings = dict(cfg.descriptor)
    if settings.get("pair_r_in") == "auto":
        from ml4m.data import pair_inner_radii

        settings["pair_r_in"] = pair_inner_radii(list(train), PAIR_R_IN_MARGIN)
    return settings


def build_model(cfg: FitConfig, species: list[int], train, descriptor=None):
    """The unfitted model ``cfg`` describes: its registered kind's class, built with the
    descriptor (``descriptor``, or the one ``cfg`` sets; none for kinds that take none),
    E0s, sigmas, seed, target and device the config gives (those the class takes) and
    ``cfg.params`` (checked by :meth:`FitConfig.validate`)."""
    from ml4m.descriptors import make_descriptor
    from ml4m.models.registry import model_kind

    kind = model_kind(cfg.model)
    if descriptor is None and (cfg.descriptor_type or kind.descriptor):
        descriptor = make_descriptor(cfg.descriptor_type or kind.descriptor, species=species,
                                     **_descriptor_settings(cfg, train))
    given = {"descriptor": descriptor, "e0": cfg.e0, "seed": cfg.seed, "target": cfg.target,
             "device": cfg.device, "sigma_energy": cfg.sigmas.get("energy", 0.001),
             "sigma_forces": cfg.sigmas.get("forces", 0.03),
             "sigma_stress": cfg.sigmas.get("stress", 0.003)}
    names = kind.cls.param_names()
    return kind.cls(**{k: v for k, v in given.items() if k in names}, **cfg.params)


def model_outputs(cfg: FitConfig) -> tuple[Path, list[Path]]:
    """The model file ``ml4m fit`` writes for ``cfg`` and its companions beside it.

    Returns
    -------
    model : Path
        ``cfg.output`` with the ``.ml4m`` suffix.
    companions : list of Path
        ``metrics.json`` (shared by the models of a folder), its copy
        ``{stem}_metrics.json`` and the plots (``{stem}_parity_energy.png``, ...).
    """
    from ml4m.models.serialization import MODEL_SUFFIX, model_file_path

    path = model_file_path(cfg.output)
    stem = path.name[: -len(MODEL_SUFFIX)]
    plots = ("learning_curve",) if cfg.model == "krr" else ("parity_energy", "parity_forces")
    if cfg.searches:
        plots += ("search",)
    metrics = metrics_path(path)
    companions = [metrics, own_copy(metrics, path)] + [path.parent / f"{stem}_{p}.png"
                                                        for p in plots]
    if cfg.searches:
        companions.append(chosen_config_path(path))
    if is_network(cfg.model):
        companions += list(network_files(path).values())
    if cfg.committee:
        from ml4m.training.committee_fit import committee_files

        files = committee_files(path, cfg.committee)
        companions.append(files["progress"])
        for member in files["members"]:
            companions += [member, *network_files(member).values()]
    return path, companions


def metrics_path(path: Path) -> Path:
    """``metrics.json`` beside the model ``path``: the metrics of the last model fitted
    in its folder, each model's also in its own ``{stem}_metrics.json``
    (:func:`ml4m.outputs.write_shared`)."""
    return path.parent / "metrics.json"


def chosen_config_path(path: Path) -> Path:
    """``{stem}_chosen.yaml`` beside the model ``path``: the settings a search chose."""
    return path.parent / f"{path.name[: -len(path.suffix)]}_chosen.yaml"


def network_files(path: Path) -> dict[str, Path]:
    """Files a network's fit writes beside ``path`` (the ``.ml4m`` model): the learning
    curve (``{stem}_learning_curve.png``), the per-epoch log (``{stem}_training.csv``) and
    the checkpoint (``.{stem}.ckpt``, removed once the model is written)."""
    stem = path.name[: -len(path.suffix)]
    return {"curve": path.parent / f"{stem}_learning_curve.png",
            "log": path.parent / f"{stem}_training.csv",
            "checkpoint": path.parent / f".{stem}.ckpt"}


def _check_device(device: str) -> None:
    """Refuse ``cuda`` on a machine without a CUDA device (instead of silently using CPU)."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device: 'cuda' was asked for but this machine has no CUDA device "
                              "(torch.cuda.is_available() is False); use --device cpu")


def fit_model(cfg: FitConfig, progress: bool = True, resume: bool = False,
              overwrite: bool = False) -> dict[str, Any]:
    """Fit, save the model, and write ``metrics.json`` and parity plots beside it.

    The outputs are claimed first (:func:`ml4m.outputs.claim_output`: not an input, not
    below a file, one writer at a time, a ``metrics.json`` of another model kept), so a
    bad output path fails before the fit.

    Parameters
    ----------
    cfg : FitConfig
        What to fit.
    progress : bool
        Show progress on stderr.
    resume : bool
        For networks: continue the training saved in the checkpoint beside the model
        (:func:`network_files`), e.g. after the process was killed.
    overwrite : bool
        Replace a ``metrics.json`` beside the model that records another model (or is
        not ml4m's).

    Returns
    -------
    dict
        ``model`` (path), ``seconds``, ``train`` and ``valid`` error metrics (see
        :func:`ml4m.models.error_metrics`), ``plots``.
    """
    _check_device(cfg.device)
    network = is_network(cfg.model)
    if resume and not network:
        raise ConfigError(f"resume applies to networks (their training is checkpointed), not "
                          f"to {cfg.model!r}")
    path, companions = model_outputs(cfg)
    inputs = [p for p in (cfg.train, cfg.valid, cfg.init) if p]
    started = time.perf_counter()
    if cfg.committee and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("a committee trains its members one after another in one process; "
                          "run it without torchrun (or train members with --seed k and join "
                          "them: ml4m.models.Committee.from_members)")
    if network and int(os.environ.get("RANK", "0")) > 0:
        # a further data-parallel process (torchrun): trains its share, writes nothing
        from ml4m.training.network import fit_network

        return fit_network(cfg, path, started, False, resume, write=False)[3]
    with claim_output(path, inputs=inputs, companions=companions, overwrite=overwrite,
                      shared=[(metrics_path(path), "model")]):
        if cfg.model == "krr":
            return _fit_property_model(cfg, path)
        if network:
            from ml4m.training.committee_fit import fit_committee
            from ml4m.training.network import fit_network

            fit = fit_committee if cfg.committee else fit_network
            model, train, valid, metrics = fit(cfg, path, started, progress, resume)
            return _write_potential_outputs(model, path, train, valid, metrics)
        return _fit_potential(cfg, path, started)


def _fit_potential(cfg: FitConfig, path: Path, started: float) -> dict[str, Any]:
    from ml4m.data.frames import Dataset
    from ml4m.models.baseline import attach_baseline_labels, with_baseline

    keys = LabelKeys(**cfg.keys)
    require = ("energy", "forces") if cfg.sigmas.get("forces", 0.03) else ("energy",)
    train = read_dataset(cfg.train, keys=keys, require=require)
    valid = read_dataset(cfg.valid, keys=keys, require=require) if cfg.valid else None
    species = [int(z) for z in train.atomic_numbers]
    t0 = time.perf_counter()
    budget = None
    search = None

    def build():  # the model, inside its repulsive core / baseline when asked for
        return with_baseline(build_model(cfg, species, train), cfg.repulsion_settings,
                             cfg.baseline, str(cfg.train))

    template = build()
    train = Dataset(attach_baseline_labels(template, list(train), cfg.train))
    if valid is not None:
        valid = Dataset(attach_baseline_labels(template, list(valid), cfg.valid))
    if cfg.searches:
        cfg, search, model = _search_basis(cfg, species, train, valid, path, started, template)
    elif cfg.max_minutes is None:
        model = template.fit(train, valid)
    else:
        from ml4m.training.budget import fit_within_budget

        def fit(frames):
            return build().fit(frames, valid)

        model, plan = fit_within_budget(fit, list(train), 60.0 * cfg.max_minutes, started)
        budget = plan.as_dict()
    fit_seconds = time.perf_counter() - t0
    path = model.save(path)
    metrics: dict[str, Any] = {"model": str(path), "kind": model.kind, "fit_seconds": fit_seconds,
                               "n_features": model.n_parameters,
                               "config": {k: v for k, v in vars(cfg).items()}}
    if budget is not None:
        metrics["budget"] = budget
    if search is not None:
        metrics["search"] = search
        metrics["plots"] = [search["plot"]]
        metrics["total_seconds"] = time.perf_counter() - started
    return _write_potential_outputs(model, path, train, valid, metrics)


def _search_basis(cfg: FitConfig, species: list[int], train, valid, path: Path, started: float,
                  template) -> tuple[FitConfig, dict[str, Any], Any]:
    """:func:`search_fit`, then the chosen config written beside the model and the CV
    plot. ``valid`` is not read, only sized (the report's cost). Returns the config with
    the chosen descriptor, the search record for ``metrics.json`` and the fitted model."""
    import yaml

    report = (0, 0) if valid is None else (len(valid), sum(len(f) for f in valid))
    chosen, result, model = search_fit(cfg, species, train, template, started, report)
    record = {k: v for k, v in vars(chosen).items()
              if k not in ("max_minutes", "device", "output") and v not in (None, {}, [])}
    stem = path.name[: -len(path.suffix)]
    with atomic_path(chosen_config_path(path)) as tmp:
        tmp.write_text("# written by ml4m fit: the basis its search chose; `ml4m fit` of this\n"
                       "# file refits the same model without a search\n"
                       + yaml.safe_dump(record, sort_keys=False))
    from ml4m.training.plots import search_plot

    png = search_plot(result.table, path.parent / f"{stem}_search.png")
    out = result.as_dict()
    out.update(chosen_config=str(chosen_config_path(path)), plot=str(png),
               budget_minutes=search_minutes(cfg))
    return chosen, out, model


def search_minutes(cfg: FitConfig) -> float:
    """The budget of a fit with a basis search, minutes (``DEFAULT_SEARCH_MINUTES`` unless
    ``cfg.max_minutes``)."""
    return cfg.max_minutes if cfg.max_minutes is not None else DEFAULT_SEARCH_MINUTES


def search_fit(cfg: FitConfig, species: list[int], train, template, started: float,
               report: tuple[int, int] = (0, 0)):
    """The fit of a config that searches its basis (``cfg.searches``): the ACE basis chosen
    by CV inside ``train`` (:func:`~ml4m.training.search.search_linear_ace`, with the MD
    probe; for ``gp``, the sparse GP on it) within ``cfg``'s budget counted from
    ``started`` (``time.perf_counter()``), and fitted. ``template``: the unfitted model as
    the config builds it (inside its baseline when it has one: the search then fits the
    residuals of the baseline, fitted on ``train`` first). ``report``: frames and atoms
    predicted with sigmas after the fit (kept out of the search's share of the budget).
    Writes nothing. Returns the config with the chosen descriptor (``search: off``), the
    :class:`~ml4m.training.search.SearchResult` and the fitted model."""
    import dataclasses

    from ml4m.models.baseline import Baselined
    from ml4m.training.search import search_linear_ace

    minutes = search_minutes(cfg)
    others = {k: v for k, v in cfg.params.items() if k != "species_degree"}
    if cfg.model == "gp":
        # one noise level unless given, as the search's CV has (the per-quantity evidence
        # search is an L-BFGS with a factorisation per step: on Cu-Au the final fit then
        # took 420 s against the 90 s planned), and KERNEL_POINTS sparse environments
        # shared among the species; both recorded in the chosen config
        from ml4m.training.search import KERNEL_POINTS

        others = {"noise": "shared", "n_sparse": max(1, KERNEL_POINTS // len(species)), **others}

    from ml4m.models.linear import LinearACE

    linear = {k: v for k, v in others.items() if k in LinearACE.param_names()}

    def make_model(descriptor, species_degree):  # a linear ACE rung
        rung = dataclasses.replace(cfg, model="ace",
                                   params={**linear, "species_degree": species_degree})
        return build_model(rung, species, train, descriptor=descriptor)

    def make_kernel_model(descriptor, species_degree, kernel_columns):  # a GP on a rung
        rung = dataclasses.replace(cfg, params={**others, "species_degree": species_degree,
                                                "kernel_columns": kernel_columns})
        return build_model(rung, species, train, descriptor=descriptor)

    frames, baseline = list(train), None
    if isinstance(template, Baselined):
        baseline, frames, _ = template.residuals(frames)
    probe, steps, temperature = _md_probe(list(train), baseline, cfg.seed)
    result = search_linear_ace(frames, 60.0 * minutes, make_model, started, report=report,
                               probe=probe, probe_steps=steps,
                               smoothness=cfg.params.get("smoothness"),
                               make_kernel_model=make_kernel_model if cfg.model == "gp" else None)
    if result.plan.get("md_probe_stable") is False:
        import warnings

        from ml4m.training.probe import PROBE_TEMPERATURE_FACTOR

        warnings.warn(f"no basis among the best by CV stayed stable in the search's MD probe "
                      f"({PROBE_PS:g} ps at {temperature:g} K, {PROBE_TEMPERATURE_FACTOR:g}x "
                      "the data's temperature, from the first training frame); the best by CV "
                      "is kept: run MD hotter than the training data with care, or add data "
                      "there (ml4m learn)", stacklevel=3)
    model = result.model if baseline is None else Baselined.from_fitted(result.model, baseline)
    chosen = dataclasses.replace(cfg, descriptor=result.descriptor, descriptor_type="ace",
                                 params={**others, **result.params}, search="off")
    return chosen, result, model


def _md_probe(train: list, baseline, seed: int):
    """The search's MD probe (:func:`~ml4m.training.probe.md_probe`), its steps and its
    temperature (K): ``PROBE_PS`` of Langevin dynamics from the first training frame at
    :func:`~ml4m.training.probe.probe_temperature`, the candidate inside ``baseline``."""
    from ml4m.data import shortest_distances
    from ml4m.models.baseline import Baselined
    from ml4m.training.probe import md_probe, probe_temperature

    shortest = shortest_distances(train)
    temperature = probe_temperature(train)
    steps = int(round(PROBE_PS * 1000.0 / PROBE_DT_FS))

    def probe(inner):
        model = inner if baseline is None else Baselined.from_fitted(inner, baseline)
        return md_probe(model, train[0], shortest, temperature, steps, dt_fs=PROBE_DT_FS,
                        seed=seed)

    return probe, steps, temperature


def _write_potential_outputs(model, path: Path, train, valid, metrics: dict[str, Any]
                             ) -> dict[str, Any]:
    """Errors on ``train`` and ``valid`` (sigmas on ``valid`` when the model has them),
    parity plots, and ``metrics.json`` (``metrics`` plus the errors and the plots)."""
    sets = {"train": (train, model.predict(train, uncertainty=False))}
    if valid is not None:
        sets["valid"] = (valid, model.predict(valid, uncertainty=model.has_uncertainty))
    for name, (ds, pred) in sets.items():
        metrics[name] = error_metrics(pred, ds)
    from ml4m.training.plots import parity_plots

    stem = path.name[: -len(path.suffix)]
    metrics["plots"] = metrics.get("plots", []) + [
        str(p) for p in parity_plots(sets, path.parent, prefix=f"{stem}_")]
    write_shared(metrics_path(path), path, json.dumps(metrics, indent=1, default=str))
    return metrics


def _fit_property_model(cfg: FitConfig, path: Path) -> dict[str, Any]:
    """Kernel ridge / GP on a global descriptor, with CV and a learning curve."""
    from ml4m.models.kernel import frame_targets, learning_curve

    keys = LabelKeys(**cfg.keys)
    train = read_dataset(cfg.train, keys=keys)
    valid = read_dataset(cfg.valid, keys=keys) if cfg.valid else None
    species = [int(z) for z in train.atomic_numbers]
    t0 = time.perf_counter()
    model = build_model(cfg, species, train).fit(train)
    fit_seconds = time.perf_counter() - t0
    path = model.save(path)
    metrics: dict[str, Any] = {"model": str(path), "kind": model.kind, "fit_seconds": fit_seconds,
                               "cv": {k: v for k, v in model.cv_.items() if k != "grid"},
                               "train": model.score(train), "plots": []}
    if valid is not None:
        metrics["valid"] = model.score(valid)
        X, y = model.features(train), frame_targets(list(train), cfg.target)
        sizes = tuple(int(s) for s in np.unique(np.geomspace(8, len(y), 6).astype(int)))
        curve = learning_curve(X, y, model.features(valid), frame_targets(list(valid), cfg.target),
                               sizes, kernel=model.kernel, alpha=model.cv_["alpha"],
                               gamma=model.cv_["gamma"], seed=cfg.seed)
        stem = path.name[: -len(path.suffix)]
        png = path.parent / f"{stem}_learning_curve.png"
        curve.plot(png, label=f"valid MAE of {cfg.target}")
        metrics["learning_curve"] = {"sizes": curve.sizes.tolist(), "mae": curve.mae.tolist(),
                                     "slope": curve.slope()}
        metrics["plots"].append(str(png))
    write_shared(metrics_path(path), path, json.dumps(metrics, indent=1, default=str))
    return metrics


def test_model(model_path: str | os.PathLike, data: str | os.PathLike,
               keys: LabelKeys | None = None) -> dict[str, Any]:
    """Errors of a saved model on a labelled file or packed store (the ``ml4m test
    --json`` object)."""
    from ml4m.models.serialization import load

    from ml4m.models.base import Potential

    model = load(model_path)
    if not isinstance(model, Potential):  # a structure-property model
        return model.score(read_dataset(data, keys=keys))
    from ml4m.data.frames import Dataset
    from ml4m.models.baseline import attach_baseline_labels

    ds = open_frames(data, keys=keys, require=("energy",))
    ds = Dataset(attach_baseline_labels(model, list(ds), data))  # a delta model's baseline labels
    t0 = time.perf_counter()
    pred = model.predict(ds, uncertainty=model.has_uncertainty)
    result = error_metrics(pred, ds)
    result["seconds"] = time.perf_counter() - t0
    return result

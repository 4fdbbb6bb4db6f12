"""``ml4m fit`` for networks: build the torch potential a config names, train it with
:class:`~ml4m.training.Trainer`, save it, and remove its checkpoint."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from ml4m.data import LabelKeys, open_frames
from ml4m.data.frames import Dataset
from ml4m.errors import ConfigError
from ml4m.training.config import FitConfig

__all__ = ["fit_network", "initial_network", "metric_frames", "plan_evaluations", "POST_FRACTION",
           "POST_SECONDS", "EVAL_FRACTION"]

#: share of a ``max_minutes`` budget, plus seconds, kept for the plots and saving (the
#: trainer itself keeps time for the last-layer posterior and the metrics' predictions)
POST_FRACTION, POST_SECONDS = 0.05, 3.0
#: largest share of the budget the evaluations after training may take (fewer validation
#: and metric frames are used otherwise, :func:`plan_evaluations`)
EVAL_FRACTION = 0.3
#: most training frames the metrics and the last-layer posterior use (evenly spaced)
METRIC_FRAMES = 2000


def _spaced(data, n: int) -> Dataset:
    """``n`` evenly spaced frames of a data set or a store (all of them if it has fewer)."""
    from ml4m.training.batches import as_graph_set

    if isinstance(data, Dataset) and len(data) <= n:
        return data
    return Dataset(as_graph_set(data, "train").spaced(n))


def _atoms(data) -> int:
    return int(data.n_atoms) if isinstance(data, Dataset) else int(data.offsets[-1])


def plan_evaluations(model, train, valid, seconds: float,
                     cost: dict[str, Any] | None = None, evaluate: bool = True
                     ) -> dict[str, Any]:
    """How many frames to validate and to measure errors on within ``seconds``
    (``evaluate`` False: the network gets no last-layer posterior and the fit reports no
    errors of it, a committee's member; only the last validation is planned).

    The evaluations' costs per atom are measured on a small training frame
    (:func:`~ml4m.training.costs.evaluation_costs`, unless ``cost`` gives them); the work
    that scales with the data and follows training (the last validation, the last-layer
    posterior with its Jacobian and calibration, the metrics) is cut to evenly spaced
    frames so that it takes at most :data:`EVAL_FRACTION` of ``seconds``.

    Returns
    -------
    dict
        ``costs`` (:func:`~ml4m.training.costs.evaluation_costs`), ``valid_frames`` and
        ``train_frames`` (how many to use), ``after_seconds`` (the metrics' predictions
        with those), ``eval_seconds`` (all the evaluations after training) and
        ``valid_seconds`` (one validation, as after every epoch).
    """
    from ml4m.training.costs import (
        evaluation_costs,
        largest_share,
        last_layer_seconds,
        probe_frames,
    )

    if cost is None:
        cost = evaluation_costs(model, probe_frames(_spaced(train, 16)))
    n_train, n_valid = min(len(train), METRIC_FRAMES), len(valid) if valid is not None else 0
    per_train = _atoms(train) / len(train)
    per_valid = _atoms(valid) / n_valid if n_valid else 0.0
    jacobian_atoms = getattr(model, "jacobian_atoms", math.inf)

    def predictions(train_atoms: float, valid_atoms: float) -> float:
        """The metrics' predictions: forces of the training frames, sigmas of the valid."""
        return (cost["forces"] * train_atoms + cost["sigma"] * valid_atoms) if evaluate else 0.0

    def seconds_of(share: float) -> float:
        train_atoms, valid_atoms = share * n_train * per_train, share * n_valid * per_valid
        posterior = (last_layer_seconds(cost, train_atoms, valid_atoms or train_atoms,
                                        jacobian_atoms) if evaluate else 0.0)
        return (cost["forces"] * valid_atoms  # the last validation
                + posterior + predictions(train_atoms, valid_atoms))

    share = largest_share(seconds_of, EVAL_FRACTION * seconds)
    valid_frames = min(n_valid, max(1, int(share * n_valid)))
    train_frames = max(1, int(share * n_train))
    return {"costs": cost, "train_frames": train_frames, "valid_frames": valid_frames,
            "after_seconds": predictions(per_train * train_frames, per_valid * valid_frames),
            "eval_seconds": seconds_of(share),
            "valid_seconds": cost["forces"] * per_valid * valid_frames}


def fit_network(cfg: FitConfig, path: Path, started: float, progress: bool, resume: bool,
                write: bool = True, evaluate: bool = True
                ) -> tuple[Any, Dataset, Dataset | None, dict[str, Any]]:
    """Train the network ``cfg`` describes and save it to ``path``.

    The checkpoint and the per-epoch CSV go beside the model
    (:func:`ml4m.training.fit.network_files`); the checkpoint is removed only after the
    model file is written, so a run killed at any point can be resumed (``resume``).
    With ``write`` False (the further processes of a data-parallel run) nothing is
    written, ``train``/``valid`` come back as None and ``metrics`` holds ``kind``,
    ``fit_seconds`` and ``plan`` (the frames and costs the run followed).
    The model is prepared on the frames the trainer would prepare it on
    (:func:`~ml4m.training.trainer.prepare_model`). With ``cfg.max_minutes``, the
    trainer gets what is left of the budget but :data:`POST_FRACTION` of it and
    :data:`POST_SECONDS`, and stops early enough to predict the frames of the metrics in
    it (unless ``evaluate`` is False: a committee's member, which gets no last-layer
    posterior and whose errors the caller does not report); the first process plans the
    evaluations
    (:func:`plan_evaluations`) and every data-parallel process follows its plan.

    Returns
    -------
    model : TorchPotential
        Trained (and saved).
    train, valid : Dataset
        Frames for the error metrics: at most :data:`METRIC_FRAMES` evenly spaced
        training frames, and the validation frames (fewer, evenly spaced, when a
        budget demands it: :func:`plan_evaluations`).
    metrics : dict
        ``model``, ``kind``, ``fit_seconds``, ``n_features`` (parameters), ``config``,
        ``training`` (epochs, steps, stop reason, settings, log file), ``plots``
        (the learning curve) and, with a budget, ``budget`` (``budget_seconds`` and
        :func:`plan_evaluations`'s plan).
    """
    from ml4m.training.batches import as_graph_set
    from ml4m.training.distributed import Distributed
    from ml4m.training.fit import network_files

    files = network_files(path)
    base = {**cfg.training, "seed": cfg.seed, "checkpoint": str(files["checkpoint"]),
            "log_csv": str(files["log"]), "progress": progress}
    model, start, baseline, learnt_train, learnt_valid, train, valid = \
        _model_and_frames(cfg, base)
    dist = Distributed.from_env(cfg.device)  # the group the trainer joins, joined first
    try:
        return _train(cfg, model, as_graph_set(learnt_train, "train"), learnt_train,
                      learnt_valid, base, dist, started, resume, files, path, write,
                      baseline, train, valid, evaluate=evaluate, start=start)
    finally:
        dist.close()


def initial_network(cfg: FitConfig) -> Any:
    """The fitted network ``cfg.init`` names (the one inside its baseline), or None.

    Raises
    ------
    ConfigError
        The file holds a committee or a network of another kind than ``cfg.model``.
    DataError
        The file cannot be read as a model (:func:`ml4m.load`).
    """
    import ml4m
    from ml4m.models.committee import Committee
    from ml4m.training.finetune import network_of

    if cfg.init is None:
        return None
    loaded = ml4m.load(cfg.init)
    if isinstance(loaded, Committee):
        raise ConfigError(f"{cfg.init}: a committee; init takes one network (one of its "
                          "members' files, {stem}_member0.ml4m)")
    net = network_of(loaded)
    if getattr(net, "kind", None) != cfg.model:
        raise ConfigError(f"{cfg.init}: a {getattr(net, 'kind', type(net).__name__)!r} model; "
                          f"init needs a fitted {cfg.model!r} network to start from")
    return net


def _model_and_frames(cfg: FitConfig, base: dict[str, Any]):
    """The unfitted network ``cfg`` describes (of the architecture of the network it
    starts from, :func:`initial_network`), that network (or None), and the frames of
    its fit: the baseline and the learnt and reference frames of :func:`_delta` (the
    labels the training settings ``base`` weigh are required)."""
    from ml4m.training.fit import build_model
    from ml4m.training.settings import TrainSettings

    settings = TrainSettings.from_mapping(base, source="config")
    require = tuple(t for t in ("energy", "forces") if settings.weight(t) > 0)
    keys = LabelKeys(**cfg.keys)
    train = open_frames(cfg.train, keys, require=require)
    valid = open_frames(cfg.valid, keys, require=require) if cfg.valid else None
    start = initial_network(cfg)
    # a network: no descriptor, species from prepare; or the architecture of the one it
    # starts from, with this run's seed and device
    model = (build_model(cfg, [], None) if start is None
             else start.clone().set_params(seed=cfg.seed, device=cfg.device))
    return (model, start, *_delta(cfg, model, train, valid))


def metric_frames(cfg: FitConfig) -> tuple[Dataset, Dataset | None]:
    """The frames a network's fit reports its errors on (without a budget): at most
    :data:`METRIC_FRAMES` evenly spaced training frames and the validation frames, with
    the labels of its baseline (the reference frames of :func:`_delta`)."""
    *_, train, valid = _model_and_frames(cfg, {**cfg.training, "seed": cfg.seed})
    return _spaced(train, METRIC_FRAMES), valid


def _delta(cfg, model, train, valid):
    """The baseline (``repulsion:``, on by default, and ``baseline:``): the fitted
    baseline, the frames the network learns (reference minus baseline: train, valid),
    and the reference frames carrying the baseline's labels (train, valid: for the
    errors of the sum). Without a baseline: ``None``, then ``train, valid`` twice.

    A packed store is learnt as it is when the baseline is the repulsive core alone with
    radii from the data: the core is zero on every frame it was fitted on (each pair's
    radius is below its shortest distance there), so it is fitted in one pass over the
    store and nothing needs relabelling.

    Raises
    ------
    ConfigError
        A packed store as ``train`` or ``valid`` with any other baseline (its frames are
        streamed, not relabelled).
    """
    from ml4m.models.baseline import (PairRepulsion, attach_baseline_labels, residual_frames,
                                      with_baseline)

    template = with_baseline(model, cfg.repulsion_settings, cfg.baseline, str(cfg.train))
    if template is model:
        return None, train, valid, train, valid
    stores = [name for name in ("train", "valid")
              if getattr(cfg, name) and Path(getattr(cfg, name)).is_dir()]
    if stores:
        core = template.baseline
        if not (isinstance(core, PairRepulsion) and not core.r_in):
            raise ConfigError(f"{getattr(cfg, stores[0])}: a network learns a baseline's "
                              "residuals from a structure file, not a packed store")
        core = core.clone().fit(train)

        def learnt(name, data):  # a file's frames relabelled (exact), a store as it is
            if data is None or name in stores:
                return data
            return Dataset(residual_frames(list(data), core))

        return core, learnt("train", train), learnt("valid", valid), train, valid
    train = Dataset(attach_baseline_labels(template, list(train), cfg.train))
    if valid is not None:
        valid = Dataset(attach_baseline_labels(template, list(valid), cfg.valid))
    baseline, learnt_train, learnt_valid = template.residuals(train, valid)
    return (baseline, Dataset(learnt_train),
            None if learnt_valid is None else Dataset(learnt_valid), train, valid)


def _regime(cfg, model, train_set, base, dist, resume, left, plan) -> dict[str, Any] | None:
    """Settings by the regime of the fit (:mod:`ml4m.training.regime`): the model
    kind's ``regime_defaults`` for the passes the run will make (its epochs; with a
    budget, ``plan``, also the passes that fit in the ``left()`` seconds less the
    evaluations after training, each pass the measured step time times the batches
    plus one validation), those of the checkpoint's run when resuming; the config's own
    settings are kept. Training settings go into ``base``; hyperparameters are set on
    ``model``, which is then prepared again. The first process decides, every process
    follows.

    Returns
    -------
    dict or None
        :func:`~ml4m.training.regime.choose_regime`'s, with ``step_seconds``,
        ``train_seconds`` and ``seconds_per_pass`` (None without a budget), None for a
        kind without ``regime_defaults``.
    """
    from ml4m.training.batches import epoch_batches
    from ml4m.training.checkpoint import load_checkpoint
    from ml4m.training.costs import step_seconds
    from ml4m.training.regime import choose_regime, expected_passes, regime_of_checkpoint
    from ml4m.training.settings import TrainSettings
    from ml4m.training.trainer import prepare_model

    defaults = type(model).regime_defaults
    if not defaults:
        return None
    regime = None
    # a network started from another keeps its architecture: every hyperparameter is given
    params = cfg.params if cfg.init is None else model.get_params()
    if dist.main:
        if resume and Path(base["checkpoint"]).is_file():
            regime = regime_of_checkpoint(load_checkpoint(base["checkpoint"]), defaults,
                                          params, cfg.training)
        else:
            # the run's epochs: the budget's, not those of a run without one
            settings = TrainSettings.from_mapping({**base, "max_minutes": cfg.max_minutes},
                                                  source="config")
            n_batches = len(epoch_batches(len(train_set), settings.batch_size, settings.seed,
                                          0, dist.world))
            epochs = settings.resolved(n_batches, model.training_defaults).max_epochs
            seconds = train_seconds = per_pass = None
            if plan is not None:
                seconds = step_seconds(model, train_set, settings.batch_size)
                train_seconds = left() - plan["eval_seconds"]
                per_pass = seconds * n_batches + plan["valid_seconds"]
            regime = choose_regime(expected_passes(epochs, train_seconds, per_pass),
                                   defaults, params, cfg.training)
            regime.update(step_seconds=seconds, train_seconds=train_seconds,
                          seconds_per_pass=per_pass)
    regime = dist.broadcast(regime)
    base.update(regime["training"])
    if regime["params"]:
        model.set_params(**regime["params"])
        prepare_model(model, train_set, cfg.seed)
    return regime


def _train(cfg, model, train_set, train, valid, base, dist, started, resume, files, path,
           write, baseline=None, reference_train=None, reference_valid=None, evaluate=True,
           start=None):
    """:func:`fit_network` once the data are read and the process group is joined; with
    a ``baseline`` the network learns ``train``/``valid`` (residuals) and the saved
    model is the sum, its errors measured on the ``reference_`` frames; with ``start``
    (a fitted network) training starts from its weights."""
    from ml4m.models.baseline import Baselined
    from ml4m.training.curves import plot_training_curve
    from ml4m.training.settings import TrainSettings
    from ml4m.training.trainer import Trainer, prepare_model

    def left() -> float:  # seconds of the budget left for training and evaluations
        return (60.0 * cfg.max_minutes * (1.0 - POST_FRACTION) - POST_SECONDS
                - (time.perf_counter() - started))

    if start is None:
        prepare_model(model, train_set, cfg.seed)
    else:  # for the elements of the network started from, which the data may not all hold
        prepare_model(model, train_set, cfg.seed, species=start.species_).start_from(start)
    plan: dict[str, Any] = {
        "train_frames": min(len(train), METRIC_FRAMES),
        "valid_frames": len(valid) if valid is not None else 0, "after_seconds": 0.0}
    budget = cfg.max_minutes is not None
    if budget:
        plan = dist.broadcast(plan_evaluations(model, train, valid, left(), evaluate=evaluate)
                              if dist.main else None)
    regime = _regime(cfg, model, train_set, base, dist, resume, left, plan if budget else None)
    if budget:
        plan["train_minutes"] = dist.broadcast(max(left(), 1.0) / 60.0)
        base["max_minutes"] = plan["train_minutes"]
    if valid is not None:
        valid = _spaced(valid, plan["valid_frames"])
    train_metrics = _spaced(train, plan["train_frames"])
    trainer = Trainer(TrainSettings.from_mapping(base, source="config"))
    t0 = time.perf_counter()
    model = trainer.fit(model, train_set, valid, resume=resume,
                        after_seconds=plan["after_seconds"],
                        last_layer_frames=plan["train_frames"] if evaluate else 0,
                        costs=plan.get("costs"))
    fit_seconds = time.perf_counter() - t0
    if baseline is not None:  # the sum, scored on the reference labels
        model = Baselined.from_fitted(model, baseline)
        train_metrics = _spaced(reference_train, plan["train_frames"])
        if valid is not None:
            valid = _spaced(reference_valid, plan["valid_frames"])
    if not write:
        return model, None, None, {"kind": model.kind, "fit_seconds": fit_seconds,
                                   "plan": plan}
    path = model.save(path)
    files["checkpoint"].unlink(missing_ok=True)
    curve = plot_training_curve(trainer.history, files["curve"])
    last = trainer.history[-1]
    metrics: dict[str, Any] = {
        "model": str(path), "kind": model.kind, "fit_seconds": fit_seconds,
        "n_features": model.n_parameters, "config": dict(vars(cfg)),
        "training": {"epochs": len(trainer.history), "steps": last["step"],
                     "stop_reason": trainer.stop_reason, "log": str(files["log"]),
                     "settings": trainer.settings.as_dict(), "last_epoch": last,
                     "regime": regime},
        "plots": [str(curve)]}
    if cfg.max_minutes is not None:
        metrics["budget"] = {"budget_seconds": 60.0 * cfg.max_minutes, **plan}
    return model, train_metrics, valid, metrics

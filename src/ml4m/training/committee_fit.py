"""``ml4m fit`` with ``committee: K``: K networks trained one after another with seeds
``seed``, ..., ``seed + K - 1``, joined into one :class:`~ml4m.models.Committee` whose
spread is calibrated on the validation frames.

Each member is trained as a single network's fit trains it (:func:`~ml4m.training.
network.fit_network`: regime, checkpoint, per-epoch log and learning curve), without
the last-layer posterior the committee's spread replaces, and saved as
``{stem}_member{k}.ml4m`` beside the committee; a budget (``max_minutes``) is shared
equally among the members still to train, less :data:`END_FRACTION` kept for the
committee's calibration and metrics. Progress (the settings and the members finished) is
kept in ``.{stem}.committee.json`` until the committee is written, so that ``--resume``
after a kill keeps the finished members and resumes the interrupted one from its
checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from ml4m._fileio import atomic_path
from ml4m.errors import ConfigError
from ml4m.training.config import FitConfig

__all__ = ["END_FRACTION", "committee_files", "fit_committee"]

#: share of a budget kept for the committee after its members: calibration on the
#: validation frames and the metrics' predictions (K members each)
END_FRACTION = 0.05


def committee_files(path: Path, n_members: int) -> dict[str, Any]:
    """Files a committee's fit writes beside its model ``path``: ``members`` (each
    member's model, ``{stem}_member{k}.ml4m``, with its network files: log, learning
    curve, checkpoint) and ``progress`` (``.{stem}.committee.json``, removed once the
    committee is written)."""
    stem = path.name[: -len(path.suffix)]
    return {"members": [path.parent / f"{stem}_member{k}{path.suffix}" for k in range(n_members)],
            "progress": path.parent / f".{stem}.committee.json"}


def _settings_record(cfg: FitConfig) -> dict[str, Any]:
    """What a resumed committee must share with the run it resumes (JSON-comparable)."""
    return json.loads(json.dumps(vars(cfg), default=str))


def _finished(progress: Path, cfg: FitConfig, resume: bool) -> list[int]:
    """Members a resumed fit keeps: those the progress file lists, when its settings are
    ``cfg``'s (a ConfigError otherwise); none for a new fit."""
    if not (resume and progress.is_file()):
        return []
    record = json.loads(progress.read_text())
    if record.get("settings") != _settings_record(cfg):
        raise ConfigError(f"{progress}: this committee was started with other settings; run "
                          "without --resume to start it again")
    return [int(k) for k in record.get("finished", [])]


def fit_committee(cfg: FitConfig, path: Path, started: float, progress: bool, resume: bool
                  ) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Train ``cfg.committee`` networks, join and calibrate them, save the committee.

    Parameters
    ----------
    cfg : FitConfig
        A network's config with ``committee`` set.
    path : Path
        The committee's model file.
    started : float
        ``time.perf_counter()`` at the start of the fit (the budget counts from it).
    progress : bool
        Show each member's training progress.
    resume : bool
        Keep the members a killed run finished, resume the interrupted one.

    Returns
    -------
    model : Committee
        Saved to ``path``, calibrated on the validation frames when there are some.
    train, valid : Dataset
        The frames for the metrics (those of the last member's fit).
    metrics : dict
        ``model``, ``kind``, ``fit_seconds``, ``n_features``, ``config``, ``committee``
        (``members``: each member's file, seed, seconds and training record;
        ``calibration``: the spread's factors) and, with a budget, ``budget``
        (``budget_seconds``; ``train_frames`` and ``valid_frames``: those of the
        committee's calibration and errors, fewer when the time left demands it).
    """
    import ml4m
    from ml4m.models.committee import Committee
    from ml4m.training.fit import network_files
    from ml4m.training.network import fit_network, metric_frames

    k_members = int(cfg.committee)
    files = committee_files(path, k_members)
    if resume and not files["progress"].is_file() \
            and not network_files(files["members"][0])["checkpoint"].is_file():
        raise ConfigError(f"{files['progress']}: no committee to resume (neither its progress "
                          "file nor its first member's checkpoint exists)")
    finished = _finished(files["progress"], cfg, resume)
    budget = None if cfg.max_minutes is None else 60.0 * cfg.max_minutes
    t0 = time.perf_counter()
    members, records = [], []
    train = valid = None
    for k in range(k_members):
        member_path = files["members"][k]
        if k in finished:
            members.append(ml4m.load(member_path))
            records.append({"model": str(member_path), "seed": cfg.seed + k, "resumed": True})
            continue
        minutes = None
        if budget is not None:
            left = budget * (1.0 - END_FRACTION) - (time.perf_counter() - started)
            minutes = max(left, 6.0) / (k_members - k) / 60.0
        member_cfg = dataclasses.replace(cfg, seed=cfg.seed + k, max_minutes=minutes,
                                         committee=None, output=str(member_path))
        checkpoint = network_files(member_path)["checkpoint"]
        model, train, valid, record = fit_network(member_cfg, member_path, time.perf_counter(),
                                                  progress, resume and checkpoint.is_file(),
                                                  evaluate=False)
        members.append(model)
        records.append({"model": record["model"], "seed": cfg.seed + k,
                        "fit_seconds": record["fit_seconds"], "training": record["training"],
                        **({"budget": record["budget"]} if "budget" in record else {})})
        finished.append(k)
        with atomic_path(files["progress"]) as tmp:
            tmp.write_text(json.dumps({"settings": _settings_record(cfg), "finished": finished}))
    if train is None:  # every member was finished before: the frames of a member's fit
        train, valid = metric_frames(cfg)
    elif budget is not None:
        left = budget - (time.perf_counter() - started)
        train, valid = _end_frames(train, valid, records[-1]["budget"]["costs"]["forces"],
                                   k_members, left)
    committee = Committee.from_members(members, resample="seed", seed=cfg.seed)
    if valid is not None and len(valid):
        committee.calibrate(valid)
    fit_seconds = time.perf_counter() - t0
    path = committee.save(path)
    files["progress"].unlink(missing_ok=True)
    metrics: dict[str, Any] = {
        "model": str(path), "kind": committee.kind, "fit_seconds": fit_seconds,
        "n_features": committee.n_parameters, "config": dict(vars(cfg)),
        "committee": {"members": records, "calibration": dict(committee.calibration_)},
        "plots": [str(network_files(m)["curve"]) for m in files["members"]]}
    if budget is not None:
        metrics["budget"] = {"budget_seconds": budget, "train_frames": len(train),
                             "valid_frames": len(valid) if valid is not None else 0}
    return committee, train, valid, metrics


def _end_frames(train, valid, seconds_per_atom: float, k_members: int, seconds: float):
    """``train`` and ``valid`` cut to evenly spaced frames (one share of each) so that
    the committee's end fits in ``seconds``: its calibration and the valid metrics
    (two predictions of the valid frames by every member) and the training metrics
    (one), at ``seconds_per_atom`` per member and atom (a member's measured cost)."""
    from ml4m.training.network import _atoms, _spaced

    work = k_members * seconds_per_atom * (_atoms(train)
                                           + (2 * _atoms(valid) if valid is not None else 0))
    share = min(1.0, max(seconds, 0.0) / work) if work > 0 else 1.0
    if share < 1.0:
        train = _spaced(train, max(1, int(share * len(train))))
        if valid is not None:
            valid = _spaced(valid, max(1, int(share * len(valid))))
    return train, valid

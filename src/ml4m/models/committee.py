"""A committee of potentials: the members' mean is the prediction, their spread the sigma.

Any potential kind can be a member. The members are clones of one template model
fitted on bootstrap samples of the training set (whole trajectories when the frames
carry ``info['traj']``, frames otherwise) or on the whole set with different seeds;
their disagreement estimates the model error where the training data did not pin the
model down (query by committee, as in the on-the-fly learning of neural potentials).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ml4m.data.frames import Dataset, Frame
from ml4m.errors import ConfigError, DataError, NotFittedError
from ml4m.models.base import Potential, Prediction, as_frames
from ml4m.models.registry import model_kind, register_model
from ml4m.models.serialization import check_state_version
from ml4m.validation import check_float, check_int, check_mapping, int_from, one_of

__all__ = ["Committee"]

#: the factors of a committee's spread before :meth:`Committee.calibrate`
UNCALIBRATED = {"energy": 1.0, "forces": 1.0}


def _groups(frames: list[Frame]) -> list[list[int]]:
    """Frame indices grouped by ``info['traj']`` when every frame has one, else one each."""
    keys = [f.info.get("traj") for f in frames]
    if any(k is None for k in keys):
        return [[i] for i in range(len(frames))]
    out: dict[Any, list[int]] = {}
    for i, k in enumerate(keys):
        out.setdefault(k, []).append(i)
    return list(out.values())


#: members from which, asking for the spread, one descriptor pass with per-feature
#: gradients shared by all (then a product per member) is cheaper than one adjoint pass
#: per member (the gradients cost about as much as this many adjoint passes)
SHARED_GRADIENTS_FROM = 12


def _shared_key(members: list[Potential], key: str) -> str | None:
    """``member.<key>()`` when every member has it and they are all equal, else None."""
    keys = {getattr(m, key)() if callable(getattr(m, key, None)) else None for m in members}
    return keys.pop() if len(keys) == 1 else None


def _member_predictions(members: list[Potential], frames: list[Frame]) -> list[Prediction]:
    """Each member's prediction of ``frames`` (no sigmas).

    From :data:`SHARED_GRADIENTS_FROM` members on, members that compute the same
    descriptor (equal ``descriptor_key()``: linear and sparse-GP members of one template)
    share it with its gradients: computed once per block of frames, read by each member
    (``predict_described``).
    """
    if len(members) < SHARED_GRADIENTS_FROM or _shared_key(members, "descriptor_key") is None:
        return [m.predict(frames) for m in members]
    first = members[0]
    parts: list[list[Prediction]] = [[] for _ in members]
    for start in range(0, len(frames), first.batch_frames):
        block = frames[start:start + first.batch_frames]
        described = first.describe(block)
        for part, m in zip(parts, members):
            part.append(m.predict_described(block, described))
    return [Prediction.concatenate(part) for part in parts]


@register_model("committee")
class Committee(Potential):
    """K potentials fitted on resampled data; mean prediction, spread as uncertainty.

    Parameters
    ----------
    model : Potential
        The template: each member is ``model.clone()`` (unfitted, same hyperparameters).
    n_members : int, default=4
        Committee size K (2 to 64).
    resample : {'bootstrap', 'seed'}, default='bootstrap'
        ``bootstrap``: each member fits a sample, with replacement, of the training
        trajectories (as many as there are); ``seed``: every member fits all frames and
        differs only by its ``seed`` hyperparameter (models with random choices).
    seed : int, default=0
        Seed of the resampling; member k gets ``seed + k`` when it has a seed.

    Attributes
    ----------
    calibration_ : dict
        ``energy`` and ``forces``: the factors of the members' spread
        (:meth:`calibrate`; 1 until calibrated).

    Notes
    -----
    ``energy_sigma`` (eV), ``forces_sigma`` (eV/Angstrom, per component) and
    ``stress_sigma`` (eV/Angstrom^3) are the members' standard deviations (ddof 1) times
    ``calibration_`` (the force factor for the stress, as the last-layer posterior
    does). The raw spread of networks that differ by their seed is 1.3-2.3x smaller than
    their error (benchmarks/results/network_uncertainty.md): :meth:`fit` calibrates on
    ``valid`` when given; a committee joined with :meth:`from_members` is calibrated by
    :meth:`calibrate` on held-out frames.
    """

    param_checks = {"n_members": int_from(2, 64), "resample": one_of("bootstrap", "seed"),
                    "seed": int_from(0)}

    def __init__(self, model: Potential, n_members: int = 4, resample: str = "bootstrap",
                 seed: int = 0) -> None:
        self.model = model
        self.n_members = n_members
        self.resample = resample
        self.seed = seed

    # ---- the potential contract ------------------------------------------------------------
    @property
    def species(self) -> np.ndarray:
        """The members' atomic numbers (the template's before fitting)."""
        return self._first.species

    @property
    def cutoff(self) -> float:
        """The members' cutoff, Angstrom (the template's before fitting)."""
        return self._first.cutoff

    @property
    def _first(self) -> Potential:
        """Member 0 once fitted (a network template knows no species), else the template."""
        members = getattr(self, "members_", None)
        return members[0] if members else self.model

    @property
    def has_uncertainty(self) -> bool:
        return True

    @property
    def n_parameters(self) -> int:
        return sum(m.n_parameters for m in getattr(self, "members_", []))

    @property
    def noise_(self) -> dict[str, float]:
        """The members' mean fitted noise per quantity (eV/atom, eV/Angstrom, eV/A^3),
        for the quantities every member has one for (empty before fitting)."""
        noises = [getattr(m, "noise_", {}) for m in getattr(self, "members_", [])]
        keys = set.intersection(*(set(n) for n in noises)) if noises else set()
        return {q: float(np.mean([n[q] for n in noises])) for q in sorted(keys)}

    def _check_fitted(self) -> None:
        if not hasattr(self, "members_"):
            raise NotFittedError("This Committee is not fitted yet. Call 'fit' first.")

    # ---- fit and predict ---------------------------------------------------------------------
    def member_starts(self, frames: list[Frame]) -> list[tuple[Potential, list[Frame]]]:
        """Each member before fitting and its training frames: a clone of ``model``
        (seeded ``seed + k`` when it has a seed) and all of ``frames``
        (``resample='seed'``) or a bootstrap sample of their trajectories (seeded by
        ``seed``)."""
        members = []
        for k in range(self.n_members):
            member = self.model.clone()
            if "seed" in member.param_names():
                member.set_params(seed=self.seed + k)
            members.append(member)
        return list(zip(members, self._samples(frames)))

    def _samples(self, frames: list[Frame]) -> list[list[Frame]]:
        """The training frames of each member (see :meth:`member_starts`)."""
        if self.resample == "seed":
            if "seed" not in self.model.param_names():
                raise ConfigError(f"resample='seed' needs members that differ by their seed; a "
                                  f"{type(self.model).__name__} has no seed hyperparameter (its "
                                  "members would be identical, sigma 0): use resample='bootstrap'")
            return [frames] * self.n_members
        groups = _groups(frames)
        if len(groups) < 2:
            raise DataError("a bootstrap committee needs at least 2 training trajectories "
                            "(or frames); use resample='seed'")
        rng = np.random.default_rng(self.seed)
        return [[frames[i] for g in rng.integers(len(groups), size=len(groups)) for i in groups[g]]
                for _ in range(self.n_members)]

    def fit(self, train: Dataset | list[Frame], valid: Dataset | None = None) -> Committee:
        """Fit every member on its sample of ``train``; returns ``self``."""
        self.check_params({k: v for k, v in self.get_params().items() if k != "model"})
        if not isinstance(self.model, Potential) or isinstance(self.model, Committee):
            raise ConfigError(f"a committee's model must be a potential other than a committee, "
                              f"got {type(self.model).__name__}")
        frames = as_frames(train)
        if not frames:
            raise DataError("no training frames")
        self.members_ = [member.fit(sample, valid)
                         for member, sample in self.member_starts(frames)]
        self.calibration_ = dict(UNCALIBRATED)
        if valid is not None and len(valid):
            self.calibrate(valid)
        return self

    def calibrate(self, frames: Dataset | list[Frame]) -> Committee:
        """Scale the spread so that on the labelled held-out ``frames`` the mean predicted
        variance of the energies and of the force components equals their mean squared
        error (:func:`~ml4m.models.calibration.variance_scale`); a quantity without
        labels keeps its factor. Returns ``self``."""
        from ml4m.models.calibration import held_out_errors, variance_scale

        self._check_fitted()
        held = as_frames(frames)
        raw = self._predict(held, uncertainty=True, scale=dict(UNCALIBRATED))
        e_err, e_var, f_err, f_var = held_out_errors(held, raw)
        for key, err, var in (("energy", e_err, e_var), ("forces", f_err, f_var)):
            factor = variance_scale(err, var)
            if factor is not None:
                self.calibration_[key] = factor
        return self

    @classmethod
    def from_members(cls, members: list[Potential], resample: str = "seed",
                     seed: int = 0) -> Committee:
        """A committee of potentials fitted elsewhere, e.g. networks trained one by one
        (``ml4m fit --seed k``).

        Parameters
        ----------
        members : list of Potential
            At least 2 fitted potentials of one kind (not committees), with the same
            species and cutoff (Angstrom).
        resample, seed
            Recorded as how the members differ (see the class parameters).

        Raises
        ------
        ConfigError
            Fewer than 2 members, a committee among them, mixed kinds, species or cutoffs.
        """
        members = list(members)
        if len(members) < 2:
            raise ConfigError(f"a committee needs at least 2 members, got {len(members)}")
        first = members[0]
        for k, m in enumerate(members):
            if not isinstance(m, Potential) or isinstance(m, Committee):
                raise ConfigError(f"member {k} must be a potential other than a committee, "
                                  f"got {type(m).__name__}")
            if type(m) is not type(first):
                raise ConfigError(f"member {k} is a {type(m).__name__}, member 0 a "
                                  f"{type(first).__name__}: members must be of one kind")
            if list(m.species) != list(first.species) or m.cutoff != first.cutoff:
                raise ConfigError(f"member {k} has species {list(m.species)} and cutoff "
                                  f"{m.cutoff} A, member 0 {list(first.species)} and "
                                  f"{first.cutoff} A: members must agree")
        model = cls(first.clone(), n_members=len(members), resample=resample, seed=seed)
        model.check_params({k: v for k, v in model.get_params().items() if k != "model"})
        model.members_ = members
        model.calibration_ = dict(UNCALIBRATED)
        return model

    def predict(self, frames, uncertainty: bool = False) -> Prediction:
        """The members' mean energy (eV), forces (eV/A), stress (eV/A^3); with
        ``uncertainty`` their standard deviations times ``calibration_`` as the sigmas.

        Members linear in their coefficients over one feature map (linear ACE) give the
        mean without sigmas as one model, their mean (``averaged``): one descriptor pass
        instead of K. With sigmas, see :func:`_member_predictions`."""
        self._check_fitted()
        return self._predict(as_frames(frames), uncertainty,
                             getattr(self, "calibration_", UNCALIBRATED))

    def _predict(self, frames: list[Frame], uncertainty: bool, scale: dict[str, float]
                 ) -> Prediction:
        """:meth:`predict` with the spread times ``scale`` (``energy``, ``forces``)."""
        if not uncertainty and _shared_key(self.members_, "feature_map_key") is not None:
            p = type(self.members_[0]).averaged(self.members_).predict(frames)
            return Prediction(energy=p.energy, forces=p.forces, stress=p.stress,
                              offsets=p.offsets)
        preds = _member_predictions(self.members_, frames)
        stacked = {q: np.stack([getattr(p, q) for p in preds]) for q in ("energy", "forces",
                                                                          "stress")}
        sigmas = {}
        if uncertainty:
            factor = {"energy": scale["energy"], "forces": scale["forces"],
                      "stress": scale["forces"]}
            sigmas = {f"{q}_sigma": factor[q] * v.std(axis=0, ddof=1)
                      for q, v in stacked.items()}
        return Prediction(energy=stacked["energy"].mean(axis=0),
                          forces=stacked["forces"].mean(axis=0),
                          stress=stacked["stress"].mean(axis=0), offsets=preds[0].offsets,
                          **sigmas)

    # ---- persistence ---------------------------------------------------------------------------
    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        self._check_fitted()
        params: dict[str, Any] = {"member_kind": self.members_[0].kind,
                                  "member_state_version": self.members_[0].state_version,
                                  "n_members": self.n_members, "resample": self.resample,
                                  "seed": self.seed, "members": [],
                                  "calibration": dict(getattr(self, "calibration_",
                                                              UNCALIBRATED))}
        arrays: dict[str, np.ndarray] = {}
        for k, member in enumerate(self.members_):
            p, a = member.get_state()
            params["members"].append(p)
            arrays.update({f"m{k}_{name}": value for name, value in a.items()})
        return params, arrays

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Committee:
        """Rebuild from a model file's contents (members rebuilt by their own kind)."""
        where = {"error": DataError}
        params = check_mapping("params", params, required=("member_kind", "members",
                                                           "n_members", "resample", "seed"),
                               **where)
        hyper = cls.check_params({k: params[k] for k in ("n_members", "resample", "seed")},
                                 prefix="params.", **where)
        kind = model_kind(str(params["member_kind"]))
        if not kind.potential or kind.cls is cls:
            raise DataError(f"params.member_kind {kind.name!r} is not a potential kind")
        # files written before members' versions were recorded hold version-1 members
        check_state_version(kind, check_int("params.member_state_version",
                                            params.get("member_state_version", 1), low=1,
                                            **where), "params.member_state_version")
        states = params["members"]
        if not isinstance(states, list) or len(states) != hyper["n_members"]:
            raise DataError(f"params.members must list {hyper['n_members']} member states")
        members = []
        for k, state in enumerate(states):
            prefix = f"m{k}_"
            own = {name[len(prefix):]: a for name, a in arrays.items() if name.startswith(prefix)}
            members.append(kind.cls.from_state(state, own))
        model = cls(members[0].clone(), **hyper)
        model.members_ = members
        # files written before committees were calibrated hold the raw spread
        calibration = check_mapping("params.calibration",
                                    params.get("calibration", UNCALIBRATED),
                                    required=tuple(UNCALIBRATED), **where)
        model.calibration_ = {k: check_float(f"params.calibration.{k}", calibration[k],
                                             low=0.0, low_open=True, **where)
                              for k in UNCALIBRATED}
        return model

"""The ``ml4m fit`` configuration: one YAML file, command-line overrides, strict checks."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from ml4m.errors import ConfigError
from ml4m.models.registry import fit_choices, model_kind
from ml4m.validation import (
    check_choice,
    check_float,
    check_int,
    check_mapping,
    check_str,
)

__all__ = ["FitConfig", "MODEL_CHOICES"]

#: models ``ml4m fit`` can train (the registry's fit names)
MODEL_CHOICES = fit_choices()
#: constructor arguments a config sets from its own keys (not from ``params``)
SET_BY_CONFIG = ("descriptor", "e0", "sigma_energy", "sigma_forces", "sigma_stress", "seed",
                 "target", "device")
#: training settings a config may not give (``ml4m fit`` sets them: flags, files beside the model)
SET_BY_FIT = ("checkpoint", "log_csv", "max_minutes", "seed", "progress")


def config_params(model: str) -> list[str]:
    """The ``params`` keys a config may give for ``model`` (its other constructor arguments)."""
    return [n for n in model_kind(model).cls.param_names() if n not in SET_BY_CONFIG]


def is_network(model: str) -> bool:
    """Whether ``model`` is a torch potential (trained by :class:`ml4m.training.Trainer`)."""
    from ml4m.models.torch_potential import TorchPotential

    return issubclass(model_kind(model).cls, TorchPotential)


def training_keys() -> list[str]:
    """The keys of a config's ``training`` section."""
    from ml4m.training.settings import TrainSettings

    return [n for n in TrainSettings.names() if n not in SET_BY_FIT]


@dataclass
class FitConfig:
    """Settings of a fit (every key of the YAML file; see ``ml4m fit --help``).

    Parameters
    ----------
    model : {'ace', 'gp', 'krr', 'bpnn', 'mpnn'}
        Linear ACE, sparse GP potential, kernel ridge structure-property model,
        Behler-Parrinello network or message-passing network.
    train, valid : str
        Labelled structure files (``valid`` optional).
    output : str
        Model file to write (``.ml4m``); metrics and plots go beside it.
    keys : dict
        Label keys: ``energy``, ``forces``, ``stress`` (default: auto).
    descriptor : dict
        Descriptor settings (``r_cut``, ``n_max``, ``l_max``, ``max_order``, ...); the
        descriptor is ACE for ``ace``, SOAP for ``gp`` and MBTR for ``krr`` unless
        ``descriptor_type`` says otherwise. ACE's ``pair_r_in: auto`` starts each element
        pair's radial basis 0.25 A below its shortest distance in ``train``.
    descriptor_type : str, optional
        ``ace``, ``soap``, ``acsf`` or ``mbtr``.
    e0 : 'fit', mapping or None
        Isolated-atom energies (eV).
    sigmas : dict
        Expected errors per quantity: ``energy`` (eV/atom), ``forces`` (eV/A),
        ``stress`` (eV/A^3); 0 drops that quantity.
    params : dict
        Model-specific settings (``n_sparse``, ``zeta`` for gp; ``kernel`` for krr; the
        architecture of a network).
    training : dict
        For networks: :class:`ml4m.training.TrainSettings` keys (``batch_size``, ``lr``,
        ``max_epochs``, ``weights``, ...) but those ``ml4m fit`` sets itself
        (``checkpoint``, ``log_csv``, ``max_minutes``, ``seed``, ``progress``).
    target : str
        For ``krr``: ``energy_per_atom`` or an ``info`` key of the frames.
    seed : int
        >= 0.
    max_minutes : float, optional
        Wall-time budget of the fit, minutes (> 0, finite); a basis search takes
        ``DEFAULT_SEARCH_MINUTES`` without it.
    repulsion : 'auto', bool or dict
        A ZBL repulsive core below each element pair's shortest training distance,
        switched off smoothly at that distance (:class:`ml4m.models.baseline.PairRepulsion`;
        zero where the data lives, so the fit is unchanged): ``auto`` (on for every
        potential: ``ace``, ``gp``, ``mpnn``, ``bpnn``), ``true``, ``false`` or its
        settings (``width``, ``margin``, ``r_in``).
    baseline : dict, optional
        Delta learning: the model learns the reference minus this baseline and adds it
        back (``{calculator: NAME, calculator_kwargs: {...}}``, or ``{labels: {energy:
        KEY, forces: KEY}}`` with an optional calculator for new structures).
    search : {'auto', 'off'}
        ``auto``: ``ace`` without descriptor settings chooses its basis by cross-validation
        inside ``train`` (:mod:`ml4m.training.search`) and writes the chosen settings as
        ``{stem}_chosen.yaml``; so does ``gp`` without descriptor settings or
        ``kernel_columns``: a sparse GP whose linear baseline is the chosen ACE basis and
        whose kernel reads its two- and three-body functions (unless ``params`` say
        otherwise: one noise level, ``KERNEL_POINTS`` sparse environments shared among the
        species); ``off``: the descriptor's defaults (SOAP for ``gp``).
    device : {'cpu', 'cuda'}
    committee : int, optional
        For networks: train this many (2 to 64) with seeds ``seed``, ``seed + 1``, ...
        (a budget shared among them) and write their
        :class:`~ml4m.models.Committee`, its spread calibrated on ``valid``
        (:mod:`ml4m.training.committee_fit`).
    init : str, optional
        For networks: a fitted network's ``.ml4m`` file (of kind ``model``; the network
        inside a baseline) to start training from (fine-tuning): its architecture,
        elements and weights, but the energy reference (E0s), which is fitted on ``train``
        for the elements ``train`` holds
        (:meth:`~ml4m.models.torch_potential.TorchPotential.start_from`); ``params``
        must then be left out. E.g. a network trained on many frames of a cheap level
        of theory, fine-tuned on few of an accurate one.
    """

    model: str = "ace"
    train: str | None = None
    valid: str | None = None
    output: str = "model.ml4m"
    keys: dict[str, str] = field(default_factory=dict)
    descriptor: dict[str, Any] = field(default_factory=dict)
    descriptor_type: str | None = None
    e0: Any = "fit"
    sigmas: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    target: str = "energy_per_atom"
    seed: int = 0
    max_minutes: float | None = None
    repulsion: Any = "auto"
    baseline: dict[str, Any] | None = None
    search: str = "auto"
    device: str = "cpu"
    committee: int | None = None
    init: str | None = None

    @property
    def repulsion_settings(self) -> Any:
        """``repulsion`` with ``auto`` resolved: on for every potential (linear, GP,
        network), off for property models."""
        if self.repulsion == "auto":
            return model_kind(self.model).potential
        return self.repulsion

    @property
    def searches(self) -> bool:
        """Whether the fit chooses the basis: ``ace`` or ``gp`` (a sparse GP on the chosen
        ACE basis, when its ``kernel_columns`` are not given), ``search: auto``, no
        descriptor settings."""
        return self.model in ("ace", "gp") and self.search == "auto" and not self.descriptor \
            and self.descriptor_type in (None, "ace") and "kernel_columns" not in self.params

    @classmethod
    def from_mapping(cls, mapping: dict[str, Any], source: str | os.PathLike = "config") -> FitConfig:
        """Build and check a config; unknown keys and wrong types or values are named.

        Raises
        ------
        ConfigError
            Naming ``source`` and the key: a mapping that is not one (or has non-string
            keys), an unknown key, a value of the wrong type, range or finiteness.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        mapping = check_mapping("the config", mapping, source=source)
        unknown = sorted(set(mapping) - set(names))
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; known keys: {sorted(names)}")
        cfg = cls(**mapping)
        cfg.validate(source)
        return cfg

    def validate(self, source: str | os.PathLike = "config") -> None:
        """Raise :class:`ConfigError` naming the first invalid value (type, range, finiteness)."""
        where = {"source": source}
        check_choice("model", self.model, MODEL_CHOICES, **where)
        if self.train is None:
            raise ConfigError(f"{source}: 'train' (a labelled structure file) is required")
        check_str("train", self.train, **where)
        if self.valid is not None:
            check_str("valid", self.valid, **where)
        check_str("output", self.output, **where)
        for key, value in check_mapping("keys", self.keys, **where).items():
            if key not in QUANTITIES:
                raise ConfigError(f"{source}: keys may name energy, forces, stress; got {[key]}")
            check_str(f"keys.{key}", value, **where)
        check_mapping("descriptor", self.descriptor, **where)
        if self.descriptor_type is not None:
            check_choice("descriptor_type", self.descriptor_type, DESCRIPTOR_CHOICES, **where)
        if isinstance(self.e0, str):
            check_choice("e0", self.e0, ("fit",), **where)
        elif self.e0 is not None:
            for el, v in check_mapping("e0", self.e0, **where).items():
                check_float(f"e0.{el}", v, **where)
        sigmas = check_mapping("sigmas", self.sigmas, **where)
        bad = sorted(set(sigmas) - set(QUANTITIES))
        if bad:
            raise ConfigError(f"{source}: sigmas may name energy, forces, stress; got {bad}")
        for k, v in sigmas.items():
            check_float(f"sigmas.{k}", v, low=0.0, low_open=k == "energy", **where)
        check_mapping("params", self.params, keys=config_params(self.model), **where)
        model_kind(self.model).cls.check_params(self.params, prefix="params.", **where)
        training = check_mapping("training", self.training, keys=training_keys(), **where)
        if training and not is_network(self.model):
            raise ConfigError(f"{source}: 'training' applies to networks "
                              f"({', '.join(m for m in MODEL_CHOICES if is_network(m))}), "
                              f"not to {self.model!r}")
        from ml4m.training.settings import TrainSettings

        for key, value in training.items():
            TrainSettings.checks[key](f"training.{key}", value, **where)
        check_str("target", self.target, **where)
        check_int("seed", self.seed, low=0, **where)
        if self.max_minutes is not None:
            check_float("max_minutes", self.max_minutes, low=0.0, low_open=True, **where)
        check_choice("search", self.search, ("auto", "off"), **where)
        if self.repulsion != "auto" or self.baseline is not None:
            if not model_kind(self.model).potential:
                raise ConfigError(f"{source}: repulsion and baseline apply to potentials, not "
                                  f"to {self.model!r}")
            from ml4m.models.baseline import baseline_from_config

            baseline_from_config(self.repulsion_settings, self.baseline, str(source))
        check_choice("device", self.device, ("cpu", "cuda"), **where)
        if self.committee is not None:
            from ml4m.models.committee import Committee

            Committee.param_checks["n_members"]("committee", self.committee, **where)
            if not is_network(self.model):
                raise ConfigError(
                    f"{source}: 'committee' applies to networks "
                    f"({', '.join(m for m in MODEL_CHOICES if is_network(m))}); {self.model!r} "
                    "has its own Bayesian sigma (a committee of any kind from Python: "
                    "ml4m.models.Committee)")
        if self.init is not None:
            check_str("init", self.init, **where)
            if not is_network(self.model):
                raise ConfigError(
                    f"{source}: 'init' (a network to start from) applies to networks "
                    f"({', '.join(m for m in MODEL_CHOICES if is_network(m))}), not to "
                    f"{self.model!r}")
            if self.params:
                raise ConfigError(f"{source}: 'params' and 'init' both set: a network started "
                                  f"from {self.init} keeps its architecture; leave 'params' out")


#: quantities ``keys`` and ``sigmas`` may name
QUANTITIES = ("energy", "forces", "stress")
#: descriptors ``descriptor_type`` may name
DESCRIPTOR_CHOICES = ("ace", "soap", "acsf", "mbtr")



"""Equivariant message-passing network potential (MACE-like), :class:`MPNN`.

>>> from ml4m.models.mpnn import MPNN
>>> MPNN(r_max=4.0, n_channels=16).cutoff
4.0
"""

from __future__ import annotations

from typing import Any, ClassVar

from ml4m.models.registry import register_model
from ml4m.models.torch_potential import DTYPES, TorchPotential
from ml4m.validation import check_bool, float_from, int_from, one_of

__all__ = ["MPNN"]


@register_model("mpnn", fit_name="mpnn", descriptor=None, state_version=2)
class MPNN(TorchPotential):
    """Equivariant message-passing potential in the manner of MACE.

    Edges within ``r_max`` carry a Bessel radial basis (smooth polynomial envelope) and
    real spherical harmonics up to ``l_max``; each interaction builds an atom's
    equivariant density from its neighbours' states, takes products of up to
    ``correlation`` copies of it coupled to invariants (per-element weights) and updates
    the atom's state with a per-element residual; every interaction's state is read out
    to an atomic energy (see :mod:`ml4m.models.mpnn.network`). Forces and stress are
    autograd derivatives of the energy. Trained by :mod:`ml4m.training`
    (``ml4m fit --model mpnn``) after :meth:`prepare`.

    Parameters
    ----------
    r_max : float, default=5.0
        Cutoff radius, Angstrom.
    n_radial : int, default=8
        Bessel functions in the radial basis.
    l_max : int, default=3
        Largest degree of the edge harmonics and of the atomic density.
    n_channels : int, default=32
        Channels of the atom states.
    correlation : {1, 2, 3}, default=3
        Largest number of density factors in a product (body order ``correlation + 1``
        per interaction).
    n_interactions : int, default=2
        Message-passing steps (receptive field ``n_interactions * r_max``).
    radial_mlp : int, default=64
        Width of the hidden layers of the radial MLP.
    radial_depth : int, default=2
        Hidden layers of the radial MLP (MACE: 3).
    hidden_l : int, default=1
        Largest degree of the atom states passed between interactions (0: scalars;
        1: scalars and vectors, as MACE's ``32x0e + 32x1o``); at most ``l_max``.
    element_mix : bool, default=True
        Mix the first interaction's density channels with weights of the centre's
        element (one ``K x K`` map per element and degree instead of one per degree), as
        MACE's first interaction does.
    path_mix : bool, default=False
        Keep the coupling paths that reach each degree of the density apart and mix them
        with the channels (one ``n_paths * K x K`` map per degree, as MACE's linear map
        after its convolution; only interactions that receive vectors have several
        paths per degree). ``ml4m fit`` turns it on for a step-limited fit
        (:attr:`regime_defaults`).
    seed : int, default=0
        Seed of the initial weights.
    device : {'cpu', 'cuda'}, default='cpu'
    dtype : {'float32', 'float64'}, default='float32'
        Floating-point type of the weights and of training and prediction (float32
        trains about twice as fast on a CPU).
    """

    exportable = True
    #: ``ml4m fit`` (:mod:`ml4m.training.regime`): many passes over the data (ethanol,
    #: 30 min: valid F MAE 11.1 meV/A without AMSGrad, 9.2-10.2 with; 11.0 with
    #: ``path_mix``), few passes (3BPA: 12.2 without ``path_mix``, 11.6 with;
    #: benchmarks/results/fit_defaults.md)
    regime_defaults = {"data_limited": {"training": {"amsgrad": True}},
                       "step_limited": {"params": {"path_mix": True}}}

    param_checks: ClassVar[dict[str, Any]] = {
        "r_max": float_from(0.0, low_open=True), "n_radial": int_from(1),
        "l_max": int_from(0, 6), "n_channels": int_from(1), "correlation": int_from(1, 3),
        "n_interactions": int_from(1), "radial_mlp": int_from(1), "radial_depth": int_from(1),
        "hidden_l": int_from(0, 6), "element_mix": check_bool, "path_mix": check_bool,
        "seed": int_from(0),
        "device": one_of("cpu", "cuda"), "dtype": one_of(*DTYPES),
    }

    def __init__(self, r_max: float = 5.0, n_radial: int = 8, l_max: int = 3,
                 n_channels: int = 32, correlation: int = 3, n_interactions: int = 2,
                 radial_mlp: int = 64, radial_depth: int = 2, hidden_l: int = 1,
                 element_mix: bool = True, path_mix: bool = False, seed: int = 0,
                 device: str = "cpu", dtype: str = "float32") -> None:
        self.r_max = r_max
        self.n_radial = n_radial
        self.l_max = l_max
        self.n_channels = n_channels
        self.correlation = correlation
        self.n_interactions = n_interactions
        self.radial_mlp = radial_mlp
        self.radial_depth = radial_depth
        self.hidden_l = hidden_l
        self.element_mix = element_mix
        self.path_mix = path_mix
        self.seed = seed
        self.device = device
        self.dtype = dtype

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, Any]) -> MPNN:
        """Rebuild from :meth:`get_state`; a state of version 1 (written before
        ``hidden_l`` existed) passed scalar states between interactions, and a state
        written before ``element_mix``, ``path_mix`` or ``radial_depth`` existed had
        neither map and two hidden radial layers."""
        hyper = params.get("hyper") if isinstance(params, dict) else None
        if isinstance(hyper, dict):
            params = {**params, "hyper": {"hidden_l": 0, "element_mix": False,
                                          "path_mix": False, "radial_depth": 2, **hyper}}
        return super().from_state(params, arrays)

    @property
    def cutoff(self) -> float:
        """``r_max``, Angstrom."""
        return float(self.r_max)

    def build_module(self):
        """A new :class:`~ml4m.models.mpnn.network.MPNNModule` with weights drawn from
        ``seed`` (torch's global generator is left as it was)."""
        import torch

        from ml4m.models.mpnn.network import MPNNModule

        self.check_params(self.get_params())
        if self.hidden_l > self.l_max:
            raise ValueError(f"hidden_l={self.hidden_l} must be at most l_max={self.l_max}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return MPNNModule(len(self.species_), self.r_max, self.n_radial, self.l_max,
                              self.n_channels, self.correlation, self.n_interactions,
                              self.radial_mlp, stats=getattr(self, "stats_", None),
                              hidden_l=self.hidden_l, element_mix=self.element_mix,
                              path_mix=self.path_mix, radial_depth=self.radial_depth)

"""Potentials written as torch modules: graphs in, energies out, forces and stress by autograd.

A :class:`TorchPotential` owns a ``torch.nn.Module`` (built by the subclass) that takes a
batch of structures as a dict of tensors (:func:`batch_graph`) and returns a dict with
``energy`` (eV per structure) and ``energies`` (eV per atom). Forces and stress are
derivatives of the energy, taken by autograd with respect to the positions and to a
homogeneous strain applied to positions and cell (so a module never writes them):

    F_a = -dE/dr_a,      sigma = (1/V) dE/d(epsilon)   (ASE's sign, eV/Angstrom^3)

The module computes its edge vectors with :func:`edge_vectors` from the (strained)
positions, cell and vesin's image shifts, which keeps them differentiable. Parameters
are saved as arrays (a state dict) plus JSON: no pickle.

Uncertainty: a module that also returns ``features`` (the last layer's inputs, see
:mod:`ml4m.models.last_layer`) gets a Bayesian posterior on its last layer from
:meth:`TorchPotential.fit_last_layer`; ``predict(frames, uncertainty=True)`` then gives
calibrated ``energy_sigma``, ``forces_sigma`` and ``stress_sigma``.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np

from ml4m.data.frames import Frame
from ml4m.data.neighbors import (
    NeighborList,
    batched_neighbor_list,
    concatenate_neighbor_lists,
    neighbor_list,
)
from ml4m.errors import ConfigError, DataError, NotFittedError
from ml4m.models.base import Potential, Prediction, as_frames
from ml4m.models.calibration import held_out_errors
from ml4m.models.last_layer import (
    LastLayerPosterior,
    design_rows,
    direction_gradients,
    gradient_variances,
)
from ml4m.models.linear.design import VOIGT

__all__ = ["TorchPotential", "batch_graph", "edge_vectors", "species_index", "DTYPES"]

#: floating-point types a torch potential may run in
DTYPES = ("float64", "float32")
#: how many times more edges a batch of :meth:`TorchPotential.predict` holds on CUDA
#: than on the CPU (a GPU needs large batches to be busy)
CUDA_BATCH_FACTOR = 16


def species_index(numbers: np.ndarray, species: Sequence[int]) -> np.ndarray:
    """Index into ``species`` of every atomic number in ``numbers`` (-1 where absent).

    Parameters
    ----------
    numbers : ndarray of shape (n_atoms,), int
        Atomic numbers.
    species : sequence of int
        Atomic numbers a model knows, in its order.

    Returns
    -------
    ndarray of shape (n_atoms,), int64
    """
    numbers = np.asarray(numbers, dtype=np.int64)
    known = np.asarray(species, dtype=np.int64)
    if not len(known):
        return np.full(len(numbers), -1, dtype=np.int64)
    order = np.argsort(known)
    at = np.minimum(np.searchsorted(known[order], numbers), len(known) - 1)
    return np.where(known[order][at] == numbers, order[at], -1)


def batch_graph(frames: Sequence[Frame], cutoff: float, species: Sequence[int],
                device: str = "cpu", dtype: str = "float64",
                neighbors: Sequence[NeighborList] | None = None) -> dict[str, Any]:
    """One batch of structures as the tensors a module reads.

    Parameters
    ----------
    frames : sequence of Frame
        Structures (Angstrom).
    cutoff : float
        Edge cutoff, Angstrom (vesin neighbour lists, both directions of each pair).
    species : sequence of int
        Atomic numbers the model knows; ``species`` in the result indexes this list.
    device, dtype : str
        Where and in which precision the float tensors live.
    neighbors : sequence of NeighborList, optional
        Each frame's full neighbour list within ``cutoff``, when already built.

    Returns
    -------
    dict of str to Tensor
        ``positions`` (N, 3), ``cell`` (B, 3, 3; zero for a structure without periodic
        directions), ``species`` (N,) int64 index, ``batch`` (N,) structure of each
        atom, ``edge_index`` (2, E) [i, j] with j the neighbour of i, ``shifts`` (E, 3)
        image shifts of j (``r_j + shifts @ cell``), ``n_atoms`` (B,).

    Raises
    ------
    DataError
        A structure holds an element not in ``species`` (the first such is named).
    """
    import torch

    frames = list(frames)
    counts = np.array([len(f) for f in frames], dtype=np.int64)
    batch = np.repeat(np.arange(len(frames)), counts)
    index = species_index(np.concatenate([f.numbers for f in frames]), species)
    if np.any(index < 0):
        b = int(batch[np.argmax(index < 0)])
        from ase.data import chemical_symbols

        unknown = sorted({int(z) for z in frames[b].numbers} - {int(z) for z in species})
        raise DataError(f"species {[chemical_symbols[z] for z in unknown]} are not known to "
                        f"this model (trained on {[chemical_symbols[int(z)] for z in species]})",
                        *(frames[b].source or (None, b)))
    if neighbors is None:
        nl, _ = batched_neighbor_list(frames, cutoff, full_list=True)
    else:
        nl, _ = concatenate_neighbor_lists(neighbors, counts, cutoff)
    cell = np.array([f.cell if f.pbc.any() else np.zeros((3, 3)) for f in frames])
    ft = getattr(torch, dtype)

    def tensor(a, kind):
        return torch.as_tensor(a, dtype=kind, device=device)

    return {"positions": tensor(np.concatenate([f.positions for f in frames]), ft),
            "cell": tensor(cell, ft), "species": tensor(index, torch.long),
            "batch": tensor(batch, torch.long),
            "edge_index": tensor(np.stack([nl.i, nl.j]), torch.long),
            "shifts": tensor(nl.shifts, ft), "n_atoms": tensor(counts, torch.long)}


@contextlib.contextmanager
def frozen_parameters(module) -> Iterator[None]:
    """Inside the block the ``module``'s trainable parameters do not require grad.

    Derivatives with respect to the inputs (forces, stress) are unchanged, but autograd
    records no node for a branch that only involves weights, so an inference call does
    less bookkeeping. The flags are restored on exit, also after an exception.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def edge_vectors(data: dict[str, Any]):
    """``r_j + shifts @ cell - r_i`` for every edge (Angstrom), differentiable."""
    i, j = data["edge_index"]
    cell_of_edge = data["cell"][data["batch"][i]]
    return (data["positions"][j] - data["positions"][i]
            + (data["shifts"][:, None, :] @ cell_of_edge)[:, 0, :])


def _symbols(species: Sequence[int]) -> list[str]:
    """Chemical symbols of atomic numbers."""
    from ase.data import chemical_symbols

    return [chemical_symbols[int(z)] for z in species]


class TorchPotential(Potential):
    """A potential whose energy is a torch module's output.

    Subclasses implement :meth:`build_module` (the module, from the hyperparameters
    and ``species_``) and the :attr:`cutoff` property; prediction, derivatives, the
    last-layer uncertainty, persistence and devices come from here. Training is
    ``ml4m.training``'s: :meth:`fit` refuses and says so.

    Parameters (of every subclass)
    ----------
    device : {'cpu', 'cuda'}
        Where the module runs.
    dtype : {'float64', 'float32'}
        Precision of the module and the geometry.
    """

    #: training settings that :class:`ml4m.training.TrainSettings` leaves unset (None)
    #: take these values (:meth:`~ml4m.training.TrainSettings.resolved`): the initial
    #: learning rate, the decoupled weight decay and the AMSGrad variant
    training_defaults: ClassVar[dict[str, float | bool]] = {"lr": 1e-2, "weight_decay": 0.0,
                                                            "amsgrad": False}
    #: settings ``ml4m fit`` gives this kind in each regime of a fit (data- or
    #: step-limited, :mod:`ml4m.training.regime`) where the config leaves them unset:
    #: ``{regime: {"params": {...}, "training": {...}}}``
    regime_defaults: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {}
    #: directions of the last-layer covariance kept for force and stress sigmas (one
    #: backward pass each; exact when the last layer has fewer parameters)
    uncertainty_rank: ClassVar[int] = 16
    #: which directions: ``"eigen"``, the covariance's top eigenvectors, or ``"focus"``,
    #: those carrying most force variance on sample training atoms
    #: (:mod:`ml4m.models.last_layer`)
    uncertainty_directions: ClassVar[str] = "eigen"
    #: edges (neighbour pairs within the cutoff) per batch of :meth:`predict` and
    #: :meth:`fit_last_layer` on the CPU, where the per-edge tensors of a small batch
    #: stay in cache; on CUDA :data:`CUDA_BATCH_FACTOR` times more
    predict_edges: ClassVar[int] = 8192
    #: atoms (of evenly spaced training frames) whose forces give the last-layer
    #: posterior's force rows
    jacobian_atoms: ClassVar[int] = 2048
    #: whether the module traces with ``torch.export`` (:mod:`ml4m.models.export`):
    #: no Python integers taken from tensor values
    exportable: ClassVar[bool] = False
    #: the module's buffers holding the energy reference of its training data (per-element
    #: E0s and the mean energy per atom left after them, eV): :meth:`start_from` keeps a
    #: network's own, fitted on its own data (maybe of another level of theory)
    energy_reference: ClassVar[tuple[str, ...]] = ("e0", "shift")
    #: hyperparameters that may differ between a network and the one it starts from
    #: (:meth:`start_from`): they do not change the architecture
    run_params: ClassVar[tuple[str, ...]] = ("seed", "device", "dtype")

    @abstractmethod
    def build_module(self):
        """A new ``torch.nn.Module`` mapping :func:`batch_graph`'s dict to a dict with
        ``energy`` (B,) and ``energies`` (N,), eV; for the last-layer uncertainty also
        ``features`` (N, d) and, for a per-element last layer, ``feature_block`` (N,),
        the index into ``species_`` of the weights each atom uses (the convention of
        :mod:`ml4m.models.last_layer`).

        Called by :meth:`prepare` (after ``species_`` and ``stats_`` are set) and by
        :meth:`from_state` (``species_`` set, ``stats_`` absent: the module's buffers
        then come from the saved state dict, so keep data statistics in buffers)."""

    def prepare(self, frames, species: Sequence[int] | None = None) -> TorchPotential:
        """Set ``species_`` and ``stats_`` from training frames and build ``module_``
        for the elements of ``frames`` or, given, for ``species`` (atomic numbers, every
        element of ``frames`` among them; an element without frames gets an E0 of 0).

        ``stats_`` holds what a module needs to start well-scaled (ml4m.training calls
        this before the first step):

        - ``e0``: (n_species,) per-element reference energies, eV, least squares on the
          frames' energies (zeros without energies);
        - ``shift``: mean per-atom energy left after ``e0``, eV/atom (0 by construction
          of the least squares, kept for models without E0s);
        - ``scale``: RMS force component, eV/Angstrom (1 without forces);
        - ``avg_neighbors``: mean number of neighbours within :attr:`cutoff`;
        - ``e0_from_data``: (n_species,) whether the frames fixed each element's E0.

        Returns
        -------
        self
        """
        from ml4m.data.frames import Dataset
        from ml4m.data.reference import composition_matrix, fit_reference_energies

        frames = as_frames(frames)
        if not frames:
            raise DataError("cannot prepare a model on no frames")
        self.__dict__.pop("last_layer_", None)
        present = sorted({int(z) for f in frames for z in f.numbers})
        if species is not None and set(present) - {int(z) for z in species}:
            raise DataError(f"the frames hold the elements {_symbols(present)}, beyond "
                            f"{_symbols(sorted(int(z) for z in species))}, the elements "
                            "this network is built for")
        self.species_ = present if species is None else sorted(int(z) for z in species)
        labelled = [f for f in frames if f.energy is not None]
        e0 = np.zeros(len(self.species_))
        shift = 0.0
        ref: dict[int, float] = {}
        if labelled:
            ref = fit_reference_energies(Dataset(labelled))
            e0 = np.array([ref.get(z, 0.0) for z in self.species_])
            C = composition_matrix(Dataset(labelled), np.asarray(self.species_))
            resid = np.array([f.energy for f in labelled]) - C @ e0
            shift = float(resid.sum() / C.sum())
        forces = [f.forces for f in frames if f.forces is not None]
        scale = float(np.sqrt(np.mean(np.concatenate(forces) ** 2))) if forces else 1.0
        sample = frames[:: max(1, len(frames) // 50)]
        n_edges = len(batched_neighbor_list(sample, self.cutoff, full_list=True)[0])
        self.stats_ = {"e0": e0, "shift": shift, "scale": scale if scale > 0 else 1.0,
                       "avg_neighbors": n_edges / max(1, sum(len(f) for f in sample)),
                       "e0_from_data": np.array([z in ref for z in self.species_])}
        device, dtype = self._torch_settings()
        self.module_ = self.build_module().to(device=device, dtype=dtype)
        return self

    def start_from(self, other: TorchPotential) -> TorchPotential:
        """Take the weights and data statistics (force scale, neighbour count) of the
        fitted network ``other`` into this prepared one, all but the energy reference
        (:attr:`energy_reference`, fitted by :meth:`prepare` on this network's own data):
        the start of a fine-tuning run, e.g. on labels of a more accurate level of theory
        than ``other`` was trained on. Elements this one was prepared for without frames
        (``prepare(frames, species=other.species_)``) keep ``other``'s atomic energy
        offsets. A last-layer posterior is dropped (it belongs to other weights). Forces
        are unchanged by this; energies change by the reference.

        Raises
        ------
        ConfigError
            ``other`` is another kind, or has other hyperparameters than this one (but
            :attr:`run_params`), or is not fitted; this one is not prepared.
        DataError
            The two were prepared on different elements.
        """
        import torch

        for model, what in ((self, "the network to train"), (other, "the network started from")):
            if not hasattr(model, "module_"):
                raise ConfigError(f"{what} is not prepared (no weights)")
        if type(other) is not type(self):
            raise ConfigError(f"a {self.kind!r} network cannot start from a {other.kind!r} one")
        mine, theirs = self.get_params(), other.get_params()
        differ = sorted(k for k in mine if k not in self.run_params and mine[k] != theirs.get(k))
        if differ:
            raise ConfigError("the network started from has other hyperparameters: "
                              + ", ".join(f"{k} {theirs.get(k)!r} (here {mine[k]!r})"
                                          for k in differ))
        if list(self.species_) != list(other.species_):
            raise DataError(f"this network is built for the elements {_symbols(self.species_)}; "
                            f"the network started from for {_symbols(other.species_)}: "
                            "prepare it for those (prepare(frames, species=...))")
        state = {k: v for k, v in other.module_.state_dict().items()
                 if k not in self.energy_reference}
        missing, unexpected = self.module_.load_state_dict(state, strict=False)
        if set(missing) - set(self.energy_reference) or unexpected:
            raise ConfigError(f"the network started from does not fit this one: missing "
                              f"{sorted(missing)}, unexpected {sorted(unexpected)}")
        # elements without frames here keep the atomic energy offset they had there
        fitted = getattr(self, "stats_", {}).get("e0_from_data")
        absent = [] if fitted is None else [k for k, seen in enumerate(fitted) if not seen]
        if absent:
            mine_m, theirs_m = self.module_, other.module_
            offset = (theirs_m.shift - mine_m.shift) if hasattr(mine_m, "shift") else 0.0
            with torch.no_grad():
                mine_m.e0[absent] = theirs_m.e0[absent].to(mine_m.e0) + offset
        self.__dict__.pop("last_layer_", None)
        return self

    def fit(self, train, valid=None) -> TorchPotential:
        """Refused: a network is trained by ``ml4m.training`` (whose loop calls
        :meth:`prepare` first), then given its uncertainty by :meth:`fit_last_layer`.

        Raises
        ------
        ConfigError
            Always; the message names the way to train.
        """
        raise ConfigError(f"a '{self.kind}' network is trained by ml4m.training.Trainer "
                          f"(ml4m fit --model {self.kind}), not by model.fit; "
                          "model.prepare(train).fit_last_layer(train, valid) gives an "
                          "untrained network its statistics and uncertainty")

    # ---- the potential contract ----------------------------------------------------------
    @property
    def has_uncertainty(self) -> bool:
        """Whether the last-layer posterior is fitted (:meth:`fit_last_layer`)."""
        return hasattr(self, "last_layer_")

    @property
    def noise_(self) -> dict[str, float]:
        """``{"forces": RMS force error}`` (eV/Angstrom) on the frames the last-layer
        sigma was calibrated on: the network's counterpart of a linear model's fitted
        force noise (the unit of a relative ``ml4m learn`` threshold). Empty before
        :meth:`fit_last_layer`."""
        post = getattr(self, "last_layer_", None)
        rmse = None if post is None else post.calibration.get("forces_rmse")
        return {} if rmse is None else {"forces": float(rmse)}

    @property
    def species(self) -> np.ndarray:
        self._check_fitted()
        return np.asarray(self.species_, dtype=np.int64)

    @property
    def n_parameters(self) -> int:
        if not hasattr(self, "module_"):
            return 0
        return int(sum(p.numel() for p in self.module_.parameters()))

    def _check_fitted(self) -> None:
        if not hasattr(self, "module_"):
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet. Call 'fit' first.")

    def _torch_settings(self) -> tuple[str, Any]:
        import torch

        dtype = getattr(self, "dtype", "float64")
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        device = getattr(self, "device", "cpu")
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for but torch sees no CUDA device")
        return device, getattr(torch, dtype)

    def energy_and_derivatives(self, data: dict[str, Any], forces: bool = True,
                               stress: bool = True, create_graph: bool = False,
                               uncertainty: bool = False) -> dict[str, Any]:
        """The module's energies and, by autograd, forces and stress of one batch.

        Parameters
        ----------
        data : dict
            :func:`batch_graph`'s tensors.
        forces, stress : bool
            Which derivatives to take.
        create_graph : bool
            Keep the graph of the derivatives (to train on forces).
        uncertainty : bool
            Also the calibrated sigmas of the last-layer posterior (needs
            :meth:`fit_last_layer`): ``energy_sigma`` (B,), and with ``forces``/``stress``
            ``forces_sigma`` (N, 3), ``stress_sigma`` (B, 3, 3).

        Returns
        -------
        dict
            ``energy`` (B,), ``energies`` (N,), eV; ``forces`` (N, 3), eV/Angstrom;
            ``stress`` (B, 3, 3), eV/Angstrom^3 (NaN for structures without a cell).
        """
        import torch

        pos = data["positions"].detach().requires_grad_(forces)
        strain = torch.zeros_like(data["cell"]).requires_grad_(stress)
        sym = 0.5 * (strain + strain.transpose(1, 2))
        inputs = dict(data)
        inputs["positions"] = pos + (pos[:, None, :] @ sym[data["batch"]])[:, 0, :]
        inputs["cell"] = data["cell"] + data["cell"] @ sym
        out = self.module_(inputs)
        wrt = [t for t, want in ((pos, forces), (strain, stress)) if want]
        result = {"energy": out["energy"], "energies": out["energies"]}
        volume = torch.linalg.det(data["cell"]).abs()
        has_cell = (volume > 0)[:, None, None]
        # divide by 1 where there is no cell, then mark those NaN: a NaN inside the
        # division would poison the gradient of a stress loss for every frame
        volume = torch.where(volume > 0, volume, torch.ones_like(volume))

        def per_volume(t):
            return torch.where(has_cell, t / volume[:, None, None],
                               torch.full_like(t, float("nan")))
        if wrt:
            grads = torch.autograd.grad(out["energy"].sum(), wrt, create_graph=create_graph,
                                        retain_graph=create_graph or uncertainty)
            grads = list(grads)
            if forces:
                result["forces"] = -grads.pop(0)
            if stress:
                result["stress"] = per_volume(grads.pop(0))
        if uncertainty:
            result.update(self._sigmas(out, data, wrt, forces, stress, per_volume))
        return result

    def _sigmas(self, out: dict[str, Any], data: dict[str, Any], wrt: list, forces: bool,
                stress: bool, per_volume) -> dict[str, Any]:
        """Calibrated sigmas of one batch (see :mod:`ml4m.models.last_layer`)."""
        import torch

        post = self.last_layer_
        if "features" not in out:
            raise ConfigError(f"a '{self.kind}' module returns no 'features': it has no "
                              "last-layer uncertainty")
        B = len(data["n_atoms"])
        Phi = design_rows(out, data["batch"], B, post.n_blocks)
        factor = torch.as_tensor(post.factor, dtype=Phi.dtype, device=Phi.device)
        c_e, c_f = post.calibration["energy"], post.calibration["forces"]
        sigmas = {"energy_sigma": c_e * torch.linalg.vector_norm(Phi.detach() @ factor, dim=1)}
        if wrt:
            var = gradient_variances(out, wrt, post.directions, post.n_blocks)
            if forces:
                sigmas["forces_sigma"] = c_f * var.pop(0).sqrt()
            if stress:
                sigmas["stress_sigma"] = c_f * per_volume(var.pop(0).sqrt())
        return sigmas

    def _graphs(self, frames: Sequence[Frame]) -> Iterator[tuple[list[Frame], dict[str, Any]]]:
        """Consecutive runs of ``frames`` whose edges add up to at most the edge budget
        (:attr:`predict_edges`; a larger frame alone), each with :func:`batch_graph`'s
        tensors on the model's device; each frame's neighbour list is built once."""
        device, _ = self._torch_settings()
        budget = self.predict_edges * (CUDA_BATCH_FACTOR if device.startswith("cuda") else 1)
        chunk: list[Frame] = []
        lists: list[NeighborList] = []
        edges = 0
        for frame in frames:
            nl = neighbor_list(frame, self.cutoff, full_list=True)
            if chunk and edges + len(nl) > budget:
                yield chunk, batch_graph(chunk, self.cutoff, self.species_, device, self.dtype,
                                         neighbors=lists)
                chunk, lists, edges = [], [], 0
            chunk.append(frame)
            lists.append(nl)
            edges += len(nl)
        if chunk:
            yield chunk, batch_graph(chunk, self.cutoff, self.species_, device, self.dtype,
                                     neighbors=lists)

    def predict(self, frames, uncertainty: bool = False) -> Prediction:
        """Energies (eV), forces (eV/Angstrom), stresses (eV/Angstrom^3), per-atom
        energies; with ``uncertainty`` their calibrated sigmas too (see
        :mod:`ml4m.models.last_layer`; one backward pass more per
        batch and direction kept, :attr:`uncertainty_rank`)."""
        self._check_fitted()
        if uncertainty and not self.has_uncertainty:
            raise ConfigError(f"a '{self.kind}' model has no uncertainty before "
                              "fit_last_layer")
        frames = as_frames(frames)
        keys = ["energy", "forces", "stress", "energies"]
        keys += ["energy_sigma", "forces_sigma", "stress_sigma"] if uncertainty else []
        parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        for chunk, data in self._graphs(frames):
            with frozen_parameters(self.module_):
                # no strain derivative unless a structure is fully periodic: the stress
                # of any other is NaN
                out = self.energy_and_derivatives(data, stress=any(f.pbc.all() for f in chunk),
                                                  uncertainty=uncertainty)
            for k in keys:
                if k not in out:  # a stress not taken: no fully periodic structure
                    parts[k].append(np.full((len(chunk), 6), np.nan))
                    continue
                a = out[k].detach().cpu().numpy().astype(float)
                if k.startswith("stress"):
                    a = np.stack([a[:, p, q] for p, q in VOIGT], axis=1)
                    a[[not f.pbc.all() for f in chunk]] = np.nan
                parts[k].append(a)
        offsets = np.concatenate([[0], np.cumsum([len(f) for f in frames])])
        return Prediction(offsets=offsets, **{k: np.concatenate(v) for k, v in parts.items()})

    def fit_last_layer(self, frames, valid=None) -> TorchPotential:
        """Fit the last-layer posterior on ``frames`` and calibrate it on ``valid``.

        The network's energy residuals on ``frames`` (with energies) and its force
        residuals on a sample of their atoms (:meth:`_force_rows`) give the posterior
        (prior and noises by maximum evidence, :mod:`ml4m.models.last_layer`); the errors
        on ``valid`` (held-out frames; ``frames`` when None) give the calibration
        factors of the energy and force sigmas. The network's weights are unchanged.

        Returns
        -------
        self

        Raises
        ------
        DataError
            No frame with an energy.
        ConfigError
            The module returns no ``features``.
        """
        import torch

        self._check_fitted()
        frames = [f for f in as_frames(frames) if f.energy is not None]
        if not frames:
            raise DataError("the last-layer posterior needs frames with energies")
        Phi, pred = [], []
        n_blocks = 1
        for chunk, data in self._graphs(frames):
            with torch.no_grad():
                out = self.module_(data)
            if "features" not in out:
                raise ConfigError(f"a '{self.kind}' module returns no 'features': it has no "
                                  "last-layer uncertainty")
            n_blocks = len(self.species_) if "feature_block" in out else 1
            Phi.append(design_rows(out, data["batch"], len(chunk), n_blocks).cpu().numpy())
            pred.append(out["energy"].cpu().numpy())
        residual = np.array([f.energy for f in frames]) - np.concatenate(pred)
        Phi = np.concatenate(Phi).astype(float)
        J, force_residual, weight = self._force_rows(frames, n_blocks, Phi.shape[1])
        post = LastLayerPosterior.fit(Phi, residual, np.array([len(f) for f in frames]),
                                      n_blocks, self.uncertainty_rank, J, force_residual,
                                      weight)
        if self.uncertainty_directions == "focus" and len(J):
            post.focus(J, self.uncertainty_rank)
        self.last_layer_ = post
        held = frames if valid is None else as_frames(valid)
        self.last_layer_.calibrate(*held_out_errors(held, self.predict(held, uncertainty=True)))
        return self

    def _force_rows(self, frames: list[Frame], n_blocks: int, D: int
                    ) -> tuple[np.ndarray, np.ndarray, float]:
        """The force rows of the last-layer posterior: ``J = d Phi / d r`` (n_rows, D) and
        the force residuals (reference minus network, eV/Angstrom) of the atoms of evenly
        spaced frames with forces, at most :attr:`jacobian_atoms` of them (or one frame;
        one backward pass per column of ``J``, batch by batch), and how many times each
        row counts (the atoms with forces in ``frames`` over the sample's). Empty without
        forces."""
        import torch

        labelled = [f for f in frames if f.forces is not None]
        if not labelled:
            return np.zeros((0, D)), np.zeros(0), 1.0
        stride = -(-sum(len(f) for f in labelled) // self.jacobian_atoms)
        spaced = labelled[::max(1, stride)]
        n, atoms = 0, 0
        while n < len(spaced) and (n == 0 or atoms + len(spaced[n]) <= self.jacobian_atoms):
            atoms += len(spaced[n])
            n += 1
        J, residual = [], []
        for chunk, data in self._graphs(spaced[:n]):
            pos = data["positions"].detach().requires_grad_(True)
            out = self.module_({**data, "positions": pos})
            forces = -torch.autograd.grad(out["energy"].sum(), pos, retain_graph=True)[0]
            columns = [g[0].reshape(-1)
                       for g in direction_gradients(out, [pos], np.eye(D), n_blocks)]
            J.append(torch.stack(columns, dim=1).detach().cpu().numpy().astype(float))
            residual.append(np.concatenate([f.forces for f in chunk])
                            - forces.detach().cpu().numpy())
        weight = sum(len(f) for f in labelled) / atoms
        return (np.concatenate(J), np.concatenate(residual).astype(float).ravel(),
                float(weight))

    # ---- persistence ----------------------------------------------------------------------
    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Hyperparameters, species, the module's state dict as float64/int arrays and the
        last-layer posterior (``last_layer``: None before :meth:`fit_last_layer`)."""
        self._check_fitted()
        params = {"hyper": {k: v for k, v in self.get_params().items()},
                  "species": [int(z) for z in self.species_], "last_layer": None}
        arrays = {f"module.{k}": v.detach().cpu().numpy()
                  for k, v in self.module_.state_dict().items()}
        if self.has_uncertainty:
            params["last_layer"], post = self.last_layer_.to_state()
            arrays.update({f"last_layer.{k}": v for k, v in post.items()})
        return params, arrays

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> TorchPotential:
        """Rebuild from :meth:`get_state`: the module is built anew, then its state dict
        is loaded from the arrays (shapes checked by torch, named on mismatch)."""
        import torch

        from ml4m.validation import check_mapping

        params = check_mapping("params", params, required=("hyper", "species"), error=DataError)
        hyper = cls.check_params(params["hyper"], prefix="params.hyper.", error=DataError)
        model = cls(**hyper)
        model.species_ = [int(z) for z in params["species"]]
        device, dtype = model._torch_settings()
        module = model.build_module().to(device=device, dtype=dtype)
        state = {k[len("module."):]: torch.as_tensor(v) for k, v in arrays.items()
                 if k.startswith("module.")}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise DataError(f"module state does not fit the model: {exc}") from exc
        model.module_ = module
        if params.get("last_layer") is not None:
            model.last_layer_ = LastLayerPosterior.from_state(
                params["last_layer"], {k[len("last_layer."):]: v for k, v in arrays.items()
                                       if k.startswith("last_layer.")})
        return model

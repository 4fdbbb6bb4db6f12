"""Potentials linear in a feature map of per-atom descriptors, with Bayesian uncertainty.

``E = sum_species E0 + sum_i phi(X_i) . c``. The coefficients are the posterior mean of
a Bayesian linear regression on energies (per atom), forces and stresses, each with its
own noise level; the posterior covariance gives the predictive standard deviation of
every energy and force component. :class:`LinearPotential` with the ACE basis is linear
ACE; :mod:`ml4m.models.kernel.sparse_gp` reuses everything here with a kernel map.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ml4m.data.frames import Dataset, Frame
from ml4m.data.reference import resolve_reference_energies
from ml4m.errors import ConfigError, DataError, NotFittedError
from ml4m.models.base import (
    Potential,
    Prediction,
    as_frames,
    descriptor_from_dict,
    descriptor_to_dict,
)
from ml4m.models.linear.bayesian import BayesianLinearRegression, NormalEquations, quadratic_form_rows
from ml4m.models.linear.design import VOIGT, DesignRows, FeatureMap, SpeciesBlocks, design_rows
from ml4m.models.serialization import register_model

__all__ = ["LinearPotential"]


@register_model("linear")
class LinearPotential(Potential):
    """A potential linear in per-species blocks of a descriptor (e.g. linear ACE).

    Parameters
    ----------
    descriptor : Descriptor
        An ml4m descriptor with position and strain gradients (e.g. ``ACE``); its
        ``species`` fix the elements the model knows.
    e0 : 'fit', dict or None, default='fit'
        Isolated-atom energies (eV): fitted by least squares on the training energies,
        given as ``{"Cu": -0.01}``, or zero.
    sigma_energy : float, default=0.001
        Expected energy error, eV/atom (energy rows are per atom).
    sigma_forces : float, default=0.03
        Expected force error, eV/Angstrom. ``0`` or ``None`` drops force rows.
    sigma_stress : float, default=0.003
        Expected stress error, eV/Angstrom^3 (0.003 eV/A^3 = 0.48 GPa). ``0`` or ``None``
        drops stress rows.
    alpha, beta : float, optional
        Prior precision and noise scale; ``None`` maximises the Bayesian evidence.
    noise : {'shared', 'per_quantity'}, default='shared'
        ``'shared'``: the ``sigma_*`` fix the relative weights of energies, forces and
        stresses and one noise scale is fitted (ridge-like, as linear ACE fits usually
        are). ``'per_quantity'``: each quantity gets its own noise level by maximum
        evidence, the ``sigma_*`` being only its units and starting point (as GAP and
        FLARE optimise their noise hyperparameters). The fitted levels are in
        ``noise_`` (eV/atom, eV/Angstrom, eV/Angstrom^3).
    batch_frames : int, default=4
        Frames per block when accumulating the normal equations.
    """

    kind = "linear"
    has_uncertainty = True

    def __init__(self, descriptor, e0: Any = "fit", sigma_energy: float = 0.001,
                 sigma_forces: float | None = 0.03, sigma_stress: float | None = 0.003,
                 alpha: float | None = None, beta: float | None = None,
                 noise: str = "shared", batch_frames: int = 4) -> None:
        self.descriptor = descriptor
        self.e0 = e0
        self.sigma_energy = sigma_energy
        self.sigma_forces = sigma_forces
        self.sigma_stress = sigma_stress
        self.alpha = alpha
        self.beta = beta
        self.noise = noise
        self.batch_frames = batch_frames

    # ---- pieces a subclass may change ---------------------------------------------------
    @property
    def species(self) -> np.ndarray:
        """Atomic numbers the model knows (from the descriptor)."""
        return np.asarray(self.descriptor.species, dtype=np.int64)

    def _make_feature_map(self, train: Sequence[Frame]) -> FeatureMap:
        return SpeciesBlocks(len(self.species), self.descriptor.n_features)

    def _prior(self, phi_sq_mean: np.ndarray) -> np.ndarray:
        """Prior precision shape: coefficients of large features are small."""
        scale = np.where(phi_sq_mean > 0, phi_sq_mean, np.max(phi_sq_mean, initial=1.0))
        return scale / scale.mean()

    # ---- helpers -------------------------------------------------------------------------
    def _species_index(self, frames: Sequence[Frame]) -> np.ndarray:
        lookup = {int(z): k for k, z in enumerate(self.species)}
        out = []
        for n, f in enumerate(frames):
            unknown = sorted({int(z) for z in f.numbers} - set(lookup))
            if unknown:
                from ase.data import chemical_symbols

                src = f.source or (None, n)
                raise DataError(f"species {[chemical_symbols[z] for z in unknown]} are not known "
                                f"to this model (trained on {[chemical_symbols[z] for z in self.species]})",
                                *src)
            out.append(np.array([lookup[int(z)] for z in f.numbers], dtype=np.int64))
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def _blocks(self, frames: Sequence[Frame]) -> Iterator[list[Frame]]:
        for start in range(0, len(frames), self.batch_frames):
            yield list(frames[start:start + self.batch_frames])

    def _rows(self, block: list[Frame], forces: bool, stress: bool) -> tuple[DesignRows, np.ndarray]:
        res = self.descriptor.compute(block, gradients=forces or stress)
        sidx = self._species_index(block)
        volumes = np.array([f.volume if f.pbc.all() else 0.0 for f in block])
        rows = design_rows(res, self.fmap_, sidx, len(block), volumes, forces, stress)
        return rows, res.features

    def _e0_of(self, frames: Sequence[Frame]) -> np.ndarray:
        return np.array([sum(self.e0_[int(z)] for z in f.numbers) for f in frames])

    # ---- public API ----------------------------------------------------------------------
    def fit(self, train: Dataset | Sequence[Frame], valid: Dataset | None = None) -> LinearPotential:
        """Fit to labelled frames (energies required; forces/stresses used when present).

        Parameters
        ----------
        train : Dataset or sequence of Frame
            Training frames.
        valid : Dataset, optional
            Not used by the evidence fit (kept for a common interface).

        Returns
        -------
        self
        """
        frames = as_frames(train)
        if not frames:
            raise DataError("no training frames")
        for n, f in enumerate(frames):
            if f.energy is None:
                raise DataError("training frame has no energy", *(f.source or (None, n)))
            if self.sigma_forces and f.forces is None:
                raise DataError("training frame has no forces but sigma_forces is set (give "
                                "sigma_forces: 0 to fit energies only)", *(f.source or (None, n)))
        if self.noise not in ("shared", "per_quantity"):
            raise ConfigError(f"noise must be 'shared' or 'per_quantity', got {self.noise!r}")
        self._species_index(frames)  # unknown species fail before any work
        self.e0_ = resolve_reference_energies(Dataset(frames), self.e0)
        self.fmap_ = self._make_feature_map(frames)
        use_f = bool(self.sigma_forces)
        use_s = bool(self.sigma_stress) and any(f.stress is not None for f in frames)
        p = self.fmap_.n_features
        neq = {q: NormalEquations(p) for q in ("energy", "forces", "stress")}
        phi_sq = np.zeros(self.fmap_.n_features)
        n_rows = 0
        for block in self._blocks(frames):
            rows, _ = self._rows(block, use_f, use_s)
            n_at = np.array([len(f) for f in block], dtype=float)
            y_e = (np.array([f.energy for f in block]) - self._e0_of(block)) / n_at
            neq["energy"].add(rows.energy / n_at[:, None], y_e, 1.0 / self.sigma_energy**2)
            phi_sq += np.sum(rows.energy**2 / n_at[:, None], axis=0)
            n_rows += int(n_at.sum())
            if use_f:
                y_f = np.concatenate([f.forces for f in block]).ravel()
                neq["forces"].add(rows.forces.reshape(-1, rows.forces.shape[-1]), y_f,
                                  1.0 / self.sigma_forces**2)
            if use_s:
                has = np.array([f.stress is not None for f in block])
                if has.any():
                    y_s = np.concatenate([f.stress for f, h in zip(block, has) if h])
                    neq["stress"].add(rows.stress[has].reshape(-1, rows.stress.shape[-1]), y_s,
                            1.0 / self.sigma_stress**2)
        reg = BayesianLinearRegression(alpha=self.alpha, beta=self.beta,
                                       prior=self._prior(phi_sq / max(n_rows, 1)))
        used = [q for q in ("energy", "forces", "stress") if neq[q].n]
        if self.noise == "per_quantity":
            reg.fit_groups([neq[q] for q in used])
        else:
            total = neq["energy"]
            total += neq["forces"]
            total += neq["stress"]
            reg.fit_normal_equations(total)
        betas = np.broadcast_to(reg.betas_, (len(used),))
        scale = {"energy": self.sigma_energy, "forces": self.sigma_forces, "stress": self.sigma_stress}
        self.noise_ = {q: float(scale[q] / np.sqrt(b)) for q, b in zip(used, betas)}
        self.regression_ = reg
        self.coef_ = self.regression_.coef_
        self.covariance_ = self.regression_.covariance_
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet. Call 'fit' first.")

    def predict(self, frames, uncertainty: bool = False) -> Prediction:
        """Energies (eV), forces (eV/Angstrom), stresses (eV/Angstrom^3) and sigmas.

        Parameters
        ----------
        frames : Frame, ase.Atoms, or a sequence/Dataset of them
            Structures (labels are ignored).
        uncertainty : bool, default=False
            Also return ``energy_sigma`` and ``forces_sigma`` (posterior standard
            deviations; the fitted noise is not added).
        """
        self._check_fitted()
        frames = as_frames(frames)
        self._species_index(frames)
        if not uncertainty:
            return self._predict_adjoint(frames)
        energy, forces, stress, e_sig, f_sig = [], [], [], [], []
        for block in self._blocks(frames):
            rows, _ = self._rows(block, True, True)
            energy.append(rows.energy @ self.coef_ + self._e0_of(block))
            forces.append(rows.forces @ self.coef_)
            s = rows.stress @ self.coef_
            s[[not f.pbc.all() for f in block]] = np.nan
            stress.append(s)
            C = self.covariance_
            e_sig.append(np.sqrt(np.clip(quadratic_form_rows(rows.energy, C), 0, None)))
            R = rows.forces.reshape(-1, rows.forces.shape[-1])
            f_sig.append(np.sqrt(np.clip(quadratic_form_rows(R, C), 0, None)).reshape(-1, 3))
        offsets = np.concatenate([[0], np.cumsum([len(f) for f in frames])])
        return Prediction(
            energy=np.concatenate(energy), forces=np.concatenate(forces),
            stress=np.concatenate(stress), offsets=offsets,
            energy_sigma=np.concatenate(e_sig), forces_sigma=np.concatenate(f_sig),
        )

    def _predict_adjoint(self, frames: list[Frame]) -> Prediction:
        """Energies, forces, stresses through ``dE/dX`` and one descriptor VJP per block.

        Never forms per-feature gradients: the cost is that of the descriptor's values
        plus one pass over neighbour pairs (the fast path for MD).
        """
        energy, forces, stress = [], [], []
        for block in self._blocks(frames):
            sidx = self._species_index(block)
            off = np.cumsum([0] + [len(f) for f in block])
            X, grad, strain = self.descriptor.features_and_vjp(
                block, lambda X, k: self.fmap_.input_gradient(X, sidx[off[k]:off[k + 1]], self.coef_))
            frame = np.repeat(np.arange(len(block)), np.diff(off))
            phi = self.fmap_.transform(X, sidx)
            e = np.bincount(frame, weights=phi @ self.coef_, minlength=len(block))
            energy.append(e + self._e0_of(block))
            forces.append(-grad)
            vol = np.array([f.volume if f.pbc.all() else np.nan for f in block])
            s = np.stack([strain[:, a, b] for a, b in VOIGT], axis=1) / vol[:, None]
            stress.append(s)
        offsets = np.concatenate([[0], np.cumsum([len(f) for f in frames])])
        return Prediction(energy=np.concatenate(energy), forces=np.concatenate(forces),
                          stress=np.concatenate(stress), offsets=offsets)

    # ---- persistence ----------------------------------------------------------------------
    def _hyper(self) -> dict[str, Any]:
        return {"sigma_energy": self.sigma_energy, "sigma_forces": self.sigma_forces,
                "sigma_stress": self.sigma_stress, "alpha": self.alpha, "beta": self.beta,
                "noise": self.noise, "batch_frames": self.batch_frames}

    def _feature_map_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {}

    def _restore_feature_map(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> FeatureMap:
        return SpeciesBlocks(len(self.species), self.descriptor.n_features)

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        self._check_fitted()

        fm_params, fm_arrays = self._feature_map_state()
        params = {"descriptor": descriptor_to_dict(self.descriptor), "hyper": self._hyper(),
                  "feature_map": fm_params, "alpha_": self.regression_.alpha_,
                  "beta_": self.regression_.beta_, "noise_": self.noise_}
        arrays = {"coef": self.coef_, "covariance": self.covariance_,
                  "e0_species": np.array(sorted(self.e0_), dtype=np.int64),
                  "e0_values": np.array([self.e0_[z] for z in sorted(self.e0_)]),
                  **{f"fmap_{k}": v for k, v in fm_arrays.items()}}
        return params, arrays

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> LinearPotential:
        try:
            model = cls(descriptor_from_dict(params["descriptor"]), **params["hyper"])
            model.e0_ = {int(z): float(v) for z, v in zip(arrays["e0_species"], arrays["e0_values"])}
            fm_arrays = {k[5:]: v for k, v in arrays.items() if k.startswith("fmap_")}
            model.fmap_ = model._restore_feature_map(params["feature_map"], fm_arrays)
            model.coef_ = arrays["coef"]
            model.covariance_ = arrays["covariance"]
            model.noise_ = {str(q): float(v) for q, v in params.get("noise_", {}).items()}
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"model file is missing or has a malformed entry: {exc}") from exc
        if model.coef_.shape != (model.fmap_.n_features,):
            raise ConfigError(f"coefficients have shape {model.coef_.shape}, the descriptor gives "
                              f"{model.fmap_.n_features} features")
        model.regression_ = BayesianLinearRegression(alpha=params["alpha_"], beta=params["beta_"])
        model.regression_.coef_, model.regression_.covariance_ = model.coef_, model.covariance_
        model.regression_.alpha_, model.regression_.beta_ = params["alpha_"], params["beta_"]
        model.regression_.n_features_in_ = len(model.coef_)
        return model

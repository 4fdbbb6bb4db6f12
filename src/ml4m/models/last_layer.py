"""Last-layer prediction rigidity (LLPR): a Bayesian posterior on a network's last layer.

Convention of every network module (:class:`~ml4m.models.torch_potential.TorchPotential`):
besides ``energy`` and ``energies`` it returns ``features`` (N, d) and, when its last
layer is per element, ``feature_block`` (N,), the block of last-layer weights each atom
uses (an index into the model's ``species_``; absent: one shared block), such that the per-atom energy is

    E_i = c_i + [features_i, 1] . theta_{block_i}

with ``c_i`` independent of ``theta``. A structure's energy is then linear in ``theta``
(``B (d + 1)`` numbers) with the design row ``Phi_n = sum_{i in n} onehot(block_i) x
[features_i, 1]`` (the ones column stands for a per-block offset).

The posterior (Bigi et al., 2024) is Bayesian linear regression of the trained network's
residuals on the last layer, the loss's two kinds of rows: energies on ``Phi`` (noise per
atom: row weights ``1 / n_atoms``) and force components on ``-J``, ``J = d Phi / d r``
(sample training atoms, each row counted for all training atoms over the sample's), with
a prior precision ``alpha`` and one noise precision per kind, ``beta`` and ``beta_F``,
all by maximum evidence (:meth:`~ml4m.models.linear.bayesian.BayesianLinearRegression.
fit_groups`); the network's weights stay the mean. With the covariance
``Sigma = (alpha I + beta Phi^T W Phi + beta_F J^T J)^-1``:

- energy variance ``Phi_n^T Sigma Phi_n`` (exact);
- force variance of component ``(a, x)``: ``j^T Sigma j`` with ``j = d Phi_n / d r_ax``,
  through ``K`` directions ``Sigma ~ sum_k w_k w_k^T`` (exact when ``B (d + 1) <= K``),
  ``sum_k (d (Phi . w_k) / d r_ax)^2``, one backward pass per ``k``; stress likewise with
  the strain derivative over the volume. Which ``K`` directions is the network kind's
  choice (``TorchPotential.uncertainty_directions``): ``Sigma``'s top eigenvectors
  (:meth:`LastLayerPosterior.fit`; the MPNN) or those that carry most force variance on
  sample training atoms (:meth:`LastLayerPosterior.focus`; the BPNN, whose per-element
  last layer has hundreds of parameters).

The force rows and each kind's directions were chosen by the per-atom Spearman of force
sigma against force error on the shared valid sets (``benchmarks/results/
network_uncertainty.md``).

Calibration: each sigma is ``c_q sqrt(variance)`` with ``c_q^2 = mean(error^2) /
mean(variance)`` over held-out frames, for ``q`` in energy (per frame) and forces (per
component; the stress uses the force factor).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Iterator
from typing import Any

import numpy as np

from ml4m.errors import DataError
from ml4m.models.linear.bayesian import BayesianLinearRegression, NormalEquations

__all__ = ["LastLayerPosterior", "design_rows", "direction_gradients", "gradient_variances"]


def design_rows(out: dict[str, Any], batch, n_frames: int, n_blocks: int):
    """``Phi`` (n_frames, n_blocks (d + 1)): per-structure sums of ``[features, 1]``
    placed in each atom's block (a torch tensor, differentiable)."""
    import torch

    h = out["features"]
    N, d = h.shape
    block = out.get("feature_block")
    block = torch.zeros(N, dtype=torch.long, device=h.device) if block is None else block
    rows = torch.cat([h, torch.ones(N, 1, dtype=h.dtype, device=h.device)], dim=1)
    Phi = torch.zeros(n_frames * n_blocks, d + 1, dtype=h.dtype, device=h.device)
    Phi = Phi.index_add(0, batch * n_blocks + block, rows)
    return Phi.reshape(n_frames, n_blocks * (d + 1))


def direction_gradients(out: dict[str, Any], wrt: list, directions: np.ndarray,
                        n_blocks: int) -> Iterator[list]:
    """``d (Phi . u_k) / d t`` for every tensor ``t`` in ``wrt``, one ``k`` at a time.

    Parameters
    ----------
    out : dict
        A module's output (``features`` with its graph, ``feature_block``).
    wrt : list of Tensor
        Inputs that require grad (positions (N, 3), strain (B, 3, 3)).
    directions : ndarray of shape (n_blocks (d + 1), K)
        The vectors ``u_k`` as columns.
    n_blocks : int

    Yields
    ------
    list of Tensor or None
        Per ``wrt``, the derivative (its shape; None where it does not depend on ``u_k``).
    """
    import torch

    h = out["features"]
    N, d = h.shape
    block = out.get("feature_block")
    block = torch.zeros(N, dtype=torch.long, device=h.device) if block is None else block
    U = torch.as_tensor(directions, dtype=h.dtype, device=h.device)
    U = U.reshape(n_blocks, d + 1, -1)[:, :d, :]  # the ones column has no derivative
    seeds = U[block]  # (N, d, K)
    # one backward pass per direction (on CPU faster than torch's batched, vmap, pass)
    for k in range(seeds.shape[2]):
        yield list(torch.autograd.grad(h, wrt, grad_outputs=seeds[:, :, k], retain_graph=True,
                                       allow_unused=True))


def gradient_variances(out: dict[str, Any], wrt: list, directions: np.ndarray,
                       n_blocks: int) -> list:
    """``sum_k (d (Phi . u_k) / d t)^2`` for every tensor ``t`` in ``wrt`` (the arguments of
    :func:`direction_gradients`, ``directions`` holding ``u_k sqrt(l_k)``)."""
    import torch

    total = [torch.zeros_like(t) for t in wrt]
    for grads in direction_gradients(out, wrt, directions, n_blocks):
        for acc, g in zip(total, grads):
            if g is not None:
                acc += g * g
    return total


@dataclass
class LastLayerPosterior:
    """The fitted last-layer posterior and its calibration.

    Attributes
    ----------
    factor : ndarray of shape (D, r)
        ``Sigma = factor @ factor.T`` (eV^-2 units of the design rows' weights).
    directions : ndarray of shape (D, K)
        ``w_k`` with ``Sigma ~ sum_k w_k w_k^T``: after :meth:`fit` the top-``K``
        eigenvectors of ``Sigma`` times the square roots of their eigenvalues (all ``D``
        when ``D <= K``), after :meth:`focus` those that carry most force variance on
        sample atoms.
    alpha, beta : float
        Prior precision and per-atom energy noise precision (1/eV^2) from the evidence.
    beta_forces : float or None
        Force-component noise precision (Angstrom^2/eV^2) from the evidence; None when
        the posterior saw no forces.
    calibration : dict
        ``{"energy": c_E, "forces": c_F}`` and, once calibrated on frames with forces,
        ``forces_rmse`` (eV/Angstrom, their RMS force error).
    n_blocks : int
        Blocks of last-layer weights (elements, for a per-element last layer).
    """

    factor: np.ndarray
    directions: np.ndarray
    alpha: float
    beta: float
    n_blocks: int
    calibration: dict[str, float] = field(default_factory=lambda: {"energy": 1.0,
                                                                   "forces": 1.0})
    beta_forces: float | None = None

    @classmethod
    def fit(cls, Phi: np.ndarray, residual: np.ndarray, n_atoms: np.ndarray, n_blocks: int,
            rank: int, jacobian: np.ndarray | None = None,
            force_residual: np.ndarray | None = None, force_weight: float = 1.0
            ) -> LastLayerPosterior:
        """Evidence fit of the energy residuals (weights 1/n_atoms) and, when given, of
        the force residuals, one noise level each.

        Parameters
        ----------
        Phi : ndarray of shape (n_frames, D)
        residual : ndarray of shape (n_frames,), eV
            Reference minus predicted energy.
        n_atoms : ndarray of shape (n_frames,)
        n_blocks : int
        rank : int
            ``K``, the directions kept for force and stress variances.
        jacobian : ndarray of shape (n_rows, D), optional
            ``d Phi / d r_ax`` of sample atoms with force labels (the force component is
            ``-j . theta``): their rows join the precision, ``beta_F J^T J``.
        force_residual : ndarray of shape (n_rows,), eV/Angstrom
            Reference minus predicted force components of those rows.
        force_weight : float
            How many times each force row counts (all training atoms over the sample's).
        """
        D = Phi.shape[1]
        energies, forces = NormalEquations(D), NormalEquations(D)
        energies.add(Phi, residual, 1.0 / np.asarray(n_atoms, float))
        if jacobian is not None and len(jacobian):
            forces.add(-np.asarray(jacobian, float), force_residual, force_weight)
            forces.n = int(round(force_weight * forces.n))  # the rows stand for this many
        blr = BayesianLinearRegression().fit_groups([energies, forces])
        F = blr.posterior_factor_
        # eigenpairs of Sigma = F F^T from the SVD of F
        U, s, _ = np.linalg.svd(F, full_matrices=False)
        keep = min(rank, len(s))
        betas = [float(b) for b in blr.betas_]
        return cls(factor=np.ascontiguousarray(F), directions=U[:, :keep] * s[:keep],
                   alpha=float(blr.alpha_), beta=betas[0], n_blocks=n_blocks,
                   beta_forces=betas[1] if len(betas) > 1 else None)

    def focus(self, jacobian: np.ndarray, rank: int) -> None:
        """Keep the ``rank`` directions that carry most force variance on sample rows
        (instead of the covariance's top eigenvectors).

        With ``Sigma = F F^T`` and ``J`` the rows ``d Phi / d r_ax`` of sample atoms, the
        subspace that keeps most of ``sum_rows j^T Sigma j`` is spanned by the top right
        singular vectors ``v_k`` of ``J F``; the directions become ``F v_k`` (a projection
        of ``F``: each variance stays at most the exact one).

        Nothing changes when the ``rank`` directions :meth:`fit` kept are already all of
        ``Sigma`` (exact).

        Parameters
        ----------
        jacobian : ndarray of shape (n_rows, D)
        rank : int
        """
        if rank >= min(self.factor.shape):
            return
        _, _, Vt = np.linalg.svd(np.asarray(jacobian, float) @ self.factor,
                                 full_matrices=False)
        self.directions = self.factor @ Vt[:rank].T

    @property
    def noise_sigma(self) -> float:
        """Per-atom energy noise from the evidence, eV (``1 / sqrt(beta)``)."""
        return float(1.0 / np.sqrt(self.beta))

    def energy_variance(self, Phi: np.ndarray) -> np.ndarray:
        """``Phi_n^T Sigma Phi_n`` per row, eV^2 (uncalibrated)."""
        Z = np.asarray(Phi, dtype=float) @ self.factor
        return np.einsum("ij,ij->i", Z, Z)

    def calibrate(self, energy_err: np.ndarray, energy_var: np.ndarray, force_err: np.ndarray,
                  force_var: np.ndarray) -> None:
        """Set the factors so that the mean predicted variance equals the mean squared
        error (errors and variances over held-out frames; empty arrays leave 1), and
        record the force RMSE of those frames as ``calibration["forces_rmse"]`` (eV/A)."""
        from ml4m.models.calibration import variance_scale

        for key, err, var in (("energy", energy_err, energy_var),
                              ("forces", force_err, force_var)):
            scale = variance_scale(err, var)
            if scale is not None:
                self.calibration[key] = scale
            if key == "forces" and np.size(err):
                self.calibration["forces_rmse"] = float(np.sqrt(np.mean(np.square(err))))

    # ---- persistence ------------------------------------------------------------------------
    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON parameters and arrays (see :meth:`from_state`)."""
        params = {"alpha": self.alpha, "beta": self.beta, "n_blocks": self.n_blocks,
                  "calibration": dict(self.calibration), "beta_forces": self.beta_forces}
        return params, {"factor": self.factor, "directions": self.directions}

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]
                   ) -> LastLayerPosterior:
        """Rebuild from :meth:`to_state`; a missing key is a :class:`DataError`."""
        from ml4m.validation import check_array, check_mapping

        params = check_mapping("last_layer", params,
                               required=("alpha", "beta", "n_blocks", "calibration"),
                               error=DataError)
        for key in ("factor", "directions"):
            if key not in arrays:
                raise DataError(f"model file lacks the last layer's array {key!r}")
        factor = check_array("last_layer.factor", arrays["factor"], ndim=2, dtype=float)
        directions = check_array("last_layer.directions", arrays["directions"], ndim=2,
                                 dtype=float)
        calibration = check_mapping("last_layer.calibration", params["calibration"],
                                    required=("energy", "forces"), error=DataError)
        beta_forces = params.get("beta_forces")  # absent from files written before it
        return cls(factor=factor, directions=directions, alpha=float(params["alpha"]),
                   beta=float(params["beta"]), n_blocks=int(params["n_blocks"]),
                   calibration={k: float(v) for k, v in calibration.items()},
                   beta_forces=None if beta_forces is None else float(beta_forces))

"""Kernel models: sparse GP potentials and kernel ridge / GP structure-property models."""

from ml4m.models.kernel.sparse_gp import DotProductKernelMap, SparseGPPotential, select_sparse_points

__all__ = ["DotProductKernelMap", "SparseGPPotential", "select_sparse_points"]

"""Kernel models: sparse GP potentials and kernel ridge / GP structure-property models."""

from ml4m.models.kernel.krr import KernelRegressor, LearningCurve, cross_validate, learning_curve
from ml4m.models.kernel.property import PropertyModel, frame_targets
from ml4m.models.kernel.sparse_gp import DotProductKernelMap, SparseGPPotential, select_sparse_points

__all__ = ["DotProductKernelMap", "KernelRegressor", "LearningCurve", "PropertyModel",
           "SparseGPPotential", "cross_validate", "frame_targets", "learning_curve",
           "select_sparse_points"]

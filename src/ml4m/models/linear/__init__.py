"""Linear models: Bayesian regression on normal equations, linear (ACE) potentials."""

from ml4m.models.linear.bayesian import BayesianLinearRegression, NormalEquations
from ml4m.models.linear.design import DesignRows, SpeciesBlocks, design_rows
from ml4m.models.linear.potential import LinearPotential
from ml4m.models.registry import register_model

__all__ = ["BayesianLinearRegression", "DesignRows", "LinearACE", "LinearPotential",
           "NormalEquations", "SpeciesBlocks", "design_rows"]


@register_model("linear_ace", fit_name="ace", descriptor="ace")
class LinearACE(LinearPotential):
    """Linear ACE: a :class:`LinearPotential` on the ACE basis B (``ml4m.descriptors.ACE``)."""

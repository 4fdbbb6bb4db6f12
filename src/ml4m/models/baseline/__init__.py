"""Baselines added to any potential: a repulsive core, an ASE calculator, lower-level labels.

A :class:`Baseline` gives energies, forces and stress of frames; :class:`Baselined`
fits any potential to the reference minus the baseline (delta learning,
:func:`residual_frames`) and adds it back when predicting. :class:`PairRepulsion` is
the baseline that keeps atoms apart below the shortest training distances.

>>> from ml4m.models.baseline import Baselined, PairRepulsion
>>> model = Baselined(inner_model, PairRepulsion())  # doctest: +SKIP
"""

from ml4m.models.baseline.core import (
    Baseline,
    BaselineValues,
    SumBaseline,
    baseline_from_state,
    register_baseline,
    residual_frames,
)
from ml4m.models.baseline.external import CalculatorBaseline, LabelBaseline
from ml4m.models.baseline.potential import (
    Baselined,
    attach_baseline_labels,
    baseline_from_config,
    with_baseline,
)
from ml4m.models.baseline.repulsion import PairRepulsion, switch, zbl

__all__ = ["Baseline", "BaselineValues", "Baselined", "attach_baseline_labels", "CalculatorBaseline", "LabelBaseline",
           "PairRepulsion", "SumBaseline", "baseline_from_config", "baseline_from_state",
           "register_baseline", "residual_frames", "switch", "with_baseline", "zbl"]

"""ml4m.models: interatomic potentials and property models.

Every potential has ``fit``, ``predict`` (energy, forces, stress, uncertainty), ``save``
to one ``.ml4m`` file (arrays + JSON, no pickle), and ``as_calculator()`` for ASE;
:func:`load` reads any saved model back.
"""

from ml4m.models.base import Estimator, Potential, Prediction
from ml4m.models.bpnn import BPNN
from ml4m.models.calculator import ML4MCalculator
from ml4m.models.committee import Committee
from ml4m.models.metrics import error_metrics
from ml4m.models.mpnn import MPNN
from ml4m.models.registry import model_kind, model_kinds, register_model
from ml4m.models.serialization import load, read_model_file, save_model_file
from ml4m.models.torch_potential import TorchPotential

__all__ = ["BPNN", "Committee", "Estimator", "MPNN", "ML4MCalculator", "Potential", "Prediction",
           "TorchPotential", "error_metrics", "load", "model_kind", "model_kinds",
           "read_model_file", "register_model", "save_model_file"]

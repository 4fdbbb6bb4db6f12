"""ml4m.models: interatomic potentials and property models.

Every potential has ``fit``, ``predict`` (energy, forces, stress, uncertainty), ``save``
to one ``.ml4m`` file (arrays + JSON, no pickle), and ``as_calculator()`` for ASE;
:func:`load` reads any saved model back.
"""

from ml4m.models.base import Potential, Prediction
from ml4m.models.calculator import ML4MCalculator
from ml4m.models.metrics import error_metrics
from ml4m.models.serialization import load, read_model_file, save_model_file

__all__ = ["ML4MCalculator", "Potential", "Prediction", "error_metrics", "load",
           "read_model_file", "save_model_file"]

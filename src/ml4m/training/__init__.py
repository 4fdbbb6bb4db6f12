"""ml4m.training: configuration, fitting drivers, and the loop that trains torch potentials."""

from ml4m.training.config import MODEL_CHOICES, FitConfig
from ml4m.training.fit import fit_model, test_model
from ml4m.training.settings import TrainSettings
from ml4m.training.trainer import Trainer

__all__ = ["FitConfig", "MODEL_CHOICES", "Trainer", "TrainSettings", "fit_model", "test_model"]

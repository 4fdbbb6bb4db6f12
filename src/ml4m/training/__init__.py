"""ml4m.training: configuration and fitting loops (checkpoints and logs for long fits)."""

from ml4m.training.config import MODEL_CHOICES, FitConfig
from ml4m.training.fit import fit_model, test_model

__all__ = ["FitConfig", "MODEL_CHOICES", "fit_model", "test_model"]

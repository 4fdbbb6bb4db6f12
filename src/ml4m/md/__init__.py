"""ml4m.md: using models: ASE calculator, molecular dynamics, relaxation, on-the-fly
active learning, curation."""

from ml4m.md.curation import SELECTORS, PoolFeatures, Selection, pool_features, select
from ml4m.md.dynamics import (
    ENSEMBLES,
    MDResult,
    MDStatus,
    check_md_settings,
    check_relax_settings,
    relax,
    run_md,
)
from ml4m.md.learning import LearnStatus, run_learning
from ml4m.md.learning_settings import LearnSettings, WalkerSettings
from ml4m.md.optimize import run_optimize
from ml4m.md.optimize_settings import OptimizeSettings
from ml4m.md.trajectory import TrajectoryStream, partial_path
from ml4m.models.calculator import ML4MCalculator

__all__ = ["ENSEMBLES", "LearnSettings", "LearnStatus", "ML4MCalculator", "MDResult", "MDStatus",
           "OptimizeSettings", "PoolFeatures", "SELECTORS", "Selection", "TrajectoryStream", "WalkerSettings",
           "check_md_settings", "check_relax_settings", "load_calculator", "partial_path",
           "pool_features", "relax", "run_learning", "run_md", "run_optimize", "select"]


def load_calculator(spec: str):
    """An ASE calculator from a ``.ml4m`` model file, or an ASE calculator name (``emt``).

    Model files give an :class:`ML4MCalculator` with uncertainty off (``run_md`` turns
    it on for the steps its sigma schedule picks).

    Parameters
    ----------
    spec : str
        Path of a model file, or a name/import path accepted by
        :func:`ml4m.data.make_calculator` (a reference calculator).

    Raises
    ------
    ConfigError
        The file holds a model that is not an interatomic potential (file named).
    """
    from pathlib import Path

    if Path(spec).suffix == ".ml4m" or Path(spec).is_file():
        from ml4m.errors import ConfigError
        from ml4m.models.serialization import load

        model = load(spec)
        try:
            return ML4MCalculator(model)
        except ConfigError as exc:
            raise ConfigError(f"{spec}: {exc}") from None
    from ml4m.data import make_calculator

    return make_calculator(spec)

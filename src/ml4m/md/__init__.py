"""ml4m.md: using models: ASE calculator, molecular dynamics, relaxation."""

from ml4m.md.dynamics import ENSEMBLES, MDResult, relax, run_md
from ml4m.models.calculator import ML4MCalculator

__all__ = ["ENSEMBLES", "ML4MCalculator", "MDResult", "relax", "run_md", "load_calculator"]


def load_calculator(spec: str):
    """An ASE calculator from a ``.ml4m`` model file, or an ASE calculator name (``emt``).

    Parameters
    ----------
    spec : str
        Path of a model file, or a name/import path accepted by
        :func:`ml4m.data.make_calculator` (a reference calculator).
    """
    from pathlib import Path

    if Path(spec).suffix == ".ml4m" or Path(spec).is_file():
        from ml4m.models.serialization import load

        return load(spec).as_calculator()
    from ml4m.data import make_calculator

    return make_calculator(spec)

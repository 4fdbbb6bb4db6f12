"""One ASE calculator for every ml4m potential."""

from __future__ import annotations

from ase.calculators.calculator import Calculator, all_changes

__all__ = ["ML4MCalculator"]


class ML4MCalculator(Calculator):
    """ASE calculator wrapping an ml4m :class:`~ml4m.models.base.Potential`.

    Results: ``energy`` and ``free_energy`` (eV), ``forces`` (eV/Angstrom), ``stress``
    (eV/Angstrom^3, Voigt, only for fully periodic cells) and, for models with
    uncertainty, ``energy_sigma`` (eV) and ``forces_sigma`` (eV/Angstrom) in
    ``calc.results``.

    Parameters
    ----------
    model : Potential
        A fitted model.
    uncertainty : bool, default=False
        Also compute the predictive standard deviations.
    """

    def __init__(self, model, uncertainty: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.uncertainty = bool(uncertainty and getattr(model, "has_uncertainty", False))
        # a fresh list per instance: ASE's class attribute must not be mutated
        self.implemented_properties = ["energy", "free_energy", "forces", "stress"]
        if self.uncertainty:
            self.implemented_properties += ["energy_sigma", "forces_sigma"]

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties or ["energy"], system_changes)
        result = self.model.predict([self.atoms], uncertainty=self.uncertainty).frame(0)
        result["free_energy"] = result["energy"]
        if "stress" not in result and properties and "stress" in properties:
            from ase.calculators.calculator import PropertyNotImplementedError

            raise PropertyNotImplementedError("stress is only defined for fully periodic cells")
        self.results.update(result)

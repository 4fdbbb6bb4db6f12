"""One ASE calculator for every ml4m potential."""

from __future__ import annotations

from ase.calculators.calculator import Calculator, all_changes

__all__ = ["ML4MCalculator", "SIGMA_PROPERTIES"]

#: results only computed when asked for (``uncertainty=True`` or requested by name)
SIGMA_PROPERTIES = ("energy_sigma", "forces_sigma")


class ML4MCalculator(Calculator):
    """ASE calculator wrapping an ml4m :class:`~ml4m.models.base.Potential`.

    Results: ``energy`` and ``free_energy`` (eV), ``forces`` (eV/Angstrom), ``stress``
    (eV/Angstrom^3, Voigt, only for fully periodic cells) and, when uncertainty is on
    (or a sigma is asked for by name, e.g. ``calc.get_property("forces_sigma", atoms)``),
    ``energy_sigma`` (eV) and ``forces_sigma`` (eV/Angstrom) in ``calc.results``.

    Parameters
    ----------
    model : Potential
        A fitted interatomic potential.
    uncertainty : bool, default=False
        Compute the predictive standard deviations on every evaluation (several times
        the cost of energy and forces for linear and GP models). The attribute may be
        switched between evaluations (``ml4m.md.run_md`` does so every k steps).

    Raises
    ------
    ConfigError
        ``model`` is not an interatomic potential (e.g. a structure-property model), or
        ``uncertainty`` is asked of a model without it.
    """

    def __init__(self, model, uncertainty: bool = False, **kwargs) -> None:
        from ml4m.errors import ConfigError
        from ml4m.models.base import Potential

        if not isinstance(model, Potential):
            kind = getattr(model, "kind", type(model).__name__)
            raise ConfigError(f"a '{kind}' model is not an interatomic potential (it predicts no "
                              "forces); MD and relaxation need one, e.g. ml4m fit --model ace")
        if uncertainty and not model.has_uncertainty:
            raise ConfigError(f"a '{model.kind}' model has no uncertainty; use uncertainty=False")
        super().__init__(**kwargs)
        self.model = model
        self.uncertainty = bool(uncertainty)
        # a fresh list per instance: ASE's class attribute must not be mutated
        self.implemented_properties = ["energy", "free_energy", "forces", "stress"]
        if model.has_uncertainty:
            self.implemented_properties += list(SIGMA_PROPERTIES)

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        properties = list(properties or ["energy"])
        super().calculate(atoms, properties, system_changes)
        sigma = self.uncertainty or any(p in SIGMA_PROPERTIES for p in properties)
        result = self.model.predict([self.atoms], uncertainty=sigma).frame(0)
        result["free_energy"] = result["energy"]
        if "stress" not in result and "stress" in properties:
            from ase.calculators.calculator import PropertyNotImplementedError

            raise PropertyNotImplementedError("stress is only defined for fully periodic cells")
        self.results.update(result)

"""Helpers shared by the sub-commands: JSON output, tables, label-key options."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the data stage (and ASE) load only when a command reads labels
    from ml4m.data.labels import LabelKeys

__all__ = ["print_json", "console", "emit", "add_label_key_arguments", "label_keys_from_args",
           "add_output_arguments", "float_list", "int_list"]


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _clean(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def print_json(obj: dict[str, Any]) -> None:
    """Print exactly one JSON object on stdout."""
    sys.stdout.write(json.dumps(_clean(obj)) + "\n")
    sys.stdout.flush()


def emit(as_json: bool, result: dict[str, Any], text: str) -> None:
    """Print ``result`` as one JSON object (``--json``) or ``text`` for a person."""
    if as_json:
        print_json(result)
    else:
        console().print(text)


def console(stderr: bool = False):
    """A rich console on stdout (or stderr, to keep stdout clean for ``--json``)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def add_label_key_arguments(p: argparse.ArgumentParser) -> None:
    """``--energy-key``, ``--forces-key``, ``--stress-key``, ``--format``."""
    g = p.add_argument_group("labels")
    g.add_argument("--energy-key", help="info key of the energy (default: energy, REF_energy, DFT_energy)")
    g.add_argument("--forces-key", help="per-atom key of the forces (default: forces, REF_forces, ...)")
    g.add_argument("--stress-key", help="info key of the stress (default: stress, REF_stress, ...)")
    g.add_argument("--format", help="ASE file format when the extension does not tell")


def add_output_arguments(p: argparse.ArgumentParser, metavar: str, help: str,
                         required: bool = True, default: str | None = None) -> None:
    """``-o/--output`` and ``--overwrite`` (the output policy of :mod:`ml4m.outputs`)."""
    p.add_argument("-o", "--output", required=required, default=default, metavar=metavar,
                   help=help + " (never an input or a folder holding one)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output folder that ml4m did not write, or discard "
                   "an interrupted run with other settings")


def label_keys_from_args(args: argparse.Namespace) -> LabelKeys:
    """The :class:`LabelKeys` given by :func:`add_label_key_arguments` options."""
    from ml4m.data.labels import LabelKeys

    return LabelKeys(energy=args.energy_key, forces=args.forces_key, stress=args.stress_key)


def _list_of(kind):
    def parse(text: str):
        try:
            return [kind(t) for t in text.replace(" ", "").split(",") if t]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from exc
    parse.__name__ = f"{kind.__name__} list"
    return parse


float_list = _list_of(float)
int_list = _list_of(int)

"""ml4m.cli: the ``ml4m`` command, one sub-command module per pipeline stage."""

from ml4m.cli.main import main

__all__ = ["main"]

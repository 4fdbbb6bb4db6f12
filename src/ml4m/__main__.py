"""``python -m ml4m`` runs the ``ml4m`` command."""

import sys

from ml4m.cli.main import main

sys.exit(main())

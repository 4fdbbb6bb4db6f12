"""Data flows one way: a pipeline stage imports only the stages before it."""

from __future__ import annotations

import ast
from pathlib import Path

import ml4m

STAGES = ["data", "descriptors", "analysis", "models", "training", "md", "cli"]
ROOT = Path(ml4m.__file__).parent


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # includes imports deferred inside functions
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno


def test_stages_import_only_earlier_stages():
    violations = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).parts
        if len(rel) < 2 or rel[0] not in STAGES:
            continue  # top-level helpers (errors, units, _fileio, config) are shared
        own = STAGES.index(rel[0])
        for module, line in _imports(path):
            parts = module.split(".")
            if parts[0] == "ml4m" and len(parts) > 1 and parts[1] in STAGES:
                if STAGES.index(parts[1]) > own:
                    violations.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not violations, "\n".join(violations)


def test_top_level_helpers_import_no_stage():
    for path in ROOT.glob("*.py"):
        if path.name in ("__init__.py", "__main__.py"):
            continue  # the package entry points may defer to any stage
        for module, line in _imports(path):
            parts = module.split(".")
            assert not (parts[0] == "ml4m" and len(parts) > 1 and parts[1] in STAGES), \
                f"{path.name}:{line} imports {module}"


def test_importing_ml4m_has_no_heavy_side_effects():
    import subprocess
    import sys

    code = "import sys, ml4m, ml4m.data; print(sorted(m for m in ('torch', 'matplotlib', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

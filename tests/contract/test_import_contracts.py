"""The import contracts of pyproject.toml ([tool.importlinter]) hold: no import cycles among the
modules of rating, billing and the OTLP receiver, and the layers (adapters, domain, storage and
exporters, core types) import only downwards."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_import_contracts_of_pyproject_hold() -> None:
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint_imports, "lint-imports is missing: install the test extra (pip install -e '.[test]')"
    answer = subprocess.run([lint_imports, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert "0 broken" in answer.stdout

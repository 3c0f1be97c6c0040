"""ruff and mypy, as configured in pyproject.toml ([tool.ruff], [tool.mypy]), report nothing:
the README's test command runs both, so lint and type errors fail the suite like a broken test."""

from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN))
    assert found, f"{name} is missing: install the test extra (pip install -e '.[test]')"
    return found


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_and_mypy_report_nothing() -> None:
    # Both at once: mypy takes most of the time, ruff a fraction of a second.
    with ThreadPoolExecutor(2) as pool:
        ruff = pool.submit(run, [tool("ruff"), "check", "--no-cache", "src", "tests", "benchmarks"])
        mypy = pool.submit(run, [tool("mypy")])
    ruff_answer, mypy_answer = ruff.result(), mypy.result()
    assert ruff_answer.returncode == 0, "ruff check:\n" + ruff_answer.stdout + ruff_answer.stderr
    assert mypy_answer.returncode == 0, "mypy:\n" + mypy_answer.stdout + mypy_answer.stderr

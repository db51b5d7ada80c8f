"""The typed stubs are worth having: the client, the example and these tests type-check under
mypy --strict (pyproject.toml) against the generated .pyi files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]


def test_client_example_and_tests_type_check(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy"),
         "src/engarde_client", "examples", "tests"],
        cwd=PACKAGE, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr

"""The README's Python client section works when pasted: its snippet, and the example with the
development tenant it defaults to."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import PACKAGE, RunExample
from services import REPO, Services


def readme_snippet() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## A Python client", 1)[1].split("\n## ", 1)[0]
    blocks: list[str] = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "one Python snippet in the section"
    return blocks[0]


def test_the_readme_snippet_lists_what_the_example_installed(run_example: RunExample, services: Services) -> None:
    # The example as the README runs it: no --tenant (default-tenant-001, as the snippet uses).
    assert run_example("--input", "our spring sale").returncode == 0
    snippet = readme_snippet()
    assert "127.0.0.1:50052" in snippet
    env = dict(os.environ, PYTHONPATH=str(PACKAGE / "src"))
    result = subprocess.run([sys.executable, "-c", snippet.replace("127.0.0.1:50052", services.agent.address)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 11
    assert "Social Media Content Pipeline Agent Social Media Content Pipeline False" in lines

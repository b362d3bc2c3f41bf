"""The README's and the docs' code runs, and so does every example script."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("path", _DOCS, ids=lambda p: p.name)
def test_doc_snippets_run(path: Path) -> None:
    """Run a page's python blocks in order, in one namespace, as a reader would."""
    namespace: dict[str, object] = {"__name__": "__snippet__"}
    for i, code in enumerate(_FENCE.findall(path.read_text())):
        if "--8<--" not in code:  # an included example: run below as itself
            exec(compile(code, f"{path.name}#{i}", "exec"), namespace)  # noqa: S102


@pytest.mark.parametrize("script", sorted((ROOT / "examples").glob("*.py")), ids=str)
def test_example_script_succeeds(script: Path) -> None:
    result = subprocess.run(  # noqa: S603 - our own example, our interpreter
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout

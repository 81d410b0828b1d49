"""The README's Python example runs as printed."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs():
    text = README.read_text()
    example = re.search(r"## Python API\n\n```python\n(.*?)```", text, re.S)
    assert example is not None
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example.group(1), "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert lines == ["default guest: all stages passed, exiting via isa-debug-exit", "exit 1"]

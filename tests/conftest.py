"""Shared fixtures: assembling guest code with nasm at test time."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def _nasm() -> str:
    nasm = shutil.which("nasm")
    if nasm is None:
        pytest.skip("nasm not installed: guest programs are assembled at test time "
                    "(apt-get install nasm)")
    return nasm


@pytest.fixture
def assemble(tmp_path: Path):
    """``assemble(source, fmt="bin") -> bytes``: run nasm on ``source``."""

    def run(source: str, fmt: str = "bin", name: str = "guest") -> bytes:
        src = tmp_path / f"{name}.asm"
        out = tmp_path / f"{name}.{fmt}"
        src.write_text(source)
        proc = subprocess.run([_nasm(), "-f", fmt, "-o", str(out), str(src)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise AssertionError(f"nasm failed on {src}:\n{proc.stderr}")
        return out.read_bytes()

    return run


@pytest.fixture
def nasm_path() -> str:
    return _nasm()

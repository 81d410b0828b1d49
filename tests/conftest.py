"""Shared fixtures: assembling guest code with nasm at test time."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

# First, before any test module imports ``unicorn``: picks the engine (QEMU_LITE_ENGINE).
from qemu_lite import engine as _engine

PATCHES = {
    "a": "exit checks only at block starts",
    "b": "deadlines, interrupt windows and stop requests as engine exits",
    "c": "no state restore on successful TLB fills",
    "d": "code-page dirty tracking",
    "e": "TLB resized by flush count",
    "f": "RDMSR/WRMSR hooks",
    "g": "translation blocks bounded by TCG temps",
    "h": "#GP for reserved CR/EFER bits and unknown MSRs",
    "i": "address-space TLB contexts and the CPU state read in place",
    "j": "task gates into a 16-bit TSS",
    "k": "global pages kept across CR3 loads (with TLB contexts)",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires_patched_engine(patch): needs qemu_lite's patched Unicorn "
        "(optionally one patch letter, engine/patches/); skipped with the reason on stock")


def pytest_report_header(config: pytest.Config) -> str:
    return _engine.engine_info().describe()


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires_patched_engine"):
        patch = mark.args[0] if mark.args else None
        if not _engine.is_patched(patch):
            what = f"patch {patch} ({PATCHES.get(patch, '?')})" if patch else "it"
            pytest.skip(f"needs qemu_lite's patched engine with {what}; "
                        f"running on {_engine.engine_info().describe()}")


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
        proc = subprocess.run([_nasm(), "-w+error=orphan-labels", "-f", fmt, "-o", str(out), str(src)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise AssertionError(f"nasm failed on {src}:\n{proc.stderr}")
        return out.read_bytes()

    return run


@pytest.fixture
def nasm_path() -> str:
    return _nasm()

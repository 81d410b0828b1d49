"""Which engine runs: ``QEMU_LITE_ENGINE`` and ``qemu-lite --version``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from qemu_lite import engine


def _version(value: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("QEMU_LITE_ENGINE", None)
    if value is not None:
        env["QEMU_LITE_ENGINE"] = value
    # cwd "/": from the checkout, ``-m qemu_lite`` would import the source tree
    # (which has neither devices/ nor the built engine) instead of the install.
    return subprocess.run([sys.executable, "-m", "qemu_lite", "--version"], env=env,
                          capture_output=True, text=True, timeout=60, cwd="/")


def test_stock_on_request():
    proc = _version("stock")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("qemu-lite ")
    assert "engine: stock Unicorn 2.1" in proc.stdout
    assert proc.stderr == ""


def test_missing_build_falls_back_with_one_warning(tmp_path):
    proc = _version(str(tmp_path / "no-such-engine"))
    assert proc.returncode == 0, proc.stderr
    assert "engine: stock Unicorn 2.1" in proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "stock unicorn wheel" in lines[0], proc.stderr


def test_default_is_the_installed_patched_build():
    if not (engine.LIB_DIR / engine.LIB_NAME).is_file():
        pytest.skip("no patched engine was built at install time")
    proc = _version(None)
    assert proc.returncode == 0, proc.stderr
    assert "engine: patched Unicorn 2.1.4 (patches: a-" in proc.stdout

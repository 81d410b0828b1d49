"""The qemu-lite command line: the default image, errors, exit statuses."""

from __future__ import annotations

import subprocess
import sys
import tempfile

import pytest


def qemu_lite(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # Run outside the source tree so the installed package is what runs.
    return subprocess.run([sys.executable, "-m", "qemu_lite", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=tempfile.gettempdir())


def test_no_arguments_boots_the_bundled_image_through_all_modes():
    proc = qemu_lite("--timeout", "60")
    lines = proc.stdout.splitlines()
    for expected in ("qemu_lite default guest: real mode", "protected mode: ok", "paging: ok",
                     "long mode: ok"):
        assert any(expected in line for line in lines), proc.stdout
    assert proc.returncode == 1, proc.stderr  # the guest wrote 0 to isa-debug-exit


def test_help_lists_the_main_options():
    proc = qemu_lite("--help")
    assert proc.returncode == 0
    for option in ("--serial", "--kernel", "--append", "--initrd", "--snapshot", "-m"):
        assert option in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["/nonexistent/disk.img"], "cannot open disk image '/nonexistent/disk.img'"),
    (["--kernel", "/nonexistent/k"], "cannot open kernel '/nonexistent/k'"),
])
def test_missing_files_are_one_line_errors(args, message):
    proc = qemu_lite(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_empty_image_is_refused_with_its_name(tmp_path):
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    proc = qemu_lite(str(empty))
    assert proc.returncode == 2
    assert "empty.img" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_memory_size_and_unknown_option_are_usage_errors():
    proc = qemu_lite("-m", "lots")
    assert proc.returncode == 2 and "invalid memory size" in proc.stderr
    proc = qemu_lite("--frobnicate")
    assert proc.returncode == 2 and "unrecognized arguments: --frobnicate" in proc.stderr


def test_bad_serial_spec_is_a_clear_error():
    proc = qemu_lite("--serial", "nosuchscheme://x")
    assert proc.returncode == 2
    assert "nosuchscheme://x" in proc.stderr and "Traceback" not in proc.stderr


def test_serial_to_file(tmp_path):
    out = tmp_path / "serial.txt"
    proc = qemu_lite("--serial", f"file:{out}", "--timeout", "60")
    assert proc.returncode == 1
    assert "long mode: ok" in out.read_text()
    assert "long mode: ok" not in proc.stdout


def test_default_guest_detects_an_mmu_that_ignores_its_page_tables():
    # --mmu identity translates linear = physical: the guest's paging self-check must fail.
    proc = qemu_lite("--mmu", "identity", "--timeout", "60")
    assert "default guest: FAILED" in proc.stdout
    assert proc.returncode == (0x12 << 1) | 1, proc.stderr

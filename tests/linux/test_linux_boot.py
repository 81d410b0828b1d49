"""Debian's own kernel and busybox, booted to userspace: the real goal.

These tests build their images from Debian packages at test time and skip
with the reason when a package is missing; CI installs them (.ci/run).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from qemu_lite import Machine
from qemu_lite.initramfs import busybox_initramfs
from qemu_lite.loaders import linux

INIT = """\
busybox echo "qemu_lite init: userspace reached"
busybox uname -s -r
busybox mount -t proc proc /proc 2>/dev/null || true
busybox poweroff -f
"""


def _kernel() -> str:
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    if not kernels:
        pytest.skip("no Debian kernel in /boot: apt-get install linux-image-amd64")
    return kernels[-1]


def _busybox() -> str:
    path = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(path):
        pytest.skip("busybox not installed: apt-get install busybox-static")
    out = subprocess.run(["file", "-L", path], capture_output=True, text=True).stdout \
        if shutil.which("file") else "statically linked"
    if "dynamically" in out:
        pytest.skip("busybox is dynamically linked: apt-get install busybox-static")
    return path


@pytest.fixture(scope="module")
def initrd(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("linux") / "initrd.cpio"
    path.write_bytes(busybox_initramfs(_busybox(), INIT))
    return path


@pytest.mark.parametrize("mmu", ["cached", "naive"])
def test_debian_kernel_boots_to_busybox_and_powers_off(initrd, mmu):
    kernel = _kernel()
    out = bytearray()
    with Machine(memory="512M", mmu=mmu) as m:
        m.board.com1.add_output_listener(out.extend)
        linux.load(m, kernel, "console=ttyS0 panic=-1", initrd)
        result = m.run(timeout=300)
        stats = m.core.mmu_stats()
    text = out.decode(errors="replace")
    assert "qemu_lite init: userspace reached" in text, text[-3000:]
    assert f"Linux {os.path.basename(kernel).removeprefix('vmlinuz-')}" in text
    assert "reboot: System halted" in text or "reboot: Power down" in text
    assert result.reason == "halted"
    assert stats["fills"] > 0


def test_cli_boots_kernel_with_initrd(initrd):
    proc = subprocess.run(
        [sys.executable, "-m", "qemu_lite", "-m", "512M", "--kernel", _kernel(), "--initrd",
         str(initrd), "--append", "console=ttyS0 panic=-1", "--timeout", "300"],
        capture_output=True, text=True, timeout=400, cwd=tempfile.gettempdir())
    assert "qemu_lite init: userspace reached" in proc.stdout, proc.stdout[-3000:]
    assert proc.returncode == 0, proc.stderr

"""Debian's kernel on several vCPUs (``-smp``, ``-accel tcg,thread=single`` and
``thread=multi``): the MADT lists them, Linux starts the APs with its own trampoline
by INIT/SIPI, and userspace sees every CPU; directly (``--kernel``) and through our
BIOS and GRUB."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from images import grub_image, initramfs, kernel

from qemu_lite.multi import multi_supported

THREADS = ("single", pytest.param("multi", marks=pytest.mark.skipif(
    multi_supported() is not None, reason=str(multi_supported()))))

INIT = """\
busybox mkdir -p /proc
busybox mount -t proc proc /proc
busybox echo "qemu_lite init: userspace reached"
busybox echo "cpuinfo processors: $(busybox grep -c ^processor /proc/cpuinfo)"
busybox echo "apicids: $(busybox grep ^apicid /proc/cpuinfo | busybox tr -d ' \\t' | busybox tr '\\n' ' ')"
busybox poweroff -f
"""


def _boot_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qemu_lite", "-m", "512M", "--timeout", "300",
                           "-vga", "none", *args], capture_output=True, text=True, timeout=400,
                          cwd=tempfile.gettempdir())


@pytest.mark.parametrize("thread", THREADS)
def test_kernel_brings_up_four_cpus_and_userspace_sees_them(tmp_path: Path, thread: str):
    initrd = initramfs(tmp_path / "initrd.cpio", INIT)
    proc = _boot_cli("-smp", "4", "-accel", f"tcg,thread={thread}", "--kernel", kernel(),
                     "--initrd", str(initrd), "--append", "console=ttyS0 panic=-1")
    out = proc.stdout
    assert "smpboot: Allowing 4 CPUs, 0 hotplug CPUs" in out, out[-3000:]
    assert "smp: Brought up 1 node, 4 CPUs" in out, out[-3000:]
    assert "cpuinfo processors: 4" in out, out[-3000:]
    assert "apicids: apicid:0 apicid:1 apicid:2 apicid:3" in out, out[-3000:]
    assert "BUG:" not in out and "stuck" not in out, out
    assert proc.returncode == 16, proc.stderr  # powered off through ACPI


@pytest.mark.parametrize("thread", THREADS)
def test_grub_disk_brings_up_two_cpus(tmp_path: Path, thread: str):
    # Our BIOS leaves the APs waiting for SIPI; GRUB and Linux never see them run.
    proc = _boot_cli("-smp", "2", "-accel", f"tcg,thread={thread}", str(grub_image(tmp_path)))
    out = proc.stdout
    assert "Welcome to GRUB!" in out
    assert "smp: Brought up 1 node, 2 CPUs" in out, out[-3000:]
    assert "qemu_lite init: userspace reached" in out, out[-3000:]
    assert proc.returncode == 16, proc.stderr

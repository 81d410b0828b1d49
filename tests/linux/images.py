"""Real images built at test time from Debian packages (skipping with the reason if missing)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from qemu_lite.initramfs import busybox_initramfs

INIT = """\
busybox echo "qemu_lite init: userspace reached"
busybox uname -s -r
busybox poweroff -f
"""

GRUB_CFG = """\
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
menuentry "Debian kernel, busybox initramfs" {
    linux /vmlinuz console=ttyS0 panic=-1
    initrd /initrd.img
}
"""


def kernel() -> str:
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    if not kernels:
        pytest.skip("no Debian kernel in /boot: apt-get install linux-image-amd64")
    if not os.access(kernels[-1], os.R_OK):
        pytest.skip(f"{kernels[-1]} is not readable by this user (chmod a+r)")
    return kernels[-1]


def busybox() -> str:
    path = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(path):
        pytest.skip("busybox not installed: apt-get install busybox-static")
    return path


def initramfs(path: Path) -> Path:
    path.write_bytes(busybox_initramfs(busybox(), INIT))
    return path


def grub_image(workdir: Path) -> Path:
    """A grub-mkrescue hybrid ISO with the kernel and a busybox initramfs."""
    mkrescue = shutil.which("grub-mkrescue")
    if mkrescue is None:
        pytest.skip("grub-mkrescue not installed: apt-get install grub-common grub-pc-bin")
    for tool, package in (("xorriso", "xorriso"), ("mformat", "mtools")):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed: apt-get install {package}")
    if not os.path.isdir("/usr/lib/grub/i386-pc"):
        pytest.skip("GRUB's BIOS platform files missing: apt-get install grub-pc-bin")
    root = workdir / "iso"
    (root / "boot" / "grub").mkdir(parents=True)
    (root / "boot" / "grub" / "grub.cfg").write_text(GRUB_CFG)
    shutil.copyfile(kernel(), root / "vmlinuz")
    initramfs(root / "initrd.img")
    image = workdir / "grub.img"
    proc = subprocess.run([mkrescue, "-o", str(image), str(root)], capture_output=True,
                          text=True)
    if proc.returncode:
        raise AssertionError(f"grub-mkrescue failed:\n{proc.stderr}")
    return image

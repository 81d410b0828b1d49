"""Build real boot images from the host's Debian packages (for tests, benchmarks and users).

Each helper raises :class:`ToolMissing` naming the Debian package to install
when something it needs is not on the host.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

from qemu_lite.initramfs import busybox_initramfs


class ToolMissing(RuntimeError):
    """A host tool or file is missing; the message says which package provides it."""


def find_kernel() -> str:
    """The newest Debian kernel in /boot."""
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    if not kernels:
        raise ToolMissing("no Debian kernel in /boot: apt-get install linux-image-amd64")
    if not os.access(kernels[-1], os.R_OK):
        raise ToolMissing(f"{kernels[-1]} is not readable by this user (chmod a+r)")
    return kernels[-1]


def find_busybox() -> str:
    path = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(path):
        raise ToolMissing("busybox not installed: apt-get install busybox-static")
    return path


def write_initramfs(path: Path, init_script: str) -> Path:
    """A busybox initramfs whose /init runs ``init_script``."""
    path.write_bytes(busybox_initramfs(find_busybox(), init_script))
    return path


def grub_cfg(append: str, linux16: bool = False) -> str:
    """GRUB's menu: ``linux16``/``initrd16`` boot through the kernel's 16-bit setup entry."""
    suffix = "16" if linux16 else ""
    return ("serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n"
            "set timeout=0\nmenuentry \"Debian kernel, busybox initramfs\" {\n"
            f"    linux{suffix} /vmlinuz {append}\n    initrd{suffix} /initrd.img\n}}\n")


def grub_rescue_image(workdir: Path, init_script: str,
                      append: str = "console=ttyS0 panic=-1", linux16: bool = False) -> Path:
    """A ``grub-mkrescue`` hybrid ISO (boots as a disk or a CD) with the kernel and initramfs."""
    mkrescue = shutil.which("grub-mkrescue")
    if mkrescue is None:
        raise ToolMissing("grub-mkrescue not installed: apt-get install grub-common grub-pc-bin")
    for tool, package in (("xorriso", "xorriso"), ("mformat", "mtools")):
        if shutil.which(tool) is None:
            raise ToolMissing(f"{tool} not installed: apt-get install {package}")
    if not os.path.isdir("/usr/lib/grub/i386-pc"):
        raise ToolMissing("GRUB's BIOS platform files missing: apt-get install grub-pc-bin")
    root = workdir / "iso"
    (root / "boot" / "grub").mkdir(parents=True, exist_ok=True)
    (root / "boot" / "grub" / "grub.cfg").write_text(grub_cfg(append, linux16))
    shutil.copyfile(find_kernel(), root / "vmlinuz")
    write_initramfs(root / "initrd.img", init_script)
    image = workdir / "grub.img"
    proc = subprocess.run([mkrescue, "-o", str(image), str(root)], capture_output=True,
                          text=True)
    if proc.returncode:
        raise RuntimeError(f"grub-mkrescue failed:\n{proc.stderr}")
    return image

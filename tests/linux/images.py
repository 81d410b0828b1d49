"""Real images for the tests, built from Debian packages; missing packages skip with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from qemu_lite import imagebuild

INIT = """\
busybox echo "qemu_lite init: userspace reached"
busybox uname -s -r
busybox poweroff -f
"""


def kernel() -> str:
    try:
        return imagebuild.find_kernel()
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))


def initramfs(path: Path) -> Path:
    try:
        return imagebuild.write_initramfs(path, INIT)
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))


def grub_image(workdir: Path, linux16: bool = False, i386: bool = False) -> Path:
    """GRUB booting Debian's kernel; ``i386``: the 32-bit one with :func:`i386_initramfs`."""
    try:
        if i386:
            initrd = imagebuild.write_i386_initramfs(workdir / "init.cpio")
            return imagebuild.grub_rescue_image(workdir, "", linux16=linux16, initrd=initrd,
                                                kernel=imagebuild.find_i386_kernel())
        return imagebuild.grub_rescue_image(workdir, INIT, linux16=linux16)
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))


def i386_kernel() -> str:
    try:
        return imagebuild.find_i386_kernel()
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))


def i386_initramfs(path: Path) -> Path:
    """/init is a static i386 program (no busybox for i386 here) printing uname, powering off."""
    try:
        return imagebuild.write_i386_initramfs(path)
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))

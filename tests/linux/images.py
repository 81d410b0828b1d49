"""Real images for the tests, built from Debian packages; missing packages skip with the reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qemu_lite import imagebuild
from qemu_lite.initramfs import S_IFDIR, S_IFLNK, S_IFREG, cpio_newc

INIT = """\
busybox echo "qemu_lite init: userspace reached"
busybox mkdir -p /sys
busybox mount -t sysfs sysfs /sys
busybox echo "clockevent: $(busybox cat /sys/devices/system/clockevents/clockevent0/current_device)"
busybox uname -s -r
busybox poweroff -f
"""


def kernel() -> str:
    try:
        return imagebuild.find_kernel()
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))


def initramfs(path: Path, init: str = INIT) -> Path:
    """A busybox initramfs at ``path`` whose /init runs ``init`` (default: :data:`INIT`)."""
    try:
        return imagebuild.write_initramfs(path, init)
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


def power_button_initramfs(path: Path, init: str) -> Path:
    """Busybox with ``init`` as /init (a shell script run by busybox sh) and Debian's ACPI
    button driver at /button.ko, for tests that press the power button."""
    version = os.path.basename(kernel()).removeprefix("vmlinuz-")
    button = Path("/lib/modules") / version / "kernel/drivers/acpi/button.ko"
    if not button.is_file():
        pytest.skip(f"{button} missing (uncompressed): apt-get install linux-image-{version}")
    try:
        busybox = Path(imagebuild.find_busybox()).read_bytes()
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))
    path.write_bytes(cpio_newc([
        ("bin", S_IFDIR | 0o755, b""), ("bin/busybox", S_IFREG | 0o755, busybox),
        ("bin/sh", S_IFLNK | 0o777, b"busybox"),
        ("button.ko", S_IFREG | 0o644, button.read_bytes()),
        ("init", S_IFREG | 0o755, ("#!/bin/busybox sh\n" + init).encode()),
    ]))
    return path

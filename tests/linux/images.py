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


def grub_image(workdir: Path, linux16: bool = False) -> Path:
    try:
        return imagebuild.grub_rescue_image(workdir, INIT, linux16=linux16)
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))

"""A 32-bit Debian kernel (the 686 kernel of Debian's i386 netboot installer) boots to
userspace three ways: qemu-lite's ``--kernel`` (the 32-bit boot protocol at code32_start,
the only entry such a kernel has), GRUB's ``linux`` (GRUB enters code32_start itself) and
GRUB's ``linux16`` (the kernel's 16-bit real-mode setup runs on our BIOS).  /init is a
static i386 program that prints the kernel's uname and powers off."""

from __future__ import annotations

import subprocess
import sys
import tempfile

import pytest
from images import grub_image, i386_initramfs, i386_kernel

from qemu_lite import Machine
from qemu_lite.loaders import linux

USERSPACE = "qemu_lite init: userspace reached"
UNAME = "i386 init: uname 6."  # then the release (…-686) and the machine (i686)


def _check_i386_userspace(text: str) -> None:
    assert USERSPACE in text, text[-3000:]
    line = text[text.index(UNAME):].splitlines()[0]
    assert line.endswith("-686 i686"), line


def test_i386_kernel_through_kernel_option(tmp_path):
    initrd = i386_initramfs(tmp_path / "init.cpio")
    out = bytearray()
    with Machine(memory="256M") as m:
        m.board.com1.add_output_listener(out.extend)
        linux.load(m, i386_kernel(), "console=ttyS0 panic=-1", initrd)
        assert m.reg("cs") == 0x10 and m.reg("eip") == 0x100000  # no 64-bit entry: 32-bit
        result = m.run(timeout=400)
    _check_i386_userspace(out.decode(errors="replace"))
    assert result.reason == "powered-off", result  # ACPI S5


@pytest.mark.parametrize("command", ["linux", "linux16"])
def test_i386_kernel_through_grub(tmp_path, command):
    disk = grub_image(tmp_path, linux16=command == "linux16", i386=True)
    proc = subprocess.run([sys.executable, "-m", "qemu_lite", "-m", "256M", "--timeout", "400",
                           "--snapshot", str(disk)], capture_output=True, text=True,
                          timeout=500, cwd=tempfile.gettempdir())
    assert "Booting `Debian kernel" in proc.stdout, proc.stdout[-3000:]
    _check_i386_userspace(proc.stdout)
    assert proc.returncode == 16, proc.stderr  # powered off through ACPI

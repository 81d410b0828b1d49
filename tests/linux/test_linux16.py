"""GRUB's ``linux16``: the kernel's 16-bit real-mode setup entry, which calls the BIOS
(E820, video, keyboard) before it switches to protected mode itself; through our BIOS
and through Debian's SeaBIOS."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from images import grub_image

SEABIOS = Path("/usr/share/seabios/bios-256k.bin")


@pytest.fixture(scope="module")
def disk(tmp_path_factory) -> Path:
    return grub_image(tmp_path_factory.mktemp("grub16"), linux16=True)


@pytest.mark.parametrize("bios", ["ours", "seabios"])
def test_grub_linux16_boots_debian_kernel_to_busybox(disk, bios):
    args = []
    if bios == "seabios":
        if not SEABIOS.is_file():
            pytest.skip(f"{SEABIOS} missing: apt-get install seabios")
        args = ["--bios", str(SEABIOS)]
    proc = subprocess.run([sys.executable, "-m", "qemu_lite", "-m", "512M", "--timeout", "300",
                           *args, "--snapshot", str(disk)], capture_output=True, text=True,
                          timeout=400, cwd=tempfile.gettempdir())
    assert "Booting `Debian kernel" in proc.stdout
    assert "qemu_lite init: userspace reached" in proc.stdout, proc.stdout[-3000:]
    # Our BIOS hands the kernel qemu_lite's ACPI tables (poweroff through S5: 16); SeaBIOS
    # reads none of them and builds none here, so that kernel can only halt (0).
    assert proc.returncode == (16 if bios == "ours" else 0), proc.stderr

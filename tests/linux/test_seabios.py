"""A peer's firmware on our board: Debian's SeaBIOS through ``--bios``.

SeaBIOS probes our PCI bus, fw_cfg, CMOS, PIT, i8042 and ATA as it would
QEMU's, shadows itself through the i440FX PAM registers, and boots the disk.
Skipped with the reason when the seabios package is missing (.ci/run installs it).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from images import grub_image

from qemu_lite import Machine
from qemu_lite.machine import bundled_firmware_path

SEABIOS = Path("/usr/share/seabios")


def _seabios(name: str) -> Path:
    path = SEABIOS / name
    if not path.is_file():
        pytest.skip(f"{path} missing: apt-get install seabios")
    return path


@pytest.mark.parametrize("image", ["bios.bin", "bios-256k.bin"])
def test_seabios_boots_the_default_image(image):
    bios = _seabios(image)
    out = bytearray()
    with Machine(bundled_firmware_path("default.img"), snapshot=True, memory="64M",
                 bios=str(bios)) as m:
        m.board.com1.add_output_listener(out.extend)
        result = m.run(timeout=120)
    text = out.decode(errors="replace")
    assert "default guest: all stages passed" in text, text[-2000:]
    assert result.exit_status == 1


def test_seabios_boots_the_grub_disk_to_busybox(tmp_path):
    bios = _seabios("bios-256k.bin")
    disk = grub_image(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "qemu_lite", "-m", "512M", "--timeout", "300",
                           "--bios", str(bios), "--snapshot", str(disk)],
                          capture_output=True, text=True, timeout=400,
                          cwd=tempfile.gettempdir())
    assert "Booting `Debian kernel" in proc.stdout  # GRUB's menu entry, on its serial console
    assert "qemu_lite init: userspace reached" in proc.stdout, proc.stdout[-3000:]
    assert proc.returncode == 0, proc.stderr

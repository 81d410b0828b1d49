"""Debian's own kernel and busybox, booted to userspace: the real goal.

These tests build their images from Debian packages at test time and skip
with the reason when a package is missing; CI installs them (.ci/run).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from images import grub_image, initramfs, kernel

from qemu_lite import Machine
from qemu_lite.loaders import linux


@pytest.fixture(scope="module")
def initrd(tmp_path_factory) -> Path:
    return initramfs(tmp_path_factory.mktemp("linux") / "initrd.cpio")


@pytest.fixture(scope="module")
def grub_img(tmp_path_factory) -> Path:
    return grub_image(tmp_path_factory.mktemp("grub"))


def _check_userspace(text: str) -> None:
    assert "qemu_lite init: userspace reached" in text, text[-3000:]
    assert "Linux version " in text
    # Linux probes MSRs with exception fixups; a plain RDMSR/WRMSR that faults
    # (an MSR CPUID promised, engine patch h's #GP) prints this splat.
    assert "unchecked MSR access" not in text, text[:6000]
    assert "reboot: System halted" in text or "reboot: Power down" in text


@pytest.mark.parametrize("mmu", ["cached", "naive"])
def test_debian_kernel_boots_to_busybox_and_powers_off(initrd, mmu):
    vmlinuz = kernel()
    out = bytearray()
    with Machine(memory="512M", mmu=mmu) as m:
        m.board.com1.add_output_listener(out.extend)
        linux.load(m, vmlinuz, "console=ttyS0 panic=-1", initrd)
        result = m.run(timeout=300)
        stats = m.core.mmu_stats()
    text = out.decode(errors="replace")
    _check_userspace(text)
    assert f"Linux {os.path.basename(vmlinuz).removeprefix('vmlinuz-')}" in text
    assert result.reason == "powered-off"
    assert stats["fills"] > 0


def test_cli_boots_kernel_with_initrd_and_acpi_off_uses_the_mp_table(initrd):
    # Without ACPI the kernel reads the MP table, and poweroff -f can only halt (status 0).
    proc = _boot_cli("--kernel", kernel(), "--initrd", str(initrd), "--append",
                     "console=ttyS0 panic=-1 acpi=off")
    _check_userspace(proc.stdout)
    assert "found SMP MP-table at [mem 0x0009fc30-0x0009fc3f]" in proc.stdout, proc.stdout
    assert "Intel MultiProcessor Specification v1.4" in proc.stdout
    assert "IOAPIC[0]: apic_id 0, version 17, address 0xfec00000, GSI 0-23" in proc.stdout
    assert "Processors: 1" in proc.stdout
    assert proc.returncode == 0, proc.stderr


def _boot_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qemu_lite", "-m", "512M", "--timeout", "300",
                           *args], capture_output=True, text=True, timeout=400,
                          cwd=tempfile.gettempdir())


def test_grub_disk_image_boots_through_bios_and_grub(grub_img):
    before = grub_img.read_bytes()
    proc = _boot_cli(str(grub_img))
    assert "Booting from hard disk 0x80" in proc.stdout
    assert "Welcome to GRUB!" in proc.stdout
    _check_userspace(proc.stdout)
    # Our BIOS copied the tables from fw_cfg; the kernel found them by its RSDP scan.
    assert "ACPI: RSDP 0x00000000000E0000 000024 (v02 QLITE )" in proc.stdout, proc.stdout
    assert "IOAPIC[0]: apic_id 0, version 17, address 0xfec00000, GSI 0-23" in proc.stdout
    assert "clocksource: acpi_pm: mask: 0xffffff" in proc.stdout
    assert "reboot: Power down" in proc.stdout
    assert proc.returncode == 16, proc.stderr  # powered off through ACPI
    assert grub_img.read_bytes() == before  # nothing wrote to the disk


def test_grub_image_boots_as_cdrom(grub_img):
    proc = _boot_cli("-cdrom", str(grub_img), "--boot", "d")
    assert "Booting from CD-ROM 0xE0" in proc.stdout
    assert "Welcome to GRUB!" in proc.stdout
    _check_userspace(proc.stdout)
    assert proc.returncode == 16, proc.stderr

"""The AML encoder and the tables' bytes; guests read them in tests/guest/test_acpi.py
and Debian's kernel in tests/linux/test_acpi_linux.py."""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from qemu_lite.acpi import aml, mptable, tables
from qemu_lite.acpi.platform import MP_FLOATING_POINTER, TABLES_BASE, Platform


def test_pkg_length_encodings():
    assert aml.pkg_length(0) == b"\x01"
    assert aml.pkg_length(62) == b"\x3f"
    assert aml.pkg_length(63) == bytes([0x40 | (65 & 0xF), 65 >> 4])
    assert aml.pkg_length(5000) == bytes([0x80 | (5003 & 0xF), (5003 >> 4) & 0xFF, 5003 >> 12])


def test_names_integers_and_eisa_ids():
    assert aml.name_string("\\_SB.PCI0") == b"\\\x2e_SB_PCI0"
    assert aml.name_string("COM") == b"COM_"
    assert aml.integer(0) == b"\x00" and aml.integer(0x1FF) == b"\x0b\xff\x01"
    assert aml.eisa_id("PNP0A03") == b"\x0c" + struct.pack("<I", 0x030AD041)
    with pytest.raises(ValueError):
        aml.name_seg("toolong")


def _tables(platform: Platform) -> dict[bytes, bytes]:
    placements = dict(tables.build(platform))
    window = placements[TABLES_BASE]
    found = {}
    for sig in (b"FACP", b"DSDT", b"APIC", b"RSDT", b"XSDT"):
        i = window.index(sig)
        length = struct.unpack_from("<I", window, i + 4)[0]
        found[sig] = window[i:i + length]
    found[b"RSDP"] = window[:36]
    found[b"_MP_"] = placements[MP_FLOATING_POINTER]
    return found


def test_every_table_checksums_and_the_madt_lists_each_cpu():
    found = _tables(Platform(cpus=3))
    for sig in (b"FACP", b"DSDT", b"APIC", b"RSDT", b"XSDT"):
        assert sum(found[sig]) & 0xFF == 0, sig
    assert sum(found[b"RSDP"][:20]) & 0xFF == 0 and sum(found[b"RSDP"]) & 0xFF == 0
    assert len(found[b"_MP_"]) == 16 and sum(found[b"_MP_"]) & 0xFF == 0
    madt = found[b"APIC"]
    assert madt[44:44 + 24:8] == b"\x00\x00\x00"  # three type-0 Local APIC entries
    assert len(mptable.config_table(Platform(cpus=3))) == 44 + 3 * 20 + 2 * 8 + 8 + 17 * 8 + 2 * 8


@pytest.mark.skipif(shutil.which("iasl") is None,
                    reason="iasl not installed (apt-get install acpica-tools)")
def test_iasl_disassembles_the_dsdt(tmp_path):
    (tmp_path / "dsdt.dat").write_bytes(_tables(Platform(com2=True))[b"DSDT"])
    proc = subprocess.run(["iasl", "-d", "dsdt.dat"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    asl = (tmp_path / "dsdt.dsl").read_text()
    for needle in ('Device (PCI0)', 'EisaId ("PNP0A03")', 'Device (COM2)', 'EisaId ("PNP0303")',
                   'Name (\\_S5, Package (0x04)', 'IRQNoFlags ()'):
        assert needle in asl, asl

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


def test_the_prt_sends_each_slot_pin_to_the_link_of_its_pirq():
    dsdt = _tables(Platform())[b"DSDT"]

    def entry(slot: int, pin: int, link: str) -> bytes:
        return aml.package(aml.integer(slot << 16 | 0xFFFF), aml.integer(pin),
                           aml.ref(f"\\_SB.{link}"), aml.integer(0))

    # The e1000 (slot 3, INTA#) is on PIRQC; slot 1's INTA# on PIRQA; slot 0's on PIRQD.
    for slot, pin, link in ((3, 0, "LNKC"), (3, 1, "LNKD"), (1, 0, "LNKA"), (0, 0, "LNKD"),
                            (31, 3, "LNKB")):
        assert entry(slot, pin, link) in dsdt, (slot, pin, link)
    prt = aml.name_string("_PRT") + bytes([aml.PACKAGE_OP])
    at = dsdt.index(prt) + len(prt)
    length_bytes = (dsdt[at] >> 6) + 1
    assert dsdt[at + length_bytes] == 128  # NumElements: 32 slots x 4 pins


@pytest.mark.skipif(shutil.which("iasl") is None,
                    reason="iasl not installed (apt-get install acpica-tools)")
def test_iasl_reads_the_interrupt_links_and_recompiles_them(tmp_path):
    (tmp_path / "dsdt.dat").write_bytes(_tables(Platform())[b"DSDT"])
    proc = subprocess.run(["iasl", "-d", "dsdt.dat"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    asl = (tmp_path / "dsdt.dsl").read_text()
    for needle in ("Name (_PRT, Package (0x80)",
                   "0x0003FFFF, \n                    Zero, \n                    \\_SB.LNKC,",
                   "OperationRegion (PIRQ, PCI_Config, 0x60, 0x04)",
                   "PRQA,   8, \n                    PRQB,   8,",
                   'Name (_HID, EisaId ("PNP0C0F")',
                   "Interrupt (ResourceConsumer, Level, ActiveHigh, Shared, ,, )\n"
                   "                {\n                    0x00000005,\n"
                   "                    0x0000000A,\n                    0x0000000B,\n",
                   "If ((\\_SB.PCI0.ISA.PRQC & 0x80))",
                   "IRQV = (\\_SB.PCI0.ISA.PRQC & 0x0F)",
                   "If ((((IRQV == 0x05) || (IRQV == 0x0A)) || (IRQV == 0x0B)))",
                   "\\_SB.PCI0.ISA.PRQC = IRQV",
                   "\\_SB.PCI0.ISA.PRQC |= 0x80"):
        assert needle in asl, needle
    for link in ("LNKA", "LNKB", "LNKC", "LNKD"):
        assert f"Device ({link})" in asl, link
        body = asl.split(f"Device ({link})")[1].split("Device (")[0]
        for method in ("_STA", "_CRS", "_SRS", "_DIS"):
            assert f"Method ({method}, " in body, (link, method)
    # What iasl wrote back compiles cleanly: every reference resolves, and nothing is
    # against the spec's advice (a _HID and an _ADR on PCI0; a Name() inside a method).
    proc = subprocess.run(["iasl", "dsdt.dsl"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 Errors, 0 Warnings, 0 Remarks," in proc.stdout, proc.stdout

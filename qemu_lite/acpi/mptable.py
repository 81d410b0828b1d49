"""The MultiProcessor Specification 1.4 tables, for kernels that look there (``acpi=off``).

A 16-byte floating pointer in the last KiB of base memory points at the
configuration table: one processor entry per vCPU, a PCI and an ISA bus,
the IOAPIC, the ISA interrupts (IRQ 0 on INTIN 2, as the MADT's override
says), the NIC's PCI interrupt, and the local interrupts (ExtINT on LINT0,
NMI on LINT1).  Layouts: MP spec 1.4, chapter 4.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from qemu_lite.acpi.platform import IOAPIC_BASE, IOAPIC_ID, LAPIC_BASE, LEVEL_IRQS
from qemu_lite.devices.pci import PIRQ_RESET_ROUTES, slot_pirq

if TYPE_CHECKING:
    from qemu_lite.acpi.platform import Platform

SPEC_REV = 4
LAPIC_VERSION = 0x14
IOAPIC_VERSION = 0x11
BUS_PCI, BUS_ISA = 0, 1
INT, NMI, EXTINT = 0, 1, 3
# Polarity (bits 0-1) and trigger (bits 2-3): 0 = as the bus defines; 0x0D = level, high.
CONFORMS, LEVEL_HIGH = 0x0000, 0x000D
# The NIC's INTA# (PCI 00:03.0) on the IRQ the PIIX3 routes its PIRQ to at reset: a kernel
# reading this table does not re-route (the DSDT's links are how an OS moves it).
NIC_SLOT = 3
NIC_IRQ = PIRQ_RESET_ROUTES[slot_pirq(NIC_SLOT, 1)]


def _checksum(data: bytes | bytearray) -> int:
    return -sum(data) & 0xFF


def floating_pointer(config_addr: int) -> bytes:
    """"_MP_", the configuration table's address, length 1 (16 bytes), spec 1.4."""
    out = bytearray(struct.pack("<4sIBBBB4x", b"_MP_", config_addr, 1, SPEC_REV, 0, 0))
    out[10] = _checksum(out)
    return bytes(out)


def config_table(platform: Platform) -> bytes:
    """The "PCMP" configuration table (position-independent: no pointers inside)."""
    entries: list[bytes] = []
    for cpu in range(platform.cpus):
        flags = 0x01 | (0x02 if cpu == 0 else 0)  # enabled; CPU 0 is the bootstrap processor
        entries.append(struct.pack("<BBBBII8x", 0, cpu, LAPIC_VERSION, flags,
                                   platform.cpu_signature, platform.cpu_features))
    entries.append(struct.pack("<BB6s", 1, BUS_PCI, b"PCI   "))
    entries.append(struct.pack("<BB6s", 1, BUS_ISA, b"ISA   "))
    entries.append(struct.pack("<BBBBI", 2, IOAPIC_ID, IOAPIC_VERSION, 1, IOAPIC_BASE))
    entries.append(struct.pack("<BBHBBBB", 3, EXTINT, CONFORMS, BUS_ISA, 0, IOAPIC_ID, 0))
    for irq in range(16):
        if irq == 2:
            continue  # the cascade
        flags = LEVEL_HIGH if irq in LEVEL_IRQS else CONFORMS
        entries.append(struct.pack("<BBHBBBB", 3, INT, flags, BUS_ISA, irq, IOAPIC_ID,
                                   2 if irq == 0 else irq))
    entries.append(struct.pack("<BBHBBBB", 3, INT, LEVEL_HIGH, BUS_PCI, NIC_SLOT << 2,
                               IOAPIC_ID, NIC_IRQ))
    entries.append(struct.pack("<BBHBBBB", 4, EXTINT, CONFORMS, BUS_ISA, 0, 0xFF, 0))
    entries.append(struct.pack("<BBHBBBB", 4, NMI, CONFORMS, BUS_ISA, 0, 0xFF, 1))
    body = b"".join(entries)
    header = bytearray(struct.pack("<4sHBB8s12sIHHIHBx", b"PCMP", 44 + len(body), SPEC_REV, 0,
                                   b"QLITE   ", b"QEMU-LITE PC", 0, 0, len(entries),
                                   LAPIC_BASE, 0, 0))
    table = header + body
    table[7] = _checksum(table)
    return bytes(table)

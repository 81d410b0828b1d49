"""Where the firmware tables go and what they describe (shared by tables.py and mptable.py)."""

from __future__ import annotations

from dataclasses import dataclass

TABLES_BASE = 0xE0000      # also TABLES_BASE in firmware/bios/defs.inc; E820-reserved
TABLES_SIZE = 0x10000
# The MP floating pointer must be in the last KiB of base memory (or the BIOS
# ROM): our BIOS's EBDA at 0x9FC00 keeps a 16-byte slot for it (EB_MPFP).
MP_FLOATING_POINTER = 0x9FC00 + 0x30

LAPIC_BASE = 0xFEE00000
IOAPIC_BASE = 0xFEC00000
IOAPIC_ID = 0
SCI_IRQ = 9
# ISA IRQs that QEMU's MADT marks level-triggered, active high: the SCI and
# the PCI interrupt lines (our lines assert high, as the PIIX presents them).
LEVEL_IRQS = (5, 9, 10, 11)
# The ISA IRQs the DSDT's PCI interrupt links offer (_PRS): the level ones but the SCI.
LINK_IRQS = (5, 10, 11)


@dataclass(frozen=True)
class Platform:
    """What the tables describe, taken from the machine when it is built."""

    cpus: int = 1
    ram_below_4g: int = 64 << 20
    com2: bool = False
    hpet: bool = False
    cpu_signature: int = 0x000306C3   # CPUID.1 EAX, for the MP table's processor entries
    cpu_features: int = 0x0781ABFD    # CPUID.1 EDX

"""ACPI tables of QEMU's ``pc`` machine, built in Python for fixed addresses.

The tables live in a 64 KiB window below 1 MiB (``TABLES_BASE``, reserved in
both E820 maps) where Linux's RSDP scan finds them, and are linked for
those addresses when built: :func:`build` returns ``(address, bytes)``
placements that our BIOS copies there from fw_cfg, or that the Linux loader
writes itself for ``--kernel`` boots.

    RSDP (rev 2) -> RSDT, XSDT -> FADT -> FACS, DSDT
                               -> MADT
                               -> HPET (with the HPET device)
                               -> MP floating pointer -> MP table (mptable.py)

Layouts follow the ACPI 6.4 specification, chapter 5 (FADT revision 3, the
ACPI 2.0 layout; MADT revision 1).
"""

from __future__ import annotations

import struct

from qemu_lite.acpi import aml, mptable
from qemu_lite.acpi.platform import (
    IOAPIC_BASE,
    IOAPIC_ID,
    LAPIC_BASE,
    LEVEL_IRQS,
    LINK_IRQS,
    MP_FLOATING_POINTER,
    SCI_IRQ,
    TABLES_BASE,
    TABLES_SIZE,
    Platform,
)
from qemu_lite.devices.acpi_pm import (
    GPE0_BLK,
    GPE0_BLK_LEN,
    PM1_CNT,
    PM1_EVT,
    PM_BASE,
    PM_TMR,
    SLP_TYP_S5,
)
from qemu_lite.devices.hpet import GCAP_ID_LOW, HPET_BASE, HPET_SIZE
from qemu_lite.devices.pci import PIRQ_DISABLED, PIRQ_IRQ_MASK, Piix3IsaBridge, slot_pirq

OEM_ID = b"QLITE "
OEM_TABLE_ID = b"QEMULITE"
CREATOR_ID = b"QLPY"

RESET_PORT, RESET_VALUE = 0xCF9, 0x06   # the PIIX3 reset control register: hard reset
RTC_CENTURY = 0x32

# FADT flags (ACPI 6.4, table 5.10).
FADT_WBINVD = 1 << 0
FADT_PROC_C1 = 1 << 2
FADT_SLP_BUTTON = 1 << 5   # no fixed-feature sleep button; PWR_BUTTON clear = fixed power button
FADT_RESET_REG_SUP = 1 << 10
# IAPC_BOOT_ARCH: legacy ISA devices and an 8042.
IAPC_LEGACY_DEVICES, IAPC_8042 = 1 << 0, 1 << 1


def checksum(data: bytes | bytearray) -> int:
    """The byte that makes ``data`` sum to zero."""
    return -sum(data) & 0xFF


def sdt(signature: bytes, revision: int, body: bytes) -> bytes:
    """A system description table: the 36-byte header, checksummed, then ``body``."""
    header = struct.pack("<4sIBB6s8sI4sI", signature, 36 + len(body), revision, 0,
                         OEM_ID, OEM_TABLE_ID, 1, CREATOR_ID, 1)
    table = bytearray(header + body)
    table[9] = checksum(table)
    return bytes(table)


def gas_io(port: int, bits: int) -> bytes:
    """A Generic Address Structure for an I/O port block."""
    return struct.pack("<BBBBQ", 1, bits, 0, 0, port)


def rsdp(rsdt_addr: int, xsdt_addr: int) -> bytes:
    """RSDP revision 2: the ACPI 1.0 checksum covers 20 bytes, the extended one all 36."""
    out = bytearray(struct.pack("<8sB6sBIIQB3x", b"RSD PTR ", 0, OEM_ID, 2, rsdt_addr, 36,
                                xsdt_addr, 0))
    out[8] = checksum(out[:20])
    out[32] = checksum(out)
    return bytes(out)


def facs() -> bytes:
    """FACS (no checksum): signature, length, hardware signature, waking vectors, version 1."""
    return struct.pack("<4sIIIIIQB31x", b"FACS", 64, 0, 0, 0, 0, 0, 1)


def fadt(facs_addr: int, dsdt_addr: int) -> bytes:
    """FADT revision 3 (244 bytes) for the PIIX4-style PM block of devices/acpi_pm.py."""
    pm1_evt, pm1_cnt, pm_tmr = PM_BASE + PM1_EVT, PM_BASE + PM1_CNT, PM_BASE + PM_TMR
    gpe0 = PM_BASE + GPE0_BLK
    body = struct.pack(
        "<IIBBHIBBBBIIIIIIIIBBBBBBBBHHHHBBBBBHBI",
        facs_addr, dsdt_addr,
        0,                  # reserved (ACPI 1.0 INT_MODEL)
        0,                  # preferred PM profile: unspecified
        SCI_IRQ,
        0, 0, 0, 0, 0,      # SMI_CMD 0: always in ACPI mode; ACPI_ENABLE/DISABLE, S4BIOS, PSTATE
        pm1_evt, 0, pm1_cnt, 0, 0, pm_tmr,
        gpe0, 0,            # GPE0 block; no GPE1
        4, 2, 0, 4,         # PM1_EVT_LEN, PM1_CNT_LEN, PM2_CNT_LEN, PM_TMR_LEN
        GPE0_BLK_LEN, 0, 0,  # GPE0/GPE1 lengths, GPE1 base
        0,                  # CST_CNT
        0x0FFF, 0x0FFF,     # C2/C3 latencies above the limits: no C2/C3
        0, 0,               # flush size/stride
        0, 0,               # duty offset/width
        0, 0, RTC_CENTURY,  # day/month alarm, century register
        IAPC_LEGACY_DEVICES | IAPC_8042,
        0,
        FADT_WBINVD | FADT_PROC_C1 | FADT_SLP_BUTTON | FADT_RESET_REG_SUP,
    )
    body += gas_io(RESET_PORT, 8) + struct.pack("<B3x", RESET_VALUE)
    body += struct.pack("<QQ", facs_addr, dsdt_addr)
    body += gas_io(pm1_evt, 32) + bytes(12) + gas_io(pm1_cnt, 16) + bytes(12)
    body += bytes(12) + gas_io(pm_tmr, 32) + gas_io(gpe0, 8 * GPE0_BLK_LEN) + bytes(12)
    table = sdt(b"FACP", 3, body)
    assert len(table) == 244, len(table)
    return table


def madt(platform: Platform) -> bytes:
    """MADT: a Local APIC per vCPU, the IOAPIC, IRQ0 -> GSI 2, level IRQs, NMI on LINT1."""
    body = struct.pack("<II", LAPIC_BASE, 1)  # PCAT_COMPAT: there are 8259s too
    for cpu in range(platform.cpus):
        body += struct.pack("<BBBBI", 0, 8, cpu, cpu, 1)  # enabled
    body += struct.pack("<BBBBII", 1, 12, IOAPIC_ID, 0, IOAPIC_BASE, 0)
    body += struct.pack("<BBBBIH", 2, 10, 0, 0, 2, 0)  # ISA IRQ 0 -> GSI 2, bus defaults
    for irq in LEVEL_IRQS:
        body += struct.pack("<BBBBIH", 2, 10, 0, irq, irq, 0x000D)  # active high, level
    body += struct.pack("<BBBHB", 4, 6, 0xFF, 0, 1)  # every processor: NMI on LINT1
    return sdt(b"APIC", 1, body)


def hpet() -> bytes:
    """The HPET description table (IA-PC HPET specification 1.0a, 3.2.4): the block's
    GCAP_ID low half, its base as a Generic Address Structure in system memory, HPET
    number 0, no minimum periodic tick, no page protection."""
    base = struct.pack("<BBBBQ", 0, 64, 0, 0, HPET_BASE)
    return sdt(b"HPET", 1, struct.pack("<I", GCAP_ID_LOW) + base + struct.pack("<BHB", 0, 0, 0))


LINKS = ("LNKA", "LNKB", "LNKC", "LNKD")
PIRQ_FIELDS = ("PRQA", "PRQB", "PRQC", "PRQD")  # \_SB.PCI0.ISA: PIIX3 0x60-0x63
_STA_ENABLED, _STA_DISABLED = 0x0B, 0x09  # present, functioning, (enabled), not shown in UI


def pci_routing_table() -> bytes:
    """_PRT of the PCI root: INTA#-INTD# of every slot to the link of its PIRQ."""
    entries = [aml.package(aml.integer(slot << 16 | 0xFFFF), aml.integer(pin - 1),
                           aml.ref("\\_SB." + LINKS[slot_pirq(slot, pin)]), aml.integer(0))
               for slot in range(32) for pin in range(1, 5)]
    return aml.name("_PRT", aml.package(*entries))


def interrupt_link(pirq: int) -> bytes:
    """A PCI interrupt link device (PNP0C0F) over PIIX3 register PIRQRC[pirq].

    _STA: disabled while bit 7 is set.  _CRS: the routed IRQ.  _PRS: the IRQs of
    LINK_IRQS, level-triggered active high and shared, as the PIIX3 drives a PIRQ
    (and as the MADT's overrides describe those IOAPIC pins).  _SRS stores the IRQ
    asked for if _PRS offers it (anything else leaves the route as it was, which
    _CRS then shows); _DIS sets bit 7, which disconnects the PIRQ."""
    reg = aml.ref("\\_SB.PCI0.ISA." + PIRQ_FIELDS[pirq])
    offered = aml.lequal(aml.ref("IRQV"), aml.integer(LINK_IRQS[0]))
    for irq in LINK_IRQS[1:]:
        offered = aml.lor(offered, aml.lequal(aml.ref("IRQV"), aml.integer(irq)))
    return aml.device(
        LINKS[pirq],
        aml.name("_HID", aml.eisa_id("PNP0C0F")),
        aml.name("_UID", aml.integer(pirq)),
        aml.name("_PRS", aml.resource_template(aml.interrupt(*LINK_IRQS))),
        aml.method("_STA", 0,
                   aml.if_(aml.and_(reg, aml.integer(PIRQ_DISABLED)),
                           aml.return_(aml.integer(_STA_DISABLED))),
                   aml.return_(aml.integer(_STA_ENABLED))),
        aml.method("_CRS", 0,  # the template in Local0: a Name() per call is a named object
                   aml.store(aml.resource_template(aml.interrupt(0)), aml.local(0)),
                   aml.create_dword_field(aml.local(0), 5, "IRQV"),
                   aml.store(aml.and_(reg, aml.integer(PIRQ_IRQ_MASK)), aml.ref("IRQV")),
                   aml.return_(aml.local(0)),
                   serialized=True),
        aml.method("_SRS", 1,
                   aml.create_dword_field(aml.arg(0), 5, "IRQV"),
                   aml.if_(offered, aml.store(aml.ref("IRQV"), reg)),
                   serialized=True),
        aml.method("_DIS", 0, aml.or_(reg, aml.integer(PIRQ_DISABLED), reg)),
    )


def dsdt(platform: Platform) -> bytes:
    """The DSDT: the PCI root with its _PRT and the ISA devices under the PIIX3, the
    PCI interrupt links, and \\_S5."""

    def isa_device(seg: str, hid: str, *resources: bytes, uid: int | None = None) -> bytes:
        terms = [aml.name("_HID", aml.eisa_id(hid))]
        if uid is not None:
            terms.append(aml.name("_UID", aml.integer(uid)))
        terms.append(aml.name("_STA", aml.integer(0x0F)))
        terms.append(aml.name("_CRS", aml.resource_template(*resources)))
        return aml.device(seg, *terms)

    isa = [
        isa_device("KBD", "PNP0303", aml.io(0x60, 1), aml.io(0x64, 1), aml.irq_no_flags(1)),
        isa_device("MOU", "PNP0F13", aml.irq_no_flags(12)),
        isa_device("RTC", "PNP0B00", aml.io(0x70, 2), aml.irq_no_flags(8)),
        isa_device("COM1", "PNP0501", aml.io(0x3F8, 8), aml.irq_no_flags(4), uid=1),
    ]
    if platform.com2:
        isa.append(isa_device("COM2", "PNP0501", aml.io(0x2F8, 8), aml.irq_no_flags(3), uid=2))
    pci_windows = aml.resource_template(
        aml.word_bus_number(0, 0xFF),
        aml.io(0xCF8, 8),
        aml.word_io(0x0000, 0x0CF7),
        aml.word_io(0x0D00, 0xFFFF),
        aml.dword_memory(0x000A0000, 0x000BFFFF),
        aml.dword_memory(platform.ram_below_4g, 0xFEBFFFFF),
    )
    hpet_device = [aml.device(
        "HPET",
        aml.name("_HID", aml.eisa_id("PNP0103")),
        aml.name("_UID", aml.integer(0)),
        aml.name("_STA", aml.integer(0x0F)),
        aml.name("_CRS", aml.resource_template(aml.memory32_fixed(HPET_BASE, HPET_SIZE,
                                                                   writable=False))),
    )] if platform.hpet else []
    pci0 = aml.device(
        "PCI0",
        aml.name("_HID", aml.eisa_id("PNP0A03")),  # a _HID device has no _ADR (ACPI 6.4, 6.1)
        aml.name("_UID", aml.integer(0)),
        aml.name("_CRS", pci_windows),
        pci_routing_table(),
        aml.device("ISA", aml.name("_ADR", aml.integer(0x00010000)),
                   aml.operation_region("PIRQ", aml.REGION_PCI_CONFIG, Piix3IsaBridge.PIRQRC,
                                        Piix3IsaBridge.PIRQ_COUNT),
                   aml.field("PIRQ", *((seg, 8) for seg in PIRQ_FIELDS)),
                   *isa),
        *hpet_device,
    )
    links = [interrupt_link(pirq) for pirq in range(Piix3IsaBridge.PIRQ_COUNT)]
    body = aml.scope("\\_SB", pci0, *links)
    body += aml.name("\\_S5", aml.package(*(aml.integer(SLP_TYP_S5),) * 2,
                                            aml.integer(0), aml.integer(0)))
    return sdt(b"DSDT", 1, body)


def build(platform: Platform) -> list[tuple[int, bytes]]:
    """Every table, linked for its address: ``(physical address, bytes)`` placements."""
    window = bytearray()
    addresses: dict[str, int] = {}

    def place(key: str, data: bytes, align: int = 16) -> int:
        window.extend(bytes(-len(window) % align))
        addresses[key] = TABLES_BASE + len(window)
        window.extend(data)
        return addresses[key]

    # The RSDP goes first (Linux scans 16-byte boundaries); its pointers are
    # filled in once the tables after it have addresses.
    place("rsdp", bytes(36))
    facs_addr = place("facs", facs(), align=64)
    dsdt_addr = place("dsdt", dsdt(platform))
    fadt_addr = place("fadt", fadt(facs_addr, dsdt_addr))
    madt_addr = place("madt", madt(platform))
    entries = [fadt_addr, madt_addr]
    if platform.hpet:
        entries.append(place("hpet", hpet()))
    rsdt_addr = place("rsdt", sdt(b"RSDT", 1, struct.pack(f"<{len(entries)}I", *entries)))
    xsdt_addr = place("xsdt", sdt(b"XSDT", 1, struct.pack(f"<{len(entries)}Q", *entries)))
    window[0:36] = rsdp(rsdt_addr, xsdt_addr)
    mp_addr = TABLES_BASE + len(window) + (-len(window) % 16)
    place("mptable", mptable.config_table(platform))
    if len(window) > TABLES_SIZE:
        raise ValueError(f"firmware tables need {len(window)} bytes, more than the window")
    return [(TABLES_BASE, bytes(window)),
            (MP_FLOATING_POINTER, mptable.floating_pointer(mp_addr))]


def fw_cfg_blob(placements: list[tuple[int, bytes]]) -> bytes:
    """The fw_cfg file "etc/qemu-lite/tables": (address, length, bytes) records for the BIOS
    (firmware/bios/tables.inc)."""
    return b"".join(struct.pack("<II", addr, len(data)) + data for addr, data in placements)

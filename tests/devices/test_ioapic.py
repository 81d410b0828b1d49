"""I/O APIC: registers, edge and level delivery, routing to the local APIC."""

from __future__ import annotations

from qemu_lite.devices.base import Clock, IrqLine
from qemu_lite.devices.ioapic import IOREGSEL, IOWIN, IoApic, route_to_lapic
from qemu_lite.devices.lapic import APIC_EOI, APIC_LDR, APIC_SVR, LocalApic

MASKED = 1 << 16
LEVEL = 1 << 15
ACTIVE_LOW = 1 << 13
REMOTE_IRR = 1 << 14
LOGICAL = 1 << 11

Message = tuple[int, int, bool, int, int]


def read_reg(ioapic: IoApic, index: int) -> int:
    ioapic.io_write(IOREGSEL, 4, index)
    return ioapic.io_read(IOWIN, 4)


def write_reg(ioapic: IoApic, index: int, value: int) -> None:
    ioapic.io_write(IOREGSEL, 4, index)
    ioapic.io_write(IOWIN, 4, value)


def program(ioapic: IoApic, pin: int, low: int, dest: int = 0) -> None:
    write_reg(ioapic, 0x11 + 2 * pin, dest << 24)
    write_reg(ioapic, 0x10 + 2 * pin, low)


def recording() -> tuple[IoApic, list[Message]]:
    sent: list[Message] = []

    def deliver(vector: int, mode: int, level: bool, dest: int, dest_mode: int) -> None:
        sent.append((vector, mode, level, dest, dest_mode))

    return IoApic(deliver), sent


def with_lapic() -> tuple[IoApic, LocalApic]:
    lapic = LocalApic(Clock())
    lapic.io_write(APIC_SVR, 4, 0x1FF)
    ioapic = IoApic(route_to_lapic(lapic))
    lapic.on_eoi = ioapic.eoi
    return ioapic, lapic


def test_identification_registers() -> None:
    ioapic, _ = recording()
    assert read_reg(ioapic, 0x01) == 0x00170011
    assert read_reg(ioapic, 0x00) == 0
    write_reg(ioapic, 0x00, 0xFFFFFFFF)
    assert read_reg(ioapic, 0x00) == 0x0F000000
    assert read_reg(ioapic, 0x02) == 0x0F000000
    assert ioapic.io_read(IOREGSEL, 4) == 0x02
    assert IoApic(lambda *a: None, ioapic_id=2).io_read(IOWIN, 4) == 2 << 24


def test_redirection_entries_reset_masked_and_read_back() -> None:
    ioapic, sent = recording()
    for pin in range(24):
        assert read_reg(ioapic, 0x10 + 2 * pin) == MASKED
        assert read_reg(ioapic, 0x11 + 2 * pin) == 0
    write_reg(ioapic, 0x10 + 2 * 5, 0xFFFFFFFF)
    # Delivery status (12) and remote IRR (14) are read-only.
    assert read_reg(ioapic, 0x10 + 2 * 5) == 0x1AFFF
    write_reg(ioapic, 0x11 + 2 * 5, 0xFFFFFFFF)
    assert read_reg(ioapic, 0x11 + 2 * 5) == 0xFF000000
    assert read_reg(ioapic, 0x10 + 2 * 24) == 0  # past the table
    ioapic.set_irq(3, True)
    ioapic.set_irq(3, False)
    assert sent == []  # masked by default


def test_edge_delivery_on_asserting_edge() -> None:
    ioapic, sent = recording()
    program(ioapic, 4, 0x34, dest=0)
    ioapic.set_irq(4, True)
    ioapic.set_irq(4, True)  # no new edge
    ioapic.set_irq(4, False)
    assert sent == [(0x34, 0, False, 0, 0)]
    program(ioapic, 4, MASKED | 0x34)
    ioapic.set_irq(4, True)  # lost while masked
    program(ioapic, 4, 0x34)
    assert len(sent) == 1


def test_edge_through_route_to_lapic() -> None:
    ioapic, lapic = with_lapic()
    line = IrqLine(ioapic, 4)
    program(ioapic, 4, 0x34, dest=0)
    line.pulse()
    assert lapic.has_interrupt()
    assert lapic.acknowledge() == 0x34
    lapic.io_write(APIC_EOI, 4, 0)
    assert not lapic.has_interrupt()


def test_level_remote_irr_and_redelivery_after_eoi() -> None:
    ioapic, lapic = with_lapic()
    program(ioapic, 9, LEVEL | 0x49, dest=0)
    ioapic.set_irq(9, True)
    assert read_reg(ioapic, 0x10 + 2 * 9) & REMOTE_IRR
    assert lapic.acknowledge() == 0x49
    assert not lapic.has_interrupt()  # remote IRR blocks a second message
    lapic.io_write(APIC_EOI, 4, 0)  # still asserted: delivered again
    assert read_reg(ioapic, 0x10 + 2 * 9) & REMOTE_IRR
    assert lapic.acknowledge() == 0x49
    ioapic.set_irq(9, False)
    lapic.io_write(APIC_EOI, 4, 0)
    assert not read_reg(ioapic, 0x10 + 2 * 9) & REMOTE_IRR
    assert not lapic.has_interrupt()


def test_level_pin_delivers_on_unmask() -> None:
    ioapic, sent = recording()
    program(ioapic, 10, MASKED | LEVEL | 0x4A)
    ioapic.set_irq(10, True)
    assert sent == []
    program(ioapic, 10, LEVEL | 0x4A)
    assert sent == [(0x4A, 0, True, 0, 0)]


def test_active_low_polarity() -> None:
    ioapic, sent = recording()
    ioapic.set_irq(11, True)  # idle level of an active-low line
    program(ioapic, 11, ACTIVE_LOW | LEVEL | 0x4B)
    assert sent == []
    ioapic.set_irq(11, False)
    assert sent == [(0x4B, 0, True, 0, 0)]
    program(ioapic, 12, ACTIVE_LOW | 0x4C)
    ioapic.set_irq(12, True)
    assert len(sent) == 1
    ioapic.set_irq(12, False)  # the falling edge asserts
    assert sent[-1] == (0x4C, 0, False, 0, 0)


def test_destination_mismatch_not_delivered() -> None:
    ioapic, lapic = with_lapic()
    program(ioapic, 4, 0x34, dest=1)  # physical ID 1; our APIC is 0
    ioapic.set_irq(4, True)
    assert not lapic.has_interrupt()
    program(ioapic, 5, 0x35, dest=0xFF)  # physical broadcast
    ioapic.set_irq(5, True)
    assert lapic.acknowledge() == 0x35


def test_logical_destination_and_nmi() -> None:
    ioapic, lapic = with_lapic()
    lapic.io_write(APIC_LDR, 4, 0x01 << 24)
    program(ioapic, 6, LOGICAL | 0x36, dest=0x02)
    ioapic.set_irq(6, True)
    assert not lapic.has_interrupt()
    program(ioapic, 7, LOGICAL | 0x37, dest=0x03)
    ioapic.set_irq(7, True)
    assert lapic.acknowledge() == 0x37
    program(ioapic, 2, (4 << 8), dest=0)  # NMI
    ioapic.set_irq(2, True)
    assert lapic.take_nmi()


def test_save_and_load_state() -> None:
    ioapic, sent = recording()
    program(ioapic, 9, LEVEL | 0x49, dest=3)
    ioapic.set_irq(9, True)
    copy, copy_sent = recording()
    copy.load_state(ioapic.save_state())
    assert read_reg(copy, 0x10 + 2 * 9) == LEVEL | REMOTE_IRR | 0x49
    assert read_reg(copy, 0x11 + 2 * 9) == 3 << 24
    copy.eoi(0x49)
    assert copy_sent == [(0x49, 0, True, 3, 0)]

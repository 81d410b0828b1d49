"""The wire between local APICs (qemu_lite/smp.py ApicBus): ICR destinations,
shorthands, delivery modes and the IOAPIC's messages (SDM vol. 3, 10.6)."""

from __future__ import annotations

from qemu_lite.devices.base import Clock
from qemu_lite.devices.lapic import (
    APIC_DFR,
    APIC_EOI,
    APIC_ESR,
    APIC_ICR_HIGH,
    APIC_ICR_LOW,
    APIC_LDR,
    APIC_SVR,
    APIC_TPR,
    DM_INIT,
    DM_STARTUP,
    ESR_SEND_ILLEGAL_VECTOR,
    LocalApic,
)
from qemu_lite.smp import ApicBus

LOGICAL = 1 << 11
ASSERT = 1 << 14
LEVEL = 1 << 15
SELF, ALL, ALL_BUT_SELF = 1 << 18, 2 << 18, 3 << 18
FIXED, LOWEST, NMI, INIT, STARTUP = 0, 1 << 8, 4 << 8, 5 << 8, 6 << 8


def bus_of(n: int) -> tuple[ApicBus, list[LocalApic], list[tuple[int, int, int]]]:
    clock = Clock()
    apics = [LocalApic(clock, apic_id=i) for i in range(n)]
    for apic in apics:
        apic.io_write(APIC_SVR, 4, 0x1FF)
    bus = ApicBus(apics)
    starts: list[tuple[int, int, int]] = []
    bus.on_init_sipi = lambda i, mode, vector: starts.append((i, mode, vector))
    return bus, apics, starts


def send(apic: LocalApic, low: int, dest: int = 0) -> None:
    apic.io_write(APIC_ICR_HIGH, 4, dest << 24)
    apic.io_write(APIC_ICR_LOW, 4, low | ASSERT)


def who_has(apics: list[LocalApic]) -> list[int]:
    """The APICs with an interrupt to deliver; each takes it and ends it (EOI)."""
    got = [i for i, a in enumerate(apics) if a.has_interrupt()]
    for i in got:
        apics[i].acknowledge()
        apics[i].io_write(APIC_EOI, 4, 0)
    return got


def test_physical_destination_and_broadcast():
    _bus, apics, _ = bus_of(4)
    send(apics[0], FIXED | 0x40, dest=2)
    assert who_has(apics) == [2]
    send(apics[3], FIXED | 0x41, dest=0xFF)
    assert who_has(apics) == [0, 1, 2, 3]


def test_logical_flat_and_cluster_destinations():
    _bus, apics, _ = bus_of(4)
    for i, apic in enumerate(apics):
        apic.io_write(APIC_LDR, 4, (1 << i) << 24)  # flat: one bit each
    send(apics[0], LOGICAL | FIXED | 0x50, dest=0b0110)
    assert who_has(apics) == [1, 2]
    for i, apic in enumerate(apics):  # cluster model: cluster i // 2, member bit i % 2
        apic.io_write(APIC_DFR, 4, 0x0FFFFFFF)
        apic.io_write(APIC_LDR, 4, ((i // 2) << 4 | 1 << (i % 2)) << 24)
    send(apics[0], LOGICAL | FIXED | 0x51, dest=0x12)  # cluster 1, member 1
    assert who_has(apics) == [3]


def test_shorthands_ignore_the_destination():
    _bus, apics, _ = bus_of(3)
    send(apics[1], SELF | FIXED | 0x60, dest=0)
    assert who_has(apics) == [1]
    send(apics[1], ALL | FIXED | 0x61)
    assert who_has(apics) == [0, 1, 2]
    send(apics[1], ALL_BUT_SELF | FIXED | 0x62)
    assert who_has(apics) == [0, 2]


def test_lowest_priority_goes_to_the_lowest_task_priority():
    _bus, apics, _ = bus_of(3)
    apics[0].io_write(APIC_TPR, 4, 0x20)
    apics[1].io_write(APIC_TPR, 4, 0x10)
    apics[2].io_write(APIC_TPR, 4, 0x30)
    send(apics[0], FIXED | LOWEST | 0x70, dest=0xFF)
    assert who_has(apics) == [1]


def test_nmi_and_illegal_vectors():
    bus, apics, _ = bus_of(2)
    send(apics[0], NMI, dest=1)
    assert apics[1].nmi_pending and not apics[0].nmi_pending
    send(apics[0], FIXED | 0x05, dest=1)  # vectors 0-15 are illegal: nothing is sent
    assert who_has(apics) == []
    apics[0].io_write(APIC_ESR, 4, 0)
    assert apics[0].io_read(APIC_ESR, 4) & ESR_SEND_ILLEGAL_VECTOR
    assert bus.stats[0].ipis_sent == 1 and bus.stats[1].ipis_received == 1


def test_init_and_startup_reach_the_vcpu_set_and_init_deassert_does_not():
    bus, apics, starts = bus_of(3)
    send(apics[0], ALL_BUT_SELF | INIT | LEVEL)
    apics[0].io_write(APIC_ICR_LOW, 4, ALL_BUT_SELF | INIT | LEVEL)  # de-assert
    send(apics[0], STARTUP | 0x9A, dest=2)
    assert starts == [(1, DM_INIT, 0), (2, DM_INIT, 0), (2, DM_STARTUP, 0x9A)]
    assert bus.stats[0].ipis_sent == 2
    assert [s.ipis_received for s in bus.stats] == [0, 1, 2]


def test_ioapic_messages_follow_their_destination():
    bus, apics, _ = bus_of(3)
    for i, apic in enumerate(apics):
        apic.io_write(APIC_LDR, 4, (1 << i) << 24)
    bus.ioapic_deliver(0x30, 0, False, 2, 0)  # fixed, physical APIC 2
    assert who_has(apics) == [2]
    bus.ioapic_deliver(0x31, 0, False, 0b011, 1)  # fixed, logical 0 and 1
    assert who_has(apics) == [0, 1]
    bus.ioapic_deliver(0x32, 1, False, 0b111, 1)  # lowest priority: one of them
    assert len(who_has(apics)) == 1

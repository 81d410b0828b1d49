"""Local APIC: registers, priorities, timer, LINT inputs, EOI."""

from __future__ import annotations

import pytest

from qemu_lite.devices.base import Clock
from qemu_lite.devices.lapic import (
    APIC_DFR,
    APIC_EOI,
    APIC_ESR,
    APIC_ICR_HIGH,
    APIC_ICR_LOW,
    APIC_ID,
    APIC_IRR,
    APIC_ISR,
    APIC_LDR,
    APIC_LVT_ERROR,
    APIC_LVT_LINT0,
    APIC_LVT_LINT1,
    APIC_LVT_TIMER,
    APIC_PPR,
    APIC_SVR,
    APIC_TIMER_CURRENT,
    APIC_TIMER_DIVIDE,
    APIC_TIMER_INITIAL,
    APIC_TMR,
    APIC_TPR,
    APIC_VERSION,
    ESR_ILLEGAL_REGISTER,
    ESR_SEND_ILLEGAL_VECTOR,
    LVT_MASKED,
    LVT_REMOTE_IRR,
    LocalApic,
)

ALL_LVTS = (0x2F0, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370)
EXTINT = 7 << 8
NMI = 4 << 8
LEVEL = 1 << 15
PERIODIC = 1 << 17
SELF = 1 << 18


class FakePic:
    """An ExtIntSource with a queue of vectors."""

    def __init__(self) -> None:
        self.vectors: list[int] = []
        self.acks = 0

    def pending(self) -> bool:
        return bool(self.vectors)

    def acknowledge(self) -> int:
        self.acks += 1
        return self.vectors.pop(0) if self.vectors else 0x0F


def rd(apic: LocalApic, reg: int) -> int:
    return apic.io_read(reg, 4)


def wr(apic: LocalApic, reg: int, value: int) -> None:
    apic.io_write(reg, 4, value)


def enabled_apic(
    apic_id: int = 0, extint: FakePic | None = None, timer_hz: int = 1_000_000_000
) -> tuple[LocalApic, Clock]:
    clock = Clock()
    apic = LocalApic(clock, apic_id=apic_id, extint=extint, timer_hz=timer_hz)
    wr(apic, APIC_SVR, 0x1FF)
    return apic, clock


def vector_bit(apic: LocalApic, base: int, vector: int) -> bool:
    """Bit ``vector`` of the ISR, TMR or IRR starting at ``base``."""
    word = rd(apic, base + 0x10 * (vector >> 5))
    return bool(word >> (vector & 31) & 1)


def self_ipi(apic: LocalApic, vector: int) -> None:
    wr(apic, APIC_ICR_LOW, SELF | vector)


def test_reset_values() -> None:
    apic = LocalApic(Clock(), apic_id=3)
    assert rd(apic, APIC_ID) == 3 << 24
    assert rd(apic, APIC_VERSION) == 0x50014
    assert rd(apic, APIC_SVR) == 0xFF
    assert rd(apic, APIC_DFR) == 0xFFFFFFFF
    for reg in (APIC_TPR, APIC_PPR, APIC_LDR, APIC_ESR, APIC_ICR_LOW, APIC_TIMER_INITIAL):
        assert rd(apic, reg) == 0
    for reg in ALL_LVTS:
        assert rd(apic, reg) == 0x10000
    assert not apic.has_interrupt()


def test_narrow_reads_return_bytes_of_the_register() -> None:
    apic = LocalApic(Clock())
    assert apic.io_read(APIC_VERSION, 1) == 0x14
    assert apic.io_read(APIC_VERSION + 2, 2) == 0x5
    assert apic.io_read(APIC_VERSION + 4, 4) == 0
    apic.io_write(APIC_TPR, 1, 0x50)  # narrow writes are ignored
    assert rd(apic, APIC_TPR) == 0


def test_software_disabled_lvts_cannot_be_unmasked() -> None:
    apic = LocalApic(Clock())
    wr(apic, APIC_LVT_TIMER, 0x40)
    assert rd(apic, APIC_LVT_TIMER) == LVT_MASKED | 0x40
    wr(apic, APIC_SVR, 0x1FF)
    assert apic.software_enabled
    wr(apic, APIC_LVT_TIMER, 0x41)
    assert rd(apic, APIC_LVT_TIMER) == 0x41
    wr(apic, APIC_SVR, 0xFF)  # disabling masks every LVT
    assert rd(apic, APIC_LVT_TIMER) == LVT_MASKED | 0x41


def test_self_ipi_acknowledge_and_eoi() -> None:
    apic, _ = enabled_apic()
    self_ipi(apic, 0x40)
    assert rd(apic, APIC_IRR + 0x20) == 1  # vector 0x40 = word 2, bit 0
    assert apic.has_interrupt()
    assert apic.acknowledge() == 0x40
    assert not apic.has_interrupt()
    assert rd(apic, APIC_IRR + 0x20) == 0
    assert rd(apic, APIC_ISR + 0x20) == 1
    assert rd(apic, APIC_PPR) == 0x40
    wr(apic, APIC_EOI, 0)
    assert rd(apic, APIC_ISR + 0x20) == 0
    assert rd(apic, APIC_PPR) == 0


def test_icr_destination_and_shorthands() -> None:
    apic, _ = enabled_apic(apic_id=2)
    wr(apic, APIC_ICR_HIGH, 5 << 24)
    wr(apic, APIC_ICR_LOW, 0x50)  # physical, other CPU
    assert not apic.has_interrupt()
    wr(apic, APIC_ICR_HIGH, 2 << 24)
    wr(apic, APIC_ICR_LOW, 0x51)  # physical, own ID
    assert vector_bit(apic, APIC_IRR, 0x51)
    wr(apic, APIC_ICR_LOW, (3 << 18) | 0x60)  # all excluding self: nowhere
    wr(apic, APIC_ICR_LOW, (2 << 18) | 0x70)  # all including self
    assert not vector_bit(apic, APIC_IRR, 0x60)
    assert vector_bit(apic, APIC_IRR, 0x70)
    wr(apic, APIC_LDR, 0x04 << 24)
    wr(apic, APIC_ICR_HIGH, 0x0C << 24)
    wr(apic, APIC_ICR_LOW, (1 << 11) | 0x80)  # logical flat, bit 2 set
    assert vector_bit(apic, APIC_IRR, 0x80)
    wr(apic, APIC_ICR_LOW, SELF | (5 << 8))  # INIT to self: ignored
    wr(apic, APIC_ICR_LOW, SELF | (6 << 8) | 0x10)  # SIPI to self: ignored
    assert rd(apic, APIC_ICR_LOW) & (1 << 12) == 0  # delivery status idle
    taken = []
    for _ in range(3):
        taken.append(apic.acknowledge())
        wr(apic, APIC_EOI, 0)
    assert taken == [0x80, 0x70, 0x51]


def test_logical_cluster_destination() -> None:
    apic, _ = enabled_apic()
    wr(apic, APIC_DFR, 0x0FFFFFFF)  # cluster model
    wr(apic, APIC_LDR, 0x32 << 24)  # cluster 3, member bit 1
    assert apic.match_destination(0x32, logical=True)
    assert apic.match_destination(0xF2, logical=True)  # all clusters
    assert not apic.match_destination(0x22, logical=True)
    assert not apic.match_destination(0x31, logical=True)


def test_tpr_blocks_lower_class() -> None:
    apic, _ = enabled_apic()
    wr(apic, APIC_TPR, 0x50)
    self_ipi(apic, 0x45)
    assert not apic.has_interrupt()
    self_ipi(apic, 0x55)  # same class as TPR: still blocked
    assert not apic.has_interrupt()
    self_ipi(apic, 0x61)
    assert apic.has_interrupt()
    assert apic.acknowledge() == 0x61
    wr(apic, APIC_EOI, 0)
    wr(apic, APIC_TPR, 0x00)
    assert apic.acknowledge() == 0x55


def test_acknowledge_with_nothing_deliverable_returns_spurious_vector() -> None:
    apic, _ = enabled_apic()
    wr(apic, APIC_SVR, 0x1EF)
    assert apic.acknowledge() == 0xEF


def test_priority_order_and_nesting() -> None:
    apic, _ = enabled_apic()
    self_ipi(apic, 0x41)
    self_ipi(apic, 0x92)
    assert apic.acknowledge() == 0x92
    # 0x41 is a lower class than the in-service 0x92: held until EOI.
    assert not apic.has_interrupt()
    self_ipi(apic, 0xA0)  # a higher class nests
    assert apic.acknowledge() == 0xA0
    wr(apic, APIC_EOI, 0)  # retires 0xA0, the highest ISR bit
    assert vector_bit(apic, APIC_ISR, 0x92)
    assert not vector_bit(apic, APIC_ISR, 0xA0)
    assert not apic.has_interrupt()
    wr(apic, APIC_EOI, 0)
    assert apic.acknowledge() == 0x41


def test_eoi_tpr_and_enable_that_release_a_held_vector_request_the_cpu() -> None:
    """The CPU is asked to look again when an EOI, a TPR drop or the software
    enable releases a vector already in IRR, and not for writes that release none."""
    apic, _ = enabled_apic()
    requests: list[int] = []
    apic.on_request = lambda: requests.append(rd(apic, APIC_PPR))
    self_ipi(apic, 0x41)
    assert apic.acknowledge() == 0x41
    self_ipi(apic, 0x40)  # same class as the in-service 0x41: held
    assert not apic.has_interrupt()
    requests.clear()
    wr(apic, APIC_TPR, 0x10)  # PPR stays 0x40: nothing released
    assert requests == []
    wr(apic, APIC_TPR, 0x40)
    wr(apic, APIC_EOI, 0)  # 0x41 retired, but TPR still holds class 4
    assert requests == []
    wr(apic, APIC_TPR, 0x30)
    assert requests == [0x30]
    assert apic.acknowledge() == 0x40
    wr(apic, APIC_EOI, 0)
    wr(apic, APIC_SVR, 0xFF)  # software-disabled: IRR is held
    self_ipi(apic, 0x50)
    requests.clear()
    wr(apic, APIC_SVR, 0x1FF)
    assert requests == [0x30]
    wr(apic, APIC_TPR, 0x60)
    self_ipi(apic, 0x70)
    assert apic.acknowledge() == 0x70
    requests.clear()
    wr(apic, APIC_EOI, 0)  # PPR back to TPR 0x60: 0x50 still held
    assert requests == []
    wr(apic, APIC_TPR, 0)
    assert requests == [0]


def test_disabled_apic_holds_irr() -> None:
    apic = LocalApic(Clock())
    apic.accept(0x40)
    assert not apic.has_interrupt()
    wr(apic, APIC_SVR, 0x1FF)
    assert apic.acknowledge() == 0x40


def test_one_shot_timer_divide_16() -> None:
    apic, clock = enabled_apic()
    wr(apic, APIC_TIMER_DIVIDE, 0x3)  # divide by 16: one tick = 16 ns at 1 GHz
    wr(apic, APIC_LVT_TIMER, 0x30)
    wr(apic, APIC_TIMER_INITIAL, 1000)
    assert rd(apic, APIC_TIMER_CURRENT) == 1000
    clock.advance(1600)
    assert rd(apic, APIC_TIMER_CURRENT) == 900
    clock.advance(6400)
    assert rd(apic, APIC_TIMER_CURRENT) == 500
    clock.advance(15999 - 8000)
    assert rd(apic, APIC_TIMER_CURRENT) == 1
    assert not apic.has_interrupt()
    clock.advance(1)
    assert apic.acknowledge() == 0x30
    wr(apic, APIC_EOI, 0)
    assert rd(apic, APIC_TIMER_CURRENT) == 0
    clock.advance(1_000_000)
    assert not apic.has_interrupt()


def test_timer_hz_scales_the_tick() -> None:
    clock = Clock()
    apic = LocalApic(clock, timer_hz=100_000_000)  # 10 ns per tick
    wr(apic, APIC_SVR, 0x1FF)
    wr(apic, APIC_TIMER_DIVIDE, 0xB)  # divide by 1
    wr(apic, APIC_LVT_TIMER, 0x30)
    wr(apic, APIC_TIMER_INITIAL, 10)
    clock.advance(99)
    assert not apic.has_interrupt()
    clock.advance(1)
    assert apic.has_interrupt()


def test_periodic_timer_no_drift() -> None:
    # 3 GHz input, divide by 1, count 1000: the period is 333 1/3 ns.
    apic, clock = enabled_apic(timer_hz=3_000_000_000)
    wr(apic, APIC_TIMER_DIVIDE, 0xB)
    wr(apic, APIC_LVT_TIMER, PERIODIC | 0x31)
    wr(apic, APIC_TIMER_INITIAL, 1000)
    now = 0
    for k in range(1, 301):
        due = -(-k * 1000 // 3)  # ceil(k * 333.33...)
        clock.advance(due - 1 - now)
        assert not apic.has_interrupt(), k
        clock.advance(1)
        now = due
        assert apic.acknowledge() == 0x31
        wr(apic, APIC_EOI, 0)
    assert now == 100_000
    assert rd(apic, APIC_TIMER_CURRENT) == 1000  # just reloaded


class SpyApic(LocalApic):
    """Records the guest time of every accepted interrupt."""

    def __init__(self, clock: Clock) -> None:
        self.accepted_at: list[int] = []
        super().__init__(clock)

    def accept(self, vector: int, level_trigger: bool = False) -> None:
        self.accepted_at.append(self._clock.now())
        super().accept(vector, level_trigger)


def test_periodic_timer_fires_once_per_period() -> None:
    clock = Clock()
    apic = SpyApic(clock)
    wr(apic, APIC_SVR, 0x1FF)
    wr(apic, APIC_TIMER_DIVIDE, 0x0)  # divide by 2: 2 ns per tick
    wr(apic, APIC_LVT_TIMER, PERIODIC | 0x31)
    wr(apic, APIC_TIMER_INITIAL, 50)  # 100 ns period
    clock.advance(1050)
    assert apic.accepted_at == [100 * k for k in range(1, 11)]
    assert rd(apic, APIC_TIMER_CURRENT) == 25


def test_masked_timer_counts_without_interrupt() -> None:
    apic, clock = enabled_apic()
    wr(apic, APIC_TIMER_DIVIDE, 0xB)
    wr(apic, APIC_LVT_TIMER, LVT_MASKED | PERIODIC | 0x30)
    wr(apic, APIC_TIMER_INITIAL, 100)
    clock.advance(40)
    assert rd(apic, APIC_TIMER_CURRENT) == 60
    clock.advance(500)
    assert rd(apic, APIC_TIMER_CURRENT) == 60
    assert not apic.has_interrupt()


def test_initial_count_zero_stops_timer() -> None:
    apic, clock = enabled_apic()
    wr(apic, APIC_LVT_TIMER, 0x30)
    wr(apic, APIC_TIMER_INITIAL, 100)
    clock.advance(50)
    wr(apic, APIC_TIMER_INITIAL, 0)
    clock.advance(1000)
    assert not apic.has_interrupt()
    assert rd(apic, APIC_TIMER_CURRENT) == 0


def test_esr_write_then_read() -> None:
    apic, _ = enabled_apic()
    wr(apic, APIC_LVT_ERROR, 0xFE)
    self_ipi(apic, 0x05)  # illegal vector
    assert rd(apic, APIC_ESR) == 0  # not latched yet
    assert apic.acknowledge() == 0xFE  # LVT error interrupt
    wr(apic, APIC_ESR, 0)
    assert rd(apic, APIC_ESR) == ESR_SEND_ILLEGAL_VECTOR
    rd(apic, 0x040)  # reserved register
    wr(apic, APIC_ESR, 0)
    assert rd(apic, APIC_ESR) == ESR_ILLEGAL_REGISTER
    wr(apic, APIC_ESR, 0)
    assert rd(apic, APIC_ESR) == 0


def test_extint_through_lint0() -> None:
    pic = FakePic()
    apic, _ = enabled_apic(extint=pic)
    pic.vectors.append(0x08)
    assert not apic.has_interrupt()  # LINT0 masked after enabling
    wr(apic, APIC_LVT_LINT0, EXTINT)
    assert apic.has_interrupt()
    assert apic.acknowledge() == 0x08
    assert pic.acks == 1
    assert not apic.has_interrupt()
    # APIC interrupts go first, and ExtINT ignores TPR.
    wr(apic, APIC_TPR, 0xF0)
    pic.vectors.append(0x09)
    assert apic.acknowledge() == 0x09


def test_virtual_wire_while_disabled() -> None:
    pic = FakePic()
    apic = LocalApic(Clock(), extint=pic)
    pic.vectors.append(0x20)
    assert apic.has_interrupt()
    assert apic.acknowledge() == 0x20
    blocked = FakePic()
    closed = LocalApic(Clock(), extint=blocked, virtual_wire=False)
    blocked.vectors.append(0x20)
    assert not closed.has_interrupt()
    wr(closed, APIC_SVR, 0x1FF)
    wr(closed, APIC_LVT_LINT0, EXTINT)
    assert closed.acknowledge() == 0x20


def test_lint1_nmi() -> None:
    apic, _ = enabled_apic()
    wr(apic, APIC_LVT_LINT1, NMI)
    apic.set_lint(1, True)
    assert apic.nmi_pending
    assert apic.take_nmi()
    assert not apic.take_nmi()
    apic.set_lint(1, True)  # no new edge
    assert not apic.nmi_pending
    wr(apic, APIC_LVT_LINT1, NMI | LVT_MASKED)
    apic.set_lint(1, False)
    apic.set_lint(1, True)
    assert not apic.nmi_pending


def test_lint0_fixed_level_remote_irr_and_on_eoi() -> None:
    apic, _ = enabled_apic()
    eois: list[int] = []
    apic.on_eoi = eois.append
    wr(apic, APIC_LVT_LINT0, LEVEL | 0x3A)
    apic.set_lint(0, True)
    assert rd(apic, APIC_LVT_LINT0) & LVT_REMOTE_IRR
    assert vector_bit(apic, APIC_TMR, 0x3A)
    assert apic.acknowledge() == 0x3A
    wr(apic, APIC_EOI, 0)
    assert eois == [0x3A]
    # Still asserted: delivered again, remote IRR set again.
    assert apic.has_interrupt()
    assert rd(apic, APIC_LVT_LINT0) & LVT_REMOTE_IRR
    apic.set_lint(0, False)
    assert apic.acknowledge() == 0x3A
    wr(apic, APIC_EOI, 0)
    assert not rd(apic, APIC_LVT_LINT0) & LVT_REMOTE_IRR
    assert not apic.has_interrupt()


def test_edge_eoi_does_not_broadcast() -> None:
    apic, _ = enabled_apic()
    eois: list[int] = []
    apic.on_eoi = eois.append
    apic.accept(0x40, level_trigger=True)
    apic.accept(0x50)
    assert apic.acknowledge() == 0x50
    wr(apic, APIC_EOI, 0)
    assert apic.acknowledge() == 0x40
    wr(apic, APIC_EOI, 0)
    assert eois == [0x40]


def test_save_and_load_state_keeps_timer() -> None:
    apic, clock = enabled_apic()
    wr(apic, APIC_LVT_TIMER, 0x30)
    wr(apic, APIC_TIMER_INITIAL, 100)
    self_ipi(apic, 0x44)
    clock.advance(30)
    state = apic.save_state()
    other = LocalApic(clock)
    other.load_state(state)
    assert rd(other, APIC_TIMER_CURRENT) == 85  # divide by 2 (reset value)
    assert vector_bit(other, APIC_IRR, 0x44)
    apic.reset()  # the original's timer no longer runs
    clock.advance(169)
    assert other.acknowledge() == 0x44
    wr(other, APIC_EOI, 0)
    assert not other.has_interrupt()
    clock.advance(1)
    assert other.acknowledge() == 0x30
    assert not apic.has_interrupt()


def test_reset_restores_power_on_state() -> None:
    apic, clock = enabled_apic()
    wr(apic, APIC_TPR, 0x20)
    wr(apic, APIC_LVT_TIMER, 0x30)
    wr(apic, APIC_TIMER_INITIAL, 10)
    apic.reset()
    clock.advance(1000)
    assert rd(apic, APIC_SVR) == 0xFF
    assert rd(apic, APIC_TPR) == 0
    assert rd(apic, APIC_LVT_TIMER) == LVT_MASKED
    assert not apic.has_interrupt()


@pytest.mark.parametrize(
    ("config", "divisor"),
    [(0x0, 2), (0x1, 4), (0x2, 8), (0x3, 16), (0x8, 32), (0x9, 64), (0xA, 128), (0xB, 1)],
)
def test_divide_configuration(config: int, divisor: int) -> None:
    apic, clock = enabled_apic()
    wr(apic, APIC_TIMER_DIVIDE, config)
    wr(apic, APIC_TIMER_INITIAL, 1000)
    clock.advance(10 * divisor)
    assert rd(apic, APIC_TIMER_CURRENT) == 990


def test_tsc_deadline_mode_needs_the_platform_and_fires_once_at_its_deadline() -> None:
    """LVT timer mode 10b is reserved until the platform enables it; then the deadline
    (handed over with its guest time) fires once, clears, and the initial count and the
    mode switch behave as SDM 10.5.4.1 says."""
    clock = Clock()
    apic = LocalApic(clock)
    apic.io_write(0xF0, 4, 0x1FF)
    apic.io_write(0x320, 4, 0x40040)
    assert apic.io_read(0x320, 4) == 0x40  # bit 18 reserved: stays one-shot
    apic.enable_tsc_deadline()
    apic.io_write(0x320, 4, 0x40040)
    assert apic.io_read(0x320, 4) == 0x40040
    apic.io_write(0x380, 4, 1000)  # ignored in this mode
    assert apic.io_read(0x380, 4) == 0 and apic.io_read(0x390, 4) == 0
    apic.write_tsc_deadline(12345, due_ns=500)
    assert apic.tsc_deadline == 12345
    clock.advance(499)
    assert not apic.has_interrupt()
    clock.advance(1)
    assert apic.has_interrupt() and apic.acknowledge() == 0x40
    assert apic.tsc_deadline == 0
    apic.io_write(0xB0, 4, 0)
    apic.write_tsc_deadline(1, due_ns=1000)
    apic.io_write(0x320, 4, 0x40)  # leaving the mode disarms it
    clock.advance(10_000)
    assert not apic.has_interrupt() and apic.tsc_deadline == 0
    apic.write_tsc_deadline(1, due_ns=clock.now())  # one-shot mode: ignored
    clock.advance(10)
    assert not apic.has_interrupt()

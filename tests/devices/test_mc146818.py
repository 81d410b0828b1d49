"""MC146818 RTC: time registers, modes, UIP, interrupts and NVRAM fields."""

from __future__ import annotations

import time

import pytest

from qemu_lite.devices.base import Clock, IrqLine, RecordingIrqSink
from qemu_lite.devices.mc146818 import (
    REG_B_24H,
    REG_B_AIE,
    REG_B_DM,
    REG_B_PIE,
    REG_B_SET,
    REG_B_UIE,
    REG_C_AF,
    REG_C_IRQF,
    REG_C_PF,
    REG_C_UF,
    RTC_DAY_OF_MONTH,
    RTC_DAY_OF_WEEK,
    RTC_HOURS,
    RTC_HOURS_ALARM,
    RTC_MINUTES,
    RTC_MINUTES_ALARM,
    RTC_MONTH,
    RTC_REG_A,
    RTC_REG_B,
    RTC_REG_C,
    RTC_REG_D,
    RTC_SECONDS,
    RTC_SECONDS_ALARM,
    RTC_YEAR,
    Rtc,
)

Y2K = 946684800  # 2000-01-01 00:00:00 UTC, a Saturday
SEC = 1_000_000_000


class Board:
    def __init__(self, base_time: float = Y2K) -> None:
        self.clock = Clock()
        self.sink = RecordingIrqSink()
        self.irq = IrqLine(self.sink, 8)
        self.rtc = Rtc(self.clock, self.irq, base_time=base_time)

    def read(self, index: int) -> int:
        self.rtc.io_write(0, 1, index)
        return self.rtc.io_read(1, 1)

    def write(self, index: int, value: int) -> None:
        self.rtc.io_write(0, 1, index)
        self.rtc.io_write(1, 1, value)

    def time_regs(self) -> tuple[int, ...]:
        return tuple(self.read(i) for i in (RTC_SECONDS, RTC_MINUTES, RTC_HOURS, RTC_DAY_OF_WEEK,
                                            RTC_DAY_OF_MONTH, RTC_MONTH, RTC_YEAR, 0x32))

    def run_until(self, target_ns: int, on_irq: bool = True) -> int:
        """Advance timer by timer; count raised lines, acknowledging each by reading C."""
        count = 0
        while True:
            deadline = self.clock.next_deadline()
            if deadline is None or deadline > target_ns:
                break
            self.clock.advance(deadline - self.clock.now())
            if self.irq.level:
                count += 1
                if on_irq:
                    self.read(RTC_REG_C)
        self.clock.advance(target_ns - self.clock.now())
        return count


def test_power_on_registers() -> None:
    b = Board()
    assert b.read(RTC_REG_A) == 0x26
    assert b.read(RTC_REG_B) == REG_B_24H
    assert b.read(RTC_REG_C) == 0
    assert b.read(RTC_REG_D) == 0x80


def test_fixed_base_time_reads_known_date_in_bcd() -> None:
    b = Board(Y2K)
    # seconds, minutes, hours, weekday (7 = Saturday), day, month, year, century
    assert b.time_regs() == (0x00, 0x00, 0x00, 0x07, 0x01, 0x01, 0x00, 0x20)
    b = Board(Y2K + 12 * 3600 + 34 * 60 + 56 + 59 * 86400)  # 2000-02-29 (leap day)
    assert b.time_regs() == (0x56, 0x34, 0x12, 0x03, 0x29, 0x02, 0x00, 0x20)


def test_binary_mode() -> None:
    b = Board(1700000000)  # 2023-11-14 22:13:20 UTC, a Tuesday
    b.write(RTC_REG_B, REG_B_24H | REG_B_DM)
    assert b.time_regs() == (20, 13, 22, 3, 14, 11, 23, 20)


@pytest.mark.parametrize(
    ("hour", "bcd", "binary"),
    [(0, 0x12, 12), (1, 0x01, 1), (11, 0x11, 11), (12, 0x92, 0x80 | 12), (13, 0x81, 0x81),
     (23, 0x91, 0x80 | 11)],
)
def test_12_hour_mode_sets_pm_bit(hour: int, bcd: int, binary: int) -> None:
    b = Board(Y2K + hour * 3600)
    b.write(RTC_REG_B, 0)  # 12-hour BCD
    assert b.read(RTC_HOURS) == bcd
    b.write(RTC_REG_B, REG_B_DM)  # 12-hour binary
    assert b.read(RTC_HOURS) == binary


def test_time_moves_with_guest_clock() -> None:
    b = Board(Y2K + 58)
    assert b.read(RTC_SECONDS) == 0x58
    b.clock.advance(SEC)
    assert b.read(RTC_SECONDS) == 0x59
    b.clock.advance(SEC)
    assert (b.read(RTC_SECONDS), b.read(RTC_MINUTES)) == (0x00, 0x01)
    b.clock.advance(SEC - 1)
    assert b.read(RTC_SECONDS) == 0x00
    b.clock.advance(1)
    assert b.read(RTC_SECONDS) == 0x01


def test_default_base_time_is_host_time() -> None:
    before = int(time.time())
    rtc = Rtc(Clock())
    after = int(time.time())
    assert before <= rtc.rtc_time() <= after


def test_uip_window_before_each_second() -> None:
    b = Board()
    b.clock.advance(SEC - 244_000 - 1)
    assert not b.read(RTC_REG_A) & 0x80
    b.clock.advance(1)
    assert b.read(RTC_REG_A) & 0x80
    b.clock.advance(244_000 - 1)
    assert b.read(RTC_REG_A) & 0x80
    b.clock.advance(1)
    assert not b.read(RTC_REG_A) & 0x80
    b.clock.advance(SEC - 100_000)
    assert b.read(RTC_REG_A) == 0x26 | 0x80
    b.write(RTC_REG_B, REG_B_24H | REG_B_SET)  # a frozen clock never updates
    assert b.read(RTC_REG_A) == 0x26


def test_set_bit_freezes_and_guest_sets_the_time() -> None:
    b = Board(Y2K + 10)
    b.write(RTC_REG_B, REG_B_24H | REG_B_SET)
    b.clock.advance(5 * SEC)
    assert b.read(RTC_SECONDS) == 0x10  # frozen
    b.write(RTC_SECONDS, 0x50)
    b.write(RTC_MINUTES, 0x59)
    b.write(RTC_HOURS, 0x23)
    b.write(RTC_DAY_OF_MONTH, 0x31)
    b.write(RTC_MONTH, 0x12)
    b.write(RTC_YEAR, 0x99)
    b.write(0x32, 0x19)
    b.clock.advance(5 * SEC)
    assert b.read(RTC_SECONDS) == 0x50
    b.write(RTC_REG_B, REG_B_24H)
    assert b.rtc.rtc_time() == Y2K - 10
    b.clock.advance(12 * SEC)
    # 1999-12-31 23:59:50 + 12 s = 2000-01-01 00:00:02
    assert b.time_regs() == (0x02, 0x00, 0x00, 0x07, 0x01, 0x01, 0x00, 0x20)


def test_writing_a_time_register_while_running_moves_the_clock() -> None:
    b = Board(Y2K)
    b.clock.advance(SEC // 2)
    b.write(RTC_HOURS, 0x05)
    assert b.rtc.rtc_time() == Y2K + 5 * 3600
    b.clock.advance(SEC // 2)  # the phase inside the second is kept
    assert (b.read(RTC_SECONDS), b.read(RTC_HOURS)) == (0x01, 0x05)


def test_set_clears_uie() -> None:
    b = Board()
    b.write(RTC_REG_B, REG_B_24H | REG_B_UIE | REG_B_SET)
    assert b.read(RTC_REG_B) == REG_B_24H | REG_B_SET


def test_periodic_interrupt_1024_hz() -> None:
    b = Board()
    b.write(RTC_REG_B, REG_B_24H | REG_B_PIE)  # register A rate 6 = 1024 Hz
    assert b.run_until(SEC) == 1024
    assert b.run_until(2 * SEC) == 1024


@pytest.mark.parametrize(("rate", "hz"), [(15, 2), (10, 64), (3, 8192), (1, 256), (2, 128)])
def test_periodic_rate_select(rate: int, hz: int) -> None:
    b = Board()
    b.write(RTC_REG_A, 0x20 | rate)
    b.write(RTC_REG_B, REG_B_24H | REG_B_PIE)
    assert b.run_until(SEC) == hz


def test_periodic_without_acknowledge_raises_once() -> None:
    b = Board()
    b.write(RTC_REG_B, REG_B_24H | REG_B_PIE)
    assert b.run_until(SEC, on_irq=False) == 1
    assert b.sink.history == [(8, True)]
    assert b.clock.next_deadline() is None  # nothing new can happen until C is read
    assert b.read(RTC_REG_C) == REG_C_IRQF | REG_C_PF | REG_C_UF
    assert b.sink.history == [(8, True), (8, False)]


def test_register_c_read_clears_and_lowers_line() -> None:
    b = Board()
    b.write(RTC_REG_B, REG_B_24H | REG_B_UIE)
    b.clock.advance(SEC)
    assert b.irq.level
    assert b.read(RTC_REG_C) == REG_C_IRQF | REG_C_UF | REG_C_PF
    assert not b.irq.level
    assert b.read(RTC_REG_C) == 0


def test_flags_set_without_enables_but_line_stays_low() -> None:
    b = Board(Y2K - 2)
    b.clock.advance(SEC)
    assert b.clock.next_deadline() is None
    assert b.read(RTC_REG_C) == REG_C_UF | REG_C_PF
    b.clock.advance(3 * SEC)  # passes midnight: the power-on alarm 00:00:00 matches
    assert b.read(RTC_REG_C) == REG_C_UF | REG_C_AF | REG_C_PF
    assert b.sink.history == []


def test_update_ended_interrupt_once_a_second() -> None:
    b = Board()
    b.write(RTC_REG_B, REG_B_24H | REG_B_UIE)
    b.clock.advance(SEC - 1)
    assert not b.irq.level
    b.clock.advance(1)
    assert b.irq.level
    b.read(RTC_REG_C)
    assert b.run_until(10 * SEC) == 9


def test_alarm_fires_at_set_time() -> None:
    b = Board(Y2K)
    b.write(RTC_SECONDS_ALARM, 0x05)
    b.write(RTC_MINUTES_ALARM, 0x00)
    b.write(RTC_HOURS_ALARM, 0x00)
    b.write(RTC_REG_B, REG_B_24H | REG_B_AIE)
    b.clock.advance(5 * SEC - 1)
    assert not b.irq.level
    b.clock.advance(1)
    assert b.irq.level
    assert b.read(RTC_REG_C) & (REG_C_IRQF | REG_C_AF) == REG_C_IRQF | REG_C_AF
    assert b.run_until(86400 * SEC) == 0  # next match is tomorrow
    assert b.run_until(86405 * SEC) == 1


def test_alarm_in_12_hour_mode() -> None:
    b = Board(Y2K + 13 * 3600)
    b.write(RTC_REG_B, REG_B_AIE)  # 12-hour BCD
    b.write(RTC_SECONDS_ALARM, 0x00)
    b.write(RTC_MINUTES_ALARM, 0x30)
    b.write(RTC_HOURS_ALARM, 0x81)  # 1 PM
    assert b.run_until(1800 * SEC - 1) == 0
    assert b.run_until(1800 * SEC) == 1


def test_alarm_dont_care_values() -> None:
    b = Board()
    b.write(RTC_SECONDS_ALARM, 0x00)
    b.write(RTC_MINUTES_ALARM, 0xC0)
    b.write(RTC_HOURS_ALARM, 0xFF)
    b.write(RTC_REG_B, REG_B_24H | REG_B_AIE)
    assert b.run_until(3600 * SEC) == 60  # every minute
    b.write(RTC_SECONDS_ALARM, 0xC5)
    assert b.run_until(3610 * SEC) == 10  # every second


def test_invalid_alarm_never_fires() -> None:
    b = Board()
    b.write(RTC_SECONDS_ALARM, 0x61)
    b.write(RTC_REG_B, REG_B_24H | REG_B_AIE)
    assert b.clock.next_deadline() is None
    b.clock.advance(100 * SEC)
    assert b.read(RTC_REG_C) & REG_C_AF == 0


def test_divider_reset_stops_clock_and_restarts_half_a_second_later() -> None:
    b = Board(Y2K)
    b.write(RTC_REG_A, 0x70 | 6)
    b.clock.advance(10 * SEC)
    assert b.rtc.rtc_time() == Y2K
    b.write(RTC_REG_A, 0x26)
    b.clock.advance(SEC // 2 - 1)
    assert b.read(RTC_SECONDS) == 0x00
    b.clock.advance(1)
    assert b.read(RTC_SECONDS) == 0x01


def test_reset_clears_enables_and_flags_but_keeps_time() -> None:
    b = Board()
    b.write(RTC_REG_B, REG_B_24H | REG_B_UIE | REG_B_PIE)
    b.clock.advance(SEC)
    assert b.irq.level
    b.rtc.reset()
    assert not b.irq.level
    assert b.read(RTC_REG_B) == REG_B_24H
    assert b.read(RTC_SECONDS) == 0x01
    assert b.clock.next_deadline() is None


def test_nmi_mask_bit_does_not_affect_index() -> None:
    b = Board()
    b.rtc.set_cmos(0x40, 0xA5)
    b.rtc.io_write(0, 1, 0x80 | 0x40)
    assert b.rtc.nmi_masked
    assert b.rtc.index == 0x40
    assert b.rtc.io_read(1, 1) == 0xA5
    b.rtc.io_write(0, 1, 0x40)
    assert not b.rtc.nmi_masked
    assert b.rtc.io_read(1, 1) == 0xA5


def test_registers_c_and_d_are_read_only() -> None:
    b = Board()
    b.write(RTC_REG_C, 0xFF)
    b.write(RTC_REG_D, 0x00)
    assert b.read(RTC_REG_C) == 0
    assert b.read(RTC_REG_D) == 0x80


def _checksum_ok(rtc: Rtc) -> bool:
    total = sum(rtc.get_cmos(i) for i in range(0x10, 0x2E))
    return (rtc.get_cmos(0x2E) << 8 | rtc.get_cmos(0x2F)) == total & 0xFFFF


def test_boot_order_bytes_are_qemus() -> None:
    # QEMU's pc: 3Dh = second << 4 | first, 38h = third << 4; a floppy 1, disk 2, CD 3, net 4
    rtc = Rtc(Clock(), base_time=Y2K)
    rtc.set_boot_order("ncd")
    assert (rtc.get_cmos(0x3D), rtc.get_cmos(0x38)) == (0x24, 0x30)
    rtc.set_boot_order("d")
    assert (rtc.get_cmos(0x3D), rtc.get_cmos(0x38)) == (0x03, 0x00)
    rtc.reset()
    assert rtc.get_cmos(0x3D) == 0x03  # NVRAM: kept across a reset


def test_memory_size_64_mib() -> None:
    rtc = Rtc(Clock(), base_time=Y2K)
    rtc.set_memory_size(64 << 20)
    cm = rtc.get_cmos
    assert cm(0x15) | cm(0x16) << 8 == 640
    assert cm(0x17) | cm(0x18) << 8 == 63 * 1024
    assert cm(0x30) | cm(0x31) << 8 == 63 * 1024
    assert cm(0x34) | cm(0x35) << 8 == (48 << 20) >> 16
    assert cm(0x5B) | cm(0x5C) << 8 | cm(0x5D) << 16 == 0
    assert _checksum_ok(rtc)


def test_memory_size_6_gib() -> None:
    rtc = Rtc(Clock(), base_time=Y2K)
    rtc.set_memory_size(6 << 30)
    cm = rtc.get_cmos
    assert cm(0x17) | cm(0x18) << 8 == 0xFFFF
    assert cm(0x30) | cm(0x31) << 8 == 0xFFFF
    assert cm(0x34) | cm(0x35) << 8 == ((3 << 30) - (16 << 20)) >> 16  # 3 GiB below 4 GiB
    assert cm(0x5B) | cm(0x5C) << 8 | cm(0x5D) << 16 == (3 << 30) >> 16
    assert _checksum_ok(rtc)
    rtc.set_cmos(0x10, 0x44)  # a later NVRAM change keeps the checksum valid
    assert _checksum_ok(rtc)


def test_save_and_load_state() -> None:
    b = Board()
    b.write(RTC_REG_B, REG_B_24H | REG_B_UIE)
    b.rtc.set_cmos(0x50, 0x12)
    state = b.rtc.save_state()
    other = Board(0)
    other.rtc.load_state(state)
    assert other.read(0x50) == 0x12
    assert other.time_regs() == b.time_regs()
    assert other.run_until(3 * SEC) == 3

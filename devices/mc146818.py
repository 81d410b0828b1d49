"""Motorola MC146818A real-time clock and CMOS RAM (PC ports 0x70-0x71, IRQ 8).

Offset 0 is the index register (bits 6-0 select one of 128 bytes, bit 7 is the
PC's NMI mask and is kept in :attr:`Rtc.nmi_masked`); offset 1 reads or writes
the selected byte.  Bytes 0x00-0x0D are the clock, 0x0E-0x7F battery-backed RAM
that the BIOS and kernels read (memory sizes, century at 0x32).

The clock does not tick: guest time is ``base_time + clock.now()`` and the time
registers are computed when they are read.  Flags in register C are likewise
brought up to date lazily; timers are armed only for the next event whose
interrupt is enabled and whose flag is still clear.
"""

from __future__ import annotations

import time as _time
from typing import Any

from .base import Clock, Device, IrqLine

# Time and alarm registers
RTC_SECONDS = 0x00
RTC_SECONDS_ALARM = 0x01
RTC_MINUTES = 0x02
RTC_MINUTES_ALARM = 0x03
RTC_HOURS = 0x04
RTC_HOURS_ALARM = 0x05
RTC_DAY_OF_WEEK = 0x06
RTC_DAY_OF_MONTH = 0x07
RTC_MONTH = 0x08
RTC_YEAR = 0x09
RTC_REG_A = 0x0A
RTC_REG_B = 0x0B
RTC_REG_C = 0x0C
RTC_REG_D = 0x0D
CMOS_CENTURY = 0x32  # IBM AT convention, as QEMU

# Register A
REG_A_UIP = 0x80  # update in progress (read only)
REG_A_DV = 0x70  # divider select; 010 = 32.768 kHz time base
REG_A_RS = 0x0F  # rate select for the periodic interrupt
# Register B
REG_B_SET = 0x80  # freeze the update cycle so that the time can be set
REG_B_PIE = 0x40  # periodic interrupt enable
REG_B_AIE = 0x20  # alarm interrupt enable
REG_B_UIE = 0x10  # update-ended interrupt enable
REG_B_SQWE = 0x08  # square-wave output enable (no pin modelled)
REG_B_DM = 0x04  # data mode: 1 = binary, 0 = BCD
REG_B_24H = 0x02  # 1 = 24-hour mode, 0 = 12-hour mode (hour bit 7 = PM)
REG_B_DSE = 0x01  # daylight saving enable (stored, no effect)
# Register C (read only, cleared by reading)
REG_C_IRQF = 0x80
REG_C_PF = 0x40
REG_C_AF = 0x20
REG_C_UF = 0x10
# Register D
REG_D_VRT = 0x80  # valid RAM and time: the battery is good

HOUR_PM = 0x80
ALARM_DONT_CARE = 0xC0  # an alarm byte with both top bits set matches any value

NS_PER_SEC = 1_000_000_000
TIME_BASE_HZ = 32768
UIP_WINDOW_NS = 244_000  # UIP is set this long before each update

CMOS_CHECKSUM_START = 0x10
CMOS_CHECKSUM_END = 0x2D  # inclusive; the sum is stored big-endian at 0x2E/0x2F
CMOS_CHECKSUM_HI = 0x2E
CMOS_CHECKSUM_LO = 0x2F

_TIME_REGS = frozenset(
    (RTC_SECONDS, RTC_MINUTES, RTC_HOURS, RTC_DAY_OF_WEEK, RTC_DAY_OF_MONTH, RTC_MONTH,
     RTC_YEAR, CMOS_CENTURY)
)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day number counted from 1970-01-01."""
    days += 719468
    era = days // 146097
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


class Rtc(Device):
    """MC146818 RTC with 128 bytes of CMOS RAM.

    ``base_time`` is the guest wall-clock time, in Unix seconds, at
    ``clock.now() == 0`` (None: the host time at construction).
    """

    name = "mc146818"

    def __init__(self, clock: Clock, irq: IrqLine | None = None,
                 base_time: float | None = None) -> None:
        self._clock = clock
        self.irq = irq if irq is not None else IrqLine()
        if base_time is None:
            base_time = _time.time()
        whole = int(base_time // 1)
        # guest_ns = _offset_ns + clock.now() while the clock runs
        self._offset_ns = whole * NS_PER_SEC + round((base_time - whole) * NS_PER_SEC)
        self.cmos = bytearray(128)
        self.index = 0
        self.nmi_masked = False
        self._flags_ns = clock.now()  # register C is up to date until this clock time
        self._periodic_timer = clock.timer(self._on_timer)
        self._update_timer = clock.timer(self._on_timer)
        # Power-on register values (QEMU's): 32.768 kHz divider, 1024 Hz rate,
        # 24-hour BCD mode, no flags, valid RAM and time.
        self.cmos[RTC_REG_A] = 0x26
        self.cmos[RTC_REG_B] = REG_B_24H
        self.cmos[RTC_REG_C] = 0
        self.cmos[RTC_REG_D] = REG_D_VRT
        self.reset()

    # -- reset and state ----------------------------------------------------

    def reset(self) -> None:
        """The RESET pin: clears PIE, AIE, UIE, SQWE and the flags in register C; the
        chipset's index latch at port 0x70 returns to 0 with NMIs unmasked.

        Time, alarm and RAM are battery backed and survive.
        """
        self.index = 0
        self.nmi_masked = False
        self._sync_flags()
        self.cmos[RTC_REG_B] &= ~(REG_B_PIE | REG_B_AIE | REG_B_UIE | REG_B_SQWE) & 0xFF
        self.cmos[RTC_REG_C] = 0
        self._changed()

    def save_state(self) -> dict[str, Any]:
        return {
            "version": 1,
            "cmos": list(self.cmos),
            "index": self.index,
            "nmi_masked": self.nmi_masked,
            "offset_ns": self._offset_ns,
            "flags_ns": self._flags_ns,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1 or len(state["cmos"]) != 128:
            raise ValueError("unsupported mc146818 state")
        self.cmos = bytearray(state["cmos"])
        self.index = int(state["index"]) & 0x7F
        self.nmi_masked = bool(state["nmi_masked"])
        self._offset_ns = int(state["offset_ns"])
        self._flags_ns = int(state["flags_ns"])
        self._changed()

    # -- NVRAM access for the machine ------------------------------------------

    def get_cmos(self, index: int) -> int:
        """The byte the guest would read at ``index``, without side effects."""
        index &= 0x7F
        if index in _TIME_REGS and self._running():
            self._store_time(self._guest_ns() // NS_PER_SEC)
        if index == RTC_REG_C:
            self._sync_flags()  # flags only; the line follows when C is cleared
            c = self.cmos[RTC_REG_C]
            if c & self.cmos[RTC_REG_B] & (REG_C_PF | REG_C_AF | REG_C_UF):
                c |= REG_C_IRQF
            return c
        if index == RTC_REG_A:
            return (self.cmos[RTC_REG_A] & ~REG_A_UIP) | (REG_A_UIP if self._uip() else 0)
        return self.cmos[index]

    def set_cmos(self, index: int, value: int) -> None:
        """Store a RAM byte from the host; keeps the 0x10-0x2D checksum valid."""
        index &= 0x7F
        if index <= RTC_REG_D:
            self._write(index, value & 0xFF)
            return
        self.cmos[index] = value & 0xFF
        if CMOS_CHECKSUM_START <= index <= CMOS_CHECKSUM_END:
            self.update_checksum()

    def update_checksum(self) -> None:
        """Store the sum of bytes 0x10-0x2D at 0x2E (high) and 0x2F (low)."""
        total = sum(self.cmos[CMOS_CHECKSUM_START:CMOS_CHECKSUM_END + 1])
        self.cmos[CMOS_CHECKSUM_HI] = (total >> 8) & 0xFF
        self.cmos[CMOS_CHECKSUM_LO] = total & 0xFF

    def set_boot_order(self, order: str) -> None:
        """The boot order bytes QEMU's pc writes for ``-boot`` (SeaBIOS reads them): register
        3Dh holds the first two devices (low nibble first), 38h's high nibble the third; a
        nibble is 2 hard disk, 3 CD-ROM, 4 network (1 would be a floppy: none here)."""
        nibbles = [{"c": 2, "d": 3, "n": 4}[d] for d in order[:3]] + [0, 0, 0]
        self.cmos[0x3D] = nibbles[1] << 4 | nibbles[0]
        self.cmos[0x38] = nibbles[2] << 4  # low bit clear: check the floppy boot signature

    def set_memory_size(self, ram_bytes: int, below_4g: int | None = None) -> None:
        """Fill the memory-size bytes that BIOSes and kernels read, as QEMU's pc.

        ``below_4g`` is the RAM mapped under 4 GiB; by default all of it, or
        3 GiB when there is 3.5 GiB or more (the rest is remapped above 4 GiB).
        """
        if below_4g is None:
            below_4g = 3 * GiB if ram_bytes >= 0xE0000000 else ram_bytes
        above_4g = max(ram_bytes - below_4g, 0)
        base_kib = min(below_4g // KiB, 640)
        ext_kib = min(max(below_4g - MiB, 0) // KiB, 0xFFFF)
        over_16m = min(max(below_4g - 16 * MiB, 0) // (64 * KiB), 0xFFFF)
        over_4g = min(above_4g // (64 * KiB), 0xFFFFFF)
        fields = {
            0x15: base_kib, 0x16: base_kib >> 8,  # base memory in KiB
            0x17: ext_kib, 0x18: ext_kib >> 8,  # extended memory (1 MiB..) in KiB
            0x30: ext_kib, 0x31: ext_kib >> 8,  # the same, as POST found it
            0x34: over_16m, 0x35: over_16m >> 8,  # memory above 16 MiB in 64 KiB units
            0x5B: over_4g, 0x5C: over_4g >> 8, 0x5D: over_4g >> 16,  # above 4 GiB, 64 KiB
        }
        for index, value in fields.items():
            self.cmos[index] = value & 0xFF
        self.update_checksum()

    def rtc_time(self) -> int:
        """The RTC's current time in Unix seconds."""
        if self._running():
            return self._guest_ns() // NS_PER_SEC
        return self._load_time()

    # -- port access -------------------------------------------------------------

    def io_read(self, offset: int, size: int) -> int:
        if offset == 0:
            return 0xFF  # the index register is write-only
        index = self.index
        value = self.get_cmos(index)
        if index == RTC_REG_C:
            self.cmos[RTC_REG_C] = 0
            self._changed()
        return value

    def io_write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == 0:
            self.index = value & 0x7F
            self.nmi_masked = bool(value & 0x80)
            return
        self._write(self.index, value)

    def _write(self, index: int, value: int) -> None:
        if index in _TIME_REGS:
            self._write_time(index, value)
        elif index == RTC_REG_A:
            self._write_mode(RTC_REG_A, (value & ~REG_A_UIP) & 0xFF)
        elif index == RTC_REG_B:
            if value & REG_B_SET:
                value &= ~REG_B_UIE  # setting SET clears UIE (data sheet)
            self._write_mode(RTC_REG_B, value)
        elif index in (RTC_REG_C, RTC_REG_D):
            return  # read only
        elif index in (RTC_SECONDS_ALARM, RTC_MINUTES_ALARM, RTC_HOURS_ALARM):
            self._sync_flags()
            self.cmos[index] = value
            self._changed()
        else:
            self.cmos[index] = value  # RAM

    def _write_time(self, index: int, value: int) -> None:
        if not self._running():
            self.cmos[index] = value
            return
        self._sync_flags()
        guest = self._guest_ns()
        self._store_time(guest // NS_PER_SEC)
        self.cmos[index] = value
        # keep the phase within the second, move the time
        self._offset_ns = self._load_time() * NS_PER_SEC + guest % NS_PER_SEC - self._clock.now()
        self._changed()

    def _write_mode(self, index: int, value: int) -> None:
        self._sync_flags()
        was_running = self._running()
        if was_running:
            self._store_time(self._guest_ns() // NS_PER_SEC)
        self.cmos[index] = value
        if not was_running and self._running():
            # Clearing SET restarts the second; releasing the divider from reset
            # puts the first update half a second later.
            phase = NS_PER_SEC // 2 if index == RTC_REG_A else 0
            self._offset_ns = self._load_time() * NS_PER_SEC + phase - self._clock.now()
        self._changed()

    # -- time ---------------------------------------------------------------------

    def _oscillator_on(self) -> bool:
        return (self.cmos[RTC_REG_A] & REG_A_DV) <= 0x20

    def _running(self) -> bool:
        return self._oscillator_on() and not self.cmos[RTC_REG_B] & REG_B_SET

    def _guest_ns(self) -> int:
        return self._offset_ns + self._clock.now()

    def _uip(self) -> bool:
        return self._running() and self._guest_ns() % NS_PER_SEC >= NS_PER_SEC - UIP_WINDOW_NS

    def _to_reg(self, value: int) -> int:
        if self.cmos[RTC_REG_B] & REG_B_DM:
            return value & 0xFF
        return ((value // 10 % 10) << 4) | (value % 10)

    def _from_reg(self, value: int) -> int:
        if self.cmos[RTC_REG_B] & REG_B_DM:
            return value
        return (value >> 4) * 10 + (value & 0x0F)

    def _hour_to_reg(self, hour: int) -> int:
        if self.cmos[RTC_REG_B] & REG_B_24H:
            return self._to_reg(hour)
        pm = HOUR_PM if hour >= 12 else 0
        return self._to_reg(hour % 12 or 12) | pm

    def _hour_from_reg(self, value: int) -> int:
        if self.cmos[RTC_REG_B] & REG_B_24H:
            return self._from_reg(value)
        hour = self._from_reg(value & ~HOUR_PM) % 12
        return hour + 12 if value & HOUR_PM else hour

    def _store_time(self, secs: int) -> None:
        """Write the time registers for Unix time ``secs``."""
        days, rem = divmod(secs, 86400)
        year, month, day = _civil_from_days(days)
        cmos = self.cmos
        cmos[RTC_SECONDS] = self._to_reg(rem % 60)
        cmos[RTC_MINUTES] = self._to_reg(rem // 60 % 60)
        cmos[RTC_HOURS] = self._hour_to_reg(rem // 3600)
        cmos[RTC_DAY_OF_WEEK] = self._to_reg((days + 4) % 7 + 1)  # 1 = Sunday
        cmos[RTC_DAY_OF_MONTH] = self._to_reg(day)
        cmos[RTC_MONTH] = self._to_reg(month)
        cmos[RTC_YEAR] = self._to_reg(year % 100)
        cmos[CMOS_CENTURY] = self._to_reg(year // 100)

    def _load_time(self) -> int:
        """Unix time of the time registers (out-of-range fields just add up)."""
        cmos = self.cmos
        year = self._from_reg(cmos[CMOS_CENTURY]) * 100 + self._from_reg(cmos[RTC_YEAR])
        month = min(max(self._from_reg(cmos[RTC_MONTH]), 1), 12)
        days = _days_from_civil(year, month, 1) + self._from_reg(cmos[RTC_DAY_OF_MONTH]) - 1
        return (days * 86400 + self._hour_from_reg(cmos[RTC_HOURS]) * 3600
                + self._from_reg(cmos[RTC_MINUTES]) * 60 + self._from_reg(cmos[RTC_SECONDS]))

    def _alarm_values(self, index: int, limit: int, hour: bool = False) -> list[int]:
        value = self.cmos[index]
        if value & ALARM_DONT_CARE == ALARM_DONT_CARE:
            return list(range(limit))
        decoded = self._hour_from_reg(value) if hour else self._from_reg(value)
        return [decoded] if 0 <= decoded < limit else []

    def _next_alarm_after(self, secs: int) -> int | None:
        """The first Unix second after ``secs`` that the alarm registers match."""
        hours = self._alarm_values(RTC_HOURS_ALARM, 24, hour=True)
        minutes = self._alarm_values(RTC_MINUTES_ALARM, 60)
        seconds = self._alarm_values(RTC_SECONDS_ALARM, 60)
        day = secs // 86400
        for midnight in (day * 86400, (day + 1) * 86400):
            for h in hours:
                hour_start = midnight + h * 3600
                if hour_start + 3599 <= secs:
                    continue
                for m in minutes:
                    minute_start = hour_start + m * 60
                    if minute_start + 59 <= secs:
                        continue
                    for s in seconds:
                        if minute_start + s > secs:
                            return minute_start + s
        return None

    # -- periodic rate ------------------------------------------------------------

    def _period_ticks(self) -> int:
        """Periodic interrupt period in 32.768 kHz ticks, 0 if none."""
        rs = self.cmos[RTC_REG_A] & REG_A_RS
        if rs == 0 or not self._oscillator_on():
            return 0
        if rs <= 2:
            rs += 7  # rates 1 and 2 give 256 Hz and 128 Hz
        return 1 << (rs - 1)

    @staticmethod
    def _periodic_edges(guest_ns: int, ticks: int) -> int:
        return guest_ns * TIME_BASE_HZ // (NS_PER_SEC * ticks)

    # -- flags, interrupt, timers ---------------------------------------------

    def _sync_flags(self) -> None:
        """Set PF, AF and UF for the events between the last sync and now."""
        now = self._clock.now()
        start = self._flags_ns
        if now <= start:
            return
        self._flags_ns = now
        g0, g1 = self._offset_ns + start, self._offset_ns + now
        flags = 0
        if self._running():
            s0, s1 = g0 // NS_PER_SEC, g1 // NS_PER_SEC
            if s1 > s0:
                flags |= REG_C_UF
                alarm = self._next_alarm_after(s0)
                if alarm is not None and alarm <= s1:
                    flags |= REG_C_AF
        ticks = self._period_ticks()
        if ticks and self._periodic_edges(g1, ticks) > self._periodic_edges(g0, ticks):
            flags |= REG_C_PF
        self.cmos[RTC_REG_C] |= flags

    def _update_irq(self) -> None:
        c = self.cmos[RTC_REG_C] & ~REG_C_IRQF
        if c & self.cmos[RTC_REG_B] & (REG_C_PF | REG_C_AF | REG_C_UF):
            c |= REG_C_IRQF
        self.cmos[RTC_REG_C] = c
        self.irq.set_level(bool(c & REG_C_IRQF))

    def _schedule(self) -> None:
        """Arm timers for the next event that would raise a new interrupt."""
        b, c = self.cmos[RTC_REG_B], self.cmos[RTC_REG_C]
        guest = self._guest_ns()
        ticks = self._period_ticks()
        if ticks and b & REG_B_PIE and not c & REG_C_PF:
            edge = self._periodic_edges(guest, ticks) + 1
            edge_ns = -(-edge * ticks * NS_PER_SEC // TIME_BASE_HZ)  # ceiling
            self._periodic_timer.arm(edge_ns - self._offset_ns)
        else:
            self._periodic_timer.cancel()
        deadline: int | None = None
        if self._running():
            secs = guest // NS_PER_SEC
            if b & REG_B_UIE and not c & REG_C_UF:
                deadline = secs + 1
            if b & REG_B_AIE and not c & REG_C_AF:
                alarm = self._next_alarm_after(secs)
                if alarm is not None and (deadline is None or alarm < deadline):
                    deadline = alarm
        if deadline is None:
            self._update_timer.cancel()
        else:
            self._update_timer.arm(deadline * NS_PER_SEC - self._offset_ns)

    def _changed(self) -> None:
        self._update_irq()
        self._schedule()

    def _on_timer(self) -> None:
        self._sync_flags()
        self._changed()

"""The High Precision Event Timer, as QEMU's ``pc`` machine has it at 0xFED00000.

One block of three comparators on a 64-bit main counter at 100 MHz (a period of
10 ns), registers in a 1 KiB MMIO window (IA-PC HPET specification 1.0a, 2.3):

| offset | register |
|---|---|
| 0x000 | GCAP_ID: revision 1, 3 timers, 64-bit counter, legacy replacement capable, period in fs |
| 0x010 | GEN_CONF: ENABLE_CNF (bit 0, the counter runs), LEG_RT_CNF (bit 1) |
| 0x020 | GINTR_STA: level-triggered interrupt status, write 1 to clear |
| 0x0F0 | MAIN_CNT: the counter; writable while halted |
| 0x100 + 0x20 n | Tn_CONF_CAP, Tn_COMPARATOR (+8), Tn_FSB_ROUTE (+0x10, no FSB delivery) |

Every register is 64 bits wide and may be accessed as two 32-bit halves.  A
comparator fires when the counter reaches it (only its low 32 bits in 32-bit
mode): one-shot timers then wait for the counter to come round again; periodic
ones add their period.  As on the hardware (and QEMU), a comparator write in
periodic mode sets the period, and also the comparator when VAL_SET_CNF was set
just before.  With LEG_RT_CNF timer 0 drives ISA IRQ 0 (IOAPIC pin 2) and
timer 1 IRQ 8 in place of the PIT and the RTC; otherwise timer n drives the
IOAPIC pin its INT_ROUTE_CNF names, among those INT_ROUTE_CAP offers.
Edge-triggered timers pulse their line; level-triggered ones set their
GINTR_STA bit and hold the line until the guest clears it.

The counter follows the machine's guest time, so it is deterministic when the
clock is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from .base import Clock, Device, IrqSink, StateError, check_state

HPET_BASE = 0xFED00000
HPET_SIZE = 0x400
NUM_TIMERS = 3
PERIOD_FS = 10_000_000          # 10 ns per tick: 100 MHz, QEMU's HPET_CLK_PERIOD
NS_PER_TICK = PERIOD_FS // 1_000_000
VENDOR_ID = 0x8086
GCAP_ID_LOW = (VENDOR_ID << 16) | (1 << 15) | (1 << 13) | ((NUM_TIMERS - 1) << 8) | 0x01
GCAP_ID = (PERIOD_FS << 32) | GCAP_ID_LOW

GCAP, GEN_CONF, GINTR_STA, MAIN_CNT = 0x000, 0x010, 0x020, 0x0F0
TIMER_BASE, TIMER_STRIDE = 0x100, 0x20
T_CONF, T_CMP, T_FSB = 0x00, 0x08, 0x10

ENABLE_CNF, LEG_RT_CNF = 1 << 0, 1 << 1
TN_INT_TYPE_LEVEL = 1 << 1
TN_INT_ENB = 1 << 2
TN_TYPE_PERIODIC = 1 << 3
TN_PER_INT_CAP = 1 << 4
TN_SIZE_CAP = 1 << 5
TN_VAL_SET = 1 << 6
TN_32BIT = 1 << 8
TN_ROUTE_SHIFT, TN_ROUTE_MASK = 9, 0x1F << 9
TN_WRITABLE = (TN_INT_TYPE_LEVEL | TN_INT_ENB | TN_TYPE_PERIODIC | TN_VAL_SET | TN_32BIT
               | TN_ROUTE_MASK)
# The IOAPIC pins a timer may be routed to outside legacy mode: 16-23, the pins no ISA
# device uses on this board.
INT_ROUTE_CAP = 0x00FF0000
LEGACY_IRQS = (0, 8)  # timer 0 -> ISA IRQ 0, timer 1 -> ISA IRQ 8 under LEG_RT_CNF

MASK64 = (1 << 64) - 1
MASK32 = (1 << 32) - 1
MAX_ARM_TICKS = 1 << 56  # about 23 years at 100 MHz
STATE_VERSION = 1


class _Comparator:
    """One timer's registers and its clock timer."""

    __slots__ = ("index", "config", "cmp", "period", "line_high")

    def __init__(self, index: int) -> None:
        self.index = index
        self.config = 0
        self.cmp = MASK64
        self.period = 0
        self.line_high = False

    @property
    def capabilities(self) -> int:
        return (INT_ROUTE_CAP << 32) | TN_PER_INT_CAP | TN_SIZE_CAP

    @property
    def width_mask(self) -> int:
        return MASK32 if self.config & TN_32BIT else MASK64


class Hpet(Device):
    """The HPET block: ``legacy_irqs`` takes ISA IRQ 0/8 levels under LEG_RT_CNF (the board
    disconnects the PIT and RTC while ``on_legacy(True)``), ``ioapic`` the routed pins."""

    name = "hpet"
    STATE_VERSION = STATE_VERSION

    def __init__(self, clock: Clock, legacy_irqs: IrqSink, ioapic: IrqSink,
                 on_legacy: Callable[[bool], None] | None = None) -> None:
        self.clock = clock
        self.legacy_irqs = legacy_irqs
        self.ioapic = ioapic
        self.on_legacy = on_legacy
        self.timers = [_Comparator(i) for i in range(NUM_TIMERS)]
        self._clock_timers = [clock.timer(functools.partial(self._fire, i))
                              for i in range(NUM_TIMERS)]
        self.reset()

    def reset(self) -> None:
        """Power-on: counter halted at 0, legacy routing off, every timer disabled."""
        for t in self.timers:
            self._set_line(t, False)
        self.config = 0
        self.isr = 0
        self._counter_at_halt = 0
        self._epoch_ns = 0
        for t in self.timers:
            t.config = 0
            t.cmp = MASK64
            t.period = 0
        for ct in self._clock_timers:
            ct.cancel()
        if self.on_legacy is not None:
            self.on_legacy(False)

    # -- the counter -------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return bool(self.config & ENABLE_CNF)

    def counter(self) -> int:
        """The main counter now."""
        if not self.enabled:
            return self._counter_at_halt
        return (self._counter_at_halt + (self.clock.now() - self._epoch_ns) // NS_PER_TICK) & MASK64

    def _ns_at(self, count: int) -> int:
        """Guest time at which the running counter reads ``count`` (``count`` >= now's)."""
        return self._epoch_ns + (count - self._counter_at_halt) * NS_PER_TICK

    # -- timers ------------------------------------------------------------------------

    def _arm(self, t: _Comparator, after_match: bool = False) -> None:
        """Arm ``t``'s clock timer for the next time the counter equals its comparator
        (after the current tick when ``after_match``); nothing to do while the counter is
        halted or the timer cannot interrupt."""
        ct = self._clock_timers[t.index]
        if not self.enabled or not t.config & TN_INT_ENB:
            ct.cancel()
            return
        now = self.counter()
        mask = t.width_mask
        delta = (t.cmp - now) & mask
        if after_match and delta == 0:
            delta = mask + 1  # a one-shot comparator matches again once the counter wraps
        if delta > MAX_ARM_TICKS:
            ct.cancel()  # centuries away (a 64-bit comparator behind the counter)
            return
        ct.arm(self._ns_at(now + delta))

    def _fire(self, index: int) -> None:
        t = self.timers[index]
        if not self.enabled:
            return
        self._signal(t)
        if t.config & TN_TYPE_PERIODIC and t.period:
            # The next multiple of the period past the counter (several, if time jumped).
            mask = t.width_mask
            behind = (self.counter() - t.cmp) & mask
            if behind <= mask >> 1:
                t.cmp = (t.cmp + (behind // t.period + 1) * t.period) & mask
        self._arm(t, after_match=True)

    def _signal(self, t: _Comparator) -> None:
        if t.config & TN_INT_TYPE_LEVEL:
            self.isr |= 1 << t.index
            if t.config & TN_INT_ENB:
                self._set_line(t, True)
        elif t.config & TN_INT_ENB:
            self._set_line(t, True)
            self._set_line(t, False)

    def _route(self, t: _Comparator) -> tuple[IrqSink, int]:
        if self.config & LEG_RT_CNF and t.index < len(LEGACY_IRQS):
            return self.legacy_irqs, LEGACY_IRQS[t.index]
        return self.ioapic, (t.config & TN_ROUTE_MASK) >> TN_ROUTE_SHIFT

    def _set_line(self, t: _Comparator, level: bool) -> None:
        if level == t.line_high:
            return
        t.line_high = level
        sink, irq = self._route(t)
        sink.set_irq(irq, level)

    def _drop_lines(self) -> list[bool]:
        """Lower every line (before routing changes); returns what was high."""
        was = [t.line_high for t in self.timers]
        for t in self.timers:
            self._set_line(t, False)
        return was

    # -- registers ---------------------------------------------------------------------

    def _read64(self, reg: int) -> int:
        if reg == GCAP:
            return GCAP_ID
        if reg == GEN_CONF:
            return self.config
        if reg == GINTR_STA:
            return self.isr
        if reg == MAIN_CNT:
            return self.counter()
        if TIMER_BASE <= reg < TIMER_BASE + NUM_TIMERS * TIMER_STRIDE:
            t = self.timers[(reg - TIMER_BASE) // TIMER_STRIDE]
            field = (reg - TIMER_BASE) % TIMER_STRIDE
            if field == T_CONF:
                return t.capabilities | (t.config & TN_WRITABLE & ~TN_VAL_SET)
            if field == T_CMP:
                return t.cmp & t.width_mask
        return 0

    def io_read(self, offset: int, size: int) -> int:
        if offset < 0 or offset + size > HPET_SIZE or size not in (1, 2, 4, 8):
            return super().io_read(offset, size)
        reg, shift = offset & ~7, 8 * (offset & 7)
        if shift + 8 * size > 64:
            return super().io_read(offset, size)
        return (self._read64(reg) >> shift) & ((1 << (8 * size)) - 1)

    def io_write(self, offset: int, size: int, value: int) -> None:
        if offset < 0 or offset + size > HPET_SIZE or size not in (1, 2, 4, 8):
            return
        reg, shift = offset & ~7, 8 * (offset & 7)
        if shift + 8 * size > 64:
            return
        field_mask = ((1 << (8 * size)) - 1) << shift
        old = self._read64(reg) if reg != MAIN_CNT else self.counter()
        new = (old & ~field_mask) | ((value << shift) & field_mask)
        self._write64(reg, new, field_mask)

    def _write64(self, reg: int, new: int, written: int) -> None:
        if reg == GEN_CONF:
            self._write_config(new & (ENABLE_CNF | LEG_RT_CNF))
        elif reg == GINTR_STA:
            cleared = new & written & self.isr
            self.isr &= ~cleared
            for t in self.timers:
                if cleared & (1 << t.index):
                    self._set_line(t, False)
        elif reg == MAIN_CNT:
            if not self.enabled:  # software may set the counter only while it is halted
                self._counter_at_halt = new & MASK64
        elif TIMER_BASE <= reg < TIMER_BASE + NUM_TIMERS * TIMER_STRIDE:
            t = self.timers[(reg - TIMER_BASE) // TIMER_STRIDE]
            field = (reg - TIMER_BASE) % TIMER_STRIDE
            if field == T_CONF:
                self._write_timer_config(t, new)
            elif field == T_CMP:
                self._write_comparator(t, new)

    def _write_config(self, config: int) -> None:
        old = self.config
        if (old ^ config) & ENABLE_CNF:
            if config & ENABLE_CNF:
                self._epoch_ns = self.clock.now()
            else:
                self._counter_at_halt = self.counter()
        was_high = self._drop_lines() if (old ^ config) & LEG_RT_CNF else None
        self.config = config
        if was_high is not None:
            if self.on_legacy is not None:
                self.on_legacy(bool(config & LEG_RT_CNF))
            for t, high in zip(self.timers, was_high, strict=True):
                self._set_line(t, high)
        for t in self.timers:
            self._arm(t)

    def _write_timer_config(self, t: _Comparator, new: int) -> None:
        route = (new & TN_ROUTE_MASK) >> TN_ROUTE_SHIFT
        if not INT_ROUTE_CAP & (1 << route):
            new = (new & ~TN_ROUTE_MASK) | (t.config & TN_ROUTE_MASK)  # not offered: kept
        was_high = self._drop_lines()[t.index]
        t.config = new & TN_WRITABLE
        if t.config & TN_32BIT:
            t.cmp &= MASK32
            t.period &= MASK32
        if not t.config & TN_INT_TYPE_LEVEL:
            self.isr &= ~(1 << t.index)
            was_high = False
        self._set_line(t, was_high and bool(t.config & TN_INT_ENB))
        self._arm(t)

    def _write_comparator(self, t: _Comparator, value: int) -> None:
        value &= t.width_mask
        periodic = bool(t.config & TN_TYPE_PERIODIC)
        if not periodic or t.config & TN_VAL_SET:
            t.cmp = value
        if periodic:
            t.period = value & (t.width_mask >> 1)
        t.config &= ~TN_VAL_SET
        self._arm(t)

    # -- saved state -------------------------------------------------------------------

    def save_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "config": self.config, "isr": self.isr,
                # The counter's base and epoch as they are (guest time is restored with
                # the clock): a tick's phase survives, so a restored run reads the same.
                "counter_base": self._counter_at_halt, "epoch_ns": self._epoch_ns,
                "timers": [[t.config, t.cmp, t.period, t.line_high] for t in self.timers]}

    def load_state(self, state: dict[str, Any]) -> None:
        check_state(state, self.name, (STATE_VERSION,))
        timers = state["timers"]
        if not isinstance(timers, list) or len(timers) != NUM_TIMERS:
            raise StateError(f"hpet: saved state has {len(timers)} timers, not {NUM_TIMERS}")
        self._drop_lines()
        self.config = int(state["config"]) & (ENABLE_CNF | LEG_RT_CNF)
        self.isr = int(state["isr"]) & ((1 << NUM_TIMERS) - 1)
        self._counter_at_halt = int(state["counter_base"]) & MASK64
        self._epoch_ns = int(state["epoch_ns"])
        if self.on_legacy is not None:
            self.on_legacy(bool(self.config & LEG_RT_CNF))
        for t, (config, cmp, period, high) in zip(self.timers, timers, strict=True):
            t.config = int(config) & TN_WRITABLE
            t.cmp = int(cmp) & t.width_mask
            t.period = int(period) & t.width_mask
            self._set_line(t, bool(high))
        # The clock re-arms the timers it saved; nothing to arm here.

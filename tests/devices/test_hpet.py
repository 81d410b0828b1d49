"""The HPET alone: counter, one-shot and periodic comparators, routing, level status."""

from __future__ import annotations

import pytest

from qemu_lite.devices.base import Clock, RecordingIrqSink, StateError
from qemu_lite.devices.hpet import (
    ENABLE_CNF,
    GCAP,
    GEN_CONF,
    GINTR_STA,
    LEG_RT_CNF,
    MAIN_CNT,
    TN_32BIT,
    TN_INT_ENB,
    TN_INT_TYPE_LEVEL,
    TN_ROUTE_SHIFT,
    TN_TYPE_PERIODIC,
    TN_VAL_SET,
    Hpet,
)


def T(n: int, field: int = 0) -> int:
    return 0x100 + 0x20 * n + field


class Pulses(RecordingIrqSink):
    def rises(self, irq: int) -> int:
        return sum(1 for i, level in self.history if i == irq and level)


def _hpet():
    clock = Clock()
    legacy, ioapic = Pulses(), Pulses()
    modes: list[bool] = []
    hpet = Hpet(clock, legacy, ioapic, on_legacy=modes.append)
    return hpet, clock, legacy, ioapic, modes


def test_capabilities_name_three_64_bit_timers_at_10_ns():
    hpet, *_ = _hpet()
    cap = hpet.io_read(GCAP, 8)
    assert cap & 0xFF == 1 and (cap >> 8) & 0x1F == 2
    assert cap & (1 << 13) and cap & (1 << 15)
    assert cap >> 32 == 10_000_000
    assert hpet.io_read(GCAP + 4, 4) == 10_000_000  # the high half alone


def test_counter_runs_only_while_enabled_and_can_be_set_while_halted():
    hpet, clock, *_ = _hpet()
    clock.advance(1_000)
    assert hpet.io_read(MAIN_CNT, 8) == 0
    hpet.io_write(MAIN_CNT, 4, 0x1000)
    hpet.io_write(GEN_CONF, 4, ENABLE_CNF)
    clock.advance(1_000)  # 100 ticks
    assert hpet.io_read(MAIN_CNT, 4) == 0x1000 + 100
    hpet.io_write(MAIN_CNT, 4, 5)  # ignored while running
    hpet.io_write(GEN_CONF, 4, 0)
    frozen = hpet.io_read(MAIN_CNT, 8)
    clock.advance(10_000)
    assert hpet.io_read(MAIN_CNT, 8) == frozen == 0x1000 + 100


def test_one_shot_fires_once_at_the_comparator_on_its_route():
    hpet, clock, _, ioapic, _ = _hpet()
    hpet.io_write(T(2), 4, TN_INT_ENB | (20 << TN_ROUTE_SHIFT))
    hpet.io_write(T(2, 8), 4, 500)
    hpet.io_write(T(2, 12), 4, 0)
    hpet.io_write(GEN_CONF, 4, ENABLE_CNF)
    clock.advance(4_990)
    assert ioapic.rises(20) == 0
    clock.advance(10)
    assert ioapic.rises(20) == 1 and ioapic.levels[20] is False  # an edge
    clock.advance(1_000_000)
    assert ioapic.rises(20) == 1


def test_a_route_not_offered_is_not_taken():
    hpet, *_ = _hpet()
    hpet.io_write(T(2), 4, TN_INT_ENB | (20 << TN_ROUTE_SHIFT))
    hpet.io_write(T(2), 4, TN_INT_ENB | (5 << TN_ROUTE_SHIFT))  # pin 5: not in INT_ROUTE_CAP
    assert (hpet.io_read(T(2), 4) >> TN_ROUTE_SHIFT) & 0x1F == 20
    assert hpet.io_read(T(2) + 4, 4) == 0x00FF0000


def test_periodic_mode_as_linux_programs_it():
    """Counter stopped; 32-bit mode, VAL_SET, comparator = now + period, then comparator =
    period (the accumulator); counter started (Linux's hpet_clkevt_set_state_periodic)."""
    hpet, clock, legacy, _, modes = _hpet()
    hpet.io_write(GEN_CONF, 4, ENABLE_CNF | LEG_RT_CNF)
    assert modes == [False, True]  # reset, then legacy routing on
    clock.advance(12_340)
    hpet.io_write(GEN_CONF, 4, LEG_RT_CNF)
    now = hpet.io_read(MAIN_CNT, 4)
    hpet.io_write(T(0), 4, TN_INT_ENB | TN_TYPE_PERIODIC | TN_VAL_SET | TN_32BIT)
    hpet.io_write(T(0, 8), 4, now + 1000)
    hpet.io_write(T(0, 8), 4, 1000)
    hpet.io_write(GEN_CONF, 4, ENABLE_CNF | LEG_RT_CNF)
    clock.advance(10_000 * 10 + 5)  # ten periods of 10 µs
    assert legacy.rises(0) == 10
    assert hpet.io_read(T(0, 8), 4) == now + 11_000


def test_periodic_catches_up_after_a_long_gap_without_a_storm():
    hpet, clock, legacy, _, _ = _hpet()
    hpet.io_write(GEN_CONF, 4, ENABLE_CNF | LEG_RT_CNF)
    hpet.io_write(T(0), 4, TN_INT_ENB | TN_TYPE_PERIODIC | TN_VAL_SET | TN_32BIT)
    hpet.io_write(T(0, 8), 4, 100)
    hpet.io_write(T(0, 8), 4, 100)
    clock._set_now(1_000_000)  # jump 100,000 ticks; the due timer runs once
    clock.advance(0)
    assert legacy.rises(0) == 1
    assert hpet.io_read(T(0, 8), 4) > hpet.io_read(MAIN_CNT, 4)


def test_level_mode_holds_the_line_until_the_status_bit_is_cleared():
    hpet, clock, legacy, _, _ = _hpet()
    hpet.io_write(GEN_CONF, 4, ENABLE_CNF | LEG_RT_CNF)
    hpet.io_write(T(1), 4, TN_INT_ENB | TN_INT_TYPE_LEVEL)
    hpet.io_write(T(1, 8), 8, 10)
    clock.advance(100)
    assert legacy.levels[8] is True and hpet.io_read(GINTR_STA, 4) == 0b10
    hpet.io_write(GINTR_STA, 4, 0b01)  # another timer's bit: nothing
    assert legacy.levels[8] is True
    hpet.io_write(GINTR_STA, 4, 0b10)
    assert legacy.levels[8] is False and hpet.io_read(GINTR_STA, 4) == 0


def test_32_bit_mode_matches_the_low_half_and_wraps():
    hpet, clock, _, ioapic, _ = _hpet()
    hpet.io_write(MAIN_CNT, 8, 0x1_FFFF_FFF0)
    hpet.io_write(T(2), 4, TN_INT_ENB | TN_32BIT | (16 << TN_ROUTE_SHIFT))
    hpet.io_write(T(2, 8), 8, 0x1_0000_0010)  # truncated to 0x10: 0x20 ticks away
    assert hpet.io_read(T(2, 8), 8) == 0x10
    hpet.io_write(GEN_CONF, 4, ENABLE_CNF)
    clock.advance(0x20 * 10)
    assert ioapic.rises(16) == 1
    clock.advance((1 << 32) * 10)  # the low half comes round again
    assert ioapic.rises(16) == 2


def test_a_comparator_behind_the_counter_waits_for_the_wrap():
    hpet, clock, _, ioapic, _ = _hpet()
    hpet.io_write(MAIN_CNT, 8, 1000)
    hpet.io_write(GEN_CONF, 4, ENABLE_CNF)
    hpet.io_write(T(2), 4, TN_INT_ENB | TN_32BIT | (16 << TN_ROUTE_SHIFT))
    hpet.io_write(T(2, 8), 4, 500)  # already passed (Linux re-reads and sees -ETIME)
    clock.advance(1_000_000)
    assert ioapic.rises(16) == 0


def test_legacy_routing_moves_a_held_level():
    hpet, clock, legacy, ioapic, modes = _hpet()
    hpet.io_write(T(0), 4, TN_INT_ENB | TN_INT_TYPE_LEVEL | (16 << TN_ROUTE_SHIFT))
    hpet.io_write(T(0, 8), 8, 1)
    hpet.io_write(GEN_CONF, 4, ENABLE_CNF)
    clock.advance(10)
    assert ioapic.levels[16] is True
    hpet.io_write(GEN_CONF, 4, ENABLE_CNF | LEG_RT_CNF)
    assert ioapic.levels[16] is False and legacy.levels[0] is True
    assert modes[-1] is True


def test_reset_and_state_round_trip():
    hpet, clock, legacy, ioapic, _ = _hpet()
    hpet.io_write(GEN_CONF, 4, ENABLE_CNF | LEG_RT_CNF)
    hpet.io_write(T(0), 4, TN_INT_ENB | TN_TYPE_PERIODIC | TN_VAL_SET)
    hpet.io_write(T(0, 8), 4, 1234)
    clock.advance(777)
    state = hpet.save_state()
    clock2 = Clock()
    clock2._set_now(clock.now())
    fresh = Hpet(clock2, Pulses(), Pulses())
    fresh.load_state(state)
    for reg in (GEN_CONF, MAIN_CNT, T(0), T(0, 8)):
        assert fresh.io_read(reg, 8) == hpet.io_read(reg, 8), hex(reg)
    with pytest.raises(StateError):
        fresh.load_state({**state, "version": 99})
    hpet.reset()
    assert hpet.io_read(GEN_CONF, 8) == 0 and hpet.io_read(MAIN_CNT, 8) == 0
    assert hpet.io_read(T(0), 4) & TN_INT_ENB == 0

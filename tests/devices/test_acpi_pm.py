"""The ACPI PM block alone: timer, status/enable bits, SCI level, S5."""

from __future__ import annotations

import pytest

from qemu_lite.devices.acpi_pm import (
    GPE0_EN,
    GPE0_STS,
    PM1_CNT,
    PM1_EN,
    PM1_STS,
    PM_TIMER_HZ,
    PM_TMR,
    PWRBTN_STS,
    SCI_EN,
    SLP_EN,
    TMR_STS,
    AcpiPm,
)
from qemu_lite.devices.base import Clock, IrqLine, RecordingIrqSink


def _pm():
    clock = Clock()
    sink = RecordingIrqSink()
    offs: list[int] = []
    pm = AcpiPm(clock, IrqLine(sink, 9), on_power_off=lambda: offs.append(1))
    return pm, clock, sink, offs


def test_timer_counts_at_3_579545_mhz_and_wraps_at_24_bits():
    pm, clock, _, _ = _pm()
    assert pm.io_read(PM_TMR, 4) == 0
    clock.advance(1_000_000_000)
    assert pm.io_read(PM_TMR, 4) == PM_TIMER_HZ
    clock.advance(5_000_000_000)  # 6 s = 21,477,270 ticks: past 2^24
    assert pm.io_read(PM_TMR, 4) == (6 * PM_TIMER_HZ) & 0xFFFFFF


def test_timer_carry_sets_tmr_sts_and_raises_the_sci_when_enabled():
    pm, clock, sink, _ = _pm()
    pm.io_write(PM1_EN, 2, TMR_STS)
    clock.advance(2_400_000_000)  # bit 23 flips at 2.34 s
    assert pm.io_read(PM1_STS, 2) & TMR_STS
    assert sink.levels[9] is True
    pm.io_write(PM1_STS, 2, TMR_STS)  # write 1 to clear
    assert not pm.io_read(PM1_STS, 2) & TMR_STS
    assert sink.levels[9] is False


def test_power_button_raises_the_sci_only_when_enabled_and_sci_en():
    pm, _, sink, _ = _pm()
    pm.press_power_button()
    assert pm.io_read(PM1_STS, 2) & PWRBTN_STS
    assert not sink.levels.get(9)
    pm.io_write(PM1_EN, 2, PWRBTN_STS)
    assert sink.levels[9] is True
    pm.io_write(PM1_CNT, 2, 0)  # SCI_EN off: no SCI
    assert sink.levels[9] is False
    pm.io_write(PM1_CNT, 2, SCI_EN)
    pm.io_write(PM1_STS + 1, 1, PWRBTN_STS >> 8)  # a byte write clears its half
    assert sink.levels[9] is False


def test_slp_en_with_s5_powers_off_and_other_types_do_not():
    pm, _, _, offs = _pm()
    pm.io_write(PM1_CNT, 2, SCI_EN | (5 << 10) | SLP_EN)
    assert offs == []
    pm.io_write(PM1_CNT, 2, SCI_EN | SLP_EN)  # SLP_TYP 0: the DSDT's \_S5
    assert offs == [1]
    assert not pm.io_read(PM1_CNT, 2) & SLP_EN  # write-only


def test_reset_leaves_acpi_mode_on():
    pm, _, _, _ = _pm()
    pm.io_write(PM1_CNT, 2, 0)
    pm.reset()
    assert pm.io_read(PM1_CNT, 2) == SCI_EN


def test_gpe_raises_the_sci_while_enabled_and_write_one_clears_it():
    pm, _, sink, _ = _pm()
    pm.raise_gpe(9)
    assert pm.io_read(GPE0_STS, 2) == 1 << 9
    assert not sink.levels.get(9)                 # not enabled yet
    pm.io_write(GPE0_EN + 1, 1, 0x02)             # the byte holding GPE 9's enable
    assert pm.io_read(GPE0_EN, 2) == 1 << 9
    assert sink.levels[9] is True
    pm.io_write(GPE0_STS, 2, 1 << 3)              # clearing another bit keeps the SCI
    assert sink.levels[9] is True
    pm.io_write(GPE0_STS, 4, 1 << 9 | 0xFFFF << 16)  # a dword write covers STS and EN
    assert pm.io_read(GPE0_STS, 4) == 0xFFFF << 16
    assert sink.levels[9] is False
    with pytest.raises(ValueError, match="GPE 16"):
        pm.raise_gpe(16)


def test_gpe_state_round_trips_and_a_version_1_state_loads_without_it():
    pm, _, sink, _ = _pm()
    pm.io_write(GPE0_EN, 2, 1 << 2)
    pm.raise_gpe(2)
    saved = pm.save_state()
    other, _, other_sink, _ = _pm()
    other.load_state(saved)
    assert other.io_read(GPE0_STS, 4) == (1 << 2) | (1 << 2) << 16
    assert other_sink.levels[9] is True
    old = {key: saved[key] for key in ("sts", "en", "cnt")} | {"version": 1}
    other.load_state(old)
    assert other.io_read(GPE0_STS, 4) == 0

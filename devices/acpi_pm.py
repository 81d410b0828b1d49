"""ACPI power management registers in the style of the PIIX4's PM function.

An I/O block at ``PM_BASE`` (0x600, where QEMU's ``pc`` machine puts its
PIIX4 PM block; the FADT tells the guest):

| offset | size | register |
|---|---|---|
| 0x00 | 16 | PM1a_STS: TMR_STS (bit 0), GBL_STS (5), PWRBTN_STS (8), RTC_STS (10), WAK_STS (15); write 1 to clear |
| 0x02 | 16 | PM1a_EN: TMR_EN (0), GBL_EN (5), PWRBTN_EN (8), RTC_EN (10) |
| 0x04 | 16 | PM1a_CNT: SCI_EN (0), SLP_TYP (10-12), SLP_EN (13, write-only) |
| 0x08 | 32 | PM_TMR: a 24-bit counter at 3.579545 MHz, read-only |
| 0x0C | 16 | GPE0_STS: general-purpose events 0-15; write 1 to clear |
| 0x0E | 16 | GPE0_EN: their enables |

(ACPI 6.4, 4.8 "ACPI Hardware Features".)  The timer counts the machine's
guest time, so it is deterministic when the clock is.  TMR_STS is set each
time the counter's bit 23 changes.  The SCI (an :class:`IrqLine`, IRQ 9) is a
level: high while SCI_EN is set and an enabled status bit (fixed or general-purpose)
is set.  The GPE0 block sits where the PIIX4 has its GPSTS/GPEN; :meth:`AcpiPm.raise_gpe`
is how a device signals one (QEMU's PIIX4 wires hotplug controllers there; nothing
on this board raises one yet, so Linux sees 16 quiet GPEs).  Writing
SLP_EN with SLP_TYP = ``SLP_TYP_S5`` (the DSDT's \\_S5 value) calls
``on_power_off``.  :meth:`AcpiPm.press_power_button` is the fixed-feature
power button.  The block has no SMI_CMD: the FADT's SMI_CMD of 0 says the
machine is always in ACPI mode, so SCI_EN is set at reset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import Clock, Device, IrqLine, check_state

PM_BASE = 0x600
PM_SIZE = 0x10
PM1_EVT, PM1_STS, PM1_EN, PM1_CNT, PM_TMR = 0x00, 0x00, 0x02, 0x04, 0x08
GPE0_BLK, GPE0_STS, GPE0_EN = 0x0C, 0x0C, 0x0E
GPE0_BLK_LEN = 4   # the FADT's: half status, half enable
GPE_COUNT = 16

PM_TIMER_HZ = 3_579_545
TIMER_BITS = 24

TMR_STS = 1 << 0
GBL_STS = 1 << 5
PWRBTN_STS = 1 << 8
RTC_STS = 1 << 10
WAK_STS = 1 << 15
STS_BITS = TMR_STS | GBL_STS | PWRBTN_STS | RTC_STS | WAK_STS
# The enable bits sit where their status bits are.  GBL_EN and RTC_EN only read
# back as written (ACPICA checks that): no global lock owner or RTC alarm raises
# them, as on QEMU's PIIX4.
EN_BITS = TMR_STS | GBL_STS | PWRBTN_STS | RTC_STS

SCI_EN = 1 << 0
SLP_TYP_SHIFT, SLP_TYP_MASK = 10, 0x7 << 10
SLP_EN = 1 << 13
CNT_WRITABLE = SCI_EN | SLP_TYP_MASK
SLP_TYP_S5 = 0  # QEMU's \_S5 value: soft off

STATE_VERSION = 2  # 2: the GPE0 block


class AcpiPm(Device):
    """PM1a event and control blocks and the PM timer."""

    name = "acpi-pm"

    def __init__(self, clock: Clock, sci: IrqLine,
                 on_power_off: Callable[[], None] | None = None) -> None:
        self.clock = clock
        self.sci = sci
        self.on_power_off = on_power_off
        self._timer = clock.timer(self._timer_overflow)
        self.reset()

    def reset(self) -> None:
        """Power-on: nothing pending or enabled, SCI_EN set (always ACPI mode)."""
        self.sts = 0
        self.en = 0
        self.cnt = SCI_EN
        self.gpe_sts = 0
        self.gpe_en = 0
        self._timer_epoch = self.ticks() >> (TIMER_BITS - 1)
        self._timer.cancel()
        self._update_irq()

    # -- the timer ---------------------------------------------------------------

    def ticks(self) -> int:
        """PM timer ticks since guest time 0 (not wrapped)."""
        return self.clock.now() * PM_TIMER_HZ // 1_000_000_000

    def _note_timer_carry(self) -> None:
        epoch = self.ticks() >> (TIMER_BITS - 1)
        if epoch != self._timer_epoch:
            self._timer_epoch = epoch
            self.sts |= TMR_STS

    def _arm_timer(self) -> None:
        if not self.en & TMR_STS:
            self._timer.cancel()
            return
        next_tick = (self._timer_epoch + 1) << (TIMER_BITS - 1)
        self._timer.arm(-(-next_tick * 1_000_000_000 // PM_TIMER_HZ))

    def _timer_overflow(self) -> None:
        self._note_timer_carry()
        self._arm_timer()
        self._update_irq()

    # -- events ------------------------------------------------------------------

    def press_power_button(self) -> None:
        """The fixed-feature power button: PWRBTN_STS, and an SCI if enabled."""
        self.sts |= PWRBTN_STS
        self._update_irq()

    def raise_gpe(self, gpe: int) -> None:
        """Set general-purpose event ``gpe``'s status bit, and raise an SCI if it is enabled."""
        if not 0 <= gpe < GPE_COUNT:
            raise ValueError(f"GPE {gpe} is outside the GPE0 block (0-{GPE_COUNT - 1})")
        self.gpe_sts |= 1 << gpe
        self._update_irq()

    def _update_irq(self) -> None:
        pending = self.sts & self.en & EN_BITS or self.gpe_sts & self.gpe_en
        self.sci.set_level(bool(self.cnt & SCI_EN and pending))

    # -- registers ---------------------------------------------------------------

    def io_read(self, offset: int, size: int) -> int:
        self._note_timer_carry()
        regs = (self.sts.to_bytes(2, "little") + self.en.to_bytes(2, "little")
                + self.cnt.to_bytes(2, "little") + bytes(2)
                + (self.ticks() & ((1 << TIMER_BITS) - 1)).to_bytes(4, "little")
                + self.gpe_sts.to_bytes(2, "little") + self.gpe_en.to_bytes(2, "little"))
        if offset < 0 or offset + size > PM_SIZE:
            return super().io_read(offset, size)
        return int.from_bytes(regs[offset:offset + size], "little")

    def io_write(self, offset: int, size: int, value: int) -> None:
        # Byte writes reach the half of a 16-bit register they address.
        for index in range(size):
            self._write_byte(offset + index, (value >> (8 * index)) & 0xFF)

    def _write_byte(self, offset: int, value: int) -> None:
        shift = 8 * (offset & 1)
        if offset in (PM1_STS, PM1_STS + 1):
            self._note_timer_carry()
            self.sts &= ~((value << shift) & STS_BITS)
        elif offset in (PM1_EN, PM1_EN + 1):
            self.en = (self.en & ~(0xFF << shift)) | ((value << shift) & EN_BITS)
            self._arm_timer()
        elif offset in (PM1_CNT, PM1_CNT + 1):
            written = value << shift
            self.cnt = (self.cnt & ~(0xFF << shift)) | (written & CNT_WRITABLE)
            if written & SLP_EN:
                self._sleep((self.cnt & SLP_TYP_MASK) >> SLP_TYP_SHIFT)
        elif offset in (GPE0_STS, GPE0_STS + 1):
            self.gpe_sts &= ~(value << shift)
        elif offset in (GPE0_EN, GPE0_EN + 1):
            self.gpe_en = (self.gpe_en & ~(0xFF << shift)) | (value << shift)
        self._update_irq()

    def _sleep(self, slp_typ: int) -> None:
        if slp_typ == SLP_TYP_S5 and self.on_power_off is not None:
            self.on_power_off()
        # Other sleep types are not offered by the DSDT: ignored.

    # -- saved state ---------------------------------------------------------------

    def save_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "sts": self.sts, "en": self.en, "cnt": self.cnt,
                "gpe_sts": self.gpe_sts, "gpe_en": self.gpe_en}

    def load_state(self, state: dict[str, Any]) -> None:
        check_state(state, self.name, (1, STATE_VERSION))
        self.sts = int(state["sts"]) & STS_BITS
        self.en = int(state["en"]) & EN_BITS
        self.cnt = int(state["cnt"]) & CNT_WRITABLE
        self.gpe_sts = int(state.get("gpe_sts", 0)) & 0xFFFF  # version 1: no GPE block
        self.gpe_en = int(state.get("gpe_en", 0)) & 0xFFFF
        self._timer_epoch = self.ticks() >> (TIMER_BITS - 1)
        self._arm_timer()
        self._update_irq()

"""Local APIC (xAPIC, memory-mapped) for one CPU.

Register layout and semantics follow the Intel SDM vol. 3, ch. 10 ("Advanced
Programmable Interrupt Controller").  The page sits at 0xFEE00000; every
register is 32 bits wide and starts on a 16-byte boundary.  Reads of other
sizes return the bytes of the containing 16-byte slot (the register in bytes
0-3, zeros after); writes that are not an aligned access of at least 4 bytes
are ignored (the SDM leaves them undefined).

The vCPU polls :meth:`LocalApic.has_interrupt` / :meth:`LocalApic.acknowledge`
for maskable interrupts at instruction boundaries, and ``nmi_pending`` /
:meth:`LocalApic.take_nmi` for NMIs, which IF does not block.

The IA32_APIC_BASE MSR is the platform's (qemu_lite/msr.py): it moves the page
and sets the global enable (:meth:`LocalApic.set_hardware_enabled`).
Not modelled:
x2APIC, TSC-deadline timer mode, SMI delivery, the thermal, performance and
CMCI interrupt sources (their LVTs are plain registers).  With one CPU, INIT
and STARTUP IPIs go nowhere; with several, ``ipi_bus`` (qemu_lite/smp.py)
carries every IPI to the APICs its destination selects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .base import Clock, Device, check_state

STATE_VERSION = 2  # 1 carried no version field

# Register offsets in the 4 KiB page (SDM table 10-1).
APIC_ID = 0x020
APIC_VERSION = 0x030
APIC_TPR = 0x080
APIC_APR = 0x090
APIC_PPR = 0x0A0
APIC_EOI = 0x0B0
APIC_RRD = 0x0C0
APIC_LDR = 0x0D0
APIC_DFR = 0x0E0
APIC_SVR = 0x0F0
APIC_ISR = 0x100  # eight words, 0x100-0x170
APIC_TMR = 0x180  # eight words, 0x180-0x1F0
APIC_IRR = 0x200  # eight words, 0x200-0x270
APIC_ESR = 0x280
APIC_LVT_CMCI = 0x2F0
APIC_ICR_LOW = 0x300
APIC_ICR_HIGH = 0x310
APIC_LVT_TIMER = 0x320
APIC_LVT_THERMAL = 0x330
APIC_LVT_PERF = 0x340
APIC_LVT_LINT0 = 0x350
APIC_LVT_LINT1 = 0x360
APIC_LVT_ERROR = 0x370
APIC_TIMER_INITIAL = 0x380
APIC_TIMER_CURRENT = 0x390
APIC_TIMER_DIVIDE = 0x3E0

MMIO_BASE = 0xFEE00000
MMIO_SIZE = 0x1000

# Version register: version 0x14 (integrated xAPIC), max LVT entry 5.
APIC_VERSION_VALUE = 0x00050014

# Spurious-interrupt vector register.
SVR_VECTOR = 0xFF
SVR_APIC_ENABLED = 1 << 8
SVR_FOCUS_DISABLED = 1 << 9
SVR_WRITABLE = 0x3FF

# Destination format register models.
DFR_FLAT = 0xF
DFR_CLUSTER = 0x0

# LVT entry fields.
LVT_VECTOR = 0xFF
LVT_DELIVERY_MODE_SHIFT = 8
LVT_DELIVERY_STATUS = 1 << 12
LVT_POLARITY_LOW = 1 << 13
LVT_REMOTE_IRR = 1 << 14
LVT_LEVEL_TRIGGER = 1 << 15
LVT_MASKED = 1 << 16
LVT_TIMER_PERIODIC = 1 << 17
LVT_RESET = LVT_MASKED

# Delivery modes (LVT bits 8-10, ICR bits 8-10, IOAPIC redirection bits 8-10).
DM_FIXED = 0
DM_LOWEST = 1
DM_SMI = 2
DM_NMI = 4
DM_INIT = 5
DM_STARTUP = 6
DM_EXTINT = 7

# Writable bits of each LVT (bit 18 of the timer is reserved: no TSC-deadline).
_LVT_WRITABLE = {
    APIC_LVT_CMCI: 0x107FF,
    APIC_LVT_TIMER: 0x300FF,
    APIC_LVT_THERMAL: 0x107FF,
    APIC_LVT_PERF: 0x107FF,
    APIC_LVT_LINT0: 0x1A7FF,
    APIC_LVT_LINT1: 0x1A7FF,
    APIC_LVT_ERROR: 0x100FF,
}

# Error status register bits.
ESR_SEND_CHECKSUM = 1 << 0
ESR_RECV_CHECKSUM = 1 << 1
ESR_SEND_ACCEPT = 1 << 2
ESR_RECV_ACCEPT = 1 << 3
ESR_REDIRECTABLE_IPI = 1 << 4
ESR_SEND_ILLEGAL_VECTOR = 1 << 5
ESR_RECV_ILLEGAL_VECTOR = 1 << 6
ESR_ILLEGAL_REGISTER = 1 << 7

# Interrupt command register, low dword.
ICR_DEST_LOGICAL = 1 << 11
ICR_DELIVERY_STATUS = 1 << 12
ICR_LEVEL_ASSERT = 1 << 14
ICR_LEVEL_TRIGGER = 1 << 15
ICR_SHORTHAND_SHIFT = 18
ICR_LOW_WRITABLE = 0x000CCFFF
ICR_HIGH_WRITABLE = 0xFF000000
SHORTHAND_NONE = 0
SHORTHAND_SELF = 1
SHORTHAND_ALL_INCLUDING_SELF = 2
SHORTHAND_ALL_EXCLUDING_SELF = 3

# Divide configuration register: bits 0, 1 and 3 select the divisor.
DIVIDE_WRITABLE = 0xB
_DIVISORS = (2, 4, 8, 16, 32, 64, 128, 1)

NS_PER_S = 1_000_000_000

# Writes that can make an IRR vector deliverable without accepting a new one.
_UNBLOCKING = frozenset({APIC_EOI, APIC_TPR, APIC_SVR})

_FIRST_LEGAL_VECTOR = 16


class ExtIntSource(Protocol):
    """The 8259 pair as the APIC sees it on LINT0 (ExtINT delivery mode)."""

    def pending(self) -> bool: ...

    def acknowledge(self) -> int: ...


def _highest(bits: int) -> int:
    """Highest set bit of a 256-bit vector register, -1 when empty."""
    return bits.bit_length() - 1


def _divisor(divide_config: int) -> int:
    return _DIVISORS[(divide_config & 3) | ((divide_config >> 1) & 4)]


class LocalApic(Device):
    """The local APIC of one CPU.

    ``timer_hz`` is the timer's input clock (the bus clock on real hardware)
    before the divide configuration; the machine may set it to the measured
    bus/TSC rate.  The timer is never ticked: the current count is computed
    from ``clock.now()`` and a clock :class:`~.base.Timer` is armed at the
    exact expiry.

    While the APIC is software-disabled (SVR bit 8 clear, the reset state)
    and ``virtual_wire`` is true, the PIC's INTR reaches the CPU directly and
    LINT1 acts as the NMI pin, as on a PC whose APIC is off.

    ``on_request()`` is called whenever an interrupt may have become
    deliverable: a vector accepted into IRR, or an EOI, TPR or SVR write that
    releases one held back by PPR; the machine then ends the CPU's slice at the
    next translation block, as QEMU's TCG notices an interrupt request.

    ``on_eoi(vector)`` is called when an EOI retires a level-triggered vector
    (TMR bit set); the machine wires it to :meth:`IoApic.eoi`.
    """

    name = "lapic"

    def __init__(
        self,
        clock: Clock,
        apic_id: int = 0,
        extint: ExtIntSource | None = None,
        timer_hz: int = NS_PER_S,
        virtual_wire: bool = True,
    ) -> None:
        if timer_hz <= 0:
            raise ValueError("timer_hz must be positive")
        self._clock = clock
        self._apic_id = apic_id & 0xFF
        self.extint = extint
        self.virtual_wire = virtual_wire
        self.on_eoi: Callable[[int], None] | None = None
        # Called when an interrupt or NMI arrives, so the machine can end the
        # CPU's current run and deliver it at the next instruction boundary.
        self.on_request: Callable[[], None] | None = None
        self._timer_hz = timer_hz
        self._timer = clock.timer(self._timer_expired)
        self._lint_input = [False, False]  # pin levels: wires, not reset
        self._in_error = False
        self._hw_disabled = False
        # The wire to the other CPUs' APICs (qemu_lite.smp.ApicBus), if there are any.
        self.ipi_bus: Any = None
        self.reset()

    @property
    def initial_apic_id(self) -> int:
        """The hardware APIC ID (CPUID.1:EBX[31:24]), whatever the guest writes to ID."""
        return self._apic_id

    @property
    def task_priority(self) -> int:
        return self._tpr

    # ------------------------------------------------------------------ reset

    @property
    def hardware_enabled(self) -> bool:
        """IA32_APIC_BASE's global enable bit (the MSR is the platform's, qemu_lite/msr.py)."""
        return not self._hw_disabled

    def set_hardware_enabled(self, enabled: bool) -> None:
        """Clearing the global enable resets the APIC and makes it deaf: its page
        reads all ones, writes and interrupt messages are dropped, and the PIC's
        INTR reaches the CPU directly (SDM 10.4.3).  Setting it again leaves the
        power-on state."""
        if not enabled and not self._hw_disabled:
            self.reset()
        self._hw_disabled = not enabled

    def reset(self) -> None:
        """Power-on/RESET state (SDM 10.4.7.1).

        ID = the hardware APIC ID in bits 24-31; TPR, LDR, ISR, TMR, IRR, ESR,
        ICR, timer counts and divide configuration 0; DFR all ones; SVR 0xFF
        (APIC software-disabled); every LVT 0x10000 (masked).
        """
        self._id = self._apic_id << 24
        self._tpr = 0
        self._ldr = 0
        self._dfr = 0xFFFFFFFF
        self._svr = SVR_VECTOR
        self._isr = 0
        self._tmr = 0
        self._irr = 0
        self._esr = 0  # value software reads
        self._esr_pending = 0  # errors seen since the last ESR write
        self._icr_low = 0
        self._icr_high = 0
        self._lvt = dict.fromkeys(_LVT_WRITABLE, LVT_RESET)
        self._divide = 0
        self._initial = 0
        self._timer_running = False
        self._timer_base_ns = 0
        self._timer_base_ticks = 0
        self._timer.cancel()
        self.nmi_pending = False
        self._extint_request = False

    # ---------------------------------------------------------- MMIO access

    def io_read(self, offset: int, size: int) -> int:
        if self._hw_disabled:
            return (1 << (8 * size)) - 1
        self._sync_timer()
        reg = offset & 0xFF0
        value = self._read_register(reg)
        shift = 8 * (offset & 0xF)
        return (value >> shift) & ((1 << (8 * size)) - 1)

    def io_write(self, offset: int, size: int, value: int) -> None:
        if size < 4 or offset & 3 or self._hw_disabled:
            return
        if offset & 0xF:  # bytes 4-15 of a register slot are reserved
            return
        self._sync_timer()
        self._write_register(offset & 0xFF0, value & 0xFFFFFFFF)

    def _read_register(self, reg: int) -> int:
        if reg == APIC_ID:
            return self._id
        if reg == APIC_VERSION:
            return APIC_VERSION_VALUE
        if reg == APIC_TPR:
            return self._tpr
        if reg == APIC_APR:
            return self._apr()
        if reg == APIC_PPR:
            return self._ppr()
        if reg in (APIC_EOI, APIC_RRD):
            return 0
        if reg == APIC_LDR:
            return self._ldr
        if reg == APIC_DFR:
            return self._dfr
        if reg == APIC_SVR:
            return self._svr
        if APIC_ISR <= reg < APIC_ISR + 0x80:
            return (self._isr >> (2 * (reg - APIC_ISR))) & 0xFFFFFFFF
        if APIC_TMR <= reg < APIC_TMR + 0x80:
            return (self._tmr >> (2 * (reg - APIC_TMR))) & 0xFFFFFFFF
        if APIC_IRR <= reg < APIC_IRR + 0x80:
            return (self._irr >> (2 * (reg - APIC_IRR))) & 0xFFFFFFFF
        if reg == APIC_ESR:
            return self._esr
        if reg == APIC_ICR_LOW:
            return self._icr_low  # delivery status always idle
        if reg == APIC_ICR_HIGH:
            return self._icr_high
        if reg in self._lvt:
            return self._lvt[reg]
        if reg == APIC_TIMER_INITIAL:
            return self._initial
        if reg == APIC_TIMER_CURRENT:
            return self._current_count()
        if reg == APIC_TIMER_DIVIDE:
            return self._divide
        self._signal_error(ESR_ILLEGAL_REGISTER)
        return 0

    def _write_register(self, reg: int, value: int) -> None:
        if reg == APIC_ID:
            self._id = value & 0xFF000000
        elif reg == APIC_TPR:
            self._tpr = value & 0xFF
        elif reg == APIC_EOI:
            self._eoi()
        elif reg == APIC_LDR:
            self._ldr = value & 0xFF000000
        elif reg == APIC_DFR:
            self._dfr = (value & 0xF0000000) | 0x0FFFFFFF
        elif reg == APIC_SVR:
            self._write_svr(value)
        elif reg == APIC_ESR:
            self._esr = self._esr_pending
            self._esr_pending = 0
        elif reg == APIC_ICR_LOW:
            self._icr_low = value & ICR_LOW_WRITABLE
            self._send_ipi()
        elif reg == APIC_ICR_HIGH:
            self._icr_high = value & ICR_HIGH_WRITABLE
        elif reg in self._lvt:
            self._write_lvt(reg, value)
        elif reg == APIC_TIMER_INITIAL:
            self._initial = value
            self._timer_running = value != 0
            self._timer_base_ns = self._clock.now()
            self._timer_base_ticks = 0
            self._arm_timer()
        elif reg == APIC_TIMER_DIVIDE:
            self._rebase_timer()
            self._divide = value & DIVIDE_WRITABLE
            self._arm_timer()
        elif reg in (APIC_VERSION, APIC_APR, APIC_PPR, APIC_RRD, APIC_TIMER_CURRENT) or (
            APIC_ISR <= reg < APIC_IRR + 0x80
        ):
            pass  # read-only
        else:
            self._signal_error(ESR_ILLEGAL_REGISTER)
        self._update_irq()
        if reg in _UNBLOCKING and self._deliverable_vector() >= 0:
            # An EOI, a lower TPR or the software enable can release a vector
            # already in IRR: the CPU must look again (SDM 11.8.4).
            self._request()

    def _write_svr(self, value: int) -> None:
        self._svr = value & SVR_WRITABLE
        if not self.software_enabled:
            for reg in self._lvt:
                self._lvt[reg] |= LVT_MASKED

    def _write_lvt(self, reg: int, value: int) -> None:
        old = self._lvt[reg]
        keep = ~_LVT_WRITABLE[reg] & (LVT_REMOTE_IRR | LVT_DELIVERY_STATUS)
        new = (old & keep) | (value & _LVT_WRITABLE[reg])
        if not self.software_enabled:
            new |= LVT_MASKED
        if reg in (APIC_LVT_LINT0, APIC_LVT_LINT1) and not new & LVT_LEVEL_TRIGGER:
            new &= ~LVT_REMOTE_IRR
        if reg == APIC_LVT_TIMER and (old ^ new) & LVT_TIMER_PERIODIC:
            self._rebase_timer()
            self._lvt[reg] = new
            self._arm_timer()
        self._lvt[reg] = new

    # ------------------------------------------------------------ priorities

    @property
    def software_enabled(self) -> bool:
        """SVR bit 8: the APIC software enable."""
        return bool(self._svr & SVR_APIC_ENABLED)

    def _ppr(self) -> int:
        isrv = max(_highest(self._isr), 0)
        if (self._tpr >> 4) >= (isrv >> 4):
            return self._tpr
        return isrv & 0xF0

    def _apr(self) -> int:
        tpr_class = self._tpr & 0xF0
        isrv = max(_highest(self._isr), 0) & 0xF0
        irrv = max(_highest(self._irr), 0) & 0xF0
        if tpr_class >= irrv and tpr_class > isrv:
            return self._tpr
        return max(tpr_class, isrv, irrv)

    def _deliverable_vector(self) -> int:
        """The IRR vector the CPU would take now, -1 if none."""
        if not self.software_enabled:
            return -1  # IRR is held while software-disabled
        irrv = _highest(self._irr)
        if irrv < 0 or (irrv & 0xF0) <= (self._ppr() & 0xF0):
            return -1
        return irrv

    def _extint_pending(self) -> bool:
        if self.extint is None:
            return False
        if not (self._extint_request or self._lint0_passes_extint()):
            return False
        return self.extint.pending()

    def _lint0_passes_extint(self) -> bool:
        if not self.software_enabled:
            return self.virtual_wire
        lvt = self._lvt[APIC_LVT_LINT0]
        return not lvt & LVT_MASKED and (lvt >> LVT_DELIVERY_MODE_SHIFT) & 7 == DM_EXTINT

    # ------------------------------------------------------------ CPU side

    def has_interrupt(self) -> bool:
        """A maskable interrupt is ready for the CPU (APIC fixed or PIC ExtINT)."""
        return self._deliverable_vector() >= 0 or self._extint_pending()

    def acknowledge(self) -> int:
        """The INTA cycle: return the vector and move it from IRR to ISR.

        An ExtINT returns the PIC's vector.  With nothing left to deliver
        (e.g. TPR raised since :meth:`has_interrupt`) the spurious vector is
        returned, as the SDM describes.
        """
        vector = self._deliverable_vector()
        if vector >= 0:
            bit = 1 << vector
            self._irr &= ~bit
            self._isr |= bit
            return vector
        if self._extint_pending():
            assert self.extint is not None
            self._extint_request = False
            return self.extint.acknowledge()
        return self._svr & SVR_VECTOR

    def take_nmi(self) -> bool:
        """Return and clear ``nmi_pending``."""
        pending = self.nmi_pending
        self.nmi_pending = False
        return pending

    # ------------------------------------------------------ message inputs

    def accept(self, vector: int, level_trigger: bool = False) -> None:
        """Accept a fixed interrupt into IRR (TMR records the trigger mode)."""
        vector &= 0xFF
        if self._hw_disabled:
            return
        if vector < _FIRST_LEGAL_VECTOR:
            self._signal_error(ESR_RECV_ILLEGAL_VECTOR)
            return
        bit = 1 << vector
        self._irr |= bit
        if level_trigger:
            self._tmr |= bit
        else:
            self._tmr &= ~bit
        self._request()

    def deliver_nmi(self) -> None:
        """An NMI message (LINT1, IOAPIC or ICR)."""
        self.nmi_pending = True
        self._request()

    def _request(self) -> None:
        if self.on_request is not None:
            self.on_request()

    def deliver_extint(self) -> None:
        """An ExtINT message: the next acknowledge goes to the PIC."""
        self._extint_request = True
        self._request()

    def match_destination(self, dest: int, logical: bool) -> bool:
        """Does an interrupt message's destination select this APIC?

        Physical: ID match or broadcast 0xFF.  Logical: LDR against the
        destination in the flat or cluster model chosen by DFR.
        """
        dest &= 0xFF
        if not logical:
            return dest == 0xFF or dest == self._id >> 24
        ldr = self._ldr >> 24
        if self._dfr >> 28 == DFR_FLAT:
            return bool(ldr & dest)
        cluster = dest >> 4
        if cluster != 0xF and cluster != ldr >> 4:
            return False
        return bool(ldr & dest & 0xF)

    def set_lint(self, n: int, level: bool) -> None:
        """Drive the LINT0 (n=0) or LINT1 (n=1) input pin."""
        level = bool(level)
        if self._lint_input[n] == level:
            return
        self._lint_input[n] = level
        reg = APIC_LVT_LINT0 if n == 0 else APIC_LVT_LINT1
        lvt = self._lvt[reg]
        active = level != bool(lvt & LVT_POLARITY_LOW)
        if not active:
            self._update_irq()
            return
        mode = (lvt >> LVT_DELIVERY_MODE_SHIFT) & 7
        if not self.software_enabled:
            if n == 1 and self.virtual_wire:
                self.nmi_pending = True  # LINT1 is the NMI pin of a disabled APIC
        elif not lvt & LVT_MASKED:
            if mode == DM_NMI:
                self.nmi_pending = True
            elif mode == DM_FIXED and not self._lint_is_level(n, lvt):
                self.accept(lvt & LVT_VECTOR)
        self._update_irq()

    @staticmethod
    def _lint_is_level(n: int, lvt: int) -> bool:
        # LINT1 does not support level-sensitive interrupts (SDM 10.5.1).
        return n == 0 and bool(lvt & LVT_LEVEL_TRIGGER)

    def _update_irq(self) -> None:
        """Deliver level-triggered fixed LINT interrupts that are due.

        A level LINT interrupt is accepted while the pin is active and remote
        IRR is clear; acceptance sets remote IRR, the EOI of its vector clears it.
        """
        if not self.software_enabled:
            return
        lvt = self._lvt[APIC_LVT_LINT0]
        if (
            not lvt & (LVT_MASKED | LVT_REMOTE_IRR)
            and (lvt >> LVT_DELIVERY_MODE_SHIFT) & 7 == DM_FIXED
            and self._lint_is_level(0, lvt)
            and self._lint_input[0] != bool(lvt & LVT_POLARITY_LOW)
        ):
            self._lvt[APIC_LVT_LINT0] = lvt | LVT_REMOTE_IRR
            self.accept(lvt & LVT_VECTOR, level_trigger=True)

    def _eoi(self) -> None:
        vector = _highest(self._isr)
        if vector < 0:
            return
        bit = 1 << vector
        self._isr &= ~bit
        if not self._tmr & bit:
            return
        lint0 = self._lvt[APIC_LVT_LINT0]
        if lint0 & LVT_REMOTE_IRR and lint0 & LVT_VECTOR == vector:
            self._lvt[APIC_LVT_LINT0] = lint0 & ~LVT_REMOTE_IRR
        if self.on_eoi is not None:
            self.on_eoi(vector)

    def _send_ipi(self) -> None:
        low = self._icr_low
        vector = low & 0xFF
        mode = (low >> LVT_DELIVERY_MODE_SHIFT) & 7
        shorthand = (low >> ICR_SHORTHAND_SHIFT) & 3
        if shorthand == SHORTHAND_NONE:
            to_self = self.match_destination(self._icr_high >> 24, bool(low & ICR_DEST_LOGICAL))
        else:
            to_self = shorthand in (SHORTHAND_SELF, SHORTHAND_ALL_INCLUDING_SELF)
        if mode in (DM_FIXED, DM_LOWEST) and vector < _FIRST_LEGAL_VECTOR:
            self._signal_error(ESR_SEND_ILLEGAL_VECTOR)
            return
        if self.ipi_bus is not None:
            self.ipi_bus.send_ipi(self, low, self._icr_high)
            return
        if mode in (DM_FIXED, DM_LOWEST):
            if to_self:
                self.accept(vector)  # the ICR trigger mode only matters for INIT
        elif mode == DM_NMI and to_self:
            self.deliver_nmi()
        # SMI, INIT and STARTUP to self are ignored: there is no other CPU.

    def _signal_error(self, bits: int) -> None:
        self._esr_pending |= bits
        lvt = self._lvt[APIC_LVT_ERROR]
        if lvt & LVT_MASKED or self._in_error:
            return
        self._in_error = True  # an illegal error vector must not recurse
        try:
            self.accept(lvt & LVT_VECTOR)
        finally:
            self._in_error = False

    # ----------------------------------------------------------------- timer

    @property
    def timer_hz(self) -> int:
        """Timer input clock in Hz, before the divide configuration."""
        return self._timer_hz

    @timer_hz.setter
    def timer_hz(self, hz: int) -> None:
        if hz <= 0:
            raise ValueError("timer_hz must be positive")
        self._rebase_timer()
        self._timer_hz = hz
        self._arm_timer()

    def _tick_ns(self) -> int:
        """Numerator of one tick in ns: a tick lasts ``_tick_ns() / timer_hz`` ns."""
        return _divisor(self._divide) * NS_PER_S

    def _elapsed_ticks(self, now: int) -> int:
        return self._timer_base_ticks + (now - self._timer_base_ns) * self._timer_hz // self._tick_ns()

    def _tick_time(self, ticks: int) -> int:
        """The first guest ns at which ``ticks`` ticks have elapsed."""
        num = (ticks - self._timer_base_ticks) * self._tick_ns()
        return self._timer_base_ns - (-num // self._timer_hz)

    def _periodic(self) -> bool:
        return bool(self._lvt[APIC_LVT_TIMER] & LVT_TIMER_PERIODIC)

    def _current_count(self) -> int:
        if not self._timer_running:
            return 0
        elapsed = self._elapsed_ticks(self._clock.now())
        if self._periodic():
            return self._initial - elapsed % self._initial
        return max(self._initial - elapsed, 0)

    def _rebase_timer(self) -> None:
        """Restart the tick arithmetic at now, keeping the current count."""
        if not self._timer_running:
            return
        now = self._clock.now()
        elapsed = self._elapsed_ticks(now)
        if self._periodic():
            elapsed %= self._initial
        self._timer_base_ns = now
        self._timer_base_ticks = elapsed

    def _arm_timer(self) -> None:
        if not self._timer_running:
            self._timer.cancel()
            return
        if self._periodic():
            elapsed = self._elapsed_ticks(self._clock.now())
            target = (elapsed // self._initial + 1) * self._initial
        else:
            target = self._initial
        self._timer.arm(self._tick_time(target))

    def _timer_expired(self) -> None:
        if not self._periodic():
            self._timer_running = False
        self._arm_timer()
        lvt = self._lvt[APIC_LVT_TIMER]
        if not lvt & LVT_MASKED:
            self.accept(lvt & LVT_VECTOR)

    def _sync_timer(self) -> None:
        """Run an expiry the clock has not delivered yet, before a register access."""
        deadline = self._timer.deadline
        if deadline is not None and deadline <= self._clock.now():
            self._timer.cancel()
            self._timer_expired()

    # ------------------------------------------------------------ save state

    def save_state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "id": self._id,
            "tpr": self._tpr,
            "ldr": self._ldr,
            "dfr": self._dfr,
            "svr": self._svr,
            "isr": self._isr,
            "tmr": self._tmr,
            "irr": self._irr,
            "esr": self._esr,
            "esr_pending": self._esr_pending,
            "icr_low": self._icr_low,
            "icr_high": self._icr_high,
            "lvt": {f"{reg:#x}": value for reg, value in self._lvt.items()},
            "divide": self._divide,
            "initial": self._initial,
            "timer_running": self._timer_running,
            "timer_base_ns": self._timer_base_ns,
            "timer_base_ticks": self._timer_base_ticks,
            "timer_hz": self._timer_hz,
            "lint_input": list(self._lint_input),
            "nmi_pending": self.nmi_pending,
            "extint_request": self._extint_request,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        check_state(state, "lapic", (STATE_VERSION,))
        self._id = state["id"]
        self._tpr = state["tpr"]
        self._ldr = state["ldr"]
        self._dfr = state["dfr"]
        self._svr = state["svr"]
        self._isr = state["isr"]
        self._tmr = state["tmr"]
        self._irr = state["irr"]
        self._esr = state["esr"]
        self._esr_pending = state["esr_pending"]
        self._icr_low = state["icr_low"]
        self._icr_high = state["icr_high"]
        lvt = {int(reg, 16): value for reg, value in state["lvt"].items()}
        if set(lvt) != set(_LVT_WRITABLE):
            raise ValueError("saved LAPIC state has the wrong LVT registers")
        self._lvt = lvt
        self._divide = state["divide"]
        self._initial = state["initial"]
        self._timer_running = state["timer_running"]
        self._timer_base_ns = state["timer_base_ns"]
        self._timer_base_ticks = state["timer_base_ticks"]
        self._timer_hz = state["timer_hz"]
        self._lint_input = [bool(v) for v in state["lint_input"]]
        self.nmi_pending = state["nmi_pending"]
        self._extint_request = state["extint_request"]
        self._arm_timer()

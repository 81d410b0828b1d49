"""I/O APIC (Intel 82093AA, version 0x11) with 24 redirection entries.

MMIO at 0xFEC00000: IOREGSEL at offset 0x00 selects an indirect register,
IOWIN at offset 0x10 reads or writes it (32-bit accesses; narrower reads
return the selected bytes, narrower IOWIN writes are ignored).

Each input pin is a level (:meth:`IoApic.set_irq`, so an :class:`~.base.IrqLine`
can drive it).  A redirection entry turns the pin into an interrupt message,
handed to ``deliver(vector, delivery_mode, level_trigger, dest, dest_mode)``;
:func:`route_to_lapic` builds that callable for the single local APIC.

Edge-triggered pins send one message per asserting edge; an edge on a masked
pin is lost (82093AA data sheet).  Level-triggered pins send a message while
asserted and unmasked with remote IRR clear; sending sets remote IRR and the
local APIC's EOI of the vector (:meth:`IoApic.eoi`) clears it, so a pin still
asserted is delivered again.  A level pin asserted while masked is delivered
when unmasked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import Device, check_state
from .lapic import DM_EXTINT, DM_FIXED, DM_LOWEST, DM_NMI, LocalApic

STATE_VERSION = 2  # 1 carried no version field

MMIO_BASE = 0xFEC00000
MMIO_SIZE = 0x1000  # the decoded window; only IOREGSEL and IOWIN respond

# Direct registers (offsets in the MMIO window).
IOREGSEL = 0x00
IOWIN = 0x10

# Indirect registers (IOREGSEL values).
IOAPICID = 0x00
IOAPICVER = 0x01
IOAPICARB = 0x02
IOREDTBL = 0x10  # entry n: low dword at 0x10 + 2n, high dword at 0x11 + 2n

NUM_PINS = 24
IOAPIC_VERSION = 0x11
IOAPICVER_VALUE = ((NUM_PINS - 1) << 16) | IOAPIC_VERSION  # 0x00170011
IOAPICID_WRITABLE = 0x0F000000

# Redirection entry fields.
REDIR_VECTOR = 0xFF
REDIR_DELIVERY_MODE_SHIFT = 8
REDIR_DEST_LOGICAL = 1 << 11
REDIR_DELIVERY_STATUS = 1 << 12
REDIR_POLARITY_LOW = 1 << 13
REDIR_REMOTE_IRR = 1 << 14
REDIR_LEVEL_TRIGGER = 1 << 15
REDIR_MASKED = 1 << 16
REDIR_DEST_SHIFT = 56
REDIR_LOW_WRITABLE = 0x0001AFFF
REDIR_HIGH_WRITABLE = 0xFF000000
REDIR_RESET = REDIR_MASKED

DeliverFn = Callable[[int, int, bool, int, int], None]


class IoApic(Device):
    """The I/O APIC; ``deliver`` receives every interrupt message it sends."""

    name = "ioapic"

    def __init__(self, deliver: DeliverFn, ioapic_id: int = 0) -> None:
        self.deliver = deliver
        self._reset_id = (ioapic_id & 0xF) << 24
        self._input = [False] * NUM_PINS  # pin levels: wires, not reset
        self.reset()

    def reset(self) -> None:
        """Power-on state: ID as configured, IOREGSEL 0, every entry masked (0x10000)."""
        self._id = self._reset_id
        self._regsel = 0
        self._redir = [REDIR_RESET] * NUM_PINS

    # ---------------------------------------------------------- MMIO access

    def io_read(self, offset: int, size: int) -> int:
        if offset & ~3 == IOREGSEL:
            value = self._regsel
        elif offset & ~3 == IOWIN:
            value = self._read_register(self._regsel)
        else:
            return 0
        return (value >> (8 * (offset & 3))) & ((1 << (8 * size)) - 1)

    def io_write(self, offset: int, size: int, value: int) -> None:
        if offset == IOREGSEL:
            self._regsel = value & 0xFF
        elif offset == IOWIN and size >= 4:
            self._write_register(self._regsel, value & 0xFFFFFFFF)

    def _read_register(self, index: int) -> int:
        if index == IOAPICID:
            return self._id
        if index == IOAPICVER:
            return IOAPICVER_VALUE
        if index == IOAPICARB:
            return self._id  # the arbitration ID is loaded from the APIC ID
        pin, high = self._entry_index(index)
        if pin < 0:
            return 0
        entry = self._redir[pin]
        return entry >> 32 if high else entry & 0xFFFFFFFF

    def _write_register(self, index: int, value: int) -> None:
        if index == IOAPICID:
            self._id = value & IOAPICID_WRITABLE
            return
        pin, high = self._entry_index(index)
        if pin < 0:
            return
        entry = self._redir[pin]
        if high:
            entry = (entry & 0xFFFFFFFF) | ((value & REDIR_HIGH_WRITABLE) << 32)
        else:
            keep = REDIR_REMOTE_IRR | REDIR_DELIVERY_STATUS | (0xFFFFFFFF << 32)
            entry = (entry & keep) | (value & REDIR_LOW_WRITABLE)
            if not entry & REDIR_LEVEL_TRIGGER:
                entry &= ~REDIR_REMOTE_IRR  # remote IRR is undefined for edge pins
        self._redir[pin] = entry
        self._update_irq()

    @staticmethod
    def _entry_index(index: int) -> tuple[int, bool]:
        if IOREDTBL <= index < IOREDTBL + 2 * NUM_PINS:
            return (index - IOREDTBL) >> 1, bool(index & 1)
        return -1, False

    # ------------------------------------------------------------ pins

    def set_irq(self, irq: int, level: bool) -> None:
        """Drive input pin ``irq`` (0-23) to ``level``."""
        level = bool(level)
        if self._input[irq] == level:
            return
        self._input[irq] = level
        entry = self._redir[irq]
        if (
            self._active(irq)
            and not entry & (REDIR_MASKED | REDIR_LEVEL_TRIGGER)
        ):
            self._send(entry)  # asserting edge of an edge-triggered pin
        self._update_irq()

    def eoi(self, vector: int) -> None:
        """EOI broadcast from a local APIC: clear remote IRR of entries with ``vector``."""
        for pin, entry in enumerate(self._redir):
            if entry & REDIR_REMOTE_IRR and entry & REDIR_VECTOR == vector:
                self._redir[pin] = entry & ~REDIR_REMOTE_IRR
        self._update_irq()

    def _active(self, pin: int) -> bool:
        return self._input[pin] != bool(self._redir[pin] & REDIR_POLARITY_LOW)

    def _update_irq(self) -> None:
        """Send a message for every unmasked, asserted level pin with remote IRR clear."""
        for pin, entry in enumerate(self._redir):
            if (
                entry & REDIR_LEVEL_TRIGGER
                and not entry & (REDIR_MASKED | REDIR_REMOTE_IRR)
                and self._active(pin)
            ):
                self._redir[pin] = entry | REDIR_REMOTE_IRR
                self._send(entry)

    def _send(self, entry: int) -> None:
        self.deliver(
            entry & REDIR_VECTOR,
            (entry >> REDIR_DELIVERY_MODE_SHIFT) & 7,
            bool(entry & REDIR_LEVEL_TRIGGER),
            (entry >> REDIR_DEST_SHIFT) & 0xFF,
            1 if entry & REDIR_DEST_LOGICAL else 0,
        )

    # ------------------------------------------------------------ save state

    def save_state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "id": self._id,
            "regsel": self._regsel,
            "redir": list(self._redir),
            "input": list(self._input),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        check_state(state, "ioapic", (STATE_VERSION,))
        if len(state["redir"]) != NUM_PINS or len(state["input"]) != NUM_PINS:
            raise ValueError("saved IOAPIC state has the wrong number of pins")
        self._id = state["id"]
        self._regsel = state["regsel"]
        self._redir = [int(v) for v in state["redir"]]
        self._input = [bool(v) for v in state["input"]]


def route_to_lapic(lapic: LocalApic) -> DeliverFn:
    """A ``deliver`` callable that hands IOAPIC messages to one local APIC.

    Fixed and lowest-priority messages whose destination matches (physical ID,
    physical broadcast 0xFF, or logical via LDR/DFR) are accepted into IRR;
    NMI and ExtINT messages raise those requests; SMI and INIT are dropped.
    """

    def deliver(vector: int, delivery_mode: int, level_trigger: bool, dest: int, dest_mode: int) -> None:
        if not lapic.match_destination(dest, logical=bool(dest_mode)):
            return
        if delivery_mode in (DM_FIXED, DM_LOWEST):
            lapic.accept(vector, level_trigger)
        elif delivery_mode == DM_NMI:
            lapic.deliver_nmi()
        elif delivery_mode == DM_EXTINT:
            lapic.deliver_extint()

    return deliver

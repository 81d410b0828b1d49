"""What the board sees of the machine, and the board's table of slots.

:mod:`qemu_lite.pc` builds devices against :class:`Platform` (never against
``Machine``) and returns a list of :class:`Slot`: which device sits at which
ports, MMIO ranges and IRQ lines.  The machine walks that table to claim the
ports and ranges, to reset every device, and to save and restore their state.
Devices themselves see less still: an :class:`~qemu_lite.devices.base.IrqLine`,
a :class:`~qemu_lite.devices.base.Clock` and the callbacks the board hands them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from qemu_lite.devices.base import Clock, Device


class Stateful(Protocol):
    """A slot's owner: reset to power-on values; versioned saved state."""

    def reset(self) -> None: ...

    def save_state(self) -> dict[str, Any]: ...

    def load_state(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class PortRange:
    base: int
    count: int
    handler: Device


@dataclass(frozen=True)
class MmioRange:
    base: int
    size: int
    handler: Device
    access_ns: int  # deterministic guest time per access


class BarOwner(Protocol):
    """A PCI function with BARs: it calls ``on_bar_change(...)`` (any arguments) whenever
    what it decodes may have changed (a BAR or the command register written, reset)."""

    on_bar_change: Any


class RamBar(Protocol):
    """Memory behind a BAR that the guest reaches as RAM (a framebuffer), not through
    callbacks: ``map(base)`` puts it at a physical base (UcError when that overlaps
    something), ``unmap()`` takes it away again."""

    name: str

    def map(self, base: int) -> None: ...

    def unmap(self) -> None: ...


@dataclass(frozen=True)
class PciBar:
    """A PCI BAR: ``handler`` answers ``size`` ports (``space`` "io") or bytes ("mmio")
    at the base ``function`` decodes now (``decoded()``; None while it decodes none);
    with ``space`` "ram" it is a :class:`RamBar` mapped there as memory."""

    space: str
    size: int
    handler: Device | RamBar
    function: BarOwner
    decoded: Callable[[], int | None]


@dataclass
class Slot:
    """One row of the board: ``device`` owns the state behind its ports and ranges.

    ``irqs`` names the ISA lines it drives (documentation, and checked for
    clashes); ``poll`` runs at every stop of the vCPU (host input); ``bars``
    are claimed wherever the guest programs them.  ``device`` None: the ports
    hold no state (isa-debug-exit, POST), or their state is saved elsewhere
    (a PCI function's, with the bus).  ``resets_last``: an interrupt
    controller; RESET reaches every chip at once on a PC, so what a device does
    while it resets (an IDE channel raising its line) must not stay latched in
    one: the machine resets these slots after all others."""

    name: str
    device: Stateful | None
    ports: list[PortRange] = field(default_factory=list)
    irqs: tuple[int, ...] = ()
    mmio: list[MmioRange] = field(default_factory=list)
    poll: Callable[[], None] | None = None
    bars: list[PciBar] = field(default_factory=list)
    resets_last: bool = False


def reset_order(slots: list[Slot]) -> list[Stateful]:
    """The slots' state owners in the order a machine reset resets them."""
    ordered = [s for s in slots if not s.resets_last] + [s for s in slots if s.resets_last]
    return [s.device for s in ordered if s.device is not None]


class HostMemory(Protocol):
    """Guest physical memory as the host (DMA, ROM loaders) reaches it."""

    memory_size: int

    def read_memory(self, address: int, size: int) -> bytes: ...

    def write_memory(self, address: int, data: bytes) -> None: ...

    def memory_ranges(self, write: bool = False) -> list[tuple[int, int]]: ...

    @property
    def rom_ranges(self) -> list[tuple[int, int]]: ...


class Platform(HostMemory, Protocol):
    """The machine as the board sees it while building and while the guest runs.

    ``core`` and ``uc`` are for board glue that maps memory (the IDE PIO window,
    PAM, the VGA's framebuffer), never for device models."""

    clock: Clock
    rtc_base: float | None
    accel_thread: str  # "single" or "multi" (-accel tcg,thread=)
    core: Any
    uc: Any
    unassigned: Any

    def add_device(self, base: int, count: int, device: Device) -> None:
        """Claim ports at run time (a BAR moved)."""

    def add_mmio(self, base: int, size: int, device: Device, access_ns: int = ...) -> Device:
        """Map an MMIO range at run time (a BAR moved); the handler the engine calls."""

    def add_poller(self, poll: Callable[[], None]) -> None: ...

    def add_closer(self, close: Callable[[], None]) -> None: ...

    def add_resettable(self, *devices: Any) -> None: ...

    def add_ram_image(self, address: int, data: bytes) -> None: ...

    def remove_from_memory_ranges(self, start: int, end: int) -> None: ...

    def interrupt_request(self) -> None:
        """An interrupt controller raised its output (any thread)."""

    def wake(self) -> None:
        """End a halted wait or the running slice (any thread)."""

    def reset(self) -> None:
        """The guest asked for a machine reset."""

    def set_a20(self, enabled: bool) -> None: ...

    def set_pam(self, attrs: list[int]) -> None:
        """The i440FX PAM registers changed (16 segment attributes)."""

    def exit(self, status: int) -> None:
        """isa-debug-exit."""

    def power_off(self) -> None:
        """The guest entered ACPI S5."""

    def firmware_event(self, event: int) -> None: ...

"""The board table's PCI BARs, claimed where the guest programs them.

A :class:`~qemu_lite.platform.PciBar` row names the handler behind one BAR of a
function.  :class:`BarClaims` keeps the machine's port and MMIO claims in step with
what the function decodes: when the board is claimed, whenever the function reports
a change (``on_bar_change``: a BAR or its command register written, a reset), after
a machine reset and after a saved state is loaded.

An I/O BAR moves at once (Core's port table may change inside a port callback).  A
memory BAR cannot: Unicorn's memory map must not change inside a hook (changing it
there made the shadow MMU fault on the region's address), so a new base ends the
slice and is mapped by a poller between slices.  A memory window, once mapped,
stays (an unmap invalidates translations through our TLB fill, see below) and
answers only while the BAR decodes at its base: elsewhere it reads all ones and
drops stores, as unassigned memory does.

A RAM BAR (the VGA's framebuffer, :class:`~qemu_lite.platform.RamBar`) is memory the
guest stores to at RAM speed, so it cannot stay behind at an old base: between
slices it is unmapped there and mapped at the new one (a base over RAM or another
mapping is refused: nothing decodes there).  Unicorn's ``uc_mem_unmap`` invalidates
translated code of the range by looking its address up as a *virtual* fetch
through our TLB fill, which records a guest #PF that no guest instruction caused;
that fault is dropped (this runs between slices, after the run loop took the
previous slice's stop).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import cast

from unicorn import UcError

from mmu_core._core import STOP_FAULT
from qemu_lite.devices.base import Device
from qemu_lite.platform import PciBar, Platform, RamBar

log = logging.getLogger(__name__)


class BarClaims:
    """One machine's BAR claims; ``request_stop`` ends the running slice."""

    def __init__(self, platform: Platform, request_stop: Callable[[], None]) -> None:
        self._platform = platform
        self._request_stop = request_stop
        self._bars: list[PciBar] = []
        self._ports: dict[int, int] = {}  # BAR index -> the I/O base claimed for it
        self._windows: dict[tuple[int, int], MemoryBarWindow] = {}  # (index, base)
        self._ram: dict[int, int] = {}  # RAM BAR index -> where it is mapped
        self._refused: set[tuple[int, int]] = set()  # bases that overlap something
        self._pending = False

    def add(self, bar: PciBar) -> None:
        """Claim ``bar`` where its function decodes it, and follow it from now on."""
        if bar.space not in ("io", "mmio", "ram"):
            raise ValueError(f"a BAR's space is io, mmio or ram, not {bar.space!r}")
        self._bars.append(bar)
        bar.function.on_bar_change = self._moved
        self.sync()

    def claimed(self) -> list[tuple[str, int, int]]:
        """``(space, base, size)`` of every BAR decoded and answered now."""
        out = [("io", base, self._bars[i].size) for i, base in self._ports.items()]
        out += [("mmio", base, self._bars[i].size) for (i, base) in self._windows
                if self._bars[i].decoded() == base]
        out += [("ram", base, self._bars[i].size) for i, base in self._ram.items()]
        return sorted(out)

    def _moved(self, *_change: object) -> None:
        self.sync(map_memory=False)

    def sync(self, *, map_memory: bool = True) -> None:
        """Claim every BAR at its decoded base and release where it was.  Memory BARs
        are mapped only with ``map_memory`` (between slices); otherwise the slice ends
        and :meth:`apply_pending` maps them."""
        for index, bar in enumerate(self._bars):
            base = bar.decoded()
            if bar.space == "io":
                old = self._ports.get(index)
                if old == base:
                    continue
                if old is not None:
                    del self._ports[index]
                    self._platform.core.release_ports(old, bar.size)
                if base is not None:
                    self._platform.add_device(base, bar.size, cast(Device, bar.handler))
                    self._ports[index] = base
            elif bar.space == "ram":
                if self._ram.get(index) == base:
                    continue
                if map_memory:
                    self._move_ram(index, bar, base)
                elif base is None or (index, base) not in self._refused:
                    self._pending = True  # unmapping waits for the slice's end too
                    self._request_stop()
            elif base is not None and (index, base) not in self._windows:
                if map_memory:
                    self._map(index, bar, base)
                elif (index, base) not in self._refused:
                    self._pending = True
                    self._request_stop()

    def apply_pending(self) -> None:
        """Between slices (a machine poller): map memory BARs that moved."""
        if self._pending:
            self._pending = False
            self.sync()

    def _move_ram(self, index: int, bar: PciBar, base: int | None) -> None:
        memory = cast(RamBar, bar.handler)
        platform = self._platform
        gap = touched = index in self._ram  # something unmapped leaves a gap to fill
        if gap:
            memory.unmap()
            del self._ram[index]
        if base is not None and (index, base) not in self._refused:
            if base < platform.memory_size:
                log.debug("%s: not mapped at %#x (over RAM)", memory.name, base)
                self._refused.add((index, base))
            else:
                platform.unassigned.release(base, bar.size)  # the gap filler gives room
                touched = True
                try:
                    memory.map(base)
                    self._ram[index] = base
                except UcError:
                    # Over the BIOS, an APIC or the top of 4 GiB (a BAR being sized):
                    # a real bus would decode garbage there; this one decodes nothing.
                    log.debug("%s: not mapped at %#x (overlap)", memory.name, base)
                    self._refused.add((index, base))
                    gap = True
        if gap:
            platform.unassigned.fill_gaps()
        if touched:
            flags, _ = platform.core.take_stop()  # the unmaps' spurious #PF (see above)
            if flags & STOP_FAULT:
                platform.core.take_fault()

    def _map(self, index: int, bar: PciBar, base: int) -> None:
        if (index, base) in self._refused:
            return
        window = MemoryBarWindow(bar, base)
        try:
            self._platform.add_mmio(base, bar.size, window)
        except UcError as exc:  # it overlaps something (the BIOS ROM, an APIC)
            log.warning("%s: cannot map its BAR at %#x: %s", window.handler.name, base, exc)
            self._refused.add((index, base))
            return
        self._windows[(index, base)] = window


class MemoryBarWindow(Device):
    """A memory BAR's handler at one address, live only while the BAR decodes there."""

    name = "bar-window"

    def __init__(self, bar: PciBar, base: int) -> None:
        self.bar = bar
        self.handler = cast(Device, bar.handler)
        self.base = base

    def io_read(self, offset: int, size: int) -> int:
        if self.bar.decoded() != self.base:
            return (1 << (8 * size)) - 1
        return self.handler.io_read(offset, size)

    def io_write(self, offset: int, size: int, value: int) -> None:
        if self.bar.decoded() == self.base:
            self.handler.io_write(offset, size, value)

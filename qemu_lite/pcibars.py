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
stays (an unmap invalidates translations through our TLB fill, see the VGA's LFB in
``display/vgaboard.py``) and answers only while the BAR decodes at its base:
elsewhere it reads all ones and drops stores, as unassigned memory does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from unicorn import UcError

from qemu_lite.devices.base import Device
from qemu_lite.platform import PciBar, Platform

log = logging.getLogger(__name__)


class BarClaims:
    """One machine's BAR claims; ``request_stop`` ends the running slice."""

    def __init__(self, platform: Platform, request_stop: Callable[[], None]) -> None:
        self._platform = platform
        self._request_stop = request_stop
        self._bars: list[PciBar] = []
        self._ports: dict[int, int] = {}  # BAR index -> the I/O base claimed for it
        self._windows: dict[tuple[int, int], MemoryBarWindow] = {}  # (index, base)
        self._refused: set[tuple[int, int]] = set()  # bases that overlap something
        self._pending = False

    def add(self, bar: PciBar) -> None:
        """Claim ``bar`` where its function decodes it, and follow it from now on."""
        if bar.space not in ("io", "mmio"):
            raise ValueError(f"a BAR's space is io or mmio, not {bar.space!r}")
        self._bars.append(bar)
        bar.function.on_bar_change = self._moved
        self.sync()

    def claimed(self) -> list[tuple[str, int, int]]:
        """``(space, base, size)`` of every BAR decoded and answered now."""
        out = [("io", base, self._bars[i].size) for i, base in self._ports.items()]
        out += [("mmio", base, self._bars[i].size) for (i, base) in self._windows
                if self._bars[i].decoded() == base]
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
                    self._platform.add_device(base, bar.size, bar.handler)
                    self._ports[index] = base
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

    def _map(self, index: int, bar: PciBar, base: int) -> None:
        if (index, base) in self._refused:
            return
        window = MemoryBarWindow(bar, base)
        try:
            self._platform.add_mmio(base, bar.size, window)
        except UcError as exc:  # it overlaps something (the BIOS ROM, an APIC)
            log.warning("%s: cannot map its BAR at %#x: %s", bar.handler.name, base, exc)
            self._refused.add((index, base))
            return
        self._windows[(index, base)] = window


class MemoryBarWindow(Device):
    """A memory BAR's handler at one address, live only while the BAR decodes there."""

    name = "bar-window"

    def __init__(self, bar: PciBar, base: int) -> None:
        self.bar = bar
        self.base = base

    def io_read(self, offset: int, size: int) -> int:
        if self.bar.decoded() != self.base:
            return (1 << (8 * size)) - 1
        return self.bar.handler.io_read(offset, size)

    def io_write(self, offset: int, size: int, value: int) -> None:
        if self.bar.decoded() == self.base:
            self.bar.handler.io_write(offset, size, value)

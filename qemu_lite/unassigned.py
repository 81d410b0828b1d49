"""Unassigned physical memory: addresses that no RAM, ROM or device answers.

On a PC a CPU load from such an address completes with all ones (nothing
drives the data lines) and a store is lost; QEMU models the same with its
unassigned-memory region.  Every gap of the physical address space (up to
MAXPHYADDR) is mapped as one MMIO region that does exactly that, counting
the accesses and logging each at debug level, so it behaves the same under
every MMU mode: through the shadow MMU's fill and through Unicorn's own walk.

Bus-master DMA follows the same rule seen from the other side: a PCI master
whose cycle nothing claims gets a master abort, which the PIIX reports in
BMISTA's error bit and stops on (``GuestPhysicalMemory`` in pc.py), where
QEMU completes the transfer and discards it.  The data effect is the same
(no store lands anywhere); only the bus master can notice.

Instruction fetches still fail (Unicorn cannot execute from MMIO): the run
ends with "execution of unmapped memory", where a PC would fetch 0xFF bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from unicorn import Uc

log = logging.getLogger("qemu_lite.unassigned")

PAGE = 0x1000


class UnassignedMemory:
    """The MMIO regions that fill the gaps of one engine's physical address space."""

    def __init__(self, uc: Uc, limit: int) -> None:
        self._uc = uc
        self._limit = limit
        self._pieces: dict[int, tuple[int, Callable[..., int], Callable[..., None]]] = {}
        self.reads = 0
        self.writes = 0

    def fill_gaps(self) -> None:
        """Map every page below the limit that nothing is mapped at yet."""
        regions = sorted((s, e + 1) for s, e, _perms in self._uc.mem_regions())
        at = 0
        for start, end in regions:
            if start >= self._limit:
                break
            if start > at:
                self._map(at, start - at)
            at = max(at, end)
        if at < self._limit:
            self._map(at, self._limit - at)

    def release(self, base: int, size: int) -> None:
        """Give ``[base, base + size)`` back, so a device can be mapped there."""
        end = base + size
        for start, (length, _r, _w) in sorted(self._pieces.items()):
            stop = start + length
            if stop <= base or start >= end:
                continue
            self._uc.mem_unmap(start, length)
            del self._pieces[start]
            if start < base:
                self._map(start, base - start)
            if stop > end:
                self._map(end, stop - end)

    def _map(self, base: int, size: int) -> None:
        def read(_uc: object, offset: int, size: int, _user: object) -> int:
            self.reads += 1
            log.debug("read of unassigned memory at %#x (%d bytes): all ones", base + offset, size)
            return (1 << (8 * size)) - 1

        def write(_uc: object, offset: int, size: int, value: int, _user: object) -> None:
            self.writes += 1
            log.debug("write of %#x to unassigned memory at %#x (%d bytes) ignored",
                      value, base + offset, size)

        self._uc.mmio_map(base, size, read, None, write, None)
        self._pieces[base] = (size, read, write)

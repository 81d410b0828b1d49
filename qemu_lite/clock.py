"""Guest time for the machine's timers."""

from __future__ import annotations

import time
from typing import Protocol

from qemu_lite.devices.base import Clock


class HostClock(Clock):
    """Real-time guest clock: guest nanoseconds follow the host's monotonic clock."""

    def __init__(self) -> None:
        super().__init__()
        self._t0 = time.monotonic_ns()

    def now(self) -> int:
        return time.monotonic_ns() - self._t0

    def host_deadline_ns(self, guest_ns: int) -> int:
        """The host ``time.monotonic_ns()`` at which guest time reaches ``guest_ns``."""
        return self._t0 + guest_ns


class VirtualClock(Clock):
    """Deterministic guest time, derived from guest progress.

    Guest time advances by ``NS_PER_BLOCK`` for every translation block the
    vCPU executes (counted by the C block hook, so it costs one increment a
    block) and jumps straight to the next timer deadline while the guest is
    halted.  The same guest with the same input therefore sees the same
    times, interrupts at the same instructions, and produces the same output.
    """

    NS_PER_BLOCK = 10

    def __init__(self, blocks: BlockCounter) -> None:
        super().__init__()
        self._blocks = blocks
        self._skipped = 0

    def now(self) -> int:
        return self._skipped + self._blocks.blocks * self.NS_PER_BLOCK

    def block_deadline(self, guest_ns: int) -> int:
        """The block count at which guest time reaches ``guest_ns``."""
        return max(1, -(-(guest_ns - self._skipped) // self.NS_PER_BLOCK))

    def skip_to(self, guest_ns: int) -> None:
        """Idle until ``guest_ns``: the halted guest loses no host time."""
        now = self.now()
        if guest_ns > now:
            self._skipped += guest_ns - now


class BlockCounter(Protocol):
    @property
    def blocks(self) -> int: ...

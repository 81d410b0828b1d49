"""Guest time for the machine's timers."""

from __future__ import annotations

import time

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
